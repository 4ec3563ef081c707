"""Video <-> stream: thin wrappers around the one GOP loop (``codec.gop.loop.code_gops``).

``encode_stream`` reads frames GOP by GOP from a reader, ``decode_stream`` hands decoded frames
to a sink as soon as their GOP is done, so peak memory does not grow with the video's length.
``encode_video`` / ``decode_video`` are the in-memory conveniences (arrays in, arrays out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop.engine import GeometryError, GopEngine, check_geometry, check_memory
from gvc_jax.codec.gop.journal import Expect, Journal, JournalError, SourceCheck, run_key
from gvc_jax.codec.gop.loop import (
    FinishedGop,
    GopOutput,
    Progress,
    ResumedTargets,
    SearchTargets,
    StreamPicks,
    anchor_payloads,
    code_gops,
    context_frames,
)
from gvc_jax.codec.gop.plan import ArrayReader, GopFrames, GopPlan, GopSpan
from gvc_jax.codec.gop.rate import RateTarget
from gvc_jax.codec.gop.records import picks_to_record
from gvc_jax.codec.gop.variants import ANCHOR_TAG, RESIDUAL_TAG, get_variant
from gvc_jax.codec.sampling import multires
from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.io.ffmpeg import fps_fraction
from gvc_jax.models.registry import execution_settings
from gvc_jax.models.text import prompt_context
from gvc_jax.parallel import GopMesh
from gvc_jax.pixels import crop, pad_to_multiple

SIZE_MULTIPLE = 16

Sink = Callable[[np.ndarray], None]  # receives uint8 [n, H, W, 3] output frames, in order


class DriftError(RuntimeError):
    """The decoder's final latent differs from the encoder's (hash mismatch)."""

class ModelMismatchError(ValueError):
    """The loaded model is not the one the stream was encoded with."""


@dataclass
class GopReport:
    index: int
    seconds: float
    atoms: tuple = ()
    latent_mse: Optional[float] = None  # encoder: final latent vs target
    drift: bool = False                 # decoder: hash mismatch
    side_bytes: tuple = ()              # the lengths of the GOP's side payloads, (tag, bytes) each
    resumed: bool = False               # encoder: taken from a resume journal, not coded in this run
    compile_s: float = 0.0              # program preparation (compile or cache load) during its chunk
    dit_calls: int = 0                  # DiT evaluations of its trajectory (0: not run here)


@dataclass
class CodecResult:
    """What encode/decode produced: the reconstructed video (uint8, if collected) and per-GOP reports."""
    video: Optional[np.ndarray]
    fps: float
    header: "bitstream.Header"
    gops: List[GopReport] = field(default_factory=list)
    stream: bytes = b""
    journal: Optional[Journal] = None   # encoder with ``resume``: the open journal (remove it when written)
    concealed: List[int] = field(default_factory=list)  # decoder with ``conceal``: GOPs whose record was lost
    affected: List[int] = field(default_factory=list)   # ... and GOPs conditioned on a concealed one
    plan: Any = None    # encoder with the rate-compute planner: its ``codec.planner.Plan`` (the chosen schedule)

    def report(self, size: Optional[int] = None) -> dict:
        """The numbers every front end reports of a run (encode, batch, decode, demo, rd): the video,
        the rate (``size``: the stream's bytes, default ``len(stream)``) and its split
        (``rate_breakdown``), time and compute per GOP (``compute_report``). Front ends add what
        only they know (paths, quality, resumed / drifted / concealed GOPs)."""
        h = self.header
        frames, width, height = h.num_frames, h.orig_width, h.orig_height
        size = len(self.stream) if size is None else int(size)
        out = {"frames": frames, "width": width, "height": height, "fps": self.fps, "gops": len(self.gops),
               "bytes": size, "bpp": 8.0 * size / (frames * width * height),
               "kbps": 8 * size / 1000 / (frames / self.fps),
               "seconds_per_gop": [round(g.seconds, 3) for g in self.gops],
               "atoms_per_frame": list(h.atoms_per_frame), **rate_breakdown(self), **compute_report(self)}
        if self.plan is not None:  # the planner's schedule as coded (T, skips: realised) and its prediction
            out.update({"steps": h.sampler.steps, "x0_cache_steps": list(h.sampler.x0_cache), **self.plan.report()})
        return out


def _pixels(out: GopOutput) -> np.ndarray:
    """A GOP's decoded frames, where the loop decoded them (``code_gops``: a sink wants them, or later
    GOPs condition on them)."""
    if out.frames is None:
        raise RuntimeError(f"GOP {out.span.index}: its frames were not decoded (no sink asked for them)")
    return out.frames


def _emitter(plan: GopPlan, height: int, width: int, sink: Optional[Sink]):
    """GopOutput -> the GOP's new output frames (cropped, shared frames once) into ``sink``."""
    def emit(out: GopOutput) -> None:
        if sink is not None:
            skip, count = plan.new_frames(out.span)
            sink(crop(_pixels(out)[skip:skip + count], height, width))
    return emit


def plan_for(model, variant, num_frames: int, gop_frames: int):
    """-> (Variant, GopPlan); ``variant`` is a name or a ``Variant`` (with encoder settings)."""
    variant = get_variant(variant) if isinstance(variant, str) else variant
    variant.check_model(model.config)
    return variant, variant.plan(num_frames, gop_frames, model.config.vae.temporal_stride)


@dataclass
class EncodeJob:
    """One video of an encode (``encode_streams``): where its frames come from and what its run does.

    ``reader``: ``num_frames``, ``height``, ``width``, ``fps``, ``read(n)``. ``sink`` receives its
    reconstruction. ``gop_atoms``: M per latent frame for each GOP (rate control; the header then
    carries their element-wise maximum and every record its own). ``target``: a byte budget the
    atoms are fitted to (``rate.RateTarget``). ``resume``: the output path whose journal
    (``codec.gop.journal``) records each finished GOP, bound to ``resume_identity`` (the input)."""
    reader: Any
    sink: Optional[Sink] = None
    gop_atoms: Optional[Sequence[Sequence[int]]] = None
    target: Optional[RateTarget] = None
    resume: Optional[str] = None
    resume_identity: tuple = ()


@dataclass
class _Coding:
    """One stream of an encode while its GOPs are coded: its plan, header, journal and records."""
    job: EncodeJob
    plan: GopPlan
    header: bitstream.Header
    gop_atoms: Optional[List[Tuple[int, ...]]]
    read: Callable[[GopSpan], np.ndarray]     # a GOP's frames at the coded size (through ``checked`` when resumed)
    journal: Optional[Journal] = None
    checked: Optional[SourceCheck] = None
    framed: List[bytes] = field(default_factory=list)
    reports: Dict[int, GopReport] = field(default_factory=dict)

    def result(self) -> CodecResult:
        reports = [self.reports.get(g) or _record_report(self.header, g, bitstream.parse_record(
            self.header, g, self.framed[g])) for g in range(self.plan.num_gops)]
        return CodecResult(None, self.job.reader.fps, self.header, reports,
                           bitstream.assemble(self.header, self.framed), self.journal)


def encode_streams(jobs: Sequence[EncodeJob], model, sampler: SamplerConfig, *, variant="t2v",
                   gop_frames: int = 33, progress: Optional[Progress] = None,
                   devices: Union[int, GopMesh, None] = None, prompt: str = "") -> List[CodecResult]:
    """Videos of one coded size -> one stream each, coded in one run of the GOP loop.

    One stream is the case of one job. The plans are joined (``GopPlan.batch``), so every wave
    holds the ready GOPs of every video and is coded one GOP per device: the I2V chains of
    different videos advance side by side. Each stream is exactly what the video would give alone
    (same keys, same records): the bytes depend neither on the batch nor on ``devices`` (a
    device count, or a ``parallel.GopMesh``, e.g. with weight shards; default: all local devices).

    Resumed jobs: GOPs their journal already holds are not coded again (replayed through the
    decoder's path when a sink wants their frames); ``result.journal`` is open on return: remove
    it once the stream is safely written. ``prompt``: stored in every header; both sides condition
    on its umT5 embedding. With several processes (``jax.distributed``) each codes its share of
    every wave and every one returns every stream; a sink then gets every GOP's frames (gathered a
    chunk at a time), so either every process passes sinks or none does.
    """
    if not jobs:
        raise ValueError("an encode needs at least one video")
    mesh = GopMesh.of(devices)
    var = get_variant(variant) if isinstance(variant, str) else variant
    streams = [_coding(job, model, sampler, var, gop_frames, prompt) for job in jobs]
    # before any model work: a journal of another run, or an entry that does not fit this encode, is refused here
    for st in streams:
        if st.job.resume is not None:
            st.journal = _open_resume(st, var, mesh, execution_settings(model))
    engine = gop_engine(model, _engine_header([st.header for st in streams]), mesh)
    plan = streams[0].plan if len(streams) == 1 else GopPlan.batch([st.plan for st in streams])[0]
    base = np.cumsum([0] + [st.plan.num_gops for st in streams])  # each stream's first global GOP
    local = lambda span: streams[span.stream].plan.spans[span.in_stream]  # noqa: E731
    search = SearchTargets(lambda span: streams[span.stream].read(local(span)),
                           lambda span: _gop_atoms(streams[span.stream], span.in_stream))
    source: Union[SearchTargets, ResumedTargets] = search
    skip: Dict[int, FinishedGop] = {}
    replay: Dict[int, bitstream.GopRecord] = {}
    for v, st in enumerate(streams):
        if st.journal is not None:
            again, skipped = _resumed(st, var, mesh)
            replay.update({int(base[v]) + g: rec for g, rec in again.items()})
            skip.update({int(base[v]) + g: fin for g, fin in skipped.items()})
    if replay:
        source = ResumedTargets(search, [st.header for st in streams], replay, var)
    try:
        _run_encode(plan, var, engine, source, streams, local, progress, skip)
    except BaseException:
        for st in streams:
            if st.journal is not None:
                st.journal.close()
        raise
    if mesh.distributed:  # every process coded its share of each wave: gather all records everywhere
        every = mesh.share_bytes([b for st in streams for b in st.framed])
        for v, st in enumerate(streams):
            st.framed = every[int(base[v]):int(base[v + 1])]
    return [st.result() for st in streams]


def _coding(job: EncodeJob, model, sampler: SamplerConfig, var, gop_frames: int, prompt: str) -> _Coding:
    """A job's plan and validated header, and the reading of its GOPs' frames (padded to 16)."""
    var, plan = plan_for(model, var, job.reader.num_frames, gop_frames)
    gop_atoms = None if job.gop_atoms is None else [tuple(int(m) for m in a) for a in job.gop_atoms]
    header = _encoder_header(job.reader, model, sampler, var, plan, gop_atoms, prompt, job.target)
    frames = GopFrames(job.reader, plan)
    st = _Coding(job, plan, header, gop_atoms, lambda span: pad_to_multiple(frames(span), SIZE_MULTIPLE),
                 framed=[b""] * plan.num_gops)
    return st


def _engine_header(headers: Sequence[bitstream.Header]) -> bitstream.Header:
    """The header the engine is built for: the streams' common geometry and prompt, and atom slots
    for the most atoms any of them uses (each GOP then runs with its own stream's atoms)."""
    sizes = {(h.width, h.height) for h in headers}
    if len(sizes) != 1:
        raise ValueError(f"a batch codes videos of one coded size, got {sorted(sizes)} (use --resize WxH)")
    atoms = tuple(max(col) for col in zip(*(h.atoms_per_frame for h in headers), strict=True))
    return headers[0].replace(sampler=headers[0].sampler.replace(atoms_per_frame=atoms))


def _gop_atoms(st: _Coding, g: int) -> Tuple[int, ...]:
    """GOP ``g`` of stream ``st``: its atoms per latent frame (rate control, else the header's)."""
    return st.gop_atoms[g] if st.gop_atoms is not None else tuple(st.header.atoms_per_frame)


def _run_encode(plan: GopPlan, var, engine: GopEngine, source, streams: List[_Coding], local, progress,
                skip: Dict[int, FinishedGop]) -> None:
    """The GOP loop of an encode: each coded GOP's record (and journal entry), each replayed GOP's
    latent checked against its record, every GOP's frames to its stream's sink."""
    wants_frames = any(st.job.sink is not None for st in streams)
    for out in code_gops(plan, var, engine, source, progress=progress, stage="encode", skip=skip,
                         gather=wants_frames):
        st, span = streams[out.span.stream], local(out.span)
        g = span.index
        if out.inputs.record is not None:  # replayed from the journal (by whichever process ran it)
            if out.digest != out.inputs.record.latent_hash:
                assert st.journal is not None  # only a resumed encode replays records
                where = st.journal.entries[g].path
                raise JournalError(f"GOP {g}: replaying the record journalled in {where} did not reproduce the "
                                   f"first run's latent (the journal was altered, or another platform or dtype); "
                                   f"delete {where} to start over")
        elif out.latent is not None:  # coded here (else: another process's GOP, gathered for the sink)
            st.framed[g], st.reports[g] = _coded_record(st.header, g, out)
            if st.journal is not None:
                assert st.checked is not None  # made with the journal
                keep = context_frames(st.plan, var, span)
                st.journal.add(g, st.framed[g], {f: _pixels(out)[f - span.start] for f in keep},
                               source=st.checked.digest(g))
        if st.job.sink is not None:
            skip_frames, count = st.plan.new_frames(span)
            st.job.sink(crop(_pixels(out)[skip_frames:skip_frames + count], st.job.reader.height,
                             st.job.reader.width))
    for st in streams:
        if st.checked is not None:
            st.checked.finish()  # the journalled GOPs after the last coded one: their frames checked too


def encode_stream(reader, model, sampler: SamplerConfig, *, variant="t2v", gop_frames: int = 33,
                  gop_atoms: Optional[Sequence[Sequence[int]]] = None, sink: Optional[Sink] = None,
                  progress: Optional[Progress] = None, target: Optional[RateTarget] = None,
                  devices: Union[int, GopMesh, None] = None, resume: Optional[str] = None,
                  resume_identity: tuple = (), prompt: str = "") -> CodecResult:
    """Frames from ``reader`` -> a stream: ``encode_streams`` of one ``EncodeJob`` (see both)."""
    job = EncodeJob(reader, sink, gop_atoms, target, resume, resume_identity)
    return encode_streams([job], model, sampler, variant=variant, gop_frames=gop_frames, progress=progress,
                          devices=devices, prompt=prompt)[0]


def encode_batch(readers: Sequence, model, sampler: SamplerConfig, *, variant="t2v", gop_frames: int = 33,
                 progress: Optional[Progress] = None, devices=None, prompt: str = "") -> List[CodecResult]:
    """Several videos -> one stream each: ``encode_streams`` of plain jobs."""
    return encode_streams([EncodeJob(r) for r in readers], model, sampler, variant=variant, gop_frames=gop_frames,
                          progress=progress, devices=devices, prompt=prompt)


def _encoder_header(reader, model, sampler: SamplerConfig, var, plan: GopPlan, gop_atoms, prompt: str,
                    target: Optional[RateTarget]) -> bitstream.Header:
    """The validated header of an encode: per-GOP atoms (the header holds their maximum), then a
    byte target's atoms (``rate.RateTarget``)."""
    flags = 0
    if gop_atoms is not None:
        if len(gop_atoms) != plan.num_gops or any(len(a) != len(sampler.atoms_per_frame) for a in gop_atoms):
            raise ValueError(f"gop_atoms needs {plan.num_gops} GOPs x {len(sampler.atoms_per_frame)} latent frames")
        sampler = sampler.replace(atoms_per_frame=tuple(max(col) for col in zip(*gop_atoms, strict=True)))
        flags = bitstream.FLAG_GOP_ATOMS if any(a != sampler.atoms_per_frame for a in gop_atoms) else 0
    header = stream_header(reader, model, sampler, var, plan, flags, prompt)
    if target is not None:
        header = header.replace(sampler=target.sampler(header))
    bitstream.validate_header(header)
    return header


def _open_resume(st: _Coding, var, mesh: GopMesh, execution: tuple) -> Journal:
    """The resume journal of ``st``'s output, bound to this run and every entry checked against its plan;
    its frames are then read through a ``SourceCheck`` against the journal."""
    header, plan = st.header, st.plan
    contexts: Dict[int, tuple] = {}

    def context_of(g: int) -> tuple:  # the frames GOP g's entry must hold
        if g not in contexts:
            contexts[g] = context_frames(plan, var, plan.spans[g])
        return contexts[g]

    def check_record(g: int, data: bytes) -> None:  # GOP g's record, with the payloads its GOP takes
        rec = bitstream.parse_record(header, g, data)
        var.check_side(g, rec.side)
        anchors = len(anchor_payloads(var, rec.side))
        if anchors != len(var.coded_anchors(plan.spans[g])):
            raise bitstream.BitstreamError(f"GOP {g}: {anchors} anchor payloads, variant {var.name} needs "
                                           f"{len(var.coded_anchors(plan.spans[g]))}")

    longest = (bitstream.payload_bits(header) + 7) // 8 + bitstream.MAX_SIDE_BYTES + (1 << 16)  # framed record
    assert st.job.resume is not None
    # the key binds the journal to this run: the header, the variant, the per-GOP atoms, the input and how the
    # model runs (dtype, attention, VAE conv path), so GOPs coded with other numerics are never mixed in
    key = run_key(header, var, st.gop_atoms, tuple(st.job.resume_identity), execution)
    journal = open_journal(st.job.resume, key, mesh,
                           Expect(plan.num_gops, header.height, header.width, context_of, check_record, longest))
    # resumed: the journalled GOPs' frames are read too, and checked against their entries
    st.checked = SourceCheck(st.read, plan.spans, journal)
    st.read = st.checked
    return journal


def _resumed(st: _Coding, var, mesh: GopMesh) -> tuple:
    """The journal's finished GOPs into ``st``'s records and reports: -> (GOPs to replay, GOPs to
    skip), both by the stream's GOP index.

    Without a sink a journalled GOP that a GOP coded now conditions on is replayed from its record
    (the decoder's path, checked against the record's latent hash): journalled frames never reach
    a coded GOP; only such a replay takes them (of the GOP before it) as context, and a change to
    them fails its latent check. The other journalled GOPs are skipped. With a sink (it wants their
    frames) every journalled GOP is replayed."""
    journal, header, plan = st.journal, st.header, st.plan
    assert journal is not None
    finished = {g: bitstream.parse_record(header, g, e.record) for g, e in journal.entries.items()
                if g < plan.num_gops}
    for g, rec in finished.items():
        if not mesh.distributed or jax.process_index() == 0:  # gathered: one process holds each record
            st.framed[g] = journal.entries[g].record
        st.reports[g] = _record_report(header, g, rec, resumed=True)
    skip: Dict[int, FinishedGop] = {}
    if st.job.sink is not None:
        replay = set(finished)
    else:
        replay = {d for s in plan.spans if s.index not in finished for d in s.depends_on if d in finished}
        feeds = {d for r in replay for d in plan.spans[r].depends_on}
        skip = {g: FinishedGop(rec, journal.entries[g].frames if g in feeds else {})
                for g, rec in finished.items() if g not in replay}
    return {g: finished[g] for g in replay}, skip


def coded_size(pixels: int) -> int:
    """A width or height as coded: padded up to a multiple of ``SIZE_MULTIPLE`` (cropped back on decode)."""
    return -(-pixels // SIZE_MULTIPLE) * SIZE_MULTIPLE


def stream_header(reader, model, sampler: SamplerConfig, var, plan: GopPlan, flags: int = 0,
                  prompt: str = "") -> bitstream.Header:
    """The header of the stream of ``reader``'s video coded with ``plan`` (coded size: padded to 16)."""
    fps_num, fps_den = fps_fraction(reader.fps)
    return bitstream.Header(
        model_fingerprint=bytes.fromhex(model.fingerprint)[:8], preset=model.name, variant=var.name,
        width=coded_size(reader.width), height=coded_size(reader.height), orig_width=reader.width,
        orig_height=reader.height, num_frames=reader.num_frames, fps_num=fps_num, fps_den=fps_den,
        gop_frames=plan.gop_frames, num_gops=plan.num_gops, sampler=sampler,
        flags=flags | bitstream.sampler_flags(sampler) | (bitstream.FLAG_PROMPT if prompt else 0),
        prompt=prompt)


def open_journal(output: str, key: bytes, mesh: GopMesh, expect) -> Journal:
    """The resume journal of ``output``, every entry verified against ``expect`` (``journal.Expect``).
    With several processes: each its own file, every process reading all of them before any cuts,
    starts or appends to its own (``GopMesh.agree``: a collective, so also a barrier), and only the
    GOPs every process found count as finished, so that all of them skip the same GOPs."""
    if not mesh.distributed:
        return Journal.open(output, key, expect)
    num_gops = expect.num_gops
    journal = Journal.read(output, key, expect, jax.process_index(), jax.process_count())
    found = np.zeros(num_gops, np.bool_)
    found[[g for g in journal.entries if g < num_gops]] = True
    agreed = mesh.agree(found)
    journal.entries = {g: e for g, e in journal.entries.items() if g < num_gops and agreed[g]}
    journal.begin()  # after the gather: every process has read every journal before any is cut or started
    return journal


def _coded_record(header: bitstream.Header, g: int, out) -> tuple:
    """GOP ``g`` of ``header``'s stream, just coded (``out``): -> (framed record, report)."""
    atoms = tuple(int(m) for m in out.inputs.atoms)
    record = bitstream.GopRecord(picks=picks_to_record(out.picks, header.sampler, atoms),
                                 latent_hash=out.digest, side=out.side,
                                 atoms_per_frame=atoms if header.per_gop_atoms else None)
    report = GopReport(g, out.seconds, atoms, latent_mse=float(jnp.mean((out.latent - out.inputs.target) ** 2)),
                       side_bytes=tuple((tag, len(data)) for tag, data in out.side), compile_s=out.compile_s,
                       dit_calls=out.dit_calls)
    return bitstream.record_bytes(header, g, record), report


def _record_report(header: bitstream.Header, g: int, rec: bitstream.GopRecord, resumed: bool = False) -> GopReport:
    """The report of a GOP this run did not code itself (from a resume journal, or another process)."""
    return GopReport(g, 0.0, tuple(int(m) for m in rec.atoms_per_frame or header.atoms_per_frame),
                     side_bytes=tuple((tag, len(data)) for tag, data in rec.side), resumed=resumed)


def gop_engine(model, header: bitstream.Header, mesh: GopMesh, *, decoding: bool = False) -> GopEngine:
    """The checks both directions run last before any model work, then the engine: the header's
    geometry against the model (its patch grid and RoPE range; decoding: a ``BitstreamError``) and
    against the machine (memory per GOP on ``mesh``), and the prompt's text context."""
    try:
        check_geometry(model, header.height, header.width, header.gop_frames)
    except GeometryError as err:
        if decoding:
            raise bitstream.BitstreamError(f"the stream cannot be decoded with this model: {err}") from None
        raise
    check_memory(model, header.height, header.width, header.gop_frames, mesh.size)
    return GopEngine(with_prompt(model, header.prompt), header.sampler, header.height, header.width,
                     header.gop_frames, mesh)


def with_prompt(model, prompt: str):
    """``model`` conditioned on ``prompt``'s text context (``models.text.prompt_context``); "" -> ``model``."""
    if not prompt:
        return model
    import dataclasses


    return dataclasses.replace(model, text_context=prompt_context(model, prompt))


def check_model(header: bitstream.Header, model) -> None:
    if header.model_fingerprint != bytes.fromhex(model.fingerprint)[:8]:
        raise ModelMismatchError(
            f"the stream was made with model {header.preset!r} (fingerprint {header.model_fingerprint.hex()}), "
            f"but the loaded model {model.name!r} has fingerprint {model.fingerprint[:16]}")


def decode_stream(stream: bytes, model, *, check_fingerprint: bool = True, strict: bool = False,
                  sink: Optional[Sink] = None, progress: Optional[Progress] = None,
                  devices: Union[int, GopMesh, None] = None, conceal: bool = False,
                  allow_drift: bool = False) -> CodecResult:
    """A ``.gvc`` stream -> frames into ``sink``; raises ``bitstream.BitstreamError`` if malformed.
    ``devices``: as for ``encode_stream`` (any count decodes any stream). With several processes
    each decodes its share of every wave and every process gets every GOP's frames and report, in
    order (gathered a chunk at a time, so a drift under ``strict`` stops all of them at one GOP).

    Drift (a GOP's decoded latent differs from the encoder's hash): ``strict`` makes any drift an
    error. Otherwise drift is platform noise (a warning, listed in the reports) only while it is
    systematic: another instruction set, accelerator or dtype changes the last bits of *every*
    GOP, so when one GOP reproduces its latent exactly, a GOP that does not has a wrong record (a
    swapped or duplicated version-1 record, whose CRC is not bound to its position) and the decode
    fails, unless ``allow_drift``.

    ``conceal``: a GOP whose record is damaged or missing (a cut file) is concealed instead of
    failing the decode (``loop.conceal_gop``): listed in ``result.concealed``; the GOPs that
    condition on a concealed one (an I2V chain, an FLF2V neighbour) drift, which is expected and
    is listed in ``result.affected`` but not an error."""
    mesh = GopMesh.of(devices)
    if conceal and mesh.distributed:
        raise ValueError("concealment is not available with several processes (decode without --distributed)")
    header, records = bitstream.open_stream(stream, conceal=conceal)
    if check_fingerprint:
        check_model(header, model)
    var = _stream_variant(header, model)
    try:
        var, plan = plan_for(model, var, header.num_frames, header.gop_frames)
    except ValueError as err:
        raise bitstream.BitstreamError(f"the stream cannot be decoded with this model: {err}") from None
    engine = gop_engine(model, header, mesh, decoding=True)
    emit = _emitter(plan, header.orig_height, header.orig_width, sink)
    watch = _DriftWatch(strict, allow_drift)
    source = StreamPicks([header], records, var, conceal=conceal)
    for out in code_gops(plan, var, engine, source, progress=progress, stage="decode", gather=True):
        watch.check(out)
        emit(out)
    result = CodecResult(None, header.fps_num / header.fps_den, header, watch.reports, bytes(stream))
    result.concealed, result.affected = watch.concealed, watch.affected
    return result


class _DriftWatch:
    """A decode's per-GOP reports, concealed GOPs and drift rule (``decode_stream``): drift is an
    error under ``strict``, or when one GOP reproduces its hash and another does not (a wrong
    record, not a platform), unless ``allow_drift``; GOPs conditioned on concealed frames are
    ``affected`` (their drift is expected)."""
    def __init__(self, strict: bool, allow_drift: bool):
        self.strict, self.allow_drift = strict, allow_drift
        self.reports: List[GopReport] = []
        self.concealed: List[int] = []
        self.affected: List[int] = []
        self.replaced: set[int] = set()   # source frames of concealed GOPs
        self.exact: List[int] = []        # GOPs (not conditioned on concealed frames) that reproduce / miss their hash
        self.drifted: List[int] = []

    def check(self, out: GopOutput) -> None:
        span = out.span
        if out.inputs.concealed:
            self.concealed.append(span.index)
            self.replaced.update(range(span.start, span.stop))
            self.reports.append(GopReport(span.index, out.seconds, (), drift=False, compile_s=out.compile_s))
            return
        downstream = bool(self.replaced.intersection(span.anchors)) or any(
            d in self.concealed or d in self.affected for d in span.depends_on)
        if downstream:
            self.affected.append(span.index)
        assert out.inputs.record is not None  # a GOP that is not concealed was read from its record
        drift = out.digest != out.inputs.record.latent_hash
        if not downstream:
            if drift and self.strict:
                raise DriftError(f"GOP {span.index}: decoded latent differs from the encoder's (hash mismatch)")
            (self.drifted if drift else self.exact).append(span.index)
            if self.drifted and self.exact and not self.allow_drift:
                raise DriftError(
                    f"GOP {self.drifted[0]}: decoded latent differs from the encoder's while GOP {self.exact[0]} "
                    f"reproduces it exactly, so this is a wrong record, not another platform (platform differences "
                    f"change every GOP); decode with --allow-drift to accept it")
        self.reports.append(GopReport(span.index, out.seconds, tuple(int(m) for m in out.inputs.atoms), drift=drift,
                                      side_bytes=tuple((tag, len(data)) for tag, data in out.inputs.record.side),
                                      compile_s=out.compile_s, dit_calls=out.dit_calls))


def _stream_variant(header: bitstream.Header, model):
    """The stream's variant, its GOP count checked against the header's before any plan is built
    (a small file declaring 2^24 frames costs nothing)."""
    try:
        var = get_variant(header.variant)
        count = var.gop_count(header.num_frames, header.gop_frames)
    except ValueError as err:
        raise bitstream.BitstreamError(f"the stream cannot be decoded with this model: {err}") from None
    if count != header.num_gops:
        raise bitstream.BitstreamError(f"header says {header.num_gops} GOPs, the frame count implies {count}")
    return var


def rate_breakdown(result: CodecResult) -> dict:
    """The stream's bytes split into codebook picks, anchor images, tail residuals and the rest
    (header, record framing, hashes); ``first_anchor_bytes``: GOP 0's first anchor (the frame the
    published I2V accounting does not charge)."""
    h = result.header
    picks = sum((bitstream.payload_bits(h, g.atoms if h.per_gop_atoms else None) + 7) // 8 for g in result.gops)
    side = [(tag, n) for g in result.gops for tag, n in g.side_bytes]
    anchors = sum(n for tag, n in side if tag == ANCHOR_TAG)
    residual = sum(n for tag, n in side if tag == RESIDUAL_TAG)
    first = next((n for tag, n in (result.gops[0].side_bytes if result.gops else ()) if tag == ANCHOR_TAG), 0)
    total = len(result.stream)
    out = {"codebook_bytes": picks, "anchor_bytes": anchors, "residual_bytes": residual,
           "overhead_bytes": total - picks - anchors - residual, "first_anchor_bytes": first}
    return {**out, **stage_bits(h, [g.atoms if h.per_gop_atoms else h.atoms_per_frame for g in result.gops])}


def stage_bits(h: "bitstream.Header", atoms: Sequence[Sequence[int]]) -> dict:
    """With a stage plan: the pick bits of each stage's steps and of each transition, summed over the
    GOPs (``atoms``: each GOP's atoms per latent frame), and the plan; without one: nothing."""
    plan = h.sampler.stages
    if plan is None:
        return {}
    per_gop = [multires.rank_coded_gop_bits(h.stochastic_steps, m, h.K, plan.switches) for m in atoms]
    return {"mr": plan.spec(), "stage_sizes": [f"{w}x{ht}" for w, ht in plan.sizes],
            "stage_bits": [sum(b.stages[s] for b in per_gop) for s in range(plan.stages)],
            "transition_bits": [sum(b.transitions[s] for b in per_gop) for s in range(plan.stages - 1)]}


def compute_report(result: CodecResult) -> dict:
    """The compute of a run, per GOP and in total: ``compile_s`` (program preparation, from
    ``compile_cache.clock``) and ``dit_calls`` (DiT evaluations; a GOP taken from a journal: 0)."""
    return {"compile_s": round(sum(g.compile_s for g in result.gops), 3),
            "compile_s_per_gop": [round(g.compile_s, 3) for g in result.gops],
            "dit_calls": sum(g.dit_calls for g in result.gops),
            "dit_calls_per_gop": [g.dit_calls for g in result.gops]}


def _collector() -> Tuple[List[np.ndarray], Sink]:
    chunks: List[np.ndarray] = []
    return chunks, chunks.append


def encode_video(video: np.ndarray, fps: float, model, sampler: SamplerConfig, *, gop_frames: int = 33,
                 variant: str = "t2v", gop_atoms=None, progress: Optional[Progress] = None,
                 devices: Optional[int] = None, prompt: str = "") -> CodecResult:
    """uint8 [F, H, W, 3] -> a ``.gvc`` stream (``result.stream``) and the decoder's video."""
    chunks, sink = _collector()
    result = encode_stream(ArrayReader(np.asarray(video), fps), model, sampler, variant=variant,
                           gop_frames=gop_frames, gop_atoms=gop_atoms, sink=sink, progress=progress, devices=devices,
                           prompt=prompt)
    result.video = np.concatenate(chunks)
    return result


def decode_video(stream: bytes, model, *, check_fingerprint: bool = True, strict: bool = False,
                 progress: Optional[Progress] = None, devices: Optional[int] = None, conceal: bool = False,
                 allow_drift: bool = False) -> CodecResult:
    """A ``.gvc`` stream -> uint8 [F, H, W, 3] (``result.video``); options as ``decode_stream``."""
    chunks, sink = _collector()
    result = decode_stream(stream, model, check_fingerprint=check_fingerprint, strict=strict, sink=sink,
                           progress=progress, devices=devices, conceal=conceal, allow_drift=allow_drift)
    result.video = np.concatenate(chunks)
    return result
