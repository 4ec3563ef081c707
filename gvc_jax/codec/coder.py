"""The GOP coder: ONE loop over a plan's waves, for the encoder and the decoder alike.

For every GOP, wave by wave::

    inputs  = source.gop_input(span)                  # encoder: target latent; decoder: stream picks
    anchors = source.anchors(variant, span, inputs)   # encoder codes them, decoder reads them
    context.add_anchors(variant.read_anchors(span, anchors, eng))   # both: the *decoded* anchor images
    cond    = variant.condition(span, context, eng)   # from *decoded* context only (closed loop)
    latent  = engine.run(span, cond, inputs)          # the shared trajectory (codec.trajectory)
    side    = source.side(variant, span, latent, inputs)   # encoder makes it, decoder reads it
    latent  = variant.apply_side(span, latent, side)
    frames  = engine.frames(latent)                   # -> context for later GOPs, and output

Only ``source`` differs between the two directions: ``SearchTargets`` (encoder: picks come from
the codebook search against the target latent of the GOP's source frames) or ``StreamPicks``
(decoder: picks come from the stream's records). Because later GOPs condition on the decoded
frames in both directions, the encoder's reconstruction is exactly the decoder's output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gvc_jax.codec import bitstream
from gvc_jax.codec.engine import GopEngine
from gvc_jax.codec.plan import GopPlan, GopSpan
from gvc_jax.codec.records import record_to_picks
from gvc_jax.codec.trajectory import Picks
from gvc_jax.codec.variants import Variant


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS after each GOP (glibc ``malloc_trim``).

    XLA's worker threads allocate and free a GOP's buffers in many malloc arenas; without a trim
    the freed pages stay resident and the process grows by about 10 MB per GOP (measured), so
    peak memory would grow with the video's length. Elsewhere this is a no-op.
    """
    if _LIBC[0] is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC[0] = lib.malloc_trim if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC[0] = False
    if _LIBC[0]:
        _LIBC[0](0)


_LIBC: list = [None]


class NonFiniteError(ValueError):
    """A GOP's final latent has NaN or inf values: nothing non-finite is ever written."""


class Progress:
    """Progress reports of a coding run (no-op base; the CLI shows bars)."""

    def gop(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` GOPs of ``stage`` ("encode" / "decode") are finished."""

    def step(self, gop: int, step: int) -> None:
        """Sampling step ``step`` of GOP ``gop`` finished (called from the compiled scan)."""


@dataclass
class GopInput:
    """What one direction provides for a GOP."""

    atoms: np.ndarray                  # int32 [F_lat] atoms per latent frame
    target: Optional[jax.Array] = None  # encoder: normalised target latent
    frames: Optional[np.ndarray] = None  # encoder: the GOP's source frames (uint8, coded size)
    picks: Optional[Picks] = None      # decoder: dense picks read from the stream
    side: tuple = ()                   # decoder: the record's side payloads
    record: Optional[bitstream.GopRecord] = None


@dataclass
class GopOutput:
    span: GopSpan
    latent: jax.Array                  # the latent decoded to frames (after side payloads)
    picks: Picks
    side: tuple
    frames: np.ndarray                 # uint8 [span.length, H, W, 3] at the coded size
    inputs: GopInput
    seconds: float


class DecodedContext:
    """What conditioning may use, all of it *decoded*: the output frames of the GOPs that later
    GOPs depend on (freed after their last use) and the decoded anchor images, by source frame."""

    def __init__(self, plan: GopPlan):
        self._plan = plan
        self._last_use = plan.last_use()
        self._frames: dict = {}
        self._anchors: dict = {}

    def add_anchors(self, images: dict) -> None:
        self._anchors.update(images)

    def pixels(self, frame: int) -> np.ndarray:
        """uint8 [H, W, 3]: the decoded pixels of source frame ``frame`` (an anchor image, or a frame
        of a decoded GOP that is still held)."""
        if frame in self._anchors:
            return self._anchors[frame]
        for gop, frames in self._frames.items():
            span = self._plan.spans[gop]
            if span.start <= frame < span.stop:
                return frames[frame - span.start]
        raise KeyError(f"source frame {frame} has not been decoded yet")

    def add(self, span: GopSpan, frames: np.ndarray) -> None:
        if span.index in self._last_use:
            self._frames[span.index] = frames

    def frames(self, gop: int) -> np.ndarray:
        return self._frames[gop]

    def release(self, span: GopSpan) -> None:
        for d in span.depends_on:
            if self._last_use.get(d) == span.index:
                self._frames.pop(d, None)
        for frame in [f for f in self._anchors if f < span.start]:  # anchors before this GOP are done
            del self._anchors[frame]


class SearchTargets:
    """Encoder picks: search the codebook against the target latent of each GOP's source frames.

    ``frames(span)`` -> uint8 [span.length, H, W, 3] at the coded size; ``atoms(span)`` -> M per
    latent frame for that GOP (rate control; default: the sampler's).
    """

    def __init__(self, frames: Callable[[GopSpan], np.ndarray],
                 atoms: Optional[Callable[[GopSpan], Sequence[int]]] = None):
        self.frames = frames
        self.atoms = atoms

    def gop_input(self, span: GopSpan, engine: GopEngine) -> GopInput:
        m = engine.trajectory.check_atoms(None if self.atoms is None else self.atoms(span))
        frames = self.frames(span)
        return GopInput(atoms=m, target=engine.target_latent(frames), frames=frames)

    def anchors(self, variant: Variant, span: GopSpan, inputs: GopInput) -> tuple:
        return tuple(variant.make_anchors(span, inputs.frames))

    def side(self, variant: Variant, span: GopSpan, latent, inputs: GopInput) -> tuple:
        return tuple(variant.make_side(span, latent, inputs.target))


class StreamPicks:
    """Decoder picks: read each GOP's atoms and side payloads from the stream's records."""

    def __init__(self, header: bitstream.Header, records: Sequence[bitstream.GopRecord], variant: Variant):
        self.header = header
        self.records = records
        self.variant = variant

    def gop_input(self, span: GopSpan, engine: GopEngine) -> GopInput:
        rec = self.records[span.index]
        self.variant.check_side(span.index, rec.side)
        apf = self.header.atoms_per_frame if rec.atoms_per_frame is None else rec.atoms_per_frame
        m = engine.trajectory.check_atoms(apf)
        picks = record_to_picks(rec.picks, self.header.steps, len(m), engine.trajectory.slots)
        return GopInput(atoms=m, picks=picks, side=tuple(rec.side), record=rec)

    def anchors(self, variant: Variant, span: GopSpan, inputs: GopInput) -> tuple:
        return tuple(p for p in inputs.side if p[0] == variant.ANCHOR_TAG)

    def side(self, variant: Variant, span: GopSpan, latent, inputs: GopInput) -> tuple:
        return tuple(p for p in inputs.side if p[0] != variant.ANCHOR_TAG)


def code_gops(plan: GopPlan, variant: Variant, engine: GopEngine, source, *,
              progress: Optional[Progress] = None, stage: str = "code") -> Iterator[GopOutput]:
    """Walk the plan wave by wave; yield each GOP's result as soon as it is done."""
    progress = progress or Progress()
    context = DecodedContext(plan)
    on_step = progress.step
    done = 0
    progress.gop(stage, 0, plan.num_gops)
    for wave in plan.waves():
        for span in wave:  # in index order: a GOP's shared anchors were read with an earlier GOP
            t0 = time.perf_counter()
            inputs = source.gop_input(span, engine)
            anchor_side = source.anchors(variant, span, inputs)
            context.add_anchors(variant.read_anchors(span, anchor_side, engine))
            cond = variant.condition(span, context, engine)
            latent, picks = engine.run(span.index, cond, inputs.atoms, target=inputs.target, picks=inputs.picks,
                                       on_step=on_step)
            side = source.side(variant, span, latent, inputs)
            latent = jax.block_until_ready(variant.apply_side(span, latent, side))
            if not bool(jnp.all(jnp.isfinite(latent))):
                raise NonFiniteError(f"GOP {span.index}: the trajectory produced non-finite values "
                                     f"(the sampler settings or the model weights are unusable)")
            frames = engine.frames(latent)
            context.add(span, frames)
            context.release(span)
            _release_freed_memory()
            done += 1
            yield GopOutput(span, latent, picks, tuple(anchor_side) + tuple(side), frames, inputs,
                            time.perf_counter() - t0)
            progress.gop(stage, done, plan.num_gops)
