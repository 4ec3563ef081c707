"""The GOP coder: ONE loop over a plan's waves, for the encoder and the decoder alike.

For every GOP, wave by wave::

    inputs  = source.gop_input(span)                  # encoder: source frames; decoder: stream picks
    source.prepare(chunk_inputs)                      # encoder: target latents (one GOP per device)
    anchors = source.anchors(variant, span, inputs)   # encoder codes them, decoder reads them
    context.add_anchors(variant.read_anchors(span, anchors, eng))   # both: the *decoded* anchor images
    cond    = variant.condition(span, context, eng)   # from *decoded* context only (closed loop)
    latent  = engine.run(span, cond, inputs)          # the shared trajectory (codec.sampling.trajectory)
    side    = source.side(variant, span, latent, inputs)   # encoder makes it, decoder reads it
    latent  = variant.apply_side(span, latent, side)
    frames  = engine.frames(latent)                   # -> context for later GOPs, and output

GOPs of a wave run in chunks, one GOP per device (``gvc_jax.parallel``), each device running the
single-GOP program, so the result does not depend on the number of devices.

Only ``source`` differs between the two directions: ``SearchTargets`` (encoder: picks come from
the codebook search against the target latent of the GOP's source frames) or ``StreamPicks``
(decoder: picks come from the stream's records). Because later GOPs condition on the decoded
frames in both directions, the encoder's reconstruction is exactly the decoder's output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Protocol, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from gvc_jax import compile_cache
from gvc_jax._memory import release_freed_memory
from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop.engine import GopEngine
from gvc_jax.codec.gop.plan import GopPlan, GopSpan
from gvc_jax.codec.gop.records import LATENT_HASH_BYTES, latent_hash, record_to_picks
from gvc_jax.codec.gop.variants import Variant
from gvc_jax.codec.sampling.trajectory import Picks


class NonFiniteError(ValueError):
    """A GOP's final latent has NaN or inf values: nothing non-finite is ever written."""


class Progress:
    """Progress reports of a coding run (no-op base; the CLI shows bars). ``step`` is called only
    when ``wants_steps``: the trajectory is then compiled with a per-step host callback, and JAX
    never keeps such a program in its persistent compilation cache."""

    wants_steps = False

    def gop(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` GOPs of ``stage`` ("encode" / "decode") are finished."""

    def step(self, gop: int, step: int) -> None:
        """Sampling step ``step`` of GOP ``gop`` finished (called from the compiled scan)."""


@dataclass
class EncoderInput:
    """What the encoder brings to a GOP: its source frames, and the target latent made from them."""

    frames: np.ndarray                  # uint8 [span.length, H, W, 3] at the coded size
    target: Optional[jax.Array] = None  # normalised target latent (``PickSource.prepare``)


@dataclass
class DecoderInput:
    """What the decoder brings to a GOP: the stream's record (None: lost, the GOP is concealed)."""

    record: Optional[bitstream.GopRecord]
    picks: Optional[Picks] = None       # the record's picks, dense
    side: tuple = ()                    # the record's side payloads


@dataclass
class GopInput:
    """A GOP's inputs: atoms per latent frame, and the encoder's or the decoder's part (a resumed
    encode replays some GOPs through the decoder's)."""

    atoms: np.ndarray                   # int32 [F_lat] atoms per latent frame
    enc: Optional[EncoderInput] = None
    dec: Optional[DecoderInput] = None

    @property
    def target(self) -> Optional[jax.Array]:
        return None if self.enc is None else self.enc.target

    @property
    def frames(self) -> Optional[np.ndarray]:
        return None if self.enc is None else self.enc.frames

    @property
    def picks(self) -> Optional[Picks]:
        return None if self.dec is None else self.dec.picks

    @property
    def side(self) -> tuple:
        return () if self.dec is None else self.dec.side

    @property
    def record(self) -> Optional[bitstream.GopRecord]:
        return None if self.dec is None else self.dec.record

    @property
    def concealed(self) -> bool:
        return self.dec is not None and self.dec.record is None


@dataclass
class GopOutput:
    span: GopSpan
    latent: Optional[jax.Array]        # the latent decoded to frames (after side payloads);
    picks: Optional[Picks]             # both None for another process's GOP (``code_gops(gather=True)``)
    side: tuple
    frames: Optional[np.ndarray]       # uint8 [span.length, H, W, 3] at the coded size (None: an encode
                                       # whose frames nobody uses: no sink, no GOP conditions on them)
    inputs: GopInput
    seconds: float
    digest: Optional[bytes]            # ``records.latent_hash`` of ``latent`` (None: another process's GOP)
    compile_s: float = 0.0             # program preparation (``compile_cache.clock``) during its chunk, shared
    dit_calls: int = 0                 # DiT evaluations of its trajectory (0: concealed)


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

    def needs(self, span: GopSpan) -> bool:
        """Whether later GOPs condition on this GOP's decoded frames (I2V chains)."""
        return span.index in self._last_use

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


class PickSource(Protocol):
    """Where a GOP's atoms come from: the one thing that differs between the directions.

    Encoder: ``SearchTargets`` (search against the target latent of the GOP's source frames);
    decoder: ``StreamPicks`` (the stream's records); a resumed encode: ``ResumedTargets`` (both)."""

    def gop_input(self, span: GopSpan, engine: GopEngine) -> GopInput:
        """The GOP's inputs: atoms per latent frame, and its frames (encoder) or record (decoder)."""

    def prepare(self, inputs: Sequence[GopInput], engine: GopEngine) -> None:
        """Work for a whole chunk at once (the encoder's target latents, one GOP per device)."""

    def anchors(self, variant: Variant, span: GopSpan, inputs: GopInput) -> tuple:
        """The GOP's anchor payloads: coded (encoder) or read (decoder)."""

    def side(self, variant: Variant, span: GopSpan, latent, inputs: GopInput) -> tuple:
        """The GOP's other side payloads, after its trajectory: made (encoder) or read (decoder)."""


def _encoder(inputs: GopInput) -> EncoderInput:
    """An encoder GOP's part (``SearchTargets.gop_input`` always gives it)."""
    assert inputs.enc is not None
    return inputs.enc


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
        return GopInput(atoms=m, enc=EncoderInput(self.frames(span)))

    def prepare(self, inputs: Sequence[GopInput], engine: GopEngine) -> None:
        """The target latents of a chunk's GOPs, VAE-encoded one GOP per device (several processes:
        None for the GOPs of the others)."""
        for inp, target in zip(inputs, engine.target_latents([_encoder(inp).frames for inp in inputs]), strict=False):
            _encoder(inp).target = target

    def anchors(self, variant: Variant, span: GopSpan, inputs: GopInput) -> tuple:
        return tuple(variant.make_anchors(span, inputs.frames))

    def side(self, variant: Variant, span: GopSpan, latent, inputs: GopInput) -> tuple:
        return tuple(variant.make_side(span, latent, inputs.target))


def anchor_payloads(variant: Variant, side) -> tuple:
    """A record's anchor-image payloads, in order."""
    return tuple(p for p in side if p[0] == variant.ANCHOR_TAG)


class StreamPicks:
    """Decoder picks: read each GOP's atoms and side payloads from the stream's records.

    ``headers[span.stream]``: the header of the GOP's stream (one for a decode; a resumed batch
    replays GOPs of several streams); ``records`` by global GOP index."""

    def __init__(self, headers: Sequence[bitstream.Header],
                 records: Union[Sequence[bitstream.GopRecord], Mapping[int, bitstream.GopRecord]], variant: Variant,
                 conceal: bool = False):
        self.headers = tuple(headers)
        self.records = records
        self.variant = variant
        self.conceal = conceal   # a record that is lost or does not parse: conceal its GOP

    def gop_input(self, span: GopSpan, engine: GopEngine) -> GopInput:
        if span.index in getattr(self.records, "lost", ()):
            return GopInput(atoms=engine.trajectory.check_atoms(None), dec=DecoderInput(None))
        try:
            rec = self.records[span.index]
            self.variant.check_side(span.in_stream, rec.side)
        except bitstream.BitstreamError:
            if not self.conceal:
                raise
            return GopInput(atoms=engine.trajectory.check_atoms(None), dec=DecoderInput(None))
        header = self.headers[span.stream]
        apf = header.atoms_per_frame if rec.atoms_per_frame is None else rec.atoms_per_frame
        m = engine.trajectory.check_atoms(apf)
        picks = record_to_picks(rec.picks, header.sampler, len(m), engine.trajectory.slots)
        return GopInput(atoms=m, dec=DecoderInput(rec, picks, tuple(rec.side)))

    def prepare(self, inputs: Sequence[GopInput], engine: GopEngine) -> None:
        """Nothing to compute: the picks were read with the record."""

    def anchors(self, variant: Variant, span: GopSpan, inputs: GopInput) -> tuple:
        return anchor_payloads(variant, inputs.side)

    def side(self, variant: Variant, span: GopSpan, latent, inputs: GopInput) -> tuple:
        return tuple(p for p in inputs.side if p[0] != variant.ANCHOR_TAG)


class ResumedTargets:
    """A resumed encode's picks: the journalled GOPs in ``finished`` are replayed from their records
    (the decoder's path, so their frames are exactly the first run's once the caller has checked
    each replayed latent against its record's hash), the rest are searched."""

    def __init__(self, search: SearchTargets, headers: Sequence[bitstream.Header], finished: dict, variant: Variant):
        self.search = search
        self.replay = StreamPicks(headers, finished, variant)

    def _of(self, inputs: GopInput):
        return self.search if inputs.record is None else self.replay

    def gop_input(self, span: GopSpan, engine: GopEngine) -> GopInput:
        if span.index in self.replay.records:
            self.search.frames(span)  # read in order (a resumed encode checks them against the journal) first
            return self.replay.gop_input(span, engine)
        return self.search.gop_input(span, engine)

    def prepare(self, inputs: Sequence[GopInput], engine: GopEngine) -> None:
        searched = [i for i in inputs if i.record is None]
        if not searched:  # a chunk of replays only (the same on every process)
            return
        # every GOP keeps its place in the chunk (with several processes a target is made where its
        # GOP runs): a replayed GOP's place gets a searched GOP's frames, and its target is dropped
        stand_in = _encoder(searched[0]).frames
        for inp, target in zip(inputs, engine.target_latents([stand_in if i.record is not None else _encoder(i).frames
                                                              for i in inputs]), strict=False):
            if inp.record is None:
                _encoder(inp).target = target

    def anchors(self, variant: Variant, span: GopSpan, inputs: GopInput) -> tuple:
        return self._of(inputs).anchors(variant, span, inputs)

    def side(self, variant: Variant, span: GopSpan, latent, inputs: GopInput) -> tuple:
        return self._of(inputs).side(variant, span, latent, inputs)


def context_frames(plan: GopPlan, variant: Variant, span: GopSpan) -> Tuple[int, ...]:
    """The source frames of GOP ``span``'s *output* that later GOPs condition on (I2V: its last
    frame; FLF2V: none, its boundaries come from anchor payloads)."""
    coded = {f for s in plan.spans for f in variant.coded_anchors(s)}
    later = {f for s in plan.spans if span.index in s.depends_on for f in s.anchors}
    return tuple(sorted(f for f in later - coded if span.start <= f < span.stop))


CONCEAL_GRAY = 128  # a concealed GOP with nothing decoded before it


def conceal_gop(span: GopSpan, variant: Variant, context: DecodedContext, engine: GopEngine,
                previous: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The frames of a GOP whose record is lost (``decode --conceal``): its first frame's decoded
    pixels repeated (frame freeze). For FLF2V and I2V that is the boundary frame the GOP shares with
    the previous one (the previous record's anchor, or the previous GOP's decoded last frame); the
    anchors the lost record carried are replaced by the same pixels, so later GOPs still decode
    (conditioned on the concealed frame: their latents drift, and are reported). For T2V: the last
    frame of the previous GOP (``previous``), else None until it is known; gray with nothing before.
    -> uint8 [span.length, H, W, 3] at the coded size."""
    ref: Optional[np.ndarray]
    try:
        ref = context.pixels(span.start)
    except KeyError:
        ref = previous
    if ref is None:
        if not span.anchors and span.index and previous is None:
            return None  # T2V: the previous GOP of this chunk is not decoded yet
        ref = np.full((engine.height, engine.width, 3), CONCEAL_GRAY, np.uint8)
    context.add_anchors({f: ref for f in variant.coded_anchors(span)})
    return np.repeat(ref[None], span.length, axis=0)


@dataclass
class FinishedGop:
    """A GOP a resumed encode does not run: its record and its journalled ``context_frames`` pixels
    (unverified: only a replayed GOP, whose latent is checked, may condition on them; else empty)."""

    record: bitstream.GopRecord
    frames: dict


@dataclass
class _Walk:
    """What the loop carries from chunk to chunk."""

    plan: GopPlan
    variant: Variant
    engine: GopEngine
    source: PickSource
    progress: Progress
    stage: str
    context: DecodedContext
    done: int = 0
    last_frame: Optional[np.ndarray] = None  # the last real frame of the latest GOP (a concealed T2V GOP repeats it)

    def finished(self) -> None:
        self.done += 1
        self.progress.gop(self.stage, self.done, self.plan.num_gops)


def code_gops(plan: GopPlan, variant: Variant, engine: GopEngine, source: PickSource, *,
              progress: Optional[Progress] = None, stage: str = "code",
              skip: Optional[Dict[int, FinishedGop]] = None, gather: bool = False) -> Iterator[GopOutput]:
    """Walk the plan wave by wave; yield each GOP's result as soon as it is done.

    A wave is coded in chunks of up to ``engine.mesh.size`` GOPs, one per device (``parallel``):
    the inputs, anchors and conditioning of a chunk's GOPs are prepared in index order (a GOP's
    shared anchors were read with an earlier GOP), then the VAE encode (encoder), the trajectory
    and the VAE decode run for the whole chunk at once, each device running the single-GOP program.

    ``skip``: GOPs that are not run and not yielded (a resumed encode without a sink): only what
    later GOPs need of them enters the context (their anchor payloads and ``context_frames``).

    With several processes each yields only the GOPs it ran, unless ``gather``: then every GOP's
    frames and latent digest reach every process (``GopMesh.share``, a chunk at a time) and every
    GOP is yielded everywhere, another process's with ``latent`` and ``picks`` None (decoding, or
    an encoder that writes the reconstruction, on several hosts). All processes must agree on it.
    An encode (``stage="encode"``) without ``gather`` VAE-decodes only the GOPs later GOPs condition
    on (I2V chains): a T2V or FLF2V encode with no sink decodes no frames at all.
    """
    skip = skip or {}
    walk = _Walk(plan, variant, engine, source, progress or Progress(), stage, DecodedContext(plan))
    walk.progress.gop(stage, 0, plan.num_gops)
    for wave in plan.waves():
        for span in wave:
            if span.index in skip:  # what later GOPs need of it: its anchors and journalled context frames
                walk.context.add_anchors(variant.read_anchors(span, anchor_payloads(variant, skip[span.index].record
                                                                                    .side), engine))
                walk.context.add_anchors(skip[span.index].frames)
                walk.finished()
        for chunk in engine.mesh.chunks([span for span in wave if span.index not in skip]):
            yield from _code_chunk(walk, chunk, gather)


def _code_chunk(walk: _Walk, chunk: Sequence[GopSpan], gather: bool) -> Iterator[GopOutput]:
    """One chunk of a wave, one GOP per device: inputs, conditioning, trajectories, side payloads,
    frames; then the frames later GOPs need are shared (several processes) and every GOP yielded."""
    engine = walk.engine
    t0, c0 = time.perf_counter(), compile_cache.clock()
    inputs = [walk.source.gop_input(span, engine) for span in chunk]
    walk.source.prepare(inputs, engine)
    anchor_sides, conds, concealed = _condition(walk, chunk, inputs)
    ran = [i for i, inp in enumerate(inputs) if not inp.concealed]
    results: list = [None] * len(chunk)
    if ran:
        for i, result in zip(ran, engine.run_many(
                [chunk[i].in_stream for i in ran], [conds[i] for i in ran], [inputs[i].atoms for i in ran],
                targets=[inputs[i].target for i in ran], picks=[inputs[i].picks for i in ran],
                on_step=walk.progress.step if walk.progress.wants_steps else None), strict=False):
            results[i] = result
    latents, sides = _complete(walk, chunk, inputs, results)
    # the VAE decode runs only for frames someone uses: the decoder's output, an encoder's sink (``gather``)
    # or later GOPs' conditioning (I2V chains); a T2V / FLF2V encode without a sink decodes nothing
    needed = walk.stage != "encode" or gather or any(walk.context.needs(span) for span in chunk)
    frames = engine.frames_many(latents) if needed and (ran or engine.mesh.distributed) else [None] * len(chunk)
    frames = _conceal(walk, chunk, [concealed.get(span.index, frame) for span, frame in zip(chunk, frames,
                                                                                             strict=True)], concealed)
    digests = [None if latent is None else latent_hash(latent) for latent in latents]
    if engine.mesh.distributed:  # frames later GOPs condition on: from their process to every process
        frames = engine.mesh.share(frames, [gather or walk.context.needs(span) for span in chunk],
                                   (engine.gop_frames, engine.height, engine.width, 3))
        if gather:
            digests = [bytes(d) for d in engine.mesh.share(
                [None if d is None else np.frombuffer(d, np.uint8) for d in digests],
                [True] * len(chunk), (LATENT_HASH_BYTES,))]
    for span, frame in zip(chunk, frames, strict=True):
        if frame is not None:
            walk.context.add(span, frame)
        walk.context.release(span)
    release_freed_memory()
    seconds = (time.perf_counter() - t0) / len(chunk)  # the chunk's wall time, shared by its GOPs
    compile_s = (compile_cache.clock() - c0) / len(chunk)
    for k, span in enumerate(chunk):
        result, inp = results[k], inputs[k]
        if result is not None or gather or inp.concealed:
            yield GopOutput(span, latents[k], None if result is None else result[1],
                            tuple(anchor_sides[k]) + tuple(sides[k]), frames[k], inp, seconds, digests[k],
                            compile_s, 0 if inp.concealed else engine.trajectory.dit_calls)
        walk.finished()


def _condition(walk: _Walk, chunk: Sequence[GopSpan], inputs: Sequence[GopInput]) -> tuple:
    """Each GOP's anchors (into the decoded context) and conditioning, in index order: -> (anchor
    payloads, conditioning dicts (None: a concealed GOP, never run), concealed GOPs' frames)."""
    anchor_sides: list[tuple] = []
    conds: list[Any] = []
    concealed: dict[int, Optional[np.ndarray]] = {}
    for span, inp in zip(chunk, inputs, strict=True):
        if inp.concealed:  # no record: frames from what was decoded before it (``conceal_gop``)
            concealed[span.index] = conceal_gop(span, walk.variant, walk.context, walk.engine)
            anchor_sides.append(())
            conds.append(None)
            continue
        anchor_side = walk.source.anchors(walk.variant, span, inp)  # every process: later GOPs may share them
        walk.context.add_anchors(walk.variant.read_anchors(span, anchor_side, walk.engine))
        anchor_sides.append(anchor_side)
        conds.append(walk.variant.condition(span, walk.context, walk.engine))  # all: the programs need every shape
    return anchor_sides, conds, concealed


def _complete(walk: _Walk, chunk: Sequence[GopSpan], inputs: Sequence[GopInput], results: list) -> tuple:
    """Each trajectory's side payloads (made or read) applied to its latent: -> (latents, side payloads);
    None and () for another process's GOP or a concealed one."""
    latents: list[Optional[jax.Array]] = []
    sides: list[tuple] = []
    for span, inp, result in zip(chunk, inputs, results, strict=True):
        if result is None:
            latents.append(None)
            sides.append(())
            continue
        side = walk.source.side(walk.variant, span, result[0], inp)
        latent = jax.block_until_ready(walk.variant.apply_side(span, result[0], side))
        if not bool(jnp.all(jnp.isfinite(latent))):
            raise NonFiniteError(f"GOP {span.index}: the trajectory produced non-finite values "
                                 f"(the sampler settings or the model weights are unusable)")
        latents.append(latent)
        sides.append(side)
    return latents, sides


def _conceal(walk: _Walk, chunk: Sequence[GopSpan], frames: list, concealed: dict) -> list:
    """A concealed GOP with no earlier frame to repeat when it was prepared repeats the one just
    before it; every GOP's last real frame is remembered for the next."""
    for k, span in enumerate(chunk):
        if span.index in concealed and frames[k] is None:
            frames[k] = conceal_gop(span, walk.variant, walk.context, walk.engine, previous=walk.last_frame)
        if frames[k] is not None:
            walk.last_frame = frames[k][span.stop - span.start - 1]
    return frames
