"""Anchor frames: a pluggable still-image codec for the frames that condition I2V / FLF2V GOPs.

Payload (a GOP record's side payload with tag ``variants.ANCHOR_TAG``)::

    u8 codec id (index into ANCHOR_CODEC_NAMES)   u8 quality (0-100)   codec bytes

One ``quality`` knob for every backend, 0-100, higher = better and more bytes, mapped linearly to
the backend's own parameter (x265 / vvenc QP, SVT-AV1 CRF, Pillow quality). The ffmpeg backends
(imageio-ffmpeg's bundled static ffmpeg: HEVC intra with x265, VVC intra with vvenc, AV1 intra
with SVT-AV1) exchange raw 4:2:0 YUV with ffmpeg; the RGB <-> YUV conversion is done here in
integer arithmetic, so the decoded anchor is a pure function of the payload bytes (no swscale).
Pillow's WebP / AVIF do their own conversion inside libwebp / libavif.
"""
from __future__ import annotations

import io
import subprocess
from typing import Dict, Tuple

import numpy as np

from gvc_jax.codec.ranks import BitstreamError

ANCHOR_CODEC_NAMES = ("x265", "vvenc", "svtav1", "webp", "avif")  # stream code table: never reorder
QUALITY_RANGE = (0, 100)
DEFAULT_ANCHOR_CODEC = "x265"
DEFAULT_ANCHOR_QUALITY = 50
FFMPEG_TIMEOUT_S = 60


class AnchorError(ValueError):
    """Bad anchor options: unknown codec, quality out of range, codec unavailable, bad image."""


# ----------------------------------------------------------------------------------- colour

# Full-range BT.601 in 16-bit fixed point: exact integer arithmetic, identical on every machine.
_FWD = np.array([[19595, 38470, 7471], [-11059, -21709, 32768], [32768, -27439, -5329]], np.int64)


def rgb_to_yuv420(rgb: np.ndarray) -> bytes:
    """uint8 [H, W, 3] (H, W even) -> planar yuv420p bytes."""
    x = rgb.astype(np.int64)
    yuv = np.einsum("hwc,kc->khw", x, _FWD)
    y = np.clip((yuv[0] + 32768) >> 16, 0, 255)
    h, w = rgb.shape[:2]
    chroma = yuv[1:].reshape(2, h // 2, 2, w // 2, 2).sum(axis=(2, 4))  # 2x2 box, still scaled by 2^16
    uv = np.clip(((chroma + (1 << 17)) >> 18) + 128, 0, 255)
    return y.astype(np.uint8).tobytes() + uv.astype(np.uint8).tobytes()


def yuv420_to_rgb(data: bytes, height: int, width: int) -> np.ndarray:
    """Planar yuv420p bytes -> uint8 [H, W, 3] (chroma repeated 2x2; integer arithmetic)."""
    n = height * width
    plane = np.frombuffer(data, np.uint8)
    y = plane[:n].reshape(height, width).astype(np.int64)
    u = plane[n:n + n // 4].reshape(height // 2, width // 2).astype(np.int64) - 128
    v = plane[n + n // 4:n + n // 2].reshape(height // 2, width // 2).astype(np.int64) - 128
    u = u.repeat(2, 0).repeat(2, 1)
    v = v.repeat(2, 0).repeat(2, 1)
    y16 = y << 16
    r = y16 + 91881 * v
    g = y16 - 22554 * u - 46802 * v
    b = y16 + 116130 * u
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip((rgb + 32768) >> 16, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- backends

class AnchorCodec:
    """One still-image backend."""

    name = ""

    def available(self) -> bool:
        return True

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        raise NotImplementedError


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args, data: bytes) -> bytes:
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ffmpeg took more than {FFMPEG_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


class FfmpegIntra(AnchorCodec):
    """One intra frame through the bundled ffmpeg: raw yuv420p in, an elementary stream out."""

    def __init__(self, name: str, encoder: str, muxer: str, qmax: int, params) -> None:
        self.name, self.encoder, self.muxer, self.qmax, self.params = name, encoder, muxer, qmax, params

    def qp(self, quality: int) -> int:
        return round(self.qmax * (100 - quality) / 100)

    def available(self) -> bool:
        try:
            out = subprocess.run([_ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired, ImportError):
            return False
        return f" {self.encoder} ".encode() in out

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        h, w = image.shape[:2]
        args = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-i", "-", "-frames:v", "1",
                "-c:v", self.encoder, *self.params(self.qp(quality)), "-pix_fmt", "yuv420p", "-f", self.muxer, "-"]
        return _run_ffmpeg(args, rgb_to_yuv420(image))

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        raw = _run_ffmpeg(["-xerror", "-err_detect", "explode", "-f", self.muxer, "-i", "-", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p",
                           "-"], data)
        if len(raw) != height * width * 3 // 2:
            raise RuntimeError(f"decoded {len(raw)} bytes, expected a {width}x{height} frame")
        return yuv420_to_rgb(raw, height, width)


class PillowStill(AnchorCodec):
    """WebP / AVIF through Pillow (metadata-free)."""

    def __init__(self, name: str, fmt: str, feature: str, extra: dict) -> None:
        self.name, self.fmt, self.feature, self.extra = name, fmt, feature, extra

    def available(self) -> bool:
        import PIL.features

        return bool(PIL.features.check(self.feature))

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=self.fmt, quality=int(quality), **self.extra)
        return buf.getvalue()

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data), formats=[self.fmt]) as im:
            if im.size != (width, height):
                raise RuntimeError(f"decoded a {im.size[0]}x{im.size[1]} image, expected {width}x{height}")
            return np.asarray(im.convert("RGB"), np.uint8).copy()


ANCHOR_CODECS: Dict[str, AnchorCodec] = {
    "x265": FfmpegIntra("x265", "libx265", "hevc", 51,
                        lambda qp: ["-preset", "slow", "-x265-params", f"qp={qp}:info=0:log-level=none"]),
    "vvenc": FfmpegIntra("vvenc", "libvvenc", "vvc", 63, lambda qp: ["-qp", str(qp), "-preset", "medium"]),
    "svtav1": FfmpegIntra("svtav1", "libsvtav1", "obu", 63,
                          lambda qp: ["-crf", str(max(qp, 1)), "-preset", "6", "-svtav1-params", "avif=1"]),
    "webp": PillowStill("webp", "WEBP", "webp", {"method": 6}),
    "avif": PillowStill("avif", "AVIF", "avif", {"speed": 4}),
}


# ----------------------------------------------------------------------------------- payloads

def check_anchor_codec(name: str, quality: int) -> None:
    """Validate anchor options before any work (AnchorError)."""
    if name not in ANCHOR_CODECS:
        raise AnchorError(f"unknown anchor codec {name!r}; expected one of {', '.join(ANCHOR_CODEC_NAMES)}")
    if not isinstance(quality, (int, np.integer)) or not QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]:
        raise AnchorError(f"anchor quality must be an integer in [0, 100], got {quality!r}")
    if not ANCHOR_CODECS[name].available():
        raise AnchorError(f"anchor codec {name} is not available on this machine")


def pack_anchor(codec: str, quality: int, image: np.ndarray) -> bytes:
    """Code one anchor image (uint8 [H, W, 3], H and W even) into a side payload."""
    check_anchor_codec(codec, quality)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] % 2 or image.shape[1] % 2:
        raise AnchorError(f"an anchor is uint8 [H, W, 3] with even H and W, got {image.dtype} {image.shape}")
    data = ANCHOR_CODECS[codec].encode(np.ascontiguousarray(image), int(quality))
    return bytes([ANCHOR_CODEC_NAMES.index(codec), int(quality)]) + data


def anchor_info(payload: bytes) -> Tuple[str, int]:
    """(codec name, quality) of a payload; BitstreamError if the prefix is malformed."""
    if len(payload) < 3:
        raise BitstreamError(f"anchor payload of {len(payload)} bytes is too short")
    if payload[0] >= len(ANCHOR_CODEC_NAMES):
        raise BitstreamError(f"anchor payload names unknown codec id {payload[0]}")
    if payload[1] > QUALITY_RANGE[1]:
        raise BitstreamError(f"anchor payload quality {payload[1]} is out of range")
    return ANCHOR_CODEC_NAMES[payload[0]], payload[1]


def unpack_anchor(payload: bytes, height: int, width: int) -> np.ndarray:
    """A side payload -> the decoded anchor, uint8 [height, width, 3]; BitstreamError if malformed."""
    name, _ = anchor_info(payload)
    codec = ANCHOR_CODECS[name]
    if not codec.available():
        raise BitstreamError(f"the stream's anchors use {name}, which is not available on this machine")
    try:
        image = codec.decode(bytes(payload[2:]), height, width)
    except Exception as err:  # noqa: BLE001 - any failure of a foreign decoder is a bad payload
        raise BitstreamError(f"anchor payload ({name}) does not decode: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if image.shape != (height, width, 3):
        raise BitstreamError(f"anchor payload ({name}) decoded to {image.shape}, expected {(height, width, 3)}")
    return image
