"""GOP plans: which source frames each GOP covers (SPEC.md §7).

T2V / I2V: consecutive, non-overlapping GOPs of ``gop_frames`` (4k+1) frames; FLF2V: GOP n
covers [n*(G-1), n*(G-1) + G), sharing its last frame with the next GOP. The last GOP is
padded by repeating the final frame and trimmed back after decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np


@dataclass(frozen=True)
class GopSpan:
    index: int
    start: int   # first source frame
    stop: int    # one past the last *real* source frame
    length: int  # frames coded (gop_frames); stop - start <= length

    @property
    def pad(self) -> int:
        return self.length - (self.stop - self.start)


def check_gop_frames(gop_frames: int, temporal_stride: int = 4) -> None:
    if gop_frames < 1 or (gop_frames - 1) % temporal_stride:
        raise ValueError(f"GOP length must be {temporal_stride}k+1 frames (e.g. 33), got {gop_frames}")


def plan_gops(num_frames: int, gop_frames: int, variant: str = "t2v", temporal_stride: int = 4) -> List[GopSpan]:
    """Split ``num_frames`` source frames into GOP spans."""
    check_gop_frames(gop_frames, temporal_stride)
    if num_frames < 1:
        raise ValueError("the video has no frames")
    hop = gop_frames - 1 if variant == "flf2v" else gop_frames
    if variant == "flf2v" and gop_frames < 2:
        raise ValueError("FLF2V needs GOPs of at least 5 frames")
    spans, start = [], 0
    while True:
        stop = min(start + gop_frames, num_frames)
        spans.append(GopSpan(len(spans), start, stop, gop_frames))
        if stop >= num_frames:
            return spans
        start += hop


def gop_frames_of(video: np.ndarray, span: GopSpan) -> np.ndarray:
    """[F,H,W,3] video -> [gop_frames,H,W,3] frames of ``span``, the last frame repeated as padding."""
    clip = video[span.start:span.stop]
    if span.pad:
        clip = np.concatenate([clip, np.repeat(clip[-1:], span.pad, axis=0)], axis=0)
    return clip


def assemble(gops: List[np.ndarray], spans: List[GopSpan], num_frames: int) -> np.ndarray:
    """Inverse of the split: decoded GOP clips -> [num_frames, H, W, 3] (overlaps taken once)."""
    out = []
    next_frame = 0
    for clip, span in zip(gops, spans):
        skip = next_frame - span.start  # frames already emitted (FLF2V shared boundary)
        out.append(clip[skip:span.stop - span.start])
        next_frame = span.stop
    video = np.concatenate(out, axis=0)
    assert video.shape[0] == num_frames, (video.shape, num_frames)
    return video
