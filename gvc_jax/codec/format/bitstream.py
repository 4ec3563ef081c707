"""The .gvc container: a versioned, self-describing header and one checksummed record per GOP.

Layout (all multi-byte fixed-width fields big-endian; "varint" = unsigned LEB128, at most 10
bytes; see docs/bitstream.md for the field table):

    MAGIC "GVC" | version u8 | header fields | CRC32(magic .. last header field) u32
    num_gops x [ varint body_len | CRC u32 | body ]
    body = latent_hash (8 B) | [v2, flag GOP_ATOMS: M_f varint per latent frame]
           | picks (bit-packed, byte-padded) | varint n_side | n_side x [tag u8 | varint len | bytes]

Version 2 (written) differs from version 1 (still read) in two ways: a record's CRC is seeded
with its GOP index (``crc32(body, crc32(b"GOP" + varint(g)))``), so records that are swapped or
duplicated fail; and with flag ``FLAG_GOP_ATOMS`` every record carries its own atoms per latent
frame, each between 1 and the header's value (rate control changes M per GOP). With flag
``FLAG_X0_CACHE`` the header's flags are followed by the x0-cache schedule (varint count, then
one varint step index each): steps on which neither side calls the DiT. With flag ``FLAG_PROMPT``
the text prompt follows (varint byte count, then UTF-8, at most ``MAX_PROMPT_BYTES``): the decoder
encodes the same text with the model's text encoder (no prompt: the model's empty-prompt context).
With flag ``FLAG_STAGES`` the multi-resolution stage plan follows (``multires.StagePlan.to_bytes``:
version, stage count, each stage's size / 16, each switch step), and every record carries one more
row of picks per transition after the stochastic steps' rows.

Picks: for each stochastic step s (then each stage transition), for each latent frame f: the
subset rank of the M_f indices in ``subset_rank_bits(K, M_f)`` bits, then M_f sign bits
(1 = negative), all MSB first; zero padding to a byte after the last frame of the last row.
Nothing here depends on model outputs.

``read`` validates every field and every length against the bytes actually present before it
allocates or does work proportional to a claimed size, and raises ``BitstreamError`` with a
one-line message on anything malformed (truncation, bit flips, garbage, trailing bytes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gvc_jax.codec.format.bits import BitReader, BitstreamError, BitWriter, Cursor, encode_varint
from gvc_jax.codec.format.ranks import rank_subset, subset_rank_bits, unrank_subset
from gvc_jax.codec.sampling.multires import MAX_STAGES, StagePlan, StagePlanError
from gvc_jax.codec.sampling.schedule import CODEBOOK_KINDS, MAX_K, MAX_STEPS, SamplerConfig  # noqa: F401 (format limits)
from gvc_jax.temporal import is_valid, latent_frames

__all__ = [
    "BitstreamError", "MAGIC", "FORMAT_VERSION", "VARIANTS", "CODEBOOK_KINDS", "Header", "GopRecord",
    "write", "read", "payload_bits", "encode_varint", "header_bytes", "validate_header", "FLAG_GOP_ATOMS",
    "FLAG_X0_CACHE", "FLAG_PROMPT", "FLAG_STAGES", "MAX_PROMPT_BYTES", "check_prompt",
]

VARIANTS = ("t2v", "i2v", "flf2v")  # the header's variant byte indexes this (``codec.gop.variants`` implements them)
MAGIC = b"GVC"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
FLAG_GOP_ATOMS = 1          # v2: every record carries its own atoms per latent frame
FLAG_X0_CACHE = 2           # v2: the header carries the sampler's x0-cache skip schedule
FLAG_PROMPT = 4             # v2: the header carries a text prompt (UTF-8)
FLAG_STAGES = 8             # v2: the header carries a multi-resolution stage plan (``multires.StagePlan``)
SAMPLER_FLAGS = FLAG_X0_CACHE | FLAG_STAGES  # set from the sampler (``sampler_flags``)
KNOWN_FLAGS = {1: 0, 2: FLAG_GOP_ATOMS | FLAG_X0_CACHE | FLAG_PROMPT | FLAG_STAGES}

# Format limits (a reader rejects anything beyond them before allocating).
MAX_PRESET_BYTES = 64
MAX_PROMPT_BYTES = 2048   # UTF-8 bytes of a text prompt (umT5 reads at most 512 tokens of it)
MAX_SIZE = 16384          # coded width / height
MAX_FRAMES = 1 << 24      # num_frames
MAX_GOPS = 1_000_000
MAX_GOP_FRAMES = 4097     # 4k+1, i.e. at most 1025 latent frames per GOP
MAX_SIDE_PAYLOADS = 255
MAX_SIDE_BYTES = 1 << 26  # side payload bytes a GOP may carry (anchor images, residuals): 64 MiB
HASH_BYTES = 8
FINGERPRINT_BYTES = 8


def sampler_flags(sampler: SamplerConfig) -> int:
    """The header flags a sampler needs: its x0-cache schedule and its stage plan travel in the header."""
    return (FLAG_X0_CACHE if sampler.x0_cache else 0) | (FLAG_STAGES if sampler.stages is not None else 0)


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the model weights (see docs/bitstream.md).

    The sampler (steps, tail, shift, g_scale, K, atoms per frame, codebook, seed) is a
    ``SamplerConfig``: its own validation is the header's.
    """

    model_fingerprint: bytes           # 8 bytes (truncated sha256 of the model parameters)
    preset: str                        # model preset / name, <= 64 bytes utf-8
    variant: str                       # in VARIANTS
    width: int                         # coded (padded to multiples of 16) size
    height: int
    orig_width: int                    # crop-back size (<= coded size)
    orig_height: int
    num_frames: int                    # frames of the original video (after --max-frames), >= 1
    fps_num: int
    fps_den: int
    gop_frames: int                    # frames per GOP, 4k+1
    num_gops: int
    sampler: SamplerConfig
    flags: int = 0                     # FLAG_GOP_ATOMS, FLAG_X0_CACHE, FLAG_PROMPT (v2)
    version: int = FORMAT_VERSION      # format version read (1 or 2); written streams are FORMAT_VERSION
    prompt: str = ""                   # text prompt (FLAG_PROMPT), <= MAX_PROMPT_BYTES utf-8

    def replace(self, **kw) -> "Header":
        return dataclasses.replace(self, **kw)

    def with_sampler(self, sampler: SamplerConfig) -> "Header":
        """This header with another sampler, and the flags that say what the sampler carries."""
        return self.replace(sampler=sampler, flags=(self.flags & ~SAMPLER_FLAGS) | sampler_flags(sampler))

    # The sampler's fields, for readers of the header.
    steps = property(lambda self: self.sampler.steps)
    tail = property(lambda self: self.sampler.tail)
    shift = property(lambda self: self.sampler.shift)
    g_scale = property(lambda self: self.sampler.g_scale)
    K = property(lambda self: self.sampler.K)
    atoms_per_frame = property(lambda self: self.sampler.atoms_per_frame)
    seed = property(lambda self: self.sampler.seed)
    codebook = property(lambda self: self.sampler.codebook)

    @property
    def latent_frames(self) -> int:
        """Latent frames per GOP (= len(atoms_per_frame) = (gop_frames - 1) // 4 + 1)."""
        return len(self.sampler.atoms_per_frame)

    @property
    def stochastic_steps(self) -> int:
        """Steps that carry bits: steps - tail."""
        return self.sampler.stochastic_steps

    @property
    def pick_rows(self) -> int:
        """Atom sets per latent frame in a record: the stochastic steps, then the stage transitions."""
        return self.sampler.pick_rows

    @property
    def per_gop_atoms(self) -> bool:
        return bool(self.flags & FLAG_GOP_ATOMS)


@dataclass(frozen=True)
class GopRecord:
    """One GOP's payload.

    picks[s][f] = (indices int32 [M_f] strictly increasing, signs int8 [M_f] in {-1, +1}) for each
    stochastic step s and latent frame f; latent_hash: 8 bytes; side: ((tag 0..255, bytes), ...).
    """

    picks: tuple
    latent_hash: bytes
    side: tuple = ()
    atoms_per_frame: tuple | None = None  # this GOP's M per latent frame (None: the header's)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GopRecord):
            return NotImplemented
        if bytes(self.latent_hash) != bytes(other.latent_hash):
            return False
        if self.atoms_per_frame is not None and other.atoms_per_frame is not None \
                and tuple(self.atoms_per_frame) != tuple(other.atoms_per_frame):
            return False
        if [(int(t), bytes(d)) for t, d in self.side] != [(int(t), bytes(d)) for t, d in other.side]:
            return False
        if len(self.picks) != len(other.picks):
            return False
        for a_step, b_step in zip(self.picks, other.picks, strict=True):
            if len(a_step) != len(b_step):
                return False
            for (ai, as_), (bi, bs) in zip(a_step, b_step, strict=True):
                if not (np.array_equal(np.asarray(ai), np.asarray(bi))
                        and np.array_equal(np.asarray(as_), np.asarray(bs))):
                    return False
        return True


# ----------------------------------------------------------------------------------- validation

def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_prompt(prompt: str) -> str:
    """``prompt`` if it can go in a header (a str of at most MAX_PROMPT_BYTES UTF-8 bytes, no NUL),
    else ValueError saying why."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be a str, got {type(prompt).__name__}")
    try:
        n = len(prompt.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("the prompt is not encodable as UTF-8") from None
    if n > MAX_PROMPT_BYTES:
        raise ValueError(f"the prompt is {n} bytes of UTF-8, at most {MAX_PROMPT_BYTES} fit in a stream")
    if "\x00" in prompt:
        raise ValueError("the prompt contains a NUL character")
    return prompt


def validate_header(h: Header) -> None:
    """Raise BitstreamError naming the first invalid header field (no heavy work).

    The sampler's fields were validated when its ``SamplerConfig`` was built; here: the
    container's own fields and the sampler's agreement with them.
    """

    def bad(msg: str) -> BitstreamError:
        return BitstreamError(f"invalid header: {msg}")

    if not isinstance(h, Header):
        raise bad(f"expected Header, got {type(h).__name__}")
    if not isinstance(h.sampler, SamplerConfig):
        raise bad(f"sampler must be a SamplerConfig, got {type(h.sampler).__name__}")
    if not isinstance(h.model_fingerprint, (bytes, bytearray)) or len(h.model_fingerprint) != FINGERPRINT_BYTES:
        raise bad(f"model_fingerprint must be {FINGERPRINT_BYTES} bytes")
    if not isinstance(h.preset, str):
        raise bad("preset must be a str")
    try:
        preset_len = len(h.preset.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad("preset is not encodable as utf-8") from None
    if preset_len > MAX_PRESET_BYTES:
        raise bad(f"preset longer than {MAX_PRESET_BYTES} bytes utf-8")
    if h.variant not in VARIANTS:
        raise bad(f"variant {h.variant!r} not in {VARIANTS}")
    ints = ("width", "height", "orig_width", "orig_height", "num_frames", "fps_num", "fps_den", "gop_frames",
            "num_gops", "flags", "version")
    for name in ints:
        if not _is_int(getattr(h, name)):
            raise bad(f"{name} must be an int, got {getattr(h, name)!r}")
    if h.version not in READ_VERSIONS:
        raise bad(f"version {h.version} not in {READ_VERSIONS}")
    for name in ("width", "height"):
        v = getattr(h, name)
        if not (16 <= v <= MAX_SIZE and v % 16 == 0):
            raise bad(f"{name}={v} must be a multiple of 16 in [16, {MAX_SIZE}]")
    if not 1 <= h.orig_width <= h.width or not 1 <= h.orig_height <= h.height:
        raise bad(f"original size {h.orig_width}x{h.orig_height} must be within coded size {h.width}x{h.height}")
    if not 1 <= h.num_frames <= MAX_FRAMES:
        raise bad(f"num_frames={h.num_frames} not in [1, {MAX_FRAMES}]")
    if h.fps_num <= 0 or h.fps_den <= 0 or h.fps_num >= 1 << 32 or h.fps_den >= 1 << 32:
        raise bad(f"fps {h.fps_num}/{h.fps_den} must have both terms in [1, 2**32)")
    if not (1 <= h.gop_frames <= MAX_GOP_FRAMES and is_valid(h.gop_frames)):
        raise bad(f"gop_frames={h.gop_frames} must be 4k+1 in [1, {MAX_GOP_FRAMES}]")
    if not 1 <= h.num_gops <= min(h.num_frames, MAX_GOPS):
        raise bad(f"num_gops={h.num_gops} must be in [1, min(num_frames={h.num_frames}, {MAX_GOPS})]")
    want = latent_frames(h.gop_frames)
    if h.latent_frames != want:
        raise bad(f"atoms_per_frame has {h.latent_frames} entries, gop_frames={h.gop_frames} has {want} latent frames")
    _validate_flags(h, bad)


def _validate_flags(h: Header, bad) -> None:
    """The flags, and the flag-dependent fields they announce (x0-cache, prompt, stage plan)."""
    if h.flags & ~KNOWN_FLAGS[h.version] or not 0 <= h.flags < 1 << 32:
        raise bad(f"flags={h.flags:#x} has bits unknown to format version {h.version}")
    if bool(h.flags & FLAG_X0_CACHE) != bool(h.sampler.x0_cache):
        raise bad("FLAG_X0_CACHE must be set exactly when the sampler has an x0-cache schedule")
    try:
        check_prompt(h.prompt)
    except ValueError as err:
        raise bad(str(err)) from None
    if bool(h.flags & FLAG_PROMPT) != bool(h.prompt):
        raise bad("FLAG_PROMPT must be set exactly when the header has a prompt")
    if bool(h.flags & FLAG_STAGES) != (h.sampler.stages is not None):
        raise bad("FLAG_STAGES must be set exactly when the sampler has a stage plan")
    if h.sampler.stages is not None and h.sampler.stages.coded != (h.width, h.height):
        raise bad(f"the stage plan ends at {h.sampler.stages.spec()} -> {h.sampler.stages.coded}, not the coded "
                  f"size {h.width}x{h.height}")


def payload_bits(header: Header, atoms_per_frame: Sequence[int] | None = None) -> int:
    """Bits of one GOP's picks: pick_rows * sum_f (subset_rank_bits(K, M_f) + M_f), where pick_rows is
    the stochastic steps plus one atom set per stage transition (``SamplerConfig.pick_rows``)."""
    apf = header.atoms_per_frame if atoms_per_frame is None else atoms_per_frame
    bits = {m: subset_rank_bits(header.K, m) for m in set(int(m) for m in apf)}
    per_step = sum(bits[int(m)] + int(m) for m in apf)
    return header.pick_rows * per_step


# ----------------------------------------------------------------------------------- header

def _encode_header_fields(h: Header) -> bytes:
    """Header bytes without validation (MAGIC .. CRC). Used by write(); tests use it to forge headers."""
    out = bytearray(MAGIC)
    out.append(h.version)
    out += bytes(h.model_fingerprint)
    preset = h.preset.encode("utf-8")
    out += encode_varint(len(preset)) + preset
    out.append(VARIANTS.index(h.variant) if h.variant in VARIANTS else 255)
    out.append(CODEBOOK_KINDS.index(h.codebook) if h.codebook in CODEBOOK_KINDS else 255)
    for v in (h.width, h.height, h.orig_width, h.orig_height, h.num_frames, h.fps_num, h.fps_den,
              h.gop_frames, h.num_gops, h.steps, h.tail):
        out += encode_varint(v)
    out += struct.pack(">ff", h.shift, h.g_scale)
    out += encode_varint(h.K)
    out += encode_varint(len(h.atoms_per_frame))
    for m in h.atoms_per_frame:
        out += encode_varint(m)
    out += encode_varint(h.seed)
    out += encode_varint(h.flags)
    if h.flags & FLAG_X0_CACHE:
        out += encode_varint(len(h.sampler.x0_cache))
        for step in h.sampler.x0_cache:
            out += encode_varint(step)
    if h.flags & FLAG_PROMPT:
        prompt = h.prompt.encode("utf-8")
        out += encode_varint(len(prompt)) + prompt
    if h.flags & FLAG_STAGES and h.sampler.stages is not None:  # validate_header: set exactly with a plan
        out += h.sampler.stages.to_bytes()
    out += struct.pack(">I", zlib.crc32(out))
    return bytes(out)


def header_bytes(header: Header) -> int:
    """Size in bytes of the encoded header (magic through header CRC)."""
    return len(_encode_header_fields(header))


def _parse_header(cur: Cursor) -> Header:
    start = cur.pos
    if cur.left < len(MAGIC) or cur.data[cur.pos:cur.pos + len(MAGIC)] != MAGIC:
        raise BitstreamError("not a .gvc stream (bad magic)")
    cur.pos += len(MAGIC)
    version = cur.u8("format version")
    if version not in READ_VERSIONS:
        raise BitstreamError(f"unsupported .gvc format version {version} (this reader supports {READ_VERSIONS})")
    fingerprint = cur.take(FINGERPRINT_BYTES, "model fingerprint")
    n = cur.varint("preset length")
    if n > MAX_PRESET_BYTES:
        raise BitstreamError(f"invalid header: preset length {n} > {MAX_PRESET_BYTES}")
    preset_raw = cur.take(n, "preset")
    variant_i = cur.u8("variant")
    codebook_i = cur.u8("codebook kind")
    names = ("width", "height", "orig_width", "orig_height", "num_frames", "fps_num", "fps_den",
             "gop_frames", "num_gops")
    vals = {name: cur.varint(name) for name in names}
    fields, flags, prompt_raw = _parse_sampler_fields(cur)
    crc_pos = cur.pos
    (crc,) = struct.unpack(">I", cur.take(4, "header CRC"))
    if zlib.crc32(cur.data[start:crc_pos]) != crc:
        raise BitstreamError("header CRC mismatch (corrupted header)")
    if variant_i >= len(VARIANTS):
        raise BitstreamError(f"invalid header: variant index {variant_i} out of range")
    if codebook_i >= len(CODEBOOK_KINDS):
        raise BitstreamError(f"invalid header: codebook kind index {codebook_i} out of range")
    try:
        sampler = SamplerConfig(codebook=CODEBOOK_KINDS[codebook_i], **fields)
    except ValueError as err:
        raise BitstreamError(f"invalid header: {err}") from None
    h = Header(model_fingerprint=fingerprint, preset=_utf8(preset_raw, "preset"), variant=VARIANTS[variant_i],
               sampler=sampler, flags=flags, version=version, prompt=_utf8(prompt_raw, "prompt"), **vals)
    validate_header(h)
    return h


def _parse_sampler_fields(cur: Cursor) -> tuple:
    """The header's sampler fields, flags and flag-dependent parts: -> (SamplerConfig keywords but
    the codebook kind, flags, raw prompt bytes)."""
    steps, tail = cur.varint("steps"), cur.varint("tail")
    shift, g_scale = struct.unpack(">ff", cur.take(8, "shift and g_scale"))
    K = cur.varint("K")
    n_lat = cur.varint("latent frame count")
    if n_lat > latent_frames(MAX_GOP_FRAMES):
        raise BitstreamError(f"invalid header: {n_lat} latent frames per GOP exceeds the format limit")
    apf = tuple(cur.varint(f"atoms_per_frame[{f}]") for f in range(n_lat))
    seed = cur.varint("seed")
    flags = cur.varint("flags")
    x0_cache: tuple[int, ...] = ()
    if flags & FLAG_X0_CACHE:
        n_skip = cur.varint("x0-cache step count")
        if n_skip > steps // 2:
            raise BitstreamError(f"invalid header: {n_skip} x0-cache steps for {steps} steps")
        x0_cache = tuple(cur.varint(f"x0-cache step {i}") for i in range(n_skip))
    prompt_raw = b""
    if flags & FLAG_PROMPT:
        n_prompt = cur.varint("prompt length")
        if n_prompt > MAX_PROMPT_BYTES:
            raise BitstreamError(f"invalid header: prompt length {n_prompt} > {MAX_PROMPT_BYTES}")
        prompt_raw = cur.take(n_prompt, "prompt")
    stages = None
    if flags & FLAG_STAGES:
        try:
            window = cur.data[cur.pos:min(cur.end, cur.pos + StagePlan.encoded_length(MAX_STAGES))]
            stages, used = StagePlan.read(window)
            cur.pos += used
        except StagePlanError as err:
            raise BitstreamError(f"invalid header: {err}") from None
    fields = dict(steps=steps, tail=tail, g_scale=g_scale, shift=shift, K=K, atoms_per_frame=apf, seed=seed,
                  x0_cache=x0_cache, stages=stages)
    return fields, flags, prompt_raw


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError(f"invalid header: {what} is not valid utf-8") from None


# ----------------------------------------------------------------------------------- records

def _record_atoms(h: Header, rec: GopRecord) -> tuple:
    return tuple(h.atoms_per_frame) if rec.atoms_per_frame is None else tuple(rec.atoms_per_frame)


def _validate_record(h: Header, g: int, rec: GopRecord) -> None:
    def bad(msg: str) -> BitstreamError:
        return BitstreamError(f"invalid GOP {g} record: {msg}")

    if not isinstance(rec, GopRecord):
        raise bad(f"expected GopRecord, got {type(rec).__name__}")
    if not isinstance(rec.latent_hash, (bytes, bytearray)) or len(rec.latent_hash) != HASH_BYTES:
        raise bad(f"latent_hash must be {HASH_BYTES} bytes")
    apf = _record_atoms(h, rec)
    if len(apf) != h.latent_frames or any(not _is_int(m) or not 1 <= m <= cap
                                          for m, cap in zip(apf, h.atoms_per_frame, strict=True)):
        raise bad(f"atoms per frame {apf} must be {h.latent_frames} ints, each in [1, header's {h.atoms_per_frame}]")
    if not h.per_gop_atoms and apf != tuple(h.atoms_per_frame):
        raise bad(f"atoms per frame {apf} differ from the header's, but the header has no FLAG_GOP_ATOMS")
    if len(rec.picks) != h.pick_rows:
        raise bad(f"{len(rec.picks)} rows of picks, header has {h.pick_rows} (stochastic steps and transitions)")
    for s, step in enumerate(rec.picks):
        if len(step) != h.latent_frames:
            raise bad(f"step {s} has {len(step)} frames of picks, header has {h.latent_frames} latent frames")
        for f, pick in enumerate(step):
            if len(pick) != 2:
                raise bad(f"picks[{s}][{f}] must be (indices, signs)")
            idx, sg = np.asarray(pick[0]), np.asarray(pick[1])
            m = apf[f]
            if idx.shape != (m,) or sg.shape != (m,):
                raise bad(f"picks[{s}][{f}] shapes {idx.shape}, {sg.shape}, expected ({m},)")
            if not np.issubdtype(idx.dtype, np.integer) or not np.issubdtype(sg.dtype, np.integer):
                raise bad(f"picks[{s}][{f}] indices and signs must be integer arrays")
            if idx[0] < 0 or idx[-1] >= h.K or (m > 1 and not np.all(np.diff(idx) > 0)):
                raise bad(f"picks[{s}][{f}] indices must be strictly increasing in [0, K={h.K})")
            if not np.all((sg == 1) | (sg == -1)):
                raise bad(f"picks[{s}][{f}] signs must be -1 or +1")
    if len(rec.side) > MAX_SIDE_PAYLOADS:
        raise bad(f"{len(rec.side)} side payloads, at most {MAX_SIDE_PAYLOADS}")
    for i, item in enumerate(rec.side):
        if len(item) != 2:
            raise bad(f"side[{i}] must be (tag, bytes)")
        tag, data = item
        if not _is_int(tag) or not 0 <= tag <= 255:
            raise bad(f"side[{i}] tag {tag!r} not in [0, 255]")
        if not isinstance(data, (bytes, bytearray)):
            raise bad(f"side[{i}] data must be bytes")
    if sum(len(d) for _, d in rec.side) > MAX_SIDE_BYTES:
        raise bad(f"side payloads exceed {MAX_SIDE_BYTES} bytes")


def _encode_picks(h: Header, picks, apf) -> bytes:
    bw = BitWriter()
    rank_bits = [subset_rank_bits(h.K, m) for m in apf]
    for step in picks:
        for f, (idx, sg) in enumerate(step):
            bw.write(rank_subset(np.asarray(idx).tolist(), h.K), rank_bits[f])
            neg = (np.asarray(sg) < 0).astype(np.uint8)
            m = neg.shape[0]
            bw.write(int.from_bytes(np.packbits(neg).tobytes(), "big") >> ((-m) % 8), m)
    return bw.getvalue()


def _encode_body(h: Header, rec: GopRecord) -> bytes:
    apf = _record_atoms(h, rec)
    out = bytearray(rec.latent_hash)
    if h.per_gop_atoms:
        for m in apf:
            out += encode_varint(m)
    out += _encode_picks(h, rec.picks, apf)
    out += encode_varint(len(rec.side))
    for tag, data in rec.side:
        out.append(int(tag))
        out += encode_varint(len(data)) + bytes(data)
    return bytes(out)


def record_crc(h: Header, g: int, body: bytes) -> int:
    """v1: CRC32 of the body; v2: seeded with the GOP index, binding the record to its position."""
    if h.version == 1:
        return zlib.crc32(body)
    return zlib.crc32(body, zlib.crc32(b"GOP" + encode_varint(g)))


def _decode_picks(h: Header, data: bytes, g: int, apf) -> tuple:
    br = BitReader(data)
    combs = {m: math.comb(h.K, m) for m in set(apf)}
    rank_bits = [(combs[m] - 1).bit_length() for m in apf]
    totals = [combs[m] for m in apf]
    steps = []
    for s in range(h.pick_rows):
        frames = []
        for f, m in enumerate(apf):
            rank = br.read(rank_bits[f])
            if rank >= totals[f]:
                raise BitstreamError(f"GOP {g} step {s} frame {f}: subset rank out of range (corrupted picks)")
            idx = np.asarray(unrank_subset(rank, h.K, m), dtype=np.int32)
            bits = br.read(m)
            neg = np.unpackbits(np.frombuffer((bits << ((-m) % 8)).to_bytes((m + 7) // 8, "big"), np.uint8))[:m]
            frames.append((idx, (1 - 2 * neg.astype(np.int8)).astype(np.int8)))
        steps.append(tuple(frames))
    if br.bits_left >= 8 or br.read(br.bits_left) != 0:
        raise BitstreamError(f"GOP {g}: non-zero padding after the picks")
    return tuple(steps)


def _frame_record(h: Header, cur: Cursor, g: int) -> tuple[int, int]:
    """Step over GOP g's record, checking its length and its position-bound CRC: -> (start, length)
    of its body. Cheap (no big-int work), so a whole stream's structure is checked up front."""
    body_len = cur.varint(f"GOP {g} record length")
    if body_len + 4 > cur.left:
        raise BitstreamError(f"truncated stream: GOP {g} record claims {body_len} bytes, {max(cur.left - 4, 0)} left")
    (crc,) = struct.unpack(">I", cur.take(4, f"GOP {g} CRC"))
    body_start = cur.pos
    body = cur.take(body_len, f"GOP {g} record")
    if record_crc(h, g, body) != crc:
        raise BitstreamError(f"GOP {g}: CRC mismatch (corrupted, reordered or duplicated record)")
    return body_start, body_len


def _parse_body(h: Header, data: bytes, g: int, body_start: int, body_len: int) -> GopRecord:
    """GOP g's record body -> GopRecord: atom counts, picks (unranked) and side payloads."""
    bc = Cursor(data, body_start, body_start + body_len)
    latent_hash = bc.take(HASH_BYTES, f"GOP {g} latent hash")
    apf = tuple(h.atoms_per_frame)
    if h.per_gop_atoms:
        apf = tuple(bc.varint(f"GOP {g} atoms_per_frame[{f}]") for f in range(h.latent_frames))
        for f, (m, cap) in enumerate(zip(apf, h.atoms_per_frame, strict=True)):
            if not 1 <= m <= cap:
                raise BitstreamError(f"GOP {g}: atoms_per_frame[{f}]={m} not in [1, header's {cap}]")
    if h.pick_rows * sum(apf) // 8 > bc.left:  # the sign bits alone do not fit: no big-int work
        raise BitstreamError(f"GOP {g}: record of {body_len} bytes cannot hold the sign bits of {apf} atoms")
    pick_bytes = (payload_bits(h, apf) + 7) // 8
    if pick_bytes + 1 > bc.left:
        raise BitstreamError(f"GOP {g}: record of {body_len} bytes is shorter than its {pick_bytes}-byte picks")
    picks = _decode_picks(h, bc.take(pick_bytes, f"GOP {g} picks"), g, apf)
    n_side = bc.varint(f"GOP {g} side payload count")
    if n_side > MAX_SIDE_PAYLOADS or 2 * n_side > bc.left:
        raise BitstreamError(f"GOP {g}: side payload count {n_side} does not fit the record")
    side, side_bytes = [], 0
    for i in range(n_side):
        tag = bc.u8(f"GOP {g} side[{i}] tag")
        n = bc.varint(f"GOP {g} side[{i}] length")
        side_bytes += n
        if side_bytes > MAX_SIDE_BYTES:
            raise BitstreamError(f"GOP {g}: side payloads exceed {MAX_SIDE_BYTES} bytes")
        side.append((tag, bc.take(n, f"GOP {g} side[{i}] data")))
    if bc.left:
        raise BitstreamError(f"GOP {g}: {bc.left} unexpected trailing bytes in the record")
    return GopRecord(picks=picks, latent_hash=latent_hash, side=tuple(side),
                     atoms_per_frame=apf if h.per_gop_atoms else None)


# ----------------------------------------------------------------------------------- API

def write(header: Header, records: Sequence[GopRecord]) -> bytes:
    """Serialise a header and its num_gops GOP records; validates everything first."""
    validate_header(header)
    records = list(records)
    if len(records) != header.num_gops:
        raise BitstreamError(f"header says num_gops={header.num_gops}, got {len(records)} records")
    return assemble(header, [record_bytes(header, g, rec) for g, rec in enumerate(records)])


def record_bytes(header: Header, g: int, rec: GopRecord) -> bytes:
    """GOP g's framed record (length, position-bound CRC, body): what an encoder keeps per GOP."""
    _validate_record(header, g, rec)
    return frame_body(header, g, _encode_body(header, rec))


def parse_record(header: Header, g: int, framed: bytes) -> GopRecord:
    """The inverse of ``record_bytes``: GOP g's framed record (length, CRC, body) -> GopRecord."""
    framed = bytes(framed)
    cur = Cursor(framed)
    start, length = _frame_record(header, cur, g)
    if cur.left:
        raise BitstreamError(f"GOP {g}: {cur.left} unexpected bytes after the record")
    return _parse_body(header, framed, g, start, length)


def frame_body(header: Header, g: int, body: bytes) -> bytes:
    """A record body framed as GOP g's: its length, then its CRC seeded with g, then the body."""
    return encode_varint(len(body)) + struct.pack(">I", record_crc(header, g, body)) + body


def assemble(header: Header, framed: Sequence[bytes]) -> bytes:
    """The stream: the header, then the framed records of ``record_bytes`` in GOP order."""
    validate_header(header)
    if header.version != FORMAT_VERSION:
        raise BitstreamError(f"this writer writes format version {FORMAT_VERSION}, not {header.version}")
    if len(framed) != header.num_gops:
        raise BitstreamError(f"header says num_gops={header.num_gops}, got {len(framed)} records")
    return bytes(_encode_header_fields(header)) + b"".join(framed)


def read_header(data: bytes) -> tuple[Header, int]:
    """Parse and validate just the header: -> (header, its size in bytes)."""
    cur = Cursor(bytes(data))
    h = _parse_header(cur)
    return h, cur.pos


_HEADER_READ = 16 << 10    # more than the largest valid header (1025 latent-frame varints)


def max_stream_bytes(h: Header) -> int:
    """An upper bound on the size of any valid stream with this header, computed without big-int
    work: rank bits <= M * bit_length(K), plus the sign bits, counts, lengths, CRCs and hashes."""
    pick_bits = h.pick_rows * sum(m * (h.K.bit_length() + 1) for m in h.atoms_per_frame)
    record = 10 + 4 + HASH_BYTES + 10 * h.latent_frames + pick_bits // 8 + 1 + 2 + MAX_SIDE_BYTES \
        + MAX_SIDE_PAYLOADS * 11
    return _HEADER_READ + h.num_gops * record


@contextlib.contextmanager
def naming(path):
    """Prefix a BitstreamError raised inside with the stream's path (once)."""
    try:
        yield
    except BitstreamError as err:
        name = os.fspath(path)
        if name in str(err):
            raise
        raise BitstreamError(f"{name}: {err}") from None


def read_file(path) -> bytes:
    """The bytes of a .gvc file, read safely: the magic first (so ``/dev/zero`` or a video is
    refused after 4 bytes), then the header, then at most what that header allows."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 1)
        if head[:len(MAGIC)] != MAGIC:
            raise BitstreamError(f"{os.fspath(path)} is not a .gvc stream (bad magic)")
        head += f.read(_HEADER_READ - len(head))
        h, _ = read_header(head)
        limit = max_stream_bytes(h)
        rest = f.read(limit - len(head) + 1)
    if len(head) + len(rest) > limit:
        raise BitstreamError(f"{os.fspath(path)} is longer than any stream with its header can be")
    return head + rest


class Records(Sequence):
    """A stream's GOP records, parsed when indexed. Their framing and CRCs were checked when the
    stream was opened; a record's content (picks, side payloads) is checked when it is parsed.
    ``lost``: the GOPs whose records were damaged or missing (``open_stream(conceal=True)`` only);
    indexing one raises ``BitstreamError``."""

    def __init__(self, header: Header, data: bytes, spans: np.ndarray, lost: tuple = ()) -> None:
        self._header, self._data, self._spans = header, data, spans
        self.lost = tuple(lost)

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, g):
        if isinstance(g, slice):
            return [self[i] for i in range(*g.indices(len(self)))]
        g = range(len(self))[g]
        start, length = (int(v) for v in self._spans[g])
        if start < 0:
            raise BitstreamError(f"GOP {g}: the record is damaged or missing")
        return _parse_body(self._header, self._data, g, start, length)


def read(data: bytes) -> tuple[Header, list[GopRecord]]:
    """Parse a whole .gvc stream; raises BitstreamError on anything malformed."""
    h, records = open_stream(data)
    return h, list(records)


def _min_record_bytes(h: Header, left: int) -> int:
    """A cheap lower bound on one framed record (no big-int work): 4 (CRC) + 1 (length) + 8 (hash)
    + 1 (side count) bytes plus its atom counts (v2) or the sign bits of its picks; the exact pick
    bytes when ``left`` could hold that many records anyway."""
    if h.per_gop_atoms:
        return 14 + h.latent_frames + h.pick_rows * h.latent_frames // 8
    min_record = 14 + h.pick_rows * sum(h.atoms_per_frame) // 8  # sign bits: no big-int work yet
    if h.num_gops * min_record <= left:
        min_record = 14 + (payload_bits(h) + 7) // 8
    return min_record


CONCEAL_MIN_FRACTION = 4       # --conceal: the file must hold 1/4 of the bytes its header implies
RESYNC_BUDGET = 8              # --conceal: CRC work while resynchronising, in multiples of the file size
RESYNC_LOOKAHEAD = 4           # --conceal: how many GOP indices a resynchronised record may skip


def open_stream(data: bytes, conceal: bool = False) -> tuple[Header, Records]:
    """Check a .gvc stream's header and the framing and CRC of every record (cheap: no unranking),
    returning the records to parse one at a time: memory and parse time per GOP, not per stream.

    ``conceal``: a record that fails its CRC or its framing, or is missing because the file was cut
    short, is listed in ``records.lost`` instead of failing the stream; reading resumes at the next
    record that frames and checks (after the damaged one's declared length, else found by a bounded
    scan). The header itself must be intact, and the file must still hold at least
    ``1/CONCEAL_MIN_FRACTION`` of the bytes its header implies, so that concealment never costs more
    than the file justifies."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    cur = Cursor(data)
    h = _parse_header(cur)
    min_record = _min_record_bytes(h, cur.left)
    need = h.num_gops * min_record
    if conceal and need > CONCEAL_MIN_FRACTION * cur.left:
        raise BitstreamError(f"truncated stream: {h.num_gops} GOPs need at least {need} bytes, {cur.left} left: "
                             f"less than 1/{CONCEAL_MIN_FRACTION} of the stream is there, too little to conceal")
    if not conceal and need > cur.left:
        raise BitstreamError(f"truncated stream: {h.num_gops} GOPs need at least {need} bytes, {cur.left} left")
    spans = np.full((h.num_gops, 2), -1, np.int64)
    if not conceal:
        for g in range(h.num_gops):
            spans[g] = _frame_record(h, cur, g)
        if cur.left:
            raise BitstreamError(f"{cur.left} unexpected trailing bytes after the last GOP")
        return h, Records(h, data, spans)
    lost: list[int] = []
    budget, g = RESYNC_BUDGET * len(data), 0
    while g < h.num_gops:
        start = cur.pos
        try:
            spans[g] = _frame_record(h, cur, g)
            g += 1
            continue
        except BitstreamError:
            pass
        found, budget = _resync(h, data, start, g, budget)
        if found is None:  # nothing further checks out: the rest is lost
            lost.extend(range(g, h.num_gops))
            break
        pos, j = found
        lost.extend(range(g, j))
        cur.pos, g = pos, j
    return h, Records(h, data, spans, tuple(lost))


def _resync(h: Header, data: bytes, start: int, g: int, budget: int):
    """GOP ``g``'s record at ``start`` is damaged: -> ((position, GOP index) of the next record
    that frames and checks, or None, budget left). First after the damaged record's declared
    length (a flipped bit in its body), then at every later offset, trying the next
    ``RESYNC_LOOKAHEAD`` GOP indices, while ``budget`` bytes of CRC work remain."""
    def frames_at(pos: int, j: int) -> bool:
        nonlocal budget
        cur = Cursor(data, pos)
        try:
            n = cur.varint("length")
        except BitstreamError:
            return False
        if n + 4 > cur.left or budget <= 0:
            return False
        budget -= n
        try:
            _frame_record(h, Cursor(data, pos), j)
        except BitstreamError:
            return False
        return True

    candidates = range(g + 1, min(g + 1 + RESYNC_LOOKAHEAD, h.num_gops))
    cur = Cursor(data, start)
    try:
        n = cur.varint("length")
        after = cur.pos + 4 + n
        if after <= len(data) and any(frames_at(after, j) for j in candidates[:1]):
            return (after, g + 1), budget
    except BitstreamError:
        pass
    for pos in range(start + 1, len(data)):
        if budget <= 0:
            break
        for j in candidates:
            if frames_at(pos, j):
                return (pos, j), budget
    return None, budget
