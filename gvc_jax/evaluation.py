"""Quality of a video delivered in pieces: running means of per-frame and per-pair metrics.

Every metric here is a mean over frames (PSNR, MS-SSIM, LPIPS, DISTS) or over consecutive frame
pairs (tLP, warping error), so feeding the reference and the reconstruction GOP by GOP gives the
same numbers as one ``metrics.evaluate`` call on the whole videos, with memory bounded by one GOP
(the pair metrics carry the last frame of the previous piece). VMAF has temporal features of its
own and is computed on whole videos only (``metrics.evaluate``, ``experiments/rd.py``).

``parse_metrics("psnr,ms-ssim,lpips,dists")`` reads a ``--metrics`` list (``-`` and ``_`` alike);
``parse_metrics(..., whole_video=True)`` also accepts VMAF, for tools that hold whole videos
(``experiments/rd.py``, ``experiments/ablate.py``), which evaluate through ``evaluate_video``.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Sequence

import numpy as np

from gvc_jax import metrics as M

PER_FRAME: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "psnr": M.psnr_per_frame,
    "ms_ssim": M.ms_ssim_per_frame,
    "lpips": lambda r, d: M.lpips_per_frame(r, d, net="alex"),
    "lpips_vgg": lambda r, d: M.lpips_per_frame(r, d, net="vgg"),
    "dists": M.dists_per_frame,
}
PER_PAIR: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "tlp": M.tlp_per_pair,
    "warp": M.warp_error_per_pair,
}
STREAMING = tuple(PER_FRAME) + tuple(PER_PAIR)
# The default of every tool: the metrics 2026 papers report per frame. In a run of several processes
# (--distributed) DISTS is left out of the default: on a CPU its VGG16 (~5 frames/s at 256x144) inside
# the sink held process 0 past gloo's 30 s collective timeout on a loaded 2-core machine.
DEFAULT_METRICS = ("psnr", "ms_ssim", "lpips", "dists")
MULTI_PROCESS_DEFAULT_METRICS = ("psnr", "ms_ssim", "lpips")
# Whole-video metrics (need every frame at once), for the tools that hold whole videos in one process.
WHOLE_VIDEO = ("vmaf",)
BATCH_DEFAULT_METRICS = DEFAULT_METRICS
ALL_METRICS = STREAMING + WHOLE_VIDEO


def parse_metrics(text: str, *, whole_video: bool = False) -> tuple:
    """``"psnr,ms-ssim,lpips"`` -> ("psnr", "ms_ssim", "lpips"); ValueError naming an unknown one.
    ``whole_video``: VMAF is accepted too (the caller holds whole videos)."""
    names = tuple(dict.fromkeys(n.strip().lower().replace("-", "_") for n in str(text).split(",") if n.strip()))
    if not names:
        raise ValueError("--metrics needs at least one metric name")
    known = ALL_METRICS if whole_video else STREAMING
    unknown = [n for n in names if n not in known]
    if unknown:
        extra = " (vmaf: whole videos only, see experiments/rd.py)" if "vmaf" in unknown else ""
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(n.replace('_', '-') for n in known)}{extra}")
    return names


def fit_metrics(names: Sequence[str], height: int, width: int, requested: bool,
                frames: Optional[int] = None) -> tuple:
    """``names`` for frames of ``height`` x ``width`` (and, when given, ``frames`` frames): DISTS needs
    32 x 32 or more, tLP and the warping error 2 frames or more; asked for explicitly (``requested``)
    where they cannot be computed they are an error, as a default they are left out."""
    drop = []
    if "dists" in names and min(height, width) < M.DISTS_MIN_SIDE:
        if requested:
            raise ValueError(f"DISTS needs frames of at least {M.DISTS_MIN_SIDE}x{M.DISTS_MIN_SIDE}, "
                             f"got {width}x{height}")
        drop.append("dists")
    pairs = [n for n in names if n in PER_PAIR]
    if pairs and frames is not None and frames < 2:
        if requested:
            raise ValueError(f"{', '.join(pairs)} need at least 2 frames, got {frames}")
        drop += pairs
    return tuple(n for n in names if n not in drop)


def evaluate_video(ref: np.ndarray, dist: np.ndarray, metrics: Sequence[str], fps: float = 25.0) -> Dict[str, float]:
    """Whole videos ``[F, H, W, 3]`` -> {metric: mean}, for names from ``parse_metrics(..., whole_video=True)``:
    the streaming metrics through one ``RunningEval`` (the numbers ``--eval`` reports), VMAF through
    ``metrics.vmaf`` (libvmaf, its own temporal features)."""
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
    ref, dist = np.asarray(ref), np.asarray(dist)
    if ref.shape != dist.shape:
        raise ValueError(f"ref and dist shapes differ: {ref.shape} vs {dist.shape}")
    streaming = [m for m in metrics if m in STREAMING]
    out: Dict[str, float] = {}
    if streaming:
        ev = RunningEval(streaming)
        ev.reference(ref)
        ev.decoded(dist)
        out.update(ev.result())
    for m in metrics:
        if m == "vmaf":
            out[m] = float(M.vmaf(ref, dist, fps=fps))
    return {m: out[m] for m in metrics}


class RunningEval:
    """``reference(frames)`` as the source is read, ``decoded(frames)`` as output appears;
    ``result()`` -> {metric: mean}; ``per_frame()`` -> {metric: every frame's (or pair's) value}.
    Pairs frames in order."""

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS):
        unknown = [m for m in metrics if m not in STREAMING]
        if unknown:
            raise ValueError(f"metric(s) {unknown} cannot be computed GOP by GOP; choose from {list(STREAMING)}")
        self.metrics = tuple(metrics)
        self._pending: Deque[np.ndarray] = deque()
        self._values: Dict[str, List[float]] = {m: [] for m in self.metrics}
        self._last: Optional[tuple] = None  # (reference, decoded) last frames, for the pair metrics

    def reference(self, frames: np.ndarray) -> None:
        self._pending.extend(np.asarray(frames))

    def decoded(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if not len(frames):
            return
        if len(frames) > len(self._pending):
            raise ValueError("more decoded frames than reference frames")
        ref = np.stack([self._pending.popleft() for _ in range(len(frames))])
        for m in self.metrics:
            if m in PER_FRAME:
                self._values[m].extend(float(v) for v in PER_FRAME[m](ref, frames))
            elif self._last is not None or len(frames) > 1:
                r, d = ref, frames
                if self._last is not None:  # the pair across the boundary of the pieces
                    r, d = np.concatenate([self._last[0][None], ref]), np.concatenate([self._last[1][None], frames])
                self._values[m].extend(float(v) for v in PER_PAIR[m](r, d))
        self._last = (ref[-1], frames[-1])

    def result(self) -> Dict[str, float]:
        if not any(self._values.values()) and not self._last:
            raise ValueError("no frames were evaluated")
        return {m: float(np.mean(v)) if v else float("nan") for m, v in self._values.items()}

    def per_frame(self) -> Dict[str, List[float]]:
        """Every frame's value (PSNR, MS-SSIM, LPIPS, DISTS) or every consecutive pair's (tLP, warp)."""
        return {m: list(v) for m, v in self._values.items()}


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
