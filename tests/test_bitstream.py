"""Tests for gvc_jax.codec.format.bitstream: round trips, exact sizes, overhead bounds, golden bytes, errors,
fuzzing."""
import dataclasses
import hashlib
import math
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from conftest import run_within

from gvc_jax.codec.format import bitstream as bs
from gvc_jax.codec.format.bitstream import BitstreamError, GopRecord, Header
from gvc_jax.codec.sampling.schedule import SamplerConfig, SamplerError

SAMPLER_FIELDS = ("steps", "tail", "shift", "g_scale", "K", "atoms_per_frame", "seed", "codebook", "x0_cache")


# ----------------------------------------------------------------------------------- helpers

def make_header(**kw):
    base = dict(model_fingerprint=b"\x01\x23\x45\x67\x89\xab\xcd\xef", preset="tiny", variant="t2v",
                width=64, height=48, orig_width=60, orig_height=40, num_frames=9, fps_num=16, fps_den=1,
                gop_frames=5, num_gops=2, steps=4, tail=1, shift=3.0, g_scale=3.0, K=64,
                atoms_per_frame=(4, 6), seed=7, codebook="hadamard", x0_cache=(), flags=0)
    base.update(kw)
    sampler = SamplerConfig(**{k: base.pop(k) for k in SAMPLER_FIELDS})
    return Header(sampler=sampler, **base)


def random_picks(rng, h, apf=None):
    return tuple(
        tuple((np.sort(rng.choice(h.K, m, replace=False)).astype(np.int32),
               rng.choice(np.array([-1, 1], np.int8), m)) for m in (apf or h.atoms_per_frame))
        for _ in range(h.stochastic_steps))


def random_record(rng, h, side=()):
    apf = None
    if h.per_gop_atoms:  # this GOP's own M per latent frame, each at most the header's
        apf = tuple(int(rng.integers(1, m + 1)) for m in h.atoms_per_frame)
    return GopRecord(picks=random_picks(rng, h, apf), latent_hash=rng.bytes(8), side=side, atoms_per_frame=apf)


def crc_at(g, body):
    """The v2 record CRC of GOP g."""
    return zlib.crc32(body, zlib.crc32(b"GOP" + bs.encode_varint(g)))


def random_header(rng):
    variant = bs.VARIANTS[rng.integers(3)]
    gop_frames = int(4 * rng.integers(0, 21) + 1)
    n_lat = (gop_frames - 1) // 4 + 1
    K = int(rng.choice([1, 2, 7, 64, 1000, 16384, 1 << 20]))
    apf = tuple(int(rng.integers(1, min(K, 160) + 1)) for _ in range(n_lat))
    steps = int(rng.integers(1, 6))
    x0_cache = tuple(range(1, steps, 2)) if rng.integers(2) else ()
    num_frames = int(rng.integers(1, 500))
    w, h = 16 * int(rng.integers(1, 121)), 16 * int(rng.integers(1, 68))
    preset = "".join(chr(c) for c in rng.integers(0x20, 0x7F, int(rng.integers(0, 30))))
    return make_header(model_fingerprint=rng.bytes(8), preset=preset + "é", variant=variant, width=w, height=h,
                       orig_width=int(rng.integers(1, w + 1)), orig_height=int(rng.integers(1, h + 1)),
                       num_frames=num_frames, fps_num=int(rng.integers(1, 60001)), fps_den=int(rng.integers(1, 1002)),
                       gop_frames=gop_frames, num_gops=int(rng.integers(1, min(num_frames, 3) + 1)), steps=steps,
                       tail=int(rng.integers(1, steps + 1)), shift=float(np.float32(rng.uniform(0.1, 10))),
                       g_scale=float(np.float32(rng.uniform(0, 5))), K=K, atoms_per_frame=apf,
                       seed=int(rng.integers(0, 1 << 32)), codebook=bs.CODEBOOK_KINDS[rng.integers(3)],
                       x0_cache=x0_cache, flags=int(rng.integers(0, 2)) | (bs.FLAG_X0_CACHE if x0_cache else 0))


def varint_len(n):
    return max(1, -(-n.bit_length() // 7))


def ref_payload_bits(h, apf=None):
    per = 0
    for m in apf or h.atoms_per_frame:
        n, b = math.comb(h.K, m), 0
        while (1 << b) < n:
            b += 1
        per += b + m
    return (h.steps - h.tail) * per


def ref_header_len(h):
    """Independent count of header bytes from the documented layout."""
    n = 3 + 1 + 8  # magic, version, fingerprint
    p = len(h.preset.encode())
    n += varint_len(p) + p + 1 + 1  # preset, variant, codebook
    for v in (h.width, h.height, h.orig_width, h.orig_height, h.num_frames, h.fps_num, h.fps_den,
              h.gop_frames, h.num_gops, h.steps, h.tail):
        n += varint_len(v)
    n += 8 + varint_len(h.K) + varint_len(len(h.atoms_per_frame)) + sum(varint_len(m) for m in h.atoms_per_frame)
    n += varint_len(h.seed) + varint_len(h.flags) + 4
    if h.sampler.x0_cache:
        n += varint_len(len(h.sampler.x0_cache)) + sum(varint_len(s) for s in h.sampler.x0_cache)
    return n


def ref_record_len(h, side=(), apf=None):
    body = 8 + -(-ref_payload_bits(h, apf) // 8) + varint_len(len(side))
    if h.per_gop_atoms:
        body += sum(varint_len(m) for m in apf)
    body += sum(1 + varint_len(len(d)) + len(d) for _, d in side)
    return varint_len(body) + 4 + body


# ----------------------------------------------------------------------------------- round trips

def test_round_trip_random():
    rng = np.random.default_rng(0)
    for _ in range(25):
        h = random_header(rng)
        side_opts = [(), ((1, rng.bytes(int(rng.integers(0, 300)))),), ((0, b""), (255, b"x" * 200))]
        recs = [random_record(rng, h, side_opts[rng.integers(3)]) for _ in range(h.num_gops)]
        data = bs.write(h, recs)
        h2, recs2 = bs.read(data)
        assert h2 == h
        assert recs2 == recs
        for r in recs2:
            for step in r.picks:
                for idx, sg in step:
                    assert idx.dtype == np.int32 and sg.dtype == np.int8
        # Exact size, computed independently.
        assert len(data) == ref_header_len(h) + sum(ref_record_len(h, r.side, r.atoms_per_frame) for r in recs)
        assert bs.header_bytes(h) == ref_header_len(h)
        assert bs.payload_bits(h) == ref_payload_bits(h)


def test_float32_fields():
    h = make_header(shift=0.1, g_scale=2.5)  # 0.1 is not float32-representable: rounded to nearest float32
    rng = np.random.default_rng(1)
    h2, _ = bs.read(bs.write(h, [random_record(rng, h) for _ in range(2)]))
    assert h2.shift == float(np.float32(0.1)) and h2.g_scale == 2.5
    assert h.shift == float(np.float32(0.1)) and h2 == h  # the sampler stores float32 values


def test_stochastic_steps_zero_and_properties():
    h = make_header(steps=3, tail=3)
    assert h.stochastic_steps == 0 and h.latent_frames == 2 and bs.payload_bits(h) == 0
    recs = [GopRecord(picks=(), latent_hash=b"a" * 8), GopRecord(picks=(), latent_hash=b"b" * 8, side=((9, b"zz"),))]
    h2, r2 = bs.read(bs.write(h, recs))
    assert h2 == h and r2 == recs


def test_overhead_bounds_realistic():
    rng = np.random.default_rng(2)
    # 720p T2V default, and a worst-ish case: 64-byte preset, 81-frame GOPs with adaptive M, big values.
    cases = [
        make_header(preset="wan2.1-t2v-1.3b", width=1280, height=720, orig_width=1280, orig_height=720,
                    num_frames=99, fps_num=30000, fps_den=1001, gop_frames=33, num_gops=3, steps=20, tail=3,
                    shift=5.0, K=16384, atoms_per_frame=(64,) * 9, seed=2**32 - 1),
        make_header(preset="x" * 64, variant="i2v", width=16384, height=16384, orig_width=16383, orig_height=16383,
                    num_frames=(1 << 24), fps_num=2**32 - 1, fps_den=2**32 - 1, gop_frames=81, num_gops=2,
                    steps=1000, tail=999, K=16384, atoms_per_frame=(80,) * 19 + (128, 128), seed=2**32 - 1,
                    codebook="rademacher"),
    ]
    for h in cases:
        assert bs.header_bytes(h) < 200
        recs = [random_record(rng, h) for _ in range(h.num_gops)]
        data = bs.write(h, recs)
        per_gop = (len(data) - bs.header_bytes(h)) / h.num_gops - math.ceil(bs.payload_bits(h) / 8)
        assert per_gop <= 16
        assert len(data) == bs.header_bytes(h) + h.num_gops * per_gop + h.num_gops * math.ceil(bs.payload_bits(h) / 8)
    # docs/method_notes.md §Rate accounting: K=16384, M=64 at 17 stochastic steps x 9 latent frames
    # -> 664 bits per (step, frame).
    assert bs.payload_bits(cases[0]) == 17 * 9 * 664


def golden_stream():
    h = make_header()
    picks = tuple(
        tuple((np.arange(m, dtype=np.int32) * 5 + s + f, np.array([1, -1] * (m // 2), np.int8))
              for f, m in enumerate(h.atoms_per_frame))
        for s in range(h.stochastic_steps))
    recs = [GopRecord(picks=picks, latent_hash=b"hash0000"),
            GopRecord(picks=picks, latent_hash=b"hash0001", side=((3, b"anchor"),))]
    return h, recs


def test_golden_bytes():
    # A change of this hash is a FORMAT BREAK: bump FORMAT_VERSION and update docs/bitstream.md.
    h, recs = golden_stream()
    data = bs.write(h, recs)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256, hashlib.sha256(data).hexdigest()
    # Hand-checked layout of the header (docs/bitstream.md) and of the first record's start.
    assert data[:44] == bytes.fromhex(
        "47564302" "0123456789abcdef" "0474696e79" "00" "00"  # magic, version, fingerprint, preset, t2v, hadamard
        "40303c28" "09" "1001" "05" "02" "0401"               # 64x48, 60x40, 9 frames, 16/1 fps, gop 5, 2 GOPs,
                                                              # 4 steps, tail 1
        "40400000" "40400000" "40" "02" "0406" "07" "00")     # shift 3.0, g_scale 3.0, K 64, M = (4, 6), seed, flags
    assert data[44:48] == struct.pack(">I", zlib.crc32(data[:44]))
    # Body 8 + ceil(171 / 8) + 1 = 31 bytes; picks[0][0] = indices (0, 5, 10, 15) -> rank 1495 in 20 bits, signs +-+-.
    assert data[48] == 31 and data[53:61] == b"hash0000" and data[61:64] == bytes.fromhex("005d75")
    assert bs.read(data) == (h, recs)


GOLDEN_SHA256 = "fd23c721a7838252a243faa16afb70d6d235570e9dc1ea058cffeb642178c5cb"
# Format v1 (before the per-GOP position-bound CRC): these bytes must still parse, unchanged.
GOLDEN_V1_SHA256 = "7884304f78859ffdedab468008c450b14efc73a63c259c88511e90c93496a2cf"


def test_golden_v1_bytes_still_read():
    h, recs = golden_stream()
    h1 = h.replace(version=1)
    data = bs._encode_header_fields(h1)
    for rec in recs:
        body = bs._encode_body(h1, rec)
        data += bs.encode_varint(len(body)) + struct.pack(">I", zlib.crc32(body)) + body
    assert hashlib.sha256(data).hexdigest() == GOLDEN_V1_SHA256  # the v1 layout, byte for byte
    h2, recs2 = bs.read(data)
    assert h2 == h1 and recs2 == recs
    with pytest.raises(BitstreamError, match="writes format version 2"):
        bs.write(h1, recs)
    with pytest.raises(BitstreamError, match="flags"):  # v1 has no flags
        bs.validate_header(h1.replace(flags=bs.FLAG_GOP_ATOMS))


# ----------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("field,value", [
    ("codebook", "sparse"), ("steps", 0), ("steps", 1001), ("tail", 5), ("tail", 0), ("shift", 0.0),
    ("shift", float("nan")), ("shift", 1e-40), ("shift", 1e40), ("g_scale", -1.0), ("g_scale", float("inf")),
    ("g_scale", 3e38), ("K", 0), ("K", (1 << 24) + 1), ("atoms_per_frame", (4, 65)), ("atoms_per_frame", (0, 4)),
    ("seed", -1), ("seed", 1 << 32), ("steps", 4.0),
])
def test_sampler_fields_are_validated_by_the_sampler(field, value):
    with pytest.raises(SamplerError):
        make_header(**{field: value})


def test_x0_cache_schedule_travels_in_the_header_and_is_validated():
    h = make_header(steps=8, x0_cache=(1, 3, 6), flags=bs.FLAG_X0_CACHE)
    rng = np.random.default_rng(0)
    data = bs.write(h, [random_record(rng, h) for _ in range(2)])
    back, _ = bs.read(data)
    assert back.sampler.x0_cache == (1, 3, 6) and back == h
    with pytest.raises(BitstreamError, match="FLAG_X0_CACHE"):
        bs.write(h.replace(flags=0), [])
    with pytest.raises(BitstreamError, match="FLAG_X0_CACHE"):
        bs.write(make_header(flags=bs.FLAG_X0_CACHE), [])
    # a forged schedule with two skipped steps in a row, CRC recomputed: refused by the sampler's rules
    raw = bytearray(bs._encode_header_fields(h))
    i = len(raw) - 4 - 3  # count, then the three step indices, then the CRC
    assert raw[i - 1:i + 3] == bytes([3, 1, 3, 6])
    raw[i + 1] = 2
    raw[-4:] = struct.pack(">I", zlib.crc32(bytes(raw[:-4])))
    with pytest.raises(BitstreamError, match="invalid header: x0_cache"):
        bs.read(bytes(raw) + bytes(100))


def test_a_header_with_tail_0_is_a_bitstream_error_not_a_value_error():
    h = make_header()
    raw = bytearray(bs._encode_header_fields(h))
    # 4 steps, tail 1 are the bytes "04 01" after gop 5 and 2 GOPs ("05 02")
    i = bytes(raw).index(bytes.fromhex("05020401")) + 3
    raw[i] = 0
    raw[-4:] = struct.pack(">I", zlib.crc32(bytes(raw[:-4])))
    with pytest.raises(BitstreamError, match="invalid header: tail"):
        bs.read(bytes(raw) + bytes(100))


@pytest.mark.parametrize("field,value", [
    ("model_fingerprint", b"short"), ("preset", "p" * 65), ("variant", "v2v"),
    ("width", 70), ("height", 0), ("width", 16400), ("orig_width", 65), ("orig_height", 0), ("num_frames", 0),
    ("fps_num", 0), ("fps_den", 0), ("gop_frames", 6), ("gop_frames", 9), ("num_gops", 0), ("num_gops", 10),
    ("flags", -1), ("flags", 2), ("version", 3), ("width", 64.0), ("preset", "\ud800"), ("sampler", None),
])
def test_write_rejects_bad_header(field, value):
    h = dataclasses.replace(make_header(), **{field: value})
    rng = np.random.default_rng(3)
    recs = [random_record(rng, make_header()) for _ in range(2)]
    with pytest.raises(BitstreamError, match="invalid header"):
        bs.write(h, recs)


def test_write_rejects_bad_records():
    h = make_header()
    rng = np.random.default_rng(4)
    good = random_record(rng, h)
    idx, sg = good.picks[0][0]
    def with_pick(i, s):
        picks = list(map(list, good.picks))
        picks[0][0] = (i, s)
        return dataclasses.replace(good, picks=tuple(map(tuple, picks)))
    bad = [
        dataclasses.replace(good, latent_hash=b"1234567"),
        dataclasses.replace(good, picks=good.picks[:-1]),
        dataclasses.replace(good, picks=tuple(step[:1] for step in good.picks)),
        with_pick(idx[::-1].copy(), sg),
        with_pick(np.array([0, 1, 2, 64], np.int32), sg),
        with_pick(np.array([-1, 1, 2, 3], np.int32), sg),
        with_pick(idx[:3], sg[:3]),
        with_pick(idx, np.array([1, 0, 1, -1], np.int8)),
        with_pick(idx.astype(np.float32), sg),
        dataclasses.replace(good, side=((256, b""),)),
        dataclasses.replace(good, side=((1, "text"),)),
    ]
    for rec in bad:
        with pytest.raises(BitstreamError, match="invalid GOP 1 record"):
            bs.write(h, [good, rec])
    with pytest.raises(BitstreamError, match="num_gops"):
        bs.write(h, [good])


def _valid():
    rng = np.random.default_rng(5)
    h = make_header()
    return h, bs.write(h, [random_record(rng, h), random_record(rng, h, ((2, b"side"),))])


def _fix_record_crc(data, rec_start, g=0):
    """Recompute the CRC of GOP g's record starting at rec_start (its varint length is intact)."""
    cur = bs.Cursor(data, rec_start)
    n = cur.varint("len")
    body = data[cur.pos + 4:cur.pos + 4 + n]
    return data[:cur.pos] + struct.pack(">I", crc_at(g, body)) + data[cur.pos + 4:]


def test_read_errors_specific():
    h, data = _valid()
    hl = bs.header_bytes(h)
    cases = {
        "bad magic": b"GVD" + data[3:],
        "format version 3": data[:3] + b"\x03" + data[4:],
        "header CRC mismatch": data[:3] + b"\x01" + data[4:],  # v1 is read, but the CRC covers the version
        "trailing bytes": data + b"\x00",
        "header CRC": data[:20] + bytes([data[20] ^ 1]) + data[21:],
        "GOP 0: CRC mismatch": data[:hl + 10] + bytes([data[hl + 10] ^ 0x40]) + data[hl + 11:],
        "truncated": data[:-1],
    }
    for msg, d in cases.items():
        with pytest.raises(BitstreamError, match=msg):
            bs.read(d)
    # CRC of GOP 1 broken: error names GOP 1.
    cur = bs.Cursor(data, hl)
    n0 = cur.varint("len")
    rec1 = cur.pos + 4 + n0
    d = bytearray(data)
    d[rec1 + 8] ^= 1
    with pytest.raises(BitstreamError, match="GOP 1: CRC mismatch"):
        bs.read(bytes(d))
    with pytest.raises(BitstreamError):
        bs.read("not bytes")


def test_rank_out_of_range_detected():
    # K=5, M=2: C(5,2) = 10 fits in 4 bits, so ranks 10..15 are representable and invalid.
    h = make_header(K=5, atoms_per_frame=(2, 2), steps=2, tail=1, num_gops=1)
    rec = GopRecord(picks=(((np.array([0, 1], np.int32), np.array([1, 1], np.int8)),) * 2,), latent_hash=bytes(8))
    data = bytearray(bs.write(h, [rec]))
    hl = bs.header_bytes(h)
    pick0 = hl + 1 + 4 + 8  # varint len (1 byte) + CRC + hash
    assert data[pick0] >> 4 == 0  # rank 0 in the top 4 bits
    data[pick0] |= 0xF0  # rank 15 >= C(5, 2)
    with pytest.raises(BitstreamError, match="rank out of range"):
        bs.read(_fix_record_crc(bytes(data), hl))
    # Non-zero padding after the picks is rejected too (2 x (4 + 2) = 12 bits -> 4 padding bits).
    data = bytearray(bs.write(h, [rec]))
    data[pick0 + 1] |= 0x01
    with pytest.raises(BitstreamError, match="padding"):
        bs.read(_fix_record_crc(bytes(data), hl))


# ----------------------------------------------------------------------------------- fuzzing

def _raw_header(fields, crc=True):
    """Header bytes from raw field values via the low-level varint writer (no validation)."""
    out = bytearray(bs.MAGIC + bytes([bs.FORMAT_VERSION]))
    out += fields["fp"]
    out += bs.encode_varint(fields["preset_len"]) + fields["preset"]
    out += bytes([fields["variant"], fields["codebook"]])
    for v in fields["ints"]:
        out += bs.encode_varint(v)
    out += fields["floats"]
    out += bs.encode_varint(fields["K"]) + bs.encode_varint(fields["n_lat"])
    for m in fields["apf"]:
        out += bs.encode_varint(m)
    out += bs.encode_varint(fields["seed"]) + bs.encode_varint(fields["flags"])
    if crc:
        out += struct.pack(">I", zlib.crc32(out))
    return bytes(out)


def _wild(rng):
    """A field value from a mix of small, boundary and huge integers."""
    choice = rng.integers(6)
    if choice == 0:
        return int(rng.integers(0, 4))
    if choice == 1:
        return int(rng.integers(0, 200))
    if choice == 2:
        return 16 * int(rng.integers(0, 1100))
    if choice == 3:
        return int(rng.choice([1 << 24, (1 << 24) + 1, 10**6, 10**6 + 1, 1000, 1001, 16384, 2**32 - 1, 2**32]))
    if choice == 4:
        return int(rng.integers(0, 1 << 62)) << int(rng.integers(0, 8))
    return 4 * int(rng.integers(0, 30)) + 1


def _random_raw_header(rng):
    """Fields of a valid random header, each replaced by a wild value with some probability."""
    hv = random_header(rng)
    p = 0.12
    wild = lambda v: _wild(rng) if rng.random() < p else v  # noqa: E731
    preset = hv.preset.encode()
    if rng.random() < p:
        preset = rng.bytes(int(rng.integers(0, 80)))
    n_lat = wild(len(hv.atoms_per_frame))
    extra = max(0, min(n_lat, 40) - len(hv.atoms_per_frame))
    apf = [wild(m) for m in hv.atoms_per_frame] + [_wild(rng) for _ in range(extra)]
    floats = struct.pack(">ff", hv.shift, hv.g_scale)
    if rng.random() < p:
        floats = struct.pack(">ff", *rng.choice([0.0, -1.0, 3.0, np.inf, np.nan, 1e-40], 2))
    ints = [hv.width, hv.height, hv.orig_width, hv.orig_height, hv.num_frames, hv.fps_num, hv.fps_den,
            hv.gop_frames, hv.num_gops, hv.steps, hv.tail]
    return {
        "fp": rng.bytes(8), "preset_len": wild(len(preset)), "preset": preset,
        "variant": int(rng.integers(0, 5)) if rng.random() < p else bs.VARIANTS.index(hv.variant),
        "codebook": int(rng.integers(0, 5)) if rng.random() < p else bs.CODEBOOK_KINDS.index(hv.codebook),
        "ints": [wild(v) for v in ints], "floats": floats, "K": wild(hv.K), "n_lat": n_lat, "apf": apf[:n_lat],
        "seed": wild(hv.seed), "flags": wild(hv.flags),
    }


def _check(data, stats):
    """One fuzz case: BitstreamError or a valid decode that re-encodes to the same bytes."""
    t0 = time.perf_counter()
    try:
        h, recs = bs.read(data)
    except BitstreamError:
        stats["errors"] += 1
    else:
        stats["valid"] += 1
        assert bs.write(h, recs) == data
    stats["max_s"] = max(stats["max_s"], time.perf_counter() - t0)  # reported, not asserted
    stats["n"] += 1


def _semi_valid(rng):
    """A random parsable header (tiny K and frame count) and records, for deep fuzzing."""
    h = make_header(K=int(rng.integers(2, 40)), atoms_per_frame=(1, 2), gop_frames=5, steps=3, tail=1,
                    num_gops=int(rng.integers(1, 4)), flags=int(rng.integers(0, 2)))
    recs = [random_record(rng, h, () if rng.random() < 0.5 else ((1, rng.bytes(3)),)) for _ in range(h.num_gops)]
    return h, bs.write(h, recs)


def _fix_crcs(data, hl):
    """Recompute header and record CRCs where the framing is still parsable (to fuzz deeper checks)."""
    d = bytearray(data)
    if len(d) >= hl:
        d[hl - 4:hl] = struct.pack(">I", zlib.crc32(bytes(d[:hl - 4])))
    pos, g = hl, 0
    while pos < len(d):
        cur = bs.Cursor(bytes(d), pos)
        try:
            n = cur.varint("len")
        except BitstreamError:
            break
        if cur.pos + 4 + n > len(d):
            break
        d[cur.pos:cur.pos + 4] = struct.pack(">I", crc_at(g, bytes(d[cur.pos + 4:cur.pos + 4 + n])))
        pos, g = cur.pos + 4 + n, g + 1
    return bytes(d)


def test_fuzz():
    rng = np.random.default_rng(1234)
    stats = {"n": 0, "errors": 0, "valid": 0, "max_s": 0.0}
    t_start = time.perf_counter()
    h, data = _valid()
    # 1. Every truncation of a valid stream.
    for n in range(len(data)):
        _check(data[:n], stats)
    # 2. Single and multiple bit flips, with CRCs as they are (must be caught) ...
    for _ in range(500):
        d = bytearray(data)
        for _ in range(1 if rng.random() < 0.6 else int(rng.integers(2, 9))):
            i = int(rng.integers(len(d) * 8))
            d[i // 8] ^= 1 << (i % 8)
        _check(bytes(d), stats)
    # ... and with CRCs recomputed, so the field and payload validation behind them is exercised.
    for _ in range(700):
        hs, ds = _semi_valid(rng)
        d = bytearray(ds)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(d) * 8))
            d[i // 8] ^= 1 << (i % 8)
        _check(_fix_crcs(bytes(d), bs.header_bytes(hs)), stats)
    # 3. Garbage after a valid magic (+ version).
    for _ in range(300):
        prefix = bs.MAGIC + (bytes([bs.FORMAT_VERSION]) if rng.random() < 0.8 else b"")
        _check(prefix + rng.bytes(int(rng.integers(0, 400))), stats)
    # 4. Random header fields through the varint writer, followed by records / garbage / nothing.
    for k in range(700):
        fields = _random_raw_header(rng)
        tail_kind = k % 3
        tail = b"" if tail_kind == 0 else rng.bytes(int(rng.integers(1, 300)))
        if tail_kind == 2:  # a well-framed record with a correct CRC but random content
            body = rng.bytes(int(rng.integers(10, 200)))
            tail = bs.encode_varint(len(body)) + struct.pack(">I", crc_at(0, body)) + body
        _check(_raw_header(fields, crc=rng.random() < 0.95) + tail, stats)
    # 5. Valid random headers with random (CRC-correct) record bodies.
    for _ in range(200):
        hv = random_header(rng)
        tail = b""
        for g in range(hv.num_gops):
            body = rng.bytes(int(rng.integers(9, 64)))
            tail += bs.encode_varint(len(body)) + struct.pack(">I", crc_at(g, body)) + body
        _check(bs._encode_header_fields(hv) + tail, stats)
    elapsed = time.perf_counter() - t_start
    assert stats["n"] >= 2000
    assert stats["errors"] > 0.5 * stats["n"]
    print(f"fuzz: {stats['n']} cases, {stats['errors']} errors, {stats['valid']} valid decodes, "
          f"max {stats['max_s'] * 1e3:.1f} ms/case, {elapsed:.1f} s total")


def test_huge_claims_rejected_fast_and_small():
    """Headers claiming enormous K, M, num_gops, latent frames, preset or varints fail fast without allocating."""
    def fields(**kw):
        ints = dict(width=64, height=48, orig_width=64, orig_height=48, num_frames=10**6, fps_num=16, fps_den=1,
                    gop_frames=5, num_gops=1, steps=1000, tail=1)
        ints.update({k: kw.pop(k) for k in list(kw) if k in ints})
        f = {"fp": bytes(8), "preset_len": 4, "preset": b"tiny", "variant": 0, "codebook": 0,
             "ints": list(ints.values()), "floats": struct.pack(">ff", 3.0, 3.0), "K": 1 << 24, "n_lat": 2,
             "apf": [1 << 23, 1 << 23], "seed": 0, "flags": 0}
        f.update(kw)
        return _raw_header(f)
    cases = [
        fields(),                                               # K = 2**24, M = 2**23, 1000 steps
        fields(num_gops=10**6, apf=[1, 1], K=2),                 # a million GOPs in a few bytes
        fields(num_gops=10**6, apf=[1 << 24, 1 << 24]),          # both
        fields(n_lat=1 << 60, apf=[]),                           # absurd latent frame count
        fields(gop_frames=4097, n_lat=1025, apf=[1 << 24] * 1025),  # the largest allowed GOP, all M = K
        fields(preset_len=1 << 62, preset=b""),                  # absurd preset length
        bs.MAGIC + b"\x01" + bytes(8) + b"\xff" * 10000,         # endless varint
    ]
    for d in cases:
        d = d + bytes(200)
        tracemalloc.start()
        with pytest.raises(BitstreamError):
            run_within(60, bs.read, d)  # a hang guard: refused in milliseconds, never stuck
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 4 << 20, peak


def _fields_of(h):
    """The raw header fields of a valid header (the inverse of _raw_header)."""
    preset = h.preset.encode()
    return {"fp": bytes(h.model_fingerprint), "preset_len": len(preset), "preset": preset,
            "variant": bs.VARIANTS.index(h.variant), "codebook": bs.CODEBOOK_KINDS.index(h.codebook),
            "ints": [h.width, h.height, h.orig_width, h.orig_height, h.num_frames, h.fps_num, h.fps_den,
                     h.gop_frames, h.num_gops, h.steps, h.tail],
            "floats": struct.pack(">ff", h.shift, h.g_scale), "K": h.K, "n_lat": len(h.atoms_per_frame),
            "apf": list(h.atoms_per_frame), "seed": h.seed, "flags": h.flags}


def test_fuzz_fields_with_recomputed_crcs():
    """Each header field (then each record's atom counts, side count and lengths) set to a wild
    value with every CRC recomputed: validation alone must catch it, fast and without big allocations."""
    rng = np.random.default_rng(99)
    stats = {"n": 0, "errors": 0, "valid": 0, "max_s": 0.0}
    tracemalloc.start()
    for k in range(600):
        h = make_header(K=int(rng.choice([5, 64, 1000])), atoms_per_frame=(3, 4), flags=int(rng.integers(0, 2)))
        recs = [random_record(rng, h, ((1, b"ab"),) if rng.random() < 0.3 else ()) for _ in range(h.num_gops)]
        stream = bs.write(h, recs)
        hl = bs.header_bytes(h)
        fields = _fields_of(h)
        key = ["ints", "K", "n_lat", "apf", "seed", "flags", "floats", "preset_len"][k % 8]
        if key == "ints":
            i = int(rng.integers(len(fields["ints"])))
            fields["ints"][i] = _wild(rng)
        elif key == "apf":
            fields["apf"][int(rng.integers(2))] = _wild(rng)
        elif key == "floats":
            fields["floats"] = struct.pack(">ff", *rng.choice([0.0, -1.0, 1e-40, 3e38, np.inf, np.nan, 3.0], 2))
        elif key == "preset_len":
            fields["preset_len"] = _wild(rng)
        else:
            fields[key] = _wild(rng)
        _check(_raw_header(fields) + stream[hl:], stats)
        # payload side: overwrite one byte of a record body (atom counts, picks, side count / length)
        d = bytearray(stream)
        cur = bs.Cursor(stream, hl)
        n = cur.varint("len")
        body_start = cur.pos + 4
        j = body_start + 8 + int(rng.integers(0, max(1, n - 8)))
        d[j] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
        _check(_fix_crcs(bytes(d), hl), stats)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats["errors"] > 0.5 * stats["n"] and stats["n"] == 1200
    assert stats["max_s"] < 0.5, stats
    assert peak < 64 << 20, peak


def test_read_file_refuses_non_streams_and_oversized_files_early(tmp_path):
    h, data = _valid()
    ok = tmp_path / "ok.gvc"
    ok.write_bytes(data)
    assert bs.read_file(ok) == data
    tracemalloc.start()
    with pytest.raises(BitstreamError, match="bad magic"):
        run_within(60, bs.read_file, "/dev/zero")  # endless: refused after 4 bytes, never read to the end
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()
    assert bs.max_stream_bytes(h) >= len(data)
    big = tmp_path / "big.gvc"
    with open(big, "wb") as f:  # a valid header followed by more bytes than it can account for
        f.write(data)
        f.seek(bs.max_stream_bytes(h) + 10)
        f.write(b"\0")
    with pytest.raises(BitstreamError, match="longer than"):
        bs.read_file(big)


def test_parse_time_is_bounded_by_the_stream_size():
    """The worst legal (K, M) for unranking parses (a hang guard; the per-byte cost, about 0.12 ms,
    is measured and printed, not asserted: timings belong in benchmarks)."""
    rng = np.random.default_rng(7)
    with pytest.raises(SamplerError, match="512"):
        make_header(K=1 << 18, atoms_per_frame=(513, 1))
    worst = 0.0
    for K in (1 << 16, 1 << 18, 1 << 20, 1 << 24):
        h = make_header(K=K, atoms_per_frame=(512, 512), steps=2, tail=1, num_gops=1)
        data = bs.write(h, [random_record(rng, h)])
        t0 = time.perf_counter()
        header, records = run_within(120, bs.read, data)
        worst = max(worst, (time.perf_counter() - t0) / len(data))
        assert header == h and len(records) == 1
    print(f"worst parse cost {worst * 1e6:.0f} us per byte")


def test_hostile_streams_give_one_clean_line_from_the_command_line(tmp_path):
    """As a user sees it: ``python -m gvc_jax.decode`` on each hostile stream exits 2 with exactly
    one ``error:`` line on stderr, naming the user's path: no traceback, no RuntimeWarning."""
    import os
    import subprocess
    import sys

    from gvc_jax.models.registry import init_preset

    h = make_header(K=64, atoms_per_frame=(3, 4), model_fingerprint=bytes.fromhex(init_preset("tiny").fingerprint)[:8])
    good = bs.write(h, [random_record(np.random.default_rng(g), h) for g in range(h.num_gops)])
    f = _fields_of(h)
    hl = bs.header_bytes(h)
    streams = {
        "zeros.gvc": bytes(4096),
        "huge_gscale.gvc": _raw_header({**f, "floats": struct.pack(">ff", 3.0, 3e38)}) + good[hl:],
        "denormal_shift.gvc": _raw_header({**f, "floats": struct.pack(">ff", 1e-40, 3.0)}) + good[hl:],
        "nan_shift.gvc": _raw_header({**f, "floats": struct.pack(">ff", float("nan"), 3.0)}) + good[hl:],
        "truncated.gvc": good[:-3],
        "long_claim.gvc": _raw_header({**f, "ints": [*f["ints"][:4], 1 << 24, *f["ints"][5:]]}) + good[hl:],
    }
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for name, data in streams.items():
        path = tmp_path / name
        path.write_bytes(data)
        p = subprocess.run([sys.executable, "-m", "gvc_jax.decode", str(path), "-o", str(tmp_path / "o.npy"),
                            "--model", "preset:tiny", "--quiet"], capture_output=True, text=True, env=env,
                           timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, p.stderr)
        assert "Warning" not in p.stderr and "Traceback" not in p.stderr and name in lines[0], (name, p.stderr)
    assert not (tmp_path / "o.npy").exists()


def test_open_stream_checks_framing_up_front_and_content_per_record():
    rng = np.random.default_rng(5)
    h = make_header(K=64, atoms_per_frame=(3, 4), num_gops=3, num_frames=13)
    recs = [random_record(rng, h) for _ in range(3)]
    stream = bs.write(h, recs)
    header, lazy = bs.open_stream(stream)
    assert header == h and len(lazy) == 3 and lazy[1] == recs[1] and lazy[-1] == recs[2]
    assert bs.read(stream)[1] == recs
    # GOP 1's body gets trailing junk, re-framed with a correct CRC: framing is fine, content is not
    framed = [bs.record_bytes(h, g, r) for g, r in enumerate(recs)]
    body = framed[1][1 + 4:] + b"\x00"
    bad = bs.assemble(h, [framed[0], bs.frame_body(h, 1, body), framed[2]])
    _, lazy = bs.open_stream(bad)
    assert lazy[0] == recs[0]
    with pytest.raises(BitstreamError, match="GOP 1"):
        lazy[1]
    with pytest.raises(BitstreamError, match="GOP 1"):
        bs.read(bad)
    with pytest.raises(BitstreamError, match="CRC"):  # framing errors are found when the stream is opened
        bs.open_stream(bs.assemble(h, [framed[0], framed[2], framed[1]]))
