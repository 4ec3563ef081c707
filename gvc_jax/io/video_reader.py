"""Streamed reading of videos, frame directories, single images and ``.npy`` arrays.

Reading (:class:`VideoReader`, :func:`open_video`, :func:`read_video`) goes through the ffmpeg
binary bundled with ``imageio-ffmpeg`` (mp4, mkv, avi, mov, webm, y4m, gif, ...), through Pillow
for still images and directories of frames (natural sort order), and through a memory map for
``.npy``. A reader knows the exact number of frames it will deliver before the first one (ffmpeg
sources are counted by a decode to ``-f null`` first) and hands frames out a few at a time, so
memory is bounded by what one ``read(n)`` asks for, never by the length of the video.

Frames come out as ``uint8`` ``[F, H, W, 3]`` (RGB). Problems raise ``VideoError`` (a
``ValueError``) with a one-line message.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np

from gvc_jax import pixels
from gvc_jax.io.ffmpeg import FPS_MODE, SWS_FLAGS, ffmpeg_exe, last_error_line, quiet_fork
from gvc_jax.pixels import VideoError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_IMAGE_FPS = 16.0


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


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
           *FPS_MODE, *(["-frames:v", str(limit)] if limit is not None else []),
           "-f", "null", "-nostats", "-progress", "pipe:1", "-"]  # fmt: skip
    with quiet_fork():
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    counts = re.findall(rb"^frame=\s*(\d+)", proc.stdout, flags=re.MULTILINE)
    count = int(counts[-1]) if counts else 0
    if proc.returncode != 0 and count == 0:
        msg = last_error_line(proc.stderr.decode("utf-8", "replace"))
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
        output_params = [*FPS_MODE, "-frames:v", str(total), "-sws_flags", SWS_FLAGS]
        self._gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", output_params=output_params)
        try:
            with quiet_fork():
                meta = next(self._gen)
        except Exception as err:  # ffmpeg could not open/parse it: not a video
            self.close()
            raise VideoError(f"cannot read {path} as a video: {last_error_line(str(err))}") from None
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
                raise VideoError(f"cannot decode {self._path}: {last_error_line(str(err))}") from None

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

