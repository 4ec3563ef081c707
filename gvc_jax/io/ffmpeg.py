"""ffmpeg plumbing: the bundled binary, its error lines, forking it quietly, colour conversion
flags and frame rates.

Every video is read and written through the ffmpeg binary bundled with ``imageio-ffmpeg`` (it has
libx264, libx265 and libvmaf); :mod:`gvc_jax.io.video_reader`, :mod:`gvc_jax.io.video_writer`, the
metrics and the baselines all take these settings from here.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from fractions import Fraction
from typing import Iterator

from gvc_jax.pixels import VideoError

# swscale flags for every RGB <-> YUV conversion: exact rounding and full-resolution chroma
# interpolation. ffmpeg's default reads yuv420p chroma nearest-neighbour, which costs ~6 dB PSNR
# on a crf-12 round trip of a colourful clip (38.8 -> 45.0 dB measured), i.e. it would
# under-report every H.264/H.265 baseline.
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"
# Frame-rate handling of every ffmpeg decode: the frame counter and the frame reader must agree
# to the frame, so both name it (constant rate, what the auto mode gives a raw-frame pipe).
FPS_MODE = ("-fps_mode", "cfr")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (has libx264, libx265, libvmaf)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


_ERROR_WORDS = ("rror", "nvalid", "not found", "does not contain", "No such file", "moov atom")


def last_error_line(text: str) -> str:
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
