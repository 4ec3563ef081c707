"""GOP plans: which source frames each GOP codes, which frames anchor it, what it waits for.

A plan is a static list of ``GopSpan``s plus their dependencies. ``waves()`` groups them into
sets that can be coded together (every dependency in an earlier wave): independent GOPs (T2V)
are one wave; a chain where GOP k conditions on GOP k-1's decoded output (I2V) is one GOP per
wave; GOPs sharing boundary frames that are coded first (FLF2V) are one wave after them.

Frame layouts:
- ``hop = gop_frames``: consecutive, disjoint GOPs (T2V, I2V);
- ``hop = gop_frames - 1``: GOP n covers ``[n*(G-1), n*(G-1) + G)`` and shares its last frame
  with the next GOP (FLF2V).
The last GOP is padded by repeating the final frame; decoding trims the padding, and frames a
GOP shares with an earlier one are emitted once.

``GopPlan.batch`` joins the plans of several videos into one (a batch encode): their frames are
laid end to end, each GOP keeps its index in its own stream (``in_stream``: keys, records, "first
GOP" rules) and its dependencies stay inside its video, so the waves run GOP k of every video's
I2V chain side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from gvc_jax.temporal import check_frames


@dataclass(frozen=True)
class GopSpan:
    """One GOP: source frames ``[start, stop)`` coded as ``length`` frames (padding after stop)."""

    index: int
    start: int
    stop: int
    length: int
    anchors: Tuple[int, ...] = ()     # source frame indices whose *decoded* pixels condition this GOP
    depends_on: Tuple[int, ...] = ()  # GOPs whose decoded output this GOP needs
    stream: int = 0                   # which video of a batch (GopPlan.batch); 0 for one video
    stream_gop: Optional[int] = None  # the GOP's index in its own stream (None: ``index``)

    @property
    def pad(self) -> int:
        return self.length - (self.stop - self.start)

    @property
    def in_stream(self) -> int:
        """The GOP's index in its own stream: what its keys, its record and "first GOP" rules use."""
        return self.index if self.stream_gop is None else self.stream_gop


def check_gop_frames(gop_frames: int, temporal_stride: int = 4) -> None:
    check_frames(gop_frames, temporal_stride, "a GOP")


def gop_count(num_frames: int, gop_frames: int, hop: int) -> int:
    """The number of GOPs ``GopPlan.split`` makes, computed without building them (for checking
    a stream's header before its plan is built)."""
    if num_frames <= gop_frames:
        return 1
    return 1 + -(-(num_frames - gop_frames) // hop)


@dataclass(frozen=True)
class GopPlan:
    """The GOPs of a video and their dependencies."""

    num_frames: int
    gop_frames: int
    spans: Tuple[GopSpan, ...]

    def __post_init__(self):
        for i, s in enumerate(self.spans):
            if s.index != i:
                raise ValueError(f"GOP {i} has index {s.index}")
            if any(not 0 <= d < i for d in s.depends_on):
                raise ValueError(f"GOP {i} depends on {s.depends_on}: only earlier GOPs may be dependencies")

    @classmethod
    def split(cls, num_frames: int, gop_frames: int, *, hop: int | None = None, chain: bool = False,
              temporal_stride: int = 4) -> "GopPlan":
        """GOPs every ``hop`` frames (default ``gop_frames``). ``chain``: GOP k depends on GOP k-1
        and is anchored on the last source frame before it."""
        check_gop_frames(gop_frames, temporal_stride)
        if num_frames < 1:
            raise ValueError("the video has no frames")
        hop = gop_frames if hop is None else hop
        if not 1 <= hop <= gop_frames:
            raise ValueError(f"GOP hop must be in [1, {gop_frames}], got {hop}")
        spans: List[GopSpan] = []
        start = 0
        while True:
            stop = min(start + gop_frames, num_frames)
            i = len(spans)
            deps = (i - 1,) if chain and i else ()
            anchors = (start - 1,) if chain and i else ()
            spans.append(GopSpan(i, start, stop, gop_frames, anchors, deps))
            if stop >= num_frames:
                return cls(num_frames, gop_frames, tuple(spans))
            start += hop

    @classmethod
    def batch(cls, plans: Sequence["GopPlan"]) -> Tuple["GopPlan", Tuple[int, ...]]:
        """Several videos' plans as one: -> (plan, first global frame of each video)."""
        if not plans or len({p.gop_frames for p in plans}) != 1:
            raise ValueError("a batch needs at least one plan, all with the same GOP length")
        spans: List[GopSpan] = []
        offsets: List[int] = []
        frames = 0
        for v, plan in enumerate(plans):
            base = len(spans)
            offsets.append(frames)
            for s in plan.spans:
                spans.append(GopSpan(base + s.index, frames + s.start, frames + s.stop, s.length,
                                     tuple(frames + a for a in s.anchors), tuple(base + d for d in s.depends_on),
                                     stream=v, stream_gop=s.in_stream))
            frames += plan.num_frames
        return cls(frames, plans[0].gop_frames, tuple(spans)), tuple(offsets)

    @property
    def num_gops(self) -> int:
        return len(self.spans)

    def waves(self) -> List[Tuple[GopSpan, ...]]:
        """GOPs grouped so that each GOP's dependencies are all in earlier waves (in index order)."""
        level = [0] * len(self.spans)
        for s in self.spans:
            level[s.index] = 1 + max((level[d] for d in s.depends_on), default=-1)
        out: List[List[GopSpan]] = [[] for _ in range(max(level) + 1)] if level else []
        for s in self.spans:
            out[level[s.index]].append(s)
        return [tuple(w) for w in out]

    def new_frames(self, span: GopSpan) -> Tuple[int, int]:
        """``(skip, count)``: the decoded GOP's frames ``[skip, skip + count)`` are new output
        (frames shared with the previous GOP are emitted by it; padding is dropped)."""
        prev_stop = self.spans[span.index - 1].stop if span.index else 0
        skip = max(0, prev_stop - span.start)
        return skip, span.stop - span.start - skip

    def last_use(self) -> dict:
        """GOP index -> index of the last GOP that needs its decoded output (for freeing context)."""
        out: dict = {}
        for s in self.spans:
            for d in s.depends_on:
                out[d] = max(out.get(d, -1), s.index)
        return out


def gop_frames_of(video: np.ndarray, span: GopSpan) -> np.ndarray:
    """[F,H,W,3] video -> [length,H,W,3] frames of ``span``, the last frame repeated as padding."""
    return pad_gop(video[span.start:span.stop], span)


def pad_gop(clip: np.ndarray, span: GopSpan) -> np.ndarray:
    """The real frames of ``span`` -> ``span.length`` frames (the last one repeated)."""
    if span.pad:
        clip = np.concatenate([clip, np.repeat(clip[-1:], span.pad, axis=0)], axis=0)
    return clip


class GopFrames:
    """Serves each GOP's source frames from a sequential reader, reading every frame once.

    ``reader.read(n)`` returns the next ``<= n`` frames (uint8 [n, H, W, 3]). Frames a later GOP
    shares with an earlier one are kept until used; nothing else is held. GOPs may be skipped
    (their frames are read and dropped), never revisited.
    """

    def __init__(self, reader, plan: GopPlan):
        self.reader = reader
        self.plan = plan
        # held frames, source indices [self._start, self._start + len(self._buf))
        self._buf: Optional[np.ndarray] = None
        self._start = 0

    def __call__(self, span: GopSpan) -> np.ndarray:
        held = 0 if self._buf is None else len(self._buf)
        if span.start < self._start:
            raise ValueError(f"GOP {span.index} (frames {span.start}-{span.stop}) is out of reading order")
        if span.start > self._start + held:  # GOPs were skipped (a resumed encode): read past their frames
            gap = span.start - self._start - held
            for done in range(0, gap, 64):
                self._read(min(64, gap - done))
            self._buf, self._start, held = None, span.start, 0
        missing = span.stop - (self._start + held)
        buf = self._buf
        if missing > 0:
            new = self._read(missing)
            buf = new if buf is None else np.concatenate([buf, new])
        assert buf is not None  # a GOP has frames: read now, or held since the previous GOP
        clip = buf[span.start - self._start: span.stop - self._start]
        nxt = self.plan.spans[span.index + 1].start if span.index + 1 < self.plan.num_gops else span.stop
        rest = buf[min(nxt, span.stop) - self._start:]
        self._buf = rest.copy() if len(rest) else None
        self._start = min(nxt, span.stop)
        return pad_gop(clip, span)

    def _read(self, n: int) -> np.ndarray:
        chunks, got = [], 0
        while got < n:
            c = self.reader.read(n - got)
            if len(c) == 0:
                break
            chunks.append(c)
            got += len(c)
        if got < n:
            raise ValueError(f"the video ended {n - got} frames earlier than its frame count said")
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


class ArrayReader:
    """``read(n)`` over an in-memory uint8 [F, H, W, 3] array (the same interface as io.video_reader.VideoReader)."""

    def __init__(self, video: np.ndarray, fps: float = 16.0):
        self.video = video
        self.fps = fps
        self.num_frames = int(video.shape[0])
        self.height, self.width = int(video.shape[1]), int(video.shape[2])
        self._pos = 0

    def read(self, n: int) -> np.ndarray:
        out = self.video[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

