"""Pixel pre/post-processing of in-memory frames: validation, resizing, padding, value ranges.

Frames are ``[F, H, W, 3]`` RGB arrays (``uint8`` unless said otherwise); nothing here touches
files (reading and writing videos is :mod:`gvc_jax.io.video_reader` and
:mod:`gvc_jax.io.video_writer`).

``VideoError`` lives here because the shape and dtype checks raise it; the :mod:`gvc_jax.io`
modules raise the same class for every file problem, and ``gvc_jax.pixels.VideoError`` is its
one name.
"""
from __future__ import annotations

import numpy as np


class VideoError(ValueError):
    """A video cannot be read or written (missing, unreadable, empty, bad size)."""


def as_video(frames, what: str = "frames", *, allow_float: bool = False) -> np.ndarray:
    """Validate and return ``frames`` as a ``[F, H, W, 3]`` array (no copy when it already is one).

    A single ``[H, W, 3]`` image gets F = 1. The dtype must be ``uint8``; with ``allow_float``
    any floating dtype is accepted too (values are not checked). Raises ``VideoError`` (a
    ``ValueError``) naming ``what`` for a wrong shape or dtype or an empty array.
    """
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoError(f"{what} must have shape [F, H, W, 3], got {tuple(arr.shape)}")
    if allow_float and arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise VideoError(f"{what} must be uint8 or float in [0, 1], got {arr.dtype}")
    if not allow_float and arr.dtype != np.uint8:
        raise VideoError(f"{what} must be uint8, got {arr.dtype} (use from_model_range for floats)")
    if arr.size == 0:
        raise VideoError(f"{what} is empty: shape {tuple(arr.shape)}")
    return arr


def check_size(size) -> tuple[int, int]:
    """A ``(W, H)`` resize target as a pair of positive ints; ``VideoError`` otherwise."""
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise VideoError(f"resize must be a (width, height) pair, got {size!r}") from None
    if w <= 0 or h <= 0:
        raise VideoError(f"resize must be a positive (width, height), got {size!r}")
    return w, h


def resize_frames(frames, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``[F, H, W, 3]`` to ``size = (W, H)``: Pillow bicubic, antialiased on downscale.

    Frames already of that size come back unchanged (the same array).
    """
    from PIL import Image

    w, h = check_size(size)
    frames = as_video(frames)
    if frames.shape[1:3] == (h, w):
        return frames
    out = np.empty((frames.shape[0], h, w, 3), np.uint8)
    for i, fr in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(fr).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None))
    return out


def pad_to_multiple(frames: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Pad H and W (axes -3, -2 of ``[..., H, W, C]``) at the bottom/right by edge replication.

    Works for any dtype; returns the input unchanged when both are already multiples.
    """
    arr = np.asarray(frames)
    if arr.ndim < 3:
        raise ValueError(f"expected [..., H, W, C], got shape {arr.shape}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = arr.shape[-3], arr.shape[-2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return arr
    pad = [(0, 0)] * arr.ndim
    pad[-3], pad[-2] = (0, ph), (0, pw)
    return np.pad(arr, pad, mode="edge")


def crop(frames, height: int, width: int) -> np.ndarray:
    """Top-left crop of ``[..., H, W, C]`` to ``[..., height, width, C]`` (undoes pad_to_multiple)."""
    arr = np.asarray(frames)
    h, w = arr.shape[-3], arr.shape[-2]
    if not (0 < height <= h and 0 < width <= w):
        raise ValueError(f"cannot crop {h}x{w} (HxW) to {height}x{width}")
    return arr[..., :height, :width, :]


def to_model_range(frames_uint8) -> np.ndarray:
    """uint8 in [0, 255] -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    arr = np.asarray(frames_uint8)
    if arr.dtype != np.uint8:
        raise ValueError(f"to_model_range expects uint8, got {arr.dtype}")
    return arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def from_model_range(x) -> np.ndarray:
    """float in [-1, 1] -> uint8 (``round((x + 1) * 127.5)``, clipped to [0, 255])."""
    arr = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
