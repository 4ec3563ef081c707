"""Conventional-codec baselines: x264, x265, SVT-AV1 and VVenC through the bundled ffmpeg.

``encode_baseline(codec, frames, fps, q, workdir)`` codes raw RGB frames ``uint8 [F, H, W, 3]``
and decodes them back:

    RGB -> YUV 4:2:0 (swscale, ``gvc_jax.io.ffmpeg.SWS_FLAGS``) -> encoder at quality ``q``
        -> elementary stream file -> ffmpeg decoder -> RGB (same swscale flags)

Conventions (identical for every codec, so the rate axis is comparable with gvc's file size):

- **Rate** is the size of an *elementary stream* file: Annex-B ``.264`` (H.264) / ``.265``
  (HEVC) / ``.266`` (VVC), and the AV1 "low overhead" OBU stream ``.obu`` (Section 5 of the AV1
  spec, temporal units separated by temporal-delimiter OBUs). No container (mp4 / IVF) bytes
  are counted. Parameter sets / sequence headers *are* counted, as they are part of the stream.
  SEI NAL units (H.264 type 6, HEVC 39/40, VVC 23/24) and AV1 metadata / padding OBUs are
  removed (``filter_units`` bitstream filter): no decoder needs them, and x264 / x265 write
  their whole option string into an SEI -- 0.7 / 2.3 kB, which at gvc's rates (a 33-frame
  256x144 clip at 0.005 bpp is ~800 bytes) would dominate the comparison.
- **One key frame per clip**: the GOP is longer than the clip and scene-cut detection is off
  (x264 ``-g/-keyint_min > F, -sc_threshold 0``; x265 ``keyint/min-keyint > F, scenecut=0``;
  SVT-AV1 ``-g > F, scd=0``; VVenC ``IntraPeriod = MinIntraDistance > F``, which also keeps
  its slice-type adaptation from inserting scene-cut intra pictures). This
  matches gvc, which has no intra refresh either.
- **Quality knob** ``q``: CRF for x264 / x265 / SVT-AV1, QP for VVenC (it has no CRF mode).
- **Pixel formats**: 8-bit ``yuv420p`` for x264 / x265 / SVT-AV1; VVenC only takes 10-bit
  ``yuv420p10le`` (its native format), so VVC codes a 10-bit 4:2:0 version of the same frames.
- Odd frame sizes are padded to even ones by edge replication (4:2:0 needs even sizes) and the
  decode is cropped back; the bpp denominator is always the original size.
- Encoder presets default to slow-but-practical settings (``DEFAULT_PRESETS``); all other
  encoder settings are the encoders' defaults (psycho-visual tuning included).

User-caused problems (unknown codec, quality out of range, encoder failure) raise
``BaselineError`` with a one-line message.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from gvc_jax.io.ffmpeg import SWS_FLAGS, ffmpeg_exe, fps_arg, quiet_fork
from gvc_jax.pixels import crop, pad_to_multiple


class BaselineError(RuntimeError):
    """A baseline codec run failed or was asked for something it cannot do."""


@dataclass(frozen=True)
class BaselineCodec:
    """How one conventional codec is driven through ffmpeg."""

    name: str
    encoder: str                 # ffmpeg encoder name
    muxer: str                   # ffmpeg muxer writing the elementary stream
    suffix: str                  # file suffix of the elementary stream
    pix_fmt: str                 # pixel format handed to the encoder
    q_option: str                # "crf" or "qp"
    q_range: Tuple[int, int]     # valid values of q (inclusive)
    ladder: Tuple[int, ...]      # default quality ladder, lowest rate first
    drop_units: str              # NAL / OBU types removed from the stream (SEI, metadata, padding)


CODECS = {
    "x264": BaselineCodec("x264", "libx264", "h264", ".264", "yuv420p", "crf", (0, 51),
                          (51, 47, 43, 39, 35, 31, 27, 23), "6"),
    "x265": BaselineCodec("x265", "libx265", "hevc", ".265", "yuv420p", "crf", (0, 51),
                          (51, 47, 43, 39, 35, 31, 27, 23), "39|40"),
    "svtav1": BaselineCodec("svtav1", "libsvtav1", "obu", ".obu", "yuv420p", "crf", (1, 63),
                            (63, 59, 55, 51, 45, 39, 33, 27), "5|15"),
    "vvc": BaselineCodec("vvc", "libvvenc", "vvc", ".266", "yuv420p10le", "qp", (0, 63),
                         (63, 58, 53, 47, 42, 37, 32, 27), "23|24"),
}
VVC_GOP = 32  # VVenC's random-access GOP size
DEFAULT_PRESETS = {"x264": "veryslow", "x265": "slow", "svtav1": "4", "vvc": "medium"}
# Fast presets for smoke tests (tiny clips).
FAST_PRESETS = {"x264": "ultrafast", "x265": "ultrafast", "svtav1": "12", "vvc": "faster"}


def get_codec(name: str) -> BaselineCodec:
    try:
        return CODECS[name]
    except KeyError:
        raise BaselineError(f"unknown baseline codec {name!r}; choose from {', '.join(CODECS)}") from None


def default_ladder(name: str) -> Tuple[int, ...]:
    """The default quality values of a codec (CRF or QP), lowest rate first."""
    return get_codec(name).ladder


def encoder_args(codec: BaselineCodec, q: int, num_frames: int, preset: Optional[str] = None) -> list:
    """ffmpeg output arguments for one encode: pixel format, encoder, quality, one key frame."""
    lo, hi = codec.q_range
    if not lo <= int(q) <= hi:
        raise BaselineError(f"{codec.name}: {codec.q_option} must be in [{lo}, {hi}], got {q}")
    preset = DEFAULT_PRESETS[codec.name] if preset is None else str(preset)
    gop = num_frames + 1  # longer than the clip: the only key frame is frame 0
    args = ["-pix_fmt", codec.pix_fmt, "-c:v", codec.encoder, "-preset", preset, f"-{codec.q_option}", str(int(q))]
    if codec.name == "x264":
        args += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    elif codec.name == "x265":
        args += ["-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"]
    elif codec.name == "svtav1":
        args += ["-g", str(gop), "-svtav1-params", "scd=0"]
    elif codec.name == "vvc":
        # ffmpeg's -period (seconds) does not reach VVenC reliably; set the intra period in frames
        # (a multiple of VVenC's GOP size 32) and forbid scene-cut intra pictures inside it.
        period = VVC_GOP * int(math.ceil(gop / VVC_GOP))
        args += ["-vvenc-params", f"IntraPeriod={period}:MinIntraDistance={period}"]
    return args + ["-bsf:v", f"filter_units=remove_types={codec.drop_units}", "-f", codec.muxer]


def _error_line(stderr: bytes) -> str:
    """The first ffmpeg log line that names an error (else the last line), without [tags]."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln.strip()) for ln in stderr.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if "rror" in ln or "nvalid" in ln:
            return ln
    return lines[-1] if lines else "unknown error"


def _run(cmd: list, what: str, stdin=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SVT_LOG="1")  # SVT-AV1 prints its banner to stderr otherwise
    with quiet_fork():
        proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if proc.returncode != 0:
        raise BaselineError(f"{what} failed: {_error_line(proc.stderr)}")
    return proc


def decode_stream(path: str, width: int, height: int) -> np.ndarray:
    """Decode an elementary stream to uint8 RGB ``[F, height, width, 3]`` (every frame, no dup/drop)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path, "-fps_mode", "passthrough",
           "-sws_flags", SWS_FLAGS, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]  # fmt: skip
    raw = _run(cmd, f"decoding {path}").stdout
    frame = width * height * 3
    if len(raw) == 0 or len(raw) % frame:
        raise BaselineError(f"decoding {path} gave {len(raw)} bytes, not a whole number of {width}x{height} frames")
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def count_key_frames(path: str) -> int:
    """Number of key frames in a stream (ffmpeg's showinfo ``iskey:1``); for checks and tests."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-vf", "showinfo", "-f", "null", "-"]
    proc = _run(cmd, f"inspecting {path}")
    return proc.stderr.decode("utf-8", "replace").count("iskey:1")


def encode_baseline(codec: str, frames_uint8: np.ndarray, fps: float, q: int, workdir,
                    *, preset: Optional[str] = None, name: Optional[str] = None) -> dict:
    """Encode ``frames_uint8`` (``uint8 [F, H, W, 3]``) with a conventional codec and decode it back.

    Args:
        codec: "x264", "x265", "svtav1" or "vvc".
        fps: frame rate written into the stream (affects rate control only through timing).
        q: CRF (x264, x265, SVT-AV1) or QP (VVenC); lower is higher quality.
        workdir: directory for the elementary stream (kept: ``{name}{suffix}``).
        preset: encoder preset (default ``DEFAULT_PRESETS[codec]``).
        name: file stem (default ``"{codec}_q{q}"``).

    Returns:
        dict with ``bytes`` (elementary stream size), ``video`` (decoded uint8 ``[F, H, W, 3]``),
        ``seconds`` (encode wall time), ``decode_seconds``, ``path`` (the stream file), ``args``.
    """
    spec = get_codec(codec)
    frames = np.asarray(frames_uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise BaselineError(f"frames must be non-empty uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    num, height, width = frames.shape[:3]
    padded = np.ascontiguousarray(pad_to_multiple(frames, 2))
    ph, pw = padded.shape[1:3]
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(os.fspath(workdir), (name or f"{codec}_q{int(q)}") + spec.suffix)
    out_args = encoder_args(spec, q, num, preset)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}", "-r", fps_arg(fps), "-i", "pipe:0",
           "-sws_flags", SWS_FLAGS, *out_args, path]  # fmt: skip
    with tempfile.TemporaryFile() as raw:
        raw.write(padded.tobytes())
        raw.seek(0)
        t0 = time.perf_counter()
        _run(cmd, f"{codec} encode ({spec.q_option} {q})", stdin=raw)
        seconds = time.perf_counter() - t0
    size = os.path.getsize(path)
    if size == 0:
        raise BaselineError(f"{codec} encode ({spec.q_option} {q}) wrote an empty stream")
    t0 = time.perf_counter()
    video = decode_stream(path, pw, ph)
    decode_seconds = time.perf_counter() - t0
    if video.shape[0] != num:
        raise BaselineError(f"{codec} ({spec.q_option} {q}): decoded {video.shape[0]} frames, encoded {num}")
    return {"bytes": int(size), "video": crop(video, height, width), "seconds": seconds,
            "decode_seconds": decode_seconds, "path": path, "args": out_args}
