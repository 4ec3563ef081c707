"""Anchor frames: a pluggable still-image codec for the frames that condition I2V / FLF2V GOPs.

Payload (a GOP record's side payload with tag ``variants.ANCHOR_TAG``)::

    u8 codec id (index into ANCHOR_CODEC_NAMES)   u8 quality (0-100)   codec bytes

Quality: one knob for every backend, an integer in ``QUALITY_RANGE`` = 0..100, higher = better
and more bytes, mapped linearly (integer rounding) and monotonically to the backend's parameter:

    x265    constant QP = round(51 * (100 - q) / 100)        q=0 -> QP 51, q=100 -> QP 0
    vvenc   constant QP = round(63 * (100 - q) / 100)        q=0 -> QP 63, q=100 -> QP 0
    svtav1  CRF         = 63 - round(62 * q / 100)           q=0 -> CRF 63, q=100 -> CRF 1
    webp    Pillow quality = q      avif    Pillow quality = q

The ffmpeg backends (imageio-ffmpeg's static ffmpeg: HEVC intra with libx265, VVC intra with
libvvenc, AV1 intra with libsvtav1; decoded by ffmpeg's hevc / vvc decoders and libdav1d) exchange
raw planar YUV 4:2:0 with ffmpeg through pipes. The RGB <-> YUV conversion is done here in exact
integer arithmetic (full-range BT.601, 2x2 box chroma downsampling, fixed 9-3-3-1 bilinear chroma
upsampling), and HEVC / VVC / AV1 decoding is bit-exact by specification, so a decoded anchor is
a pure function of the payload bytes. Pillow's WebP / AVIF convert colours inside libwebp /
libavif (deterministic, but the library's own arithmetic).

Decoding is bounded by the expected picture size, whatever the payload declares: ffmpeg decoders
get ``-max_pixels`` (HEVC, VVC and dav1d refuse a larger picture from its headers, before any
frame buffer exists), ffmpeg's output is read incrementally and the process killed past the
bytes one expected frame can take, and WebP / AVIF sizes are read from the headers before any
pixel is decoded. A payload of another size is a one-line ``BitstreamError``.

Bytes that carry nothing are stripped: x265's version SEI (``info=0``), the leading Annex-B start
code and the zero_byte of 4-byte start codes (HEVC / VVC), AV1's temporal-delimiter OBU; all are
restored (or not needed) on decode.
"""
from __future__ import annotations

import functools
import io
import os
import re
import struct
import subprocess
import threading
import warnings
from typing import Dict, Tuple, cast

import numpy as np

from gvc_jax.codec.format.bits import BitstreamError

ANCHOR_CODEC_NAMES: Tuple[str, ...] = ("x265", "vvenc", "svtav1", "webp", "avif")  # stream code table: never reorder
QUALITY_RANGE = (0, 100)
DEFAULT_ANCHOR_CODEC = "x265"  # chosen by experiments/anchor_codecs.py, see docs/anchor_codecs.md
DEFAULT_ANCHOR_QUALITY = 30
FFMPEG_TIMEOUT_S = 60
_FFMPEG_QUIET = ["-nostdin", "-hide_banner", "-loglevel", "error"]


class AnchorError(ValueError):
    """Bad anchor options: unknown codec, quality out of range, codec unavailable, bad image."""


# ----------------------------------------------------------------------------------- colour

# Full-range BT.601 in 16-bit fixed point (rows: Y, Cb, Cr; chroma rows sum to zero).
_FWD = np.array([[19595, 38470, 7471], [-11059, -21709, 32768], [32768, -27439, -5329]], np.int64)
# Inverse: R = Y + 1.402 Cr, G = Y - 0.344136 Cb - 0.714136 Cr, B = Y + 1.772 Cb  (x 2^16).
_INV = np.array([[0, 91881], [-22554, -46802], [116130, 0]], np.int64)


def rgb_to_yuv420(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] (H, W even) -> uint8 planar yuv420p, flat ``[H*W*3/2]``.

    Chroma is the rounded mean of each 2x2 block (centre-sited, like JPEG / MPEG-1).
    """
    h, w = rgb.shape[:2]
    yuv = np.einsum("hwc,kc->khw", rgb.astype(np.int64), _FWD)
    y = np.clip((yuv[0] + (1 << 15)) >> 16, 0, 255)
    box = yuv[1:].reshape(2, h // 2, 2, w // 2, 2).sum(axis=(2, 4))  # still scaled by 2^16, 4 samples
    uv = np.clip(((box + (1 << 17)) >> 18) + 128, 0, 255)
    return np.concatenate([y.ravel(), uv.ravel()]).astype(np.uint8)


def _upsample2(plane: np.ndarray) -> np.ndarray:
    """Centre-sited 2x chroma upsampling with weights 9-3-3-1 / 16 (edges clamped); int64 in and out."""
    def taps(x: np.ndarray, axis: int) -> np.ndarray:  # each output = 3*near + far, so x4
        prev = np.concatenate([np.take(x, [0], axis), np.take(x, range(x.shape[axis] - 1), axis)], axis)
        nxt = np.concatenate([np.take(x, range(1, x.shape[axis]), axis), np.take(x, [-1], axis)], axis)
        out = np.stack([3 * x + prev, 3 * x + nxt], axis=axis + 1)
        shape = list(x.shape)
        shape[axis] *= 2
        return out.reshape(shape)

    return (taps(taps(plane, 0), 1) + 8) >> 4


def yuv420_to_rgb(planes: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (or 0..255 int) planar yuv420p, flat -> uint8 [H, W, 3], exact integer arithmetic."""
    n, q = height * width, height * width // 4
    planes = np.asarray(planes).astype(np.int64)
    y = planes[:n].reshape(height, width)
    cb = _upsample2(planes[n:n + q].reshape(height // 2, width // 2)) - 128
    cr = _upsample2(planes[n + q:n + 2 * q].reshape(height // 2, width // 2)) - 128
    rgb = np.left_shift(y, 16)[..., None] + cb[..., None] * _INV[:, 0] + cr[..., None] * _INV[:, 1]
    return np.clip((rgb + (1 << 15)) >> 16, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- backends


class AnchorCodec:
    """One still-image backend: ``encode`` uint8 RGB -> bytes, ``decode`` bytes -> uint8 RGB."""

    name = ""

    def available(self) -> bool:
        """Whether this machine can encode and decode with the backend."""
        return False

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        """uint8 [H, W, 3] RGB (H, W multiples of 16), quality 0..100 -> codec bytes."""
        raise NotImplementedError

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        """Codec bytes -> uint8 [height, width, 3]; any exception means a bad payload."""
        raise NotImplementedError


def _ffmpeg() -> str:
    """Path of imageio-ffmpeg's bundled static ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=None)
def _ffmpeg_components(kind: str) -> frozenset:
    """Names of the bundled ffmpeg's ``kind`` ("encoders" / "decoders"); empty if it cannot run."""
    try:
        out = subprocess.run([_ffmpeg(), "-hide_banner", f"-{kind}"], capture_output=True, timeout=30).stdout
    except (OSError, RuntimeError, ImportError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(line.split()[1] for line in out.decode(errors="replace").splitlines()
                     if len(line.split()) > 1 and len(line.split()[0]) == 6)


_STDERR_KEEP = 1 << 16  # bytes of ffmpeg's stderr kept for the error message
_Y4M_HEADROOM = 4096  # the y4m stream and frame headers of one decoded picture
_SIZE_REFUSED = re.compile(r"(?:Picture|Frame) size (\d+)x(\d+) exceeds")


def _max_pixels(height: int, width: int) -> int:
    """ffmpeg's ``-max_pixels`` for an expected HxW picture: its frame buffers are checked with the
    width aligned up to the SIMD stride (at most 64), so allow that much slack, nothing more."""
    return (width + 64) * (height + 64)


def _ffmpeg_failure(stderr: bytes, returncode: int) -> str:
    """One line for a failed ffmpeg run: a size refusal if there is one, else its last stderr line."""
    text = stderr.decode(errors="replace")
    refused = _SIZE_REFUSED.search(text)
    if refused:
        return f"the payload declares a {refused.group(1)}x{refused.group(2)} picture"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f"ffmpeg failed: {lines[-1] if lines else f'exit status {returncode}'}"


def _run_ffmpeg(args, data: bytes, max_out: int, inspect=None) -> bytes:
    """Run ffmpeg with ``data`` on stdin; its stdout, or RuntimeError (failure, more than ``max_out``
    bytes of output, or more than FFMPEG_TIMEOUT_S seconds: ffmpeg is killed as soon as either
    limit is passed, so this never holds more than ``max_out`` + one read of output).
    ``inspect(output so far)``, called after each read, may raise to stop ffmpeg there."""
    env = dict(os.environ, SVT_LOG="1")  # SVT-AV1 logs banners to stderr unless told otherwise
    proc = subprocess.Popen([_ffmpeg(), *_FFMPEG_QUIET, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stderr = bytearray()
    expired = threading.Event()

    def expire():
        expired.set()
        proc.kill()

    helpers = [threading.Thread(target=_feed, args=(proc, data), daemon=True),
               threading.Thread(target=_drain, args=(proc, stderr), daemon=True)]
    timer = threading.Timer(FFMPEG_TIMEOUT_S, expire)
    timer.daemon = True
    try:
        for t in helpers:
            t.start()
        timer.start()
        out = _read_capped(proc, max_out, inspect)
    except BaseException:  # e.g. KeyboardInterrupt: do not leave ffmpeg running
        proc.kill()
        raise
    finally:
        proc.wait()  # bounded: the timer kills ffmpeg at the deadline
        timer.cancel()
        for t in helpers:
            t.join(timeout=5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
    if expired.is_set():
        raise RuntimeError(f"ffmpeg took more than {FFMPEG_TIMEOUT_S} s and was killed")
    if len(out) > max_out:
        raise RuntimeError(f"ffmpeg's output passed the {max_out} bytes expected and it was stopped")
    if proc.returncode != 0:
        raise RuntimeError(_ffmpeg_failure(bytes(stderr), proc.returncode))
    return bytes(out)


def _feed(proc, data: bytes) -> None:
    """ffmpeg's stdin (a thread): ``data``, then closed."""
    try:
        proc.stdin.write(data)
    except OSError:  # ffmpeg stopped reading (it failed, or was killed): its exit says why
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _drain(proc, stderr: bytearray) -> None:
    """ffmpeg's stderr (a thread): its last ``_STDERR_KEEP`` bytes kept for the error message."""
    for chunk in iter(lambda: proc.stderr.read1(1 << 16), b""):
        stderr.extend(chunk)
        del stderr[:-_STDERR_KEEP]


def _read_capped(proc, max_out: int, inspect) -> bytearray:
    """ffmpeg's stdout up to ``max_out`` + 1 bytes (then it is killed), ``inspect``ed after each read."""
    out = bytearray()
    stdout = cast(io.BufferedReader, proc.stdout)  # stdout=PIPE, buffered: a BufferedReader
    while len(out) <= max_out:
        chunk = stdout.read1(min(1 << 20, max_out + 1 - len(out)))
        if not chunk:
            break
        out += chunk
        if inspect is not None:
            inspect(out)
    if len(out) > max_out:
        proc.kill()
    return out


def _y4m_header(raw: bytes, height: int, width: int) -> Tuple[int, int] | None:
    """Check a yuv4mpegpipe stream's header line against HxW 4:2:0 (RuntimeError if it differs):
    (bytes per sample, bit shift to 8 bits), or None while the line is incomplete."""
    head, sep, _ = bytes(raw[:_Y4M_HEADROOM]).partition(b"\n")
    if not sep:
        if len(raw) >= _Y4M_HEADROOM:
            raise RuntimeError("the decoder produced no frame")
        return None
    tags = head.split()
    if not tags or tags[0] != b"YUV4MPEG2":
        raise RuntimeError("the decoder produced no frame")
    fields = {t[:1]: t[1:] for t in tags[1:]}
    try:
        size = (int(fields.get(b"W", b"0")), int(fields.get(b"H", b"0")))
    except ValueError:
        raise RuntimeError("the decoder produced no frame") from None
    if size != (width, height):
        raise RuntimeError(f"decoded a {size[0]}x{size[1]} picture, expected {width}x{height}")
    colour = fields.get(b"C", b"420jpeg")
    if not colour.startswith(b"420"):
        raise RuntimeError(f"decoded chroma format {colour.decode(errors='replace')}, expected 4:2:0")
    if not colour.startswith(b"420p"):
        return 1, 0
    try:  # 420p9 / 420p10 / 420p12 ...: 16-bit little-endian samples
        depth = int(colour[4:])
    except ValueError:
        raise RuntimeError(f"decoded chroma format {colour.decode(errors='replace')}, expected 4:2:0") from None
    if not 8 < depth <= 16:
        raise RuntimeError(f"decoded bit depth {depth}, expected 8 to 16")
    return 2, depth - 8


def _parse_y4m(raw: bytes, height: int, width: int) -> np.ndarray:
    """The first frame of a yuv4mpegpipe stream as flat 8-bit yuv420p; RuntimeError if not HxW 4:2:0."""
    layout = _y4m_header(raw, height, width)
    if layout is None:
        raise RuntimeError("the decoder produced no frame")
    width_bytes, shift = layout
    count = height * width * 3 // 2
    frame_head, sep, body = raw.partition(b"\n")[2].partition(b"\n")
    if not sep or not frame_head.startswith(b"FRAME") or len(body) < count * width_bytes:
        raise RuntimeError("the decoded frame is incomplete")
    if width_bytes == 1:
        return np.frombuffer(body, np.uint8, count)
    wide = np.frombuffer(body, "<u2", count).astype(np.int64)
    return np.clip((wide + ((1 << shift) >> 1)) >> shift, 0, 255)


class FfmpegIntra(AnchorCodec):
    """One intra frame through the bundled ffmpeg: raw YUV 4:2:0 in, a bare elementary stream out.

    ``depth`` is the bit depth fed to the encoder (vvenc only takes 10-bit: samples are x4).
    """

    def __init__(self, name: str, encoder: str, decoders: Tuple[str, ...], demuxer: str,
                 depth: int, options) -> None:
        self.name, self.encoder, self.decoders, self.demuxer = name, encoder, decoders, demuxer
        self.depth, self.options = depth, options

    def native(self, quality: int) -> int:
        """The backend's own parameter for ``quality`` (see the module docstring)."""
        raise NotImplementedError

    def decoder(self) -> str | None:
        """The first of ``decoders`` this ffmpeg has, or None."""
        have = _ffmpeg_components("decoders")
        return next((d for d in self.decoders if d in have), None)

    def available(self) -> bool:
        return self.encoder in _ffmpeg_components("encoders") and self.decoder() is not None

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        h, w = image.shape[:2]
        yuv = rgb_to_yuv420(image)
        pix = "yuv420p" if self.depth == 8 else f"yuv420p{self.depth}le"
        raw = yuv.tobytes() if self.depth == 8 else (yuv.astype("<u2") << (self.depth - 8)).tobytes()
        args = ["-f", "rawvideo", "-pix_fmt", pix, "-s", f"{w}x{h}", "-i", "-", "-frames:v", "1",
                "-c:v", self.encoder, *self.options(self.native(quality)), "-f", self.demuxer, "-"]
        return self.compact(_run_ffmpeg(args, raw, max_out=2 * len(raw) + (1 << 20)))

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        if not data:
            raise RuntimeError("empty stream")
        # -max_pixels: the decoder refuses a larger picture from its headers, before allocating it;
        # the output cap: one frame of at most 16-bit samples, whatever ffmpeg does
        args = ["-err_detect", "explode", "-f", self.demuxer, "-c:v", self.decoder(),
                "-max_pixels", str(_max_pixels(height, width)), "-i", "-",
                "-frames:v", "1", "-strict", "-1", "-f", "yuv4mpegpipe", "-"]
        try:
            raw = _run_ffmpeg(args, self.expand(data), max_out=_Y4M_HEADROOM + 3 * height * width,
                              inspect=lambda out: _y4m_header(out, height, width))
        except RuntimeError as err:
            if str(err).startswith("the payload declares"):
                raise RuntimeError(f"{err}, expected {width}x{height}") from None
            raise
        return yuv420_to_rgb(_parse_y4m(raw, height, width), height, width)

    def compact(self, stream: bytes) -> bytes:
        """Drop what decoding does not need (subclasses); the inverse is :meth:`expand`."""
        return stream

    def expand(self, data: bytes) -> bytes:
        """Restore what :meth:`compact` dropped."""
        return data


class AnnexB(FfmpegIntra):
    """HEVC / VVC raw streams: drop the leading start code and every 4-byte start code's zero_byte."""

    def native(self, quality: int) -> int:
        return (self.qmax * (100 - quality) + 50) // 100

    def __init__(self, *args, qmax: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.qmax = qmax

    def compact(self, stream: bytes) -> bytes:
        stream = stream.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01")  # emulation prevention keeps this safe
        if not stream.startswith(b"\x00\x00\x01"):
            raise RuntimeError("the encoder did not produce an Annex-B stream")
        return stream[3:]

    def expand(self, data: bytes) -> bytes:
        return b"\x00\x00\x01" + data


class Av1Obu(FfmpegIntra):
    """AV1 low-overhead OBU stream: drop the leading temporal-delimiter OBU (restored on decode)."""

    _TD = b"\x12\x00"

    def native(self, quality: int) -> int:
        return 63 - (62 * quality + 50) // 100

    def compact(self, stream: bytes) -> bytes:
        return stream[len(self._TD):] if stream.startswith(self._TD) else stream

    def expand(self, data: bytes) -> bytes:
        return self._TD + data


class PillowStill(AnchorCodec):
    """WebP / AVIF through Pillow, no metadata (no EXIF / ICC / XMP)."""

    def __init__(self, name: str, fmt: str, options: dict) -> None:
        self.name, self.fmt, self.options = name, fmt, options

    def available(self) -> bool:
        import PIL.features

        try:
            return bool(PIL.features.check(self.name))
        except ValueError:  # a Pillow that does not even know the feature's name
            return False

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format=self.fmt, quality=int(quality), **self.options)
        return buf.getvalue()

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        from PIL import Image

        if self.fmt == "WEBP":  # libwebp allocates the canvas when Pillow opens the file: check first
            size = webp_size(data)
            if size is None:
                raise RuntimeError("not a WebP image with a VP8 / VP8L / VP8X header")
            if size != (width, height):
                raise RuntimeError(f"the payload declares a {size[0]}x{size[1]} picture, expected {width}x{height}")
        with warnings.catch_warnings():  # a huge declared size is refused below, not warned about
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[self.fmt])  # headers only, no pixels yet
        with im:
            if im.size != (width, height):  # checked before pixels are decoded
                raise RuntimeError(f"the payload declares a {im.size[0]}x{im.size[1]} picture, "
                                   f"expected {width}x{height}")
            return np.array(im.convert("RGB"), np.uint8)


def webp_size(data: bytes) -> Tuple[int, int] | None:
    """(width, height) of a WebP file from its first chunk's header (no decoding), or None."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame: 14-bit sizes
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    return None


ANCHOR_CODECS: Dict[str, AnchorCodec] = {
    "x265": AnnexB("x265", "libx265", ("hevc",), "hevc", 8,
                   lambda qp: ["-preset", "slow", "-x265-params", f"qp={qp}:info=0:log-level=none"], qmax=51),
    "vvenc": AnnexB("vvenc", "libvvenc", ("vvc",), "vvc", 10,
                    lambda qp: ["-preset", "medium", "-qp", str(qp)], qmax=63),
    "svtav1": Av1Obu("svtav1", "libsvtav1", ("libdav1d", "libaom-av1"), "obu", 8,
                     lambda crf: ["-preset", "4", "-crf", str(crf), "-svtav1-params", "avif=1"]),
    "webp": PillowStill("webp", "WEBP", {"method": 6}),
    "avif": PillowStill("avif", "AVIF", {"speed": 4, "subsampling": "4:2:0"}),
}


# ----------------------------------------------------------------------------------- payloads


def _check_quality(quality) -> int:
    """``quality`` as an int in QUALITY_RANGE, or AnchorError."""
    if isinstance(quality, (bool, np.bool_)) or not isinstance(quality, (int, np.integer)) \
            or not QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]:
        raise AnchorError(f"anchor quality must be an integer in [{QUALITY_RANGE[0]}, {QUALITY_RANGE[1]}], "
                          f"got {quality!r}")
    return int(quality)


def check_anchor_codec(name, quality) -> None:
    """Validate anchor options (codec name, quality, availability) before any work; AnchorError."""
    if name not in ANCHOR_CODECS:
        raise AnchorError(f"unknown anchor codec {name!r}; expected one of {', '.join(ANCHOR_CODEC_NAMES)}")
    _check_quality(quality)
    if not ANCHOR_CODECS[name].available():
        raise AnchorError(f"anchor codec {name!r} is not available on this machine")


def _check_image(image) -> np.ndarray:
    """``image`` as a contiguous uint8 [H, W, 3] with H, W positive multiples of 16, or AnchorError."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 \
            or not image.shape[0] or not image.shape[1] or image.shape[0] % 16 or image.shape[1] % 16:
        raise AnchorError(f"an anchor is uint8 [H, W, 3] with H and W multiples of 16, "
                          f"got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def pack_anchor(codec: str, quality: int, image) -> bytes:
    """Code one anchor image into a payload: u8 codec id + u8 quality + codec bytes."""
    check_anchor_codec(codec, quality)
    data = ANCHOR_CODECS[codec].encode(_check_image(image), int(quality))
    return bytes([ANCHOR_CODEC_NAMES.index(codec), int(quality)]) + data


def anchor_info(payload) -> Tuple[str, int]:
    """(codec name, quality) of a payload; BitstreamError if its prefix is malformed."""
    payload = bytes(payload)
    if len(payload) < 3:
        raise BitstreamError(f"anchor payload of {len(payload)} bytes is too short")
    if payload[0] >= len(ANCHOR_CODEC_NAMES):
        raise BitstreamError(f"anchor payload names unknown codec id {payload[0]}")
    if payload[1] > QUALITY_RANGE[1]:
        raise BitstreamError(f"anchor payload quality {payload[1]} is out of range {QUALITY_RANGE}")
    return ANCHOR_CODEC_NAMES[payload[0]], payload[1]


def unpack_anchor(payload, height: int, width: int) -> np.ndarray:
    """A payload -> the decoded anchor, uint8 [height, width, 3]; BitstreamError on any failure."""
    name, _ = anchor_info(payload)
    codec = ANCHOR_CODECS[name]
    if not codec.available():
        raise BitstreamError(f"this stream's anchor frames use {name!r}, which is not available on this "
                             f"machine (its ffmpeg / Pillow lacks the codec)")
    try:
        image = codec.decode(bytes(payload)[2:], int(height), int(width))
    except Exception as err:  # noqa: BLE001 - any failure of a foreign decoder means a bad payload
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BitstreamError(f"anchor payload ({name}) does not decode: {text}") from None
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise BitstreamError(f"anchor payload ({name}) decoded to {image.dtype} {image.shape}, "
                             f"expected uint8 {(height, width, 3)}")
    return image
