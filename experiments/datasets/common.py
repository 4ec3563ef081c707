"""Shared parts of the local video test-set builders: file discovery, raw YUV 4:2:0, RGB
conversion, chunking, and the tensorflow-datasets builder base / reader that UVG and MCL-JCV share.

TensorFlow is never needed: the builders write ``array_record`` files and are read through
``as_data_source()``, which tensorflow-datasets supports without TensorFlow installed.

Sources
    A test set is a directory of files; a per-dataset ``parse`` function maps a file name to a
    :class:`ClipSource` (clip name, kind, and for raw YUV the size and frame rate that the official
    file names carry, e.g. ``Beauty_1920x1080_120fps_420_8bit_YUV.yuv``) or ``None`` to ignore it.
    :func:`discover_clips` walks the directory, resolves name clashes and validates every raw file
    *before* anything is built.

Raw YUV
    8-bit planar 4:2:0 (``yuv420p``): per frame ``H*W`` luma bytes, then ``H/2*W/2`` Cb and Cr.
    Frames are read with ``np.memmap``, so a clip is never loaded whole.

Colour (:func:`yuv420_to_rgb`)
    UVG and MCL-JCV sources are HD/UHD content in ITU-R BT.709 colour, *limited* ("TV") range:
    Y' in [16, 235], Cb/Cr in [16, 240]. We convert with the BT.709 matrix (Kr = 0.2126,
    Kb = 0.0722)::

        Y = (Y' - 16) / 219,  Pb = (Cb - 128) / 224,  Pr = (Cr - 128) / 224
        R = Y + 1.5748 Pr
        G = Y - 0.187324 Pb - 0.468124 Pr
        B = Y + 1.8556 Pb

    then scale by 255, round and clip to uint8. Chroma is upsampled bilinearly with MPEG-2 /
    H.264 default siting ("left", chroma_sample_loc_type 0): horizontally co-sited with the even
    luma columns, vertically half-way between two luma rows. Out-of-range codes (below 16 or above
    235/240) are kept (clipped only at the end), as ffmpeg does. Matches (<= 1 code value) ffmpeg's
    ``scale=in_color_matrix=bt709:in_range=tv:in_chroma_loc=left:flags=bilinear+accurate_rnd``
    ``+full_chroma_int``; ffmpeg without ``in_chroma_loc`` assumes centre siting (~1.3 codes mean
    difference) and without ``in_color_matrix`` BT.601 (far off).

Video files (``.mp4`` ...)
    Streamed through :class:`gvc_jax.io.video_reader.VideoReader` (ffmpeg, accurate RGB conversion) one chunk
    at a time so memory stays bounded; size and fps come from the container. The YUV -> RGB matrix
    is whatever the reader (ffmpeg's default) applies, not the rule above: measured, it is
    BT.601 even for streams tagged bt709, so prefer the raw ``.yuv`` files for evaluation.

Frames are yielded in chunks ``(first_frame_index, uint8 [n, H, W, 3])``; each chunk becomes one
record. :func:`encode_frames` / :func:`decode_frames` store a chunk as PNG (lossless, default) or
raw RGB bytes.

Records and index (:class:`VideoClipsBuilder`)
    One split, ``"test"``. One record per chunk with features ``clip``, ``source`` (file name),
    ``frame_start``, ``fps``, ``height``, ``width``, ``encoding`` and ``frames`` (one bytes object
    per frame). Shuffling is disabled and keys are ``clip_index * 10**7 + frame_start``, so records
    sit in clip order, chunks in frame order; ``metadata.json`` holds the clip index
    (``{"clips": [{name, source, fps, height, width, num_frames, first_record, num_records}]}``) so
    a reader jumps straight to a clip's records (:func:`iter_clips`).

Configs (:class:`VideoClipsConfig`)
    ``resolution`` (W, H) to resize to at build time (None: native), ``max_frames`` per clip
    (None: all), ``chunk_frames`` (None: automatic, <= 16 MiB raw RGB per record) and
    ``frame_encoding`` (``"png"`` lossless, default; ``"raw"``). Config names follow
    :func:`config_name`: ``native``, ``1280x720``, ``256x144_33f`` ...

User-caused problems raise :class:`DatasetError` (a ``ValueError``) with a one-line message.
"""
from __future__ import annotations

import abc
import dataclasses
import io as _pyio
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from gvc_jax import pixels
from gvc_jax.io.video_reader import open_video

# BT.709 luma coefficients and the derived inverse-matrix entries (limited range scaling below).
KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB
_R_CR = 2.0 * (1.0 - KR)  # 1.5748
_B_CB = 2.0 * (1.0 - KB)  # 1.8556
_G_CB = 2.0 * KB * (1.0 - KB) / KG  # 0.187324
_G_CR = 2.0 * KR * (1.0 - KR) / KG  # 0.468124

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".y4m")
FRAME_ENCODINGS = ("png", "raw")
# Raw RGB bytes per record when the chunk size is automatic (16 MiB -> 2 frames at 1080p,
# 6 at 720p, 32 (the cap) at 256x144).
RECORD_BUDGET_BYTES = 16 << 20
MAX_CHUNK_FRAMES = 32


class DatasetError(ValueError):
    """A local test-set directory or file cannot be used (missing, empty, malformed)."""


@dataclass(frozen=True)
class ClipSource:
    """One clip of a test set: where it is and, for raw YUV, its geometry from the file name.

    ``kind`` is ``"yuv"`` (8-bit 4:2:0 planar; ``width``/``height``/``fps`` required) or
    ``"video"`` (a container file read by ffmpeg; geometry from the file, fields may be None).
    """

    name: str
    path: str
    kind: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)


# ----------------------------------------------------------------------------- discovery


_SIZED_RE = re.compile(r"^(?P<name>.+?)_(?P<w>\d+)x(?P<h>\d+)(?:_.*)?$")


def parse_clip_filename(path: str, yuv_re: "re.Pattern[str]", dataset: str, expected: str) -> "ClipSource | None":
    """A dataset file -> its ``ClipSource``: a raw ``.yuv`` named as ``yuv_re`` says (groups name, w,
    h, fps), or a video file (``NAME[_WxH[_...]].mp4``, sizes from the name when present); a ``.yuv``
    named otherwise is ignored with a warning naming ``expected``; anything else: None."""
    filename = os.path.basename(path)
    m = yuv_re.match(filename)
    if m:
        return ClipSource(m["name"], path, "yuv", int(m["w"]), int(m["h"]), float(m["fps"]))
    stem, suffix = os.path.splitext(filename)
    if suffix.lower() == ".yuv":
        warnings.warn(f"{dataset}: ignoring {filename} (not {expected})", stacklevel=4)
        return None
    if suffix.lower() in VIDEO_SUFFIXES:
        sized = _SIZED_RE.match(stem)
        if sized:
            return ClipSource(sized["name"], path, "video", int(sized["w"]), int(sized["h"]))
        return ClipSource(stem, path, "video")
    return None


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_files(root: str) -> list[str]:
    """All regular files under ``root`` (recursive, hidden entries skipped), natural order."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(out, key=lambda p: _natural_key(os.path.relpath(p, root)))


def discover_clips(
    root: str, parse: Callable[[str], ClipSource | None], dataset: str, expected: str
) -> list[ClipSource]:
    """Find, name and validate the clips of a test set under ``root``.

    Args:
        root: the manual directory (searched recursively).
        parse: maps a file path to a ClipSource, or None for files that are not clips.
        dataset: dataset name for messages.
        expected: a short description of accepted file names, for the "no files" message.

    Returns:
        ClipSources sorted by clip name. When a raw file and a container file give the same clip
        name the raw file wins; when raw files of different sizes share a name (e.g. the UVG HD and
        4K variants) the 1920x1080 one (else the smallest) keeps the plain name and the others
        become ``NAME_WxH``.

    Raises:
        DatasetError: missing directory, no matching files, duplicate clips, malformed YUV files.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{dataset}: manual directory {root} does not exist (put the official files there)")
    found = [src for src in map(parse, list_files(root)) if src is not None]
    if not found:
        raise DatasetError(f"{dataset}: no matching files in {root} (expected {expected})")
    by_name: dict[str, list[ClipSource]] = {}
    for src in found:
        by_name.setdefault(src.name, []).append(src)
    clips: list[ClipSource] = []
    for name, group in by_name.items():
        raw = [s for s in group if s.kind == "yuv"]
        if raw and len(raw) < len(group):
            skipped = ", ".join(s.filename for s in group if s.kind != "yuv")
            warnings.warn(f"{dataset}: clip {name}: using the raw YUV file, ignoring {skipped}", stacklevel=2)
        group = raw or group
        sizes = [(s.width, s.height) for s in group]
        if len(set(sizes)) < len(sizes):
            files = ", ".join(s.path for s in group)
            raise DatasetError(f"{dataset}: clip {name} appears more than once with the same size: {files}")
        keep = min(group, key=lambda s: ((s.width, s.height) != (1920, 1080), (s.width or 0) * (s.height or 0)))
        for src in group:
            new_name = name if src is keep else f"{name}_{src.width}x{src.height}"
            clips.append(src if new_name == src.name else dataclasses.replace(src, name=new_name))
    for src in clips:
        if src.kind == "yuv":
            assert src.width is not None and src.height is not None  # parse_filename gives a "yuv" clip its size
            yuv420_num_frames(src.path, src.width, src.height)  # validates
        elif os.path.getsize(src.path) == 0:
            raise DatasetError(f"{dataset}: {src.path} is an empty file")
    return sorted(clips, key=lambda s: _natural_key(s.name))


# ----------------------------------------------------------------------------- raw YUV 4:2:0


def yuv420_frame_bytes(width: int, height: int) -> int:
    """Bytes of one 8-bit 4:2:0 frame: ``W*H`` luma + two ``W/2 * H/2`` chroma planes."""
    return width * height + 2 * (width // 2) * (height // 2)


def yuv420_num_frames(path: str, width: int, height: int) -> int:
    """Number of frames in a raw 8-bit 4:2:0 file; validates size and geometry.

    Raises:
        DatasetError: odd or non-positive size, empty file, size not a multiple of the frame size.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise DatasetError(f"{path}: 4:2:0 needs a positive even width and height, got {width}x{height}")
    size = os.path.getsize(path)
    frame = yuv420_frame_bytes(width, height)
    if size == 0:
        raise DatasetError(f"{path} is an empty file")
    if size % frame:
        raise DatasetError(
            f"{path}: file size {size} is not a multiple of the {width}x{height} 4:2:0 8-bit frame size {frame}"
            " (wrong size in the name, or not 8-bit 4:2:0?)"
        )
    return size // frame


def read_yuv420(path: str, width: int, height: int, start: int = 0, count: int | None = None):
    """Read frames ``[start, start + count)`` of a raw 8-bit 4:2:0 file.

    Returns:
        ``(y, u, v)``: uint8 ``[F, H, W]``, ``[F, H/2, W/2]``, ``[F, H/2, W/2]`` (fresh arrays).
    """
    total = yuv420_num_frames(path, width, height)
    stop = total if count is None else min(total, start + count)
    n = max(0, stop - start)
    fb = yuv420_frame_bytes(width, height)
    if n == 0:
        empty = np.zeros((0, height, width), np.uint8)
        return empty, empty[:, ::2, ::2].copy(), empty[:, ::2, ::2].copy()
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start * fb, shape=(n, fb))
    hw, cw = width * height, (width // 2) * (height // 2)
    y = np.array(data[:, :hw]).reshape(n, height, width)
    u = np.array(data[:, hw : hw + cw]).reshape(n, height // 2, width // 2)
    v = np.array(data[:, hw + cw :]).reshape(n, height // 2, width // 2)
    del data
    return y, u, v


def upsample_chroma_420(c: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of a chroma plane, MPEG-2/H.264 default ("left") siting.

    Args:
        c: ``[F, h, w]`` chroma samples (any real dtype).

    Returns:
        float32 ``[F, 2h, 2w]``. Vertically the samples sit half-way between luma rows (weights
        3/4, 1/4); horizontally they are co-sited with even luma columns (odd columns average two
        neighbours). Borders repeat the edge sample.
    """
    c = np.asarray(c, np.float32)
    f, h, w = c.shape
    up = np.concatenate([c[:, :1], c[:, :-1]], axis=1)
    down = np.concatenate([c[:, 1:], c[:, -1:]], axis=1)
    vert = np.empty((f, 2 * h, w), np.float32)
    vert[:, 0::2] = 0.75 * c + 0.25 * up
    vert[:, 1::2] = 0.75 * c + 0.25 * down
    right = np.concatenate([vert[:, :, 1:], vert[:, :, -1:]], axis=2)
    out = np.empty((f, 2 * h, 2 * w), np.float32)
    out[:, :, 0::2] = vert
    out[:, :, 1::2] = 0.5 * (vert + right)
    return out


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.709 limited-range Y'CbCr 4:2:0 -> RGB (see the module docstring).

    Args:
        y: uint8 ``[F, H, W]``; u, v: uint8 ``[F, H/2, W/2]`` (Cb, Cr).

    Returns:
        uint8 ``[F, H, W, 3]``.
    """
    y = np.asarray(y)
    if y.ndim == 2:
        y, u, v = y[None], np.asarray(u)[None], np.asarray(v)[None]
    if u.shape != v.shape or (2 * u.shape[1], 2 * u.shape[2]) != y.shape[1:] or u.shape[0] != y.shape[0]:
        raise DatasetError(f"bad 4:2:0 plane shapes: Y {y.shape}, Cb {u.shape}, Cr {v.shape}")
    f32 = np.float32
    luma = y.astype(f32)
    luma -= f32(16.0)
    luma *= f32(255.0 / 219.0)
    pb = upsample_chroma_420(u)
    pb -= f32(128.0)
    pb *= f32(255.0 / 224.0)
    pr = upsample_chroma_420(v)
    pr -= f32(128.0)
    pr *= f32(255.0 / 224.0)
    rgb = np.empty(y.shape + (3,), np.uint8)
    tmp = np.empty_like(luma)
    for i, (wb, wr) in enumerate(((0.0, _R_CR), (-_G_CB, -_G_CR), (_B_CB, 0.0))):
        np.copyto(tmp, luma)
        for weight, plane in ((wb, pb), (wr, pr)):
            if weight:
                tmp += f32(weight) * plane
        np.rint(tmp, out=tmp)
        np.clip(tmp, 0, 255, out=tmp)
        rgb[..., i] = tmp
    return rgb


# ----------------------------------------------------------------------------- clip frames


def auto_chunk_frames(height: int, width: int) -> int:
    """Frames per record so that a record holds at most ~16 MiB of raw RGB (1..32 frames)."""
    return int(max(1, min(MAX_CHUNK_FRAMES, RECORD_BUDGET_BYTES // (height * width * 3))))


def iter_clip_chunks(
    src: ClipSource,
    *,
    max_frames: int | None = None,
    resize: tuple[int, int] | None = None,
    chunk_frames: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_frame_index, frames uint8 [n, H, W, 3])`` chunks of a clip, in order.

    Args:
        src: the clip.
        max_frames: stop after this many frames (None: all).
        resize: ``(W, H)`` to resize every frame to (``gvc_jax.pixels.resize_frames``, as the reader).
        chunk_frames: frames per chunk (None: :func:`auto_chunk_frames` of the output size).
    """
    if src.kind == "yuv":
        assert src.width is not None and src.height is not None  # a "yuv" clip has its size (ClipSource)
        total = yuv420_num_frames(src.path, src.width, src.height)
        stop = total if max_frames is None else min(total, max_frames)
        out_h, out_w = (src.height, src.width) if resize is None else (resize[1], resize[0])
        step = chunk_frames or auto_chunk_frames(out_h, out_w)
        for s in range(0, stop, step):
            frames = yuv420_to_rgb(*read_yuv420(src.path, src.width, src.height, s, min(step, stop - s)))
            if resize is not None:
                frames = pixels.resize_frames(frames, resize)
            yield s, frames
        return
    try:
        with open_video(src.path, max_frames=max_frames, resize=resize) as reader:
            step = chunk_frames or auto_chunk_frames(reader.height, reader.width)
            while True:
                first = reader.frames_read
                frames = reader.read(step)
                if not len(frames):
                    return
                yield first, frames
    except pixels.VideoError as err:
        raise DatasetError(str(err)) from None


def video_fps(src: ClipSource) -> float:
    """Frame rate of a clip: from the file name for raw YUV, from the container otherwise."""
    if src.fps is not None:
        return float(src.fps)
    try:
        with open_video(src.path, max_frames=1) as reader:
            return reader.fps
    except pixels.VideoError as err:
        raise DatasetError(str(err)) from None


# ----------------------------------------------------------------------------- record payload


def encode_frames(frames: np.ndarray, encoding: str = "png", png_level: int = 1) -> list[bytes]:
    """uint8 ``[n, H, W, 3]`` -> one bytes object per frame (PNG, or raw row-major RGB)."""
    if encoding == "raw":
        return [np.ascontiguousarray(f).tobytes() for f in frames]
    if encoding != "png":
        raise DatasetError(f"frame encoding must be one of {FRAME_ENCODINGS}, got {encoding!r}")
    from PIL import Image

    out = []
    for f in frames:
        buf = _pyio.BytesIO()
        Image.fromarray(np.ascontiguousarray(f)).save(buf, format="PNG", compress_level=png_level)
        out.append(buf.getvalue())
    return out


def decode_frames(blobs, encoding: str, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_frames`: a sequence of bytes -> uint8 ``[n, H, W, 3]``."""
    out = np.empty((len(blobs), height, width, 3), np.uint8)
    for i, blob in enumerate(blobs):
        if encoding == "raw":
            out[i] = np.frombuffer(blob, np.uint8).reshape(height, width, 3)
        elif encoding == "png":
            from PIL import Image

            with Image.open(_pyio.BytesIO(blob)) as im:
                out[i] = np.asarray(im.convert("RGB"))
        else:
            raise DatasetError(f"unknown frame encoding {encoding!r} in a record")
    return out


# ----------------------------------------------------------------------------- tfds builder

SPLIT = "test"
KEY_STRIDE = 10**7  # record key = clip_index * KEY_STRIDE + frame_start (keeps records in order)
_CONFIG_NAME_RE = re.compile(r"^(?:native|(?P<w>\d+)x(?P<h>\d+))(?:_(?P<f>\d+)f)?$")


def config_name(resolution: tuple[int, int] | None = None, max_frames: int | None = None) -> str:
    """Canonical config name: ``native`` or ``WxH``, plus ``_Nf`` when frames are capped."""
    base = "native" if resolution is None else f"{int(resolution[0])}x{int(resolution[1])}"
    return base if max_frames is None else f"{base}_{int(max_frames)}f"


def parse_config_name(name: str) -> tuple[tuple[int, int] | None, int | None] | None:
    """Inverse of :func:`config_name`: ``(resolution, max_frames)``, or None if not canonical."""
    m = _CONFIG_NAME_RE.match(name)
    if m is None:
        return None
    res = None if m["w"] is None else (int(m["w"]), int(m["h"]))
    return res, (None if m["f"] is None else int(m["f"]))


def check_resize(resize) -> tuple[int, int] | None:
    """Validate a ``(W, H)`` resize argument; returns it as a tuple of ints (or None)."""
    if resize is None:
        return None
    try:
        return pixels.check_size(resize)
    except pixels.VideoError as err:
        raise DatasetError(str(err)) from None


def check_max_frames(max_frames) -> int | None:
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise DatasetError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    return None if max_frames is None else int(max_frames)


@dataclasses.dataclass(eq=False)
class VideoClipsConfig(tfds.core.BuilderConfig):
    """Build options of a video test set (see the module docstring)."""

    resolution: tuple[int, int] | None = None
    max_frames: int | None = None
    chunk_frames: int | None = None
    frame_encoding: str = "png"


def make_config(
    resolution: tuple[int, int] | None = None,
    max_frames: int | None = None,
    *,
    chunk_frames: int | None = None,
    frame_encoding: str = "png",
    name: str | None = None,
) -> VideoClipsConfig:
    """A validated :class:`VideoClipsConfig` named :func:`config_name` unless ``name`` is given."""
    resolution = check_resize(resolution)
    max_frames = check_max_frames(max_frames)
    if chunk_frames is not None and (int(chunk_frames) != chunk_frames or chunk_frames < 1):
        raise DatasetError(f"chunk_frames must be a positive integer or None, got {chunk_frames!r}")
    if frame_encoding not in FRAME_ENCODINGS:
        raise DatasetError(f"frame_encoding must be one of {FRAME_ENCODINGS}, got {frame_encoding!r}")
    what = "native size" if resolution is None else f"resized to {resolution[0]}x{resolution[1]}"
    frames = "all frames" if max_frames is None else f"first {max_frames} frames"
    return VideoClipsConfig(
        name=name or config_name(resolution, max_frames),
        description=f"{what}, {frames} of every clip",
        resolution=resolution,
        max_frames=max_frames,
        chunk_frames=chunk_frames,
        frame_encoding=frame_encoding,
    )


DEFAULT_CONFIGS = (
    make_config(None, None),
    make_config((1280, 720), None),
    make_config((832, 480), None),
    make_config((256, 144), 33),
)


# tfds has no type information: mypy checks the class keyword against object.__init_subclass__
class VideoClipsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """tfds builder of a local video test set: files from the manual dir -> array_record records.

    Subclasses set ``name``, ``DESCRIPTION``, ``HOMEPAGE``, ``CITATION``, ``EXPECTED_FILES`` and
    implement :meth:`parse_filename`. Nothing is ever downloaded.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: local files, array_record, chunked PNG frames."}
    BUILDER_CONFIGS = list(DEFAULT_CONFIGS)
    DEFAULT_CONFIG_NAME = "native"
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""
    EXPECTED_FILES = ""

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    @staticmethod
    @abc.abstractmethod
    def parse_filename(path: str) -> ClipSource | None:
        """Map a file path to a :class:`ClipSource`, or None when the file is not a clip."""

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        i32 = np.int32
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            features=tfds.features.FeaturesDict(
                {
                    "clip": text,
                    "source": tfds.features.Text(),
                    "frame_start": tfds.features.Scalar(dtype=i32),
                    "fps": tfds.features.Scalar(dtype=np.float64),
                    "height": tfds.features.Scalar(dtype=i32),
                    "width": tfds.features.Scalar(dtype=i32),
                    "encoding": tfds.features.Text(),
                    "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:
            raise DatasetError(
                f"{self.name}: the manual directory does not exist or is empty"
                f" (pass manual_dir=, expected {self.EXPECTED_FILES})"
            ) from None
        sources = discover_clips(manual, self.parse_filename, self.name, self.EXPECTED_FILES)
        return {SPLIT: self._generate_examples(sources)}

    def _generate_examples(self, sources: list[ClipSource]):
        cfg = self.builder_config
        index: list[dict] = []
        record = 0
        for clip_index, src in enumerate(sources):
            fps = video_fps(src)
            entry: dict[str, Any] = {"name": src.name, "source": src.filename, "fps": fps, "first_record": record}
            num_frames = 0
            for start, frames in iter_clip_chunks(
                src, max_frames=cfg.max_frames, resize=cfg.resolution, chunk_frames=cfg.chunk_frames
            ):
                height, width = int(frames.shape[1]), int(frames.shape[2])
                yield clip_index * KEY_STRIDE + start, {
                    "clip": src.name,
                    "source": src.filename,
                    "frame_start": start,
                    "fps": fps,
                    "height": height,
                    "width": width,
                    "encoding": cfg.frame_encoding,
                    "frames": encode_frames(frames, cfg.frame_encoding),
                }
                num_frames += frames.shape[0]
                record += 1
                entry.update(height=height, width=width)
            entry.update(num_frames=num_frames, num_records=record - entry["first_record"])
            index.append(entry)
            self.info.metadata["clips"] = list(index)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def clip_index(builder: tfds.core.DatasetBuilder) -> list[dict]:
    """The clip index stored with a prepared builder (see the module docstring)."""
    clips = (builder.info.metadata or {}).get("clips")
    if not clips:
        where = f"{builder.name}/{builder.builder_config.name}"
        raise DatasetError(f"{where}: no clip index in {builder.data_dir}; delete it and rebuild")
    return list(clips)


def iter_clips(
    builder: tfds.core.DatasetBuilder,
    *,
    clips: list[str] | None = None,
    max_frames: int | None = None,
) -> Iterator[tuple[str, np.ndarray, float]]:
    """Yield ``(clip_name, frames uint8 [F, H, W, 3], fps)`` from a prepared builder.

    Reads through ``builder.as_data_source()`` (no TensorFlow). Clips come in dataset order, or in
    the order of ``clips`` when given; only the records needed for ``max_frames`` are read.

    Raises:
        DatasetError: an unknown clip name, or records that do not match the index.
    """
    max_frames = check_max_frames(max_frames)
    index = clip_index(builder)
    by_name = {e["name"]: e for e in index}
    if clips is not None:
        if isinstance(clips, str):
            clips = [clips]
        unknown = [c for c in clips if c not in by_name]
        if unknown:
            raise DatasetError(f"{builder.name}: unknown clip(s) {unknown}; available: {sorted(by_name)}")
        index = [by_name[c] for c in clips]
    source = builder.as_data_source(split=SPLIT)
    for entry in index:
        want = entry["num_frames"] if max_frames is None else min(max_frames, entry["num_frames"])
        parts, have = [], 0
        for r in range(entry["first_record"], entry["first_record"] + entry["num_records"]):
            if have >= want:
                break
            rec = source[r]
            if _text(rec["clip"]) != entry["name"] or int(rec["frame_start"]) != have:
                raise DatasetError(
                    f"{builder.name}: record {r} does not belong to clip {entry['name']} at frame {have}; rebuild"
                )
            blobs = list(rec["frames"])[: want - have]
            parts.append(decode_frames(blobs, _text(rec["encoding"]), int(rec["height"]), int(rec["width"])))
            have += parts[-1].shape[0]
        frames = np.concatenate(parts) if len(parts) > 1 else parts[0]
        yield entry["name"], frames, float(entry["fps"])
