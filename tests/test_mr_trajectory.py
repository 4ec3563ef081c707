"""The multi-resolution (MR) trajectory end to end (issue 24; the pure pieces: tests/test_multires.py).

Stages run inside the one GOP loop and the one compiled trajectory: the stream header carries the
plan, each record one extra row of picks per transition, and the decoder needs no flag. Checked
here: strict round trips for the three variants, the stream's size formula and per-stage bits,
the x0-cache refresh rule with stages, ``--mr auto`` on the default model, and plans
refused before any work (library and command line). The same bytes on 1 and 4 devices with stages:
tests/test_topology.py (in its 4-device process, which compiles the VAE programs once for both);
warm = cold with stages: tests/test_warm_start.py (in the cache of its plain runs).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import GOP, SAMPLER, matrix_video, model_for, variant_for

from gvc_jax.api import CodecOptions
from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop import rate
from gvc_jax.codec.sampling import multires
from gvc_jax.codec.sampling.schedule import SamplerError
from gvc_jax.codec.session import decode_video, encode_video, rate_breakdown

# the matrix clip is 56x40, coded 64x48 (latent 8x6); one lower stage of 32x32 (latent 4x4) until step 2
PLAN = multires.StagePlan(((32, 32), (64, 48)), (2,))
MR_SAMPLER = SAMPLER.replace(stages=PLAN)   # 4 steps, tail 1: steps 0-1 at 32x32, 2-3 at 64x48


@pytest.fixture(scope="module")
def video():
    return matrix_video()[:17]  # two GOPs of 9 frames


@pytest.fixture(scope="module")
def coded(video):
    """Each variant coded with the stage plan, and decoded with --strict."""
    out = {}
    for name in ("t2v", "flf2v", "i2v"):
        enc = encode_video(video, 25.0, model_for(name), MR_SAMPLER, variant=variant_for(name), gop_frames=GOP)
        dec = decode_video(enc.stream, model_for(name), strict=True)
        out[name] = (enc, dec)
    return out


@pytest.mark.parametrize("name", ["t2v", "flf2v", "i2v"])
def test_strict_round_trip_with_stages(coded, name):
    enc, dec = coded[name]
    assert np.array_equal(enc.video, dec.video)
    header, records = bitstream.read(enc.stream)
    assert header.sampler.stages == PLAN and header.flags & bitstream.FLAG_STAGES
    # every record: the 3 stochastic steps, then one transition row, each with M_f atoms per latent frame
    for rec in records:
        assert len(rec.picks) == header.pick_rows == 4
        assert [len(idx) for idx, _ in rec.picks[-1]] == list(SAMPLER.atoms_per_frame)


def test_stages_change_the_trajectory(video, coded):
    """The same settings without the plan give another stream and another video: the stages run."""
    plain = encode_video(video, 25.0, model_for("t2v"), SAMPLER, gop_frames=GOP)
    enc, _ = coded["t2v"]
    assert plain.stream != enc.stream and not np.array_equal(plain.video, enc.video)


def test_stream_size_and_stage_bits(coded):
    enc, _ = coded["t2v"]
    h, records = bitstream.read(enc.stream)
    bits = multires.rank_coded_gop_bits(h.stochastic_steps, h.atoms_per_frame, h.K, PLAN.switches)
    assert bitstream.payload_bits(h) == bits.total == (bits.stages[0] + bits.stages[1] + bits.transitions[0])
    # a record's picks are exactly the formula's bytes: the size of the record without its picks is the same
    # as a plain stream's record (framing, hash, side count)
    plain_h = h.with_sampler(h.sampler.replace(stages=None))
    plain_rec = bitstream.GopRecord(picks=records[0].picks[:-1], latent_hash=records[0].latent_hash, side=())
    staged = len(bitstream.record_bytes(h, 0, records[0]))
    assert staged - len(bitstream.record_bytes(plain_h, 0, plain_rec)) == \
        (bits.total + 7) // 8 - (bitstream.payload_bits(plain_h) + 7) // 8
    report = rate_breakdown(enc)
    assert report["mr"] == "32x32@2" and report["stage_sizes"] == ["32x32", "64x48"]
    assert report["stage_bits"] == [2 * b for b in bits.stages]  # two GOPs
    assert report["transition_bits"] == [2 * bits.transitions[0]]
    assert sum(report["stage_bits"]) + sum(report["transition_bits"]) <= 8 * report["codebook_bytes"]


def test_target_rate_counts_the_transition_atoms(coded):
    """``--target-bpp``'s fit uses the exact stream size with the transitions: the budget that the
    plain stream's M fills exactly is too small for the same M with stages, and the fit lowers M."""
    enc, _ = coded["t2v"]
    h = bitstream.read(enc.stream)[0]
    plain = h.with_sampler(h.sampler.replace(stages=None))
    assert rate.stream_bytes(h) == len(enc.stream)   # the formula is the written size, transitions included
    budget = rate.stream_bytes(plain)
    fitted_plain, fitted = rate.fit_atoms(plain, budget), rate.fit_atoms(h, budget)
    assert sum(fitted_plain) >= sum(SAMPLER.atoms_per_frame) > sum(fitted)
    assert rate.stream_bytes(h.with_sampler(h.sampler.replace(atoms_per_frame=fitted))) <= budget


def test_header_refuses_a_plan_that_does_not_fit():
    h, _ = bitstream.read_header(_header_bytes())
    assert h.sampler.stages == PLAN
    with pytest.raises(bitstream.BitstreamError, match="FLAG_STAGES"):
        bitstream.validate_header(h.replace(flags=h.flags & ~bitstream.FLAG_STAGES))
    other = multires.StagePlan(((32, 32), (64, 64)), (2,))
    with pytest.raises(bitstream.BitstreamError, match="coded size"):
        bitstream.validate_header(h.replace(sampler=h.sampler.replace(stages=other)))
    # the flag set but the plan's bytes cut: the header CRC or the plan's reader refuses it
    raw = bytearray(bitstream._encode_header_fields(h))
    for cut in range(1, 8):
        with pytest.raises(bitstream.BitstreamError):
            bitstream.read_header(bytes(raw[:-4 - cut]) + raw[-4:])


def _header_bytes() -> bytes:
    h = bitstream.Header(model_fingerprint=b"\0" * 8, preset="tiny", variant="t2v", width=64, height=48,
                         orig_width=56, orig_height=40, num_frames=17, fps_num=25, fps_den=1, gop_frames=GOP,
                         num_gops=2, sampler=MR_SAMPLER, flags=bitstream.FLAG_STAGES)
    return bitstream._encode_header_fields(h)


def test_sampler_refuses_switches_outside_the_stochastic_steps_and_skipped_switches():
    with pytest.raises(SamplerError, match="strictly inside"):
        SAMPLER.replace(stages=multires.StagePlan(((32, 32), (64, 48)), (3,)))  # steps 4, tail 1: 3 is the tail
    with pytest.raises(SamplerError, match="first step"):
        SAMPLER.replace(steps=8, stages=multires.StagePlan(((32, 32), (64, 48)), (3,)), x0_cache=(1, 3))


def test_refresh_rule_with_stages():
    """``alternate`` with stages and ``turbo`` follow TURBO §6 (tests/test_multires.py checks the rule's
    12- and 13-call schedules); ``turbo`` without stages never skips in the tail."""
    opts = CodecOptions(mr="832x480@8", x0_cache="turbo")
    s = opts.sampler(720, 1280, 33)
    assert s.stages.spec() == "832x480@8"
    assert s.steps - len(s.x0_cache) == 12
    assert s.x0_cache == multires.mr_refresh_schedule(20, 3, 2, (8,), warmup=True).skips
    alt = CodecOptions(mr="832x480@8", x0_cache="alternate").sampler(720, 1280, 33)
    assert 8 not in alt.x0_cache and not set(alt.x0_cache) & set(range(17, 20))
    assert CodecOptions(x0_cache="turbo").sampler(480, 832, 33).x0_cache == tuple(range(1, 17, 2))
    assert CodecOptions(x0_cache="alternate").sampler(480, 832, 33).x0_cache == tuple(range(1, 20, 2))
    assert CodecOptions.preset("turbo").mr == "auto"


def test_auto_plan_on_the_default_model():
    """``--mr auto``'s floor is the model's native size: Wan2.1's 832x480 bucket, the default model's 192x128."""
    from gvc_jax.api import get_model

    model = get_model(None)
    assert model.config.native_size == (192, 128)
    plan = CodecOptions(mr="auto").stage_plan(144, 256, model)
    assert plan is not None and plan.coded == (256, 144) and plan.sizes[0][0] * plan.sizes[0][1] >= 192 * 128
    assert CodecOptions(mr="auto").stage_plan(720, 1280).spec() == "832x480@8"   # Wan's bucket without a model
    assert CodecOptions(mr="auto").stage_plan(128, 192, model) is None           # at the floor: one size


@pytest.mark.parametrize("spec, message", [
    ("48x48@2", "increase strictly"),           # height 48 is not below the coded 48
    ("24x24@2", "multiples? of"),               # not on the model's 16-pixel grid
    ("32x32@3", "strictly inside"),             # step 3 is the deterministic tail
    ("32x32@0", "switch steps"),
    ("32x32", "WIDTHxHEIGHT@STEP"),
    ("16x16@1,32x32@1", "increase strictly"),
])
def test_bad_plans_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        CodecOptions(mr=spec, steps=4, tail=1).stage_plan(40, 56, model_for("t2v"))


def test_command_line_refuses_a_bad_plan_before_any_work(tmp_path):
    """One line on stderr, exit 2, no output and no journal; the input is untouched."""
    from gvc_jax.io.video_writer import write_video

    src = tmp_path / "in.mp4"
    write_video(str(src), matrix_video()[:9], 25.0)
    before = src.read_bytes()
    out = tmp_path / "out.gvc"
    proc = subprocess.run([sys.executable, "-m", "gvc_jax.encode", str(src), "-o", str(out), "--model", "preset:tiny",
                           "--steps", "4", "--tail", "1", "--mr", "48x48@2", "--quiet"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    assert "increase strictly" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"] and src.read_bytes() == before


def test_mutated_stage_plans_are_refused_or_valid():
    """Every byte of the header's stage plan set to other values, the header CRC recomputed: the reader
    either refuses it with a BitstreamError or returns a plan that passes every check."""
    import struct
    import zlib

    raw = _header_bytes()
    plan_bytes = PLAN.to_bytes()
    start = len(raw) - 4 - len(plan_bytes)
    assert raw[start:start + len(plan_bytes)] == plan_bytes
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "valid": 0}
    for pos in range(start, start + len(plan_bytes)):
        for value in {0, 1, 2, 3, 255, raw[pos] ^ 1, *rng.integers(0, 256, 6).tolist()} - {raw[pos]}:
            body = bytearray(raw[:-4])
            body[pos] = value
            forged = bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))
            try:
                h, _ = bitstream.read_header(forged)
            except bitstream.BitstreamError:
                outcomes["refused"] += 1
                continue
            outcomes["valid"] += 1
            assert h.sampler.stages.coded == (h.width, h.height)
            assert 0 < h.sampler.stages.switches[0] and h.sampler.stages.switches[-1] < h.stochastic_steps
    assert outcomes["refused"] > 50


def test_a_lost_record_of_a_staged_stream_is_concealed(coded):
    enc, dec = coded["flf2v"]
    h, records = bitstream.read(enc.stream)
    damaged = bytearray(enc.stream)
    damaged[-3] ^= 0xFF   # inside the last record: its CRC fails
    out = decode_video(bytes(damaged), model_for("flf2v"), conceal=True)
    assert out.concealed == [h.num_gops - 1]
    first = GOP  # the first GOP's frames decode exactly as without damage
    assert np.array_equal(out.video[:first], dec.video[:first])
