"""The 4k+1 rule, in one place: the Wan VAE codes the first frame alone and then every group of
``stride`` (4) frames as one latent frame, so a clip it codes has ``stride * k + 1`` frames and
``k + 1`` latent frames. GOP lengths, conditioning masks, sampler tables and the stream format
all follow from it."""
from __future__ import annotations

import operator

TEMPORAL_STRIDE = 4


class FrameCountError(ValueError):
    """A frame count that is not ``stride * k + 1``."""


def is_valid(frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> bool:
    """Whether ``frames`` (an integer, numpy's included) is ``temporal_stride * k + 1``, k >= 0."""
    if isinstance(frames, bool):
        return False
    try:
        n = operator.index(frames)
    except TypeError:
        return False
    return n >= 1 and (n - 1) % temporal_stride == 0


def check_frames(frames: int, temporal_stride: int = TEMPORAL_STRIDE, what: str = "a clip") -> int:
    """``frames`` (as an int) if it is ``temporal_stride * k + 1``, else ``FrameCountError`` saying so."""
    s = temporal_stride
    if not is_valid(frames, s):
        raise FrameCountError(f"{what} needs {s}k+1 frames (1, {1 + s}, {1 + 2 * s}, ...), got {frames!r}")
    return operator.index(frames)


def latent_frames(frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> int:
    """Latent frames of a ``temporal_stride * k + 1``-frame clip (``FrameCountError`` otherwise)."""
    return (check_frames(frames, temporal_stride) - 1) // temporal_stride + 1
