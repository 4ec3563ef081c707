"""Streamed, atomic writing of videos and frames, and the check of an output path.

Writing (:class:`VideoWriter`, :func:`write_video`) picks the format from the path:

- ``.mp4`` / ``.mkv`` / ``.mov`` / ``.avi``: libx264 at the given CRF (``yuv420p`` when H and W are
  even, ``yuv444p`` otherwise, so odd sizes keep their exact size);
- ``.y4m``: raw ``yuv444p`` (uncompressed; RGB <-> YUV conversion costs at most a couple of code
  values, so it is *not* bit-exact);
- ``.npy``: the uint8 array itself (bit-exact; written piece by piece, the header's frame count
  is rewritten in place at commit);
- ``.png`` (one frame only) or a path without a suffix: a PNG image / a directory of PNG frames
  ``frame_00000.png, ...`` (bit-exact).

Every output is written atomically (:mod:`gvc_jax.io.atomic`): to a temporary name in the
destination directory, then renamed onto the final path at commit. An existing directory is never
deleted or replaced: a frame directory is written into an existing directory only when it is
empty, and a file is never written over a directory. ``check_output`` checks a path without
writing anything.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import IO

import numpy as np

from gvc_jax import pixels
from gvc_jax.io.atomic import (
    parent_dir,
    probe_writable,
    publish,
    remove_path,
    remove_stale_temporaries,
    temp_path,
    track,
    untrack,
)
from gvc_jax.io.ffmpeg import SWS_FLAGS, ffmpeg_exe, fps_arg, last_error_line, quiet_fork
from gvc_jax.pixels import VideoError

X264_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
OUTPUT_SUFFIXES = X264_SUFFIXES + (".y4m", ".npy", ".png", "")  # "": a directory of PNG frames


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
    _check_writable(path if kind == "dir" and os.path.isdir(path) else parent_dir(path))


def write_png(path: str, image: np.ndarray) -> None:
    """Save one uint8 ``[H, W, 3]`` frame as a PNG at ``path`` (not atomic: callers write a temporary)."""
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
        os.makedirs(parent_dir(self.path), exist_ok=True)  # (when missing, nothing can be at path)
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

        self._token = track(abort_if_alive)
        if self.kind == "dir" and os.path.isdir(self.path):  # an existing, empty directory: fill it
            self._tmp = tempfile.mkdtemp(prefix=f".frames.pid{os.getpid()}.", suffix=".tmp", dir=self.path)
            return
        self._tmp = temp_path(self.path)
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
        msg = last_error_line(self._log.read().decode("utf-8", "replace"))
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
            write_png(self._tmp, arr[0])
        else:
            for i, frame in enumerate(arr, start=self.num_frames):
                write_png(os.path.join(self._tmp, f"frame_{i:05d}.png"), frame)

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
                publish(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        untrack(getattr(self, "_token", None))
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
            remove_path(self._tmp)
        untrack(getattr(self, "_token", None))
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
