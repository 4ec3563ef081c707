"""Quality of a video delivered in pieces: running per-frame means of PSNR, MS-SSIM, LPIPS.

Every metric of ``metrics.evaluate`` except VMAF is a mean over frames, so feeding the
reference and the reconstruction GOP by GOP gives the same numbers as one call on the whole
videos, with memory bounded by one GOP.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Sequence

import numpy as np

from gvc_jax import metrics as M

PER_FRAME = {
    "psnr": M.psnr_per_frame,
    "ms_ssim": M.ms_ssim_per_frame,
    "lpips": lambda r, d: M.lpips_per_frame(r, d, net="alex"),
    "lpips_vgg": lambda r, d: M.lpips_per_frame(r, d, net="vgg"),
}


class RunningEval:
    """``reference(frames)`` as the source is read, ``decoded(frames)`` as output appears;
    ``result()`` -> {metric: mean over all frames}. Pairs frames in order."""

    def __init__(self, metrics: Sequence[str] = ("psnr", "ms_ssim", "lpips")):
        unknown = [m for m in metrics if m not in PER_FRAME]
        if unknown:
            raise ValueError(f"metric(s) {unknown} cannot be computed GOP by GOP; choose from {list(PER_FRAME)}")
        self.metrics = tuple(metrics)
        self._pending: Deque[np.ndarray] = deque()
        self._sums: Dict[str, float] = {m: 0.0 for m in self.metrics}
        self._frames = 0

    def reference(self, frames: np.ndarray) -> None:
        self._pending.extend(np.asarray(frames))

    def decoded(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if len(frames) > len(self._pending):
            raise ValueError("more decoded frames than reference frames")
        ref = np.stack([self._pending.popleft() for _ in range(len(frames))])
        for m in self.metrics:
            self._sums[m] += float(np.sum(PER_FRAME[m](ref, frames)))
        self._frames += len(frames)

    def result(self) -> Dict[str, float]:
        if not self._frames:
            raise ValueError("no frames were evaluated")
        return {m: self._sums[m] / self._frames for m in self.metrics}


class TeeReader:
    """A reader that also hands every frame it delivers to ``on_frames`` (e.g. RunningEval.reference)."""

    def __init__(self, reader, on_frames):
        self.reader = reader
        self.on_frames = on_frames
        for name in ("num_frames", "fps", "width", "height"):
            setattr(self, name, getattr(reader, name))

    def read(self, n: int) -> np.ndarray:
        frames = self.reader.read(n)
        if len(frames):
            self.on_frames(frames)
        return frames
