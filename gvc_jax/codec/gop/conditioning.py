"""A GOP's DiT conditioning: the ``cond`` pytree the velocity model receives.

Keys (see ``codec.sampling.velocity.WanVelocity``):
- ``context`` [text_len, text_dim]: the text rows (the empty prompt's embedding, or zeros);
- ``y`` [F_lat, h, w, 4 + C]: a 4-channel frame mask and a conditioning latent, concatenated on
  channels after the noisy latent, for DiTs that accept ``latent`` conditioning
  (``DiTConfig.conditioning``; Wan I2V / FLF2V layouts, 16 + 4 + 16 = 36 input channels);
- ``image_context`` [N, image_dim]: CLIP image tokens, for DiTs with an image branch.

The mask marks which *pixel* frames are given: 1 for a visible frame, 0 otherwise. Wan repeats the
first pixel frame's mask ``temporal_stride`` times (the VAE codes frame 0 alone) and folds the
resulting ``stride * F_lat`` values to ``stride`` channels per latent frame. A model with latent
conditioning that is run without anchors (T2V) gets an all-zero mask and a zero latent, the
input the default model was trained with. The training script builds its inputs here too.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from einops import rearrange

from gvc_jax.models.configs import DiTConfig
from gvc_jax.temporal import is_valid


class ConditioningError(ValueError):
    """The model cannot take the requested conditioning."""


def frame_mask(pixel_frames: int, visible: Sequence[int] = (), temporal_stride: int = 4) -> np.ndarray:
    """[F_lat, stride] float32 mask of the visible pixel frames (indices into the GOP)."""
    if not is_valid(pixel_frames, temporal_stride):
        raise ConditioningError(f"a GOP has {temporal_stride}k+1 frames, got {pixel_frames}")
    m = np.zeros((pixel_frames,), np.float32)
    for i in visible:
        if not 0 <= i < pixel_frames:
            raise ConditioningError(f"visible frame {i} outside the GOP's {pixel_frames} frames")
        m[i] = 1.0
    m = np.concatenate([np.repeat(m[:1], temporal_stride), m[1:]])
    return rearrange(m, "(f s) -> f s", s=temporal_stride)


def visible_frames(kind: str, pixel_frames: int) -> tuple:
    """The GOP frames an anchored variant gives the DiT: none (t2v), the first (i2v), first and last (flf2v)."""
    table = {"t2v": (), "i2v": (0,), "flf2v": (0, pixel_frames - 1)}
    if kind not in table:
        raise ConditioningError(f"unknown conditioning kind {kind!r}; expected one of {tuple(table)}")
    return table[kind]


def latent_condition(latent_shape: Sequence[int], cond_latent=None, *, visible: Sequence[int] = (),
                     pixel_frames: Optional[int] = None, temporal_stride: int = 4):
    """``y`` [F_lat, h, w, 4 + C]: the frame mask of ``visible`` (of ``pixel_frames``, default
    ``stride * (F_lat - 1) + 1``) broadcast over space, then ``cond_latent`` (zeros if None)."""
    f, h, w, c = (int(v) for v in latent_shape)
    pixel_frames = (f - 1) * temporal_stride + 1 if pixel_frames is None else pixel_frames
    mask = frame_mask(pixel_frames, visible, temporal_stride)
    if mask.shape[0] != f:
        raise ConditioningError(f"{pixel_frames} pixel frames give {mask.shape[0]} latent frames, not {f}")
    lat = np.zeros((f, h, w, c), np.float32) if cond_latent is None else cond_latent
    if tuple(lat.shape) != (f, h, w, c):
        raise ConditioningError(f"conditioning latent has shape {tuple(lat.shape)}, expected {(f, h, w, c)}")
    mask = np.broadcast_to(mask[:, None, None, :], (f, h, w, temporal_stride))
    return _concat(mask, lat)


def build_condition(dit: DiTConfig, context, latent_shape: Sequence[int], *, cond_latent=None,
                    visible: Sequence[int] = (), pixel_frames: Optional[int] = None,
                    image_tokens=None, temporal_stride: int = 4) -> dict:
    """The ``cond`` pytree for one GOP.

    ``latent_shape`` = (F_lat, h, w, C) of the noisy latent. ``cond_latent`` [F_lat, h, w, C]: the
    normalised VAE latent of the anchor frames (zeros elsewhere); ``visible``: which of the GOP's
    ``pixel_frames`` frames the anchors are. Without them a latent-conditioned model gets zeros.
    """
    cond = {"context": np.asarray(context, np.float32)}
    accepts = dit.conditioning
    if "latent" in accepts:
        cond["y"] = latent_condition(latent_shape, cond_latent, visible=visible, pixel_frames=pixel_frames,
                                     temporal_stride=temporal_stride)
    elif cond_latent is not None or visible:
        raise ConditioningError("this model takes no conditioning latent (its DiT has "
                                f"{dit.in_channels} input channels)")
    if image_tokens is not None:
        if "image" not in accepts:
            raise ConditioningError("this model has no image branch for CLIP tokens")
        cond["image_context"] = image_tokens
    return cond


def _concat(mask: np.ndarray, lat):
    if isinstance(lat, np.ndarray):
        return np.concatenate([mask, lat], axis=-1).astype(np.float32)
    import jax.numpy as jnp

    return jnp.concatenate([jnp.asarray(mask, lat.dtype), lat], axis=-1)
