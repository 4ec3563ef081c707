"""experiments/device_check.py (the one-script accelerator check) in --tiny mode on CPU, and the DiT FLOPs
accounting of experiments/dit_flops.py it relies on."""
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import device_check, dit_flops
from gvc_jax import api

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- dit_flops

def test_turbo_schedule_is_turbo_md_section_6():
    # T = 20, tail 3, period 2, one switch at 8, warmup: 12 calls, 4 of them at the low size
    calls = dit_flops.mr_refresh_calls(20, 3, (8,), period=2, warmup=True)
    assert [i for i, _ in calls] == [0, 2, 4, 6, 8, 9, 11, 13, 15, 17, 18, 19]
    assert [i for i, s in calls if s == 0] == [0, 2, 4, 6]
    # 1080p: two switches (6, 12): 13 calls
    calls = dit_flops.mr_refresh_calls(20, 3, (6, 12), period=2, warmup=True)
    assert [i for i, _ in calls] == [0, 2, 4, 6, 7, 9, 11, 12, 13, 15, 17, 18, 19]
    assert [s for _, s in calls].count(0) == 3 and [s for _, s in calls].count(1) == 4
    # without warmup the switch step itself restarts the period; period 1 or no switch: the plain cadence
    assert [i for i, _ in dit_flops.mr_refresh_calls(20, 3, (8,), warmup=False)] == \
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 17, 18, 19]
    assert len(dit_flops.mr_refresh_calls(20, 3, (8,), period=1)) == 20
    for bad in ((0,), (17,), (8, 8), (9, 4)):
        with pytest.raises(ValueError, match="switch steps"):
            dit_flops.mr_refresh_calls(20, 3, bad)


def test_x0_cache_calls_are_the_codecs_schedule():
    from gvc_jax.codec.sampling.schedule import x0_cache_schedule

    calls = dit_flops.x0_cache_calls("alternate", 20)
    assert len(calls) == 20 - len(x0_cache_schedule("alternate", 20)) == 10
    assert not set(calls) & set(x0_cache_schedule("alternate", 20))
    assert dit_flops.x0_cache_calls("off", 7) == list(range(7))


def test_per_call_flops_match_the_matmul_count():
    """The cost analysis of one forward counts every layer (unrolled) and the attention: within a few
    per cent above the matrix products counted by hand (the rest is norms, softmax, modulation)."""
    from gvc_jax.models.configs import DiTConfig

    cfg = DiTConfig(num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4, text_dim=64,
                    freq_dim=32, ffn_dim=1024, num_layers=2, rope_max_seq_len=64, text_len=64)
    for shape in ((3, 16, 16, 4), (3, 8, 16, 4)):
        counted = dit_flops.per_call_flops(cfg, shape)
        by_hand = dit_flops.analytic_matmul_flops(cfg, shape)
        assert 1.0 <= counted / by_hand < 1.1, (shape, counted, by_hand)


def test_gop_flops_combines_calls_and_sizes():
    r = dit_flops.gop_flops("preset:tiny", (64, 48), (48, 32), gop_frames=5, steps=6, tail=2, dtype="float32")
    full, low = r["per_call_flops"]["64x48"], r["per_call_flops"]["48x32"]
    assert 0 < low < full
    rows = r["schedules"]
    assert rows["plain"]["gop_flops"] == 6 * full and rows["x0-cache"]["calls"] == 3
    turbo = rows["turbo"]
    assert turbo["calls"] == len(dit_flops.mr_refresh_calls(6, 2, (turbo["switch_step"],)))
    assert turbo["gop_flops"] == pytest.approx((turbo["calls"] - turbo["calls_low"]) * full + turbo["calls_low"] * low)
    assert turbo["ratio_to_plain"] == pytest.approx(turbo["gop_flops"] / (6 * full))
    assert "the codec's sampler for --mr 48x32@" in turbo["source"]  # counted from the real sampler
    assert "| turbo |" in dit_flops.markdown(r)
    short = dit_flops.gop_flops("preset:tiny", (64, 48), (48, 32), gop_frames=5, steps=2, tail=1, dtype="float32")
    assert "turbo" not in short["schedules"] and "2 stochastic steps" in short["turbo_note"]  # no room for a switch


# ----------------------------------------------------------------------------- device_check

def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    report = device_check.Report(str(tmp_path), {"tiny": True})

    def fails(partial):
        partial["measured_before"] = 1.5
        raise ZeroDivisionError("boom")

    def not_here(partial):
        raise device_check.NotAvailable("needs a GPU")

    report.run("a", fails)
    report.run("b", not_here)
    report.run("c", lambda partial: {"value": 2})
    data = json.loads((tmp_path / "device_check.json").read_text())["sections"]
    assert data["a"]["ok"] is False and "ZeroDivisionError: boom" in data["a"]["error"]
    assert data["a"]["measured_before"] == 1.5 and not data["a"]["not_available"]
    assert data["b"]["ok"] is False and data["b"]["not_available"] is True
    assert data["c"] == {"ok": True, "value": 2, "seconds": data["c"]["seconds"]}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    proc = subprocess.run([sys.executable, "-m", "experiments.device_check", "--tiny", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "device_check.json") as f:
        data = json.load(f)
    return data, (out / "device_check.md").read_text(), proc.stderr


def test_tiny_run_has_every_section(tiny_run):
    data, md, log = tiny_run
    sections = data["sections"]
    assert list(sections) == list(device_check.SECTIONS)
    for name in device_check.SECTIONS:
        assert _number(sections[name]["seconds"])
        assert f"{name} ..." in log  # progress printed
    # what cannot run on a CPU says so, and nothing else fails
    failed = {n for n, e in sections.items() if not e["ok"]}
    expected = {"attention"} | ({"gop_turbo"} if "turbo" not in api.PRESETS else set())
    assert failed == expected, {n: sections[n].get("error") for n in failed}
    for name in failed:
        assert sections[name]["not_available"] is True
    assert "cuDNN" in sections["attention"]["error"] and "'cpu'" in sections["attention"]["error"]
    assert _number(sections["attention"]["chunked_s"]) and "cudnn_s" not in sections["attention"]
    assert "NOT AVAILABLE" in md and "## GOP" in md and "## DiT FLOPs" in md
    for name in ("compile_cache", "codebook_hashes", "attention", "stream_decode", "dit_flops"):
        assert f"| {name} |" in md


def test_tiny_run_gop_rows(tiny_run):
    data, md, _ = tiny_run
    sections, meta = data["sections"], data["meta"]
    flops = sections["dit_flops"]
    per_call = flops["per_call_flops"][meta["size"]]
    assert _number(per_call) and per_call > 0
    for name, key, calls in (("plain", "gop_plain", meta["steps"]), ("x0-cache", "gop_x0_cache", meta["steps"] // 2)):
        row = sections[key]
        assert row["dit_calls"] == calls == flops["schedules"][name]["calls"]
        for field in ("encode_gop_s", "decode_gop_s", "encode_trajectory_s", "decode_trajectory_s",
                      "achieved_tflops_encode_trajectory", "achieved_tflops_decode_trajectory", "peak_rss_bytes"):
            assert _number(row[field]) and row[field] > 0, (key, field, row.get(field))
        assert _number(row["compile_s"]) and row["compile_s"] >= 0
        assert row["dit_flops_per_gop"] == pytest.approx(calls * per_call)
        assert row["mfu_encode_trajectory"] is None and "no peak" in row["mfu_note"]  # no CPU peak in the table
        assert f"| {name} | {calls} |" in md
    assert sections["gop_plain"]["compile_s"] > 0
    turbo = sections["gop_turbo"]
    if not turbo["ok"]:
        assert "`turbo` options preset" in turbo["error"] and turbo["not_available"] is True
    else:
        assert _number(turbo["encode_gop_s"]) and _number(turbo["decode_gop_s"])


def test_tiny_run_checks(tiny_run):
    data, _, _ = tiny_run
    s = data["sections"]
    c = s["compile_cache"]
    assert _number(c["cold"]["compile_s"]) and c["cold"]["compile_s"] > 0 and _number(c["cold"]["lower_s"])
    assert isinstance(c["warm_hit"], bool) and (c["warm_hit"] or c["warm_miss_reason"])
    if "skipped" in c["warm"]:  # JAX said it did not write the trajectory (a host callback): nothing to time
        assert not c["warm_hit"] and "Not writing" in c["warm"]["skipped"] and "jit__trajectory" in c["warm"]["skipped"]
    else:
        assert _number(c["warm"]["compile_s"]) and c["warm"]["compile_s"] > 0
    hashes = s["codebook_hashes"]
    assert set(hashes["kinds"]) == set(device_check.golden_hash_values()) == {"hadamard", "gaussian", "rademacher"}
    assert hashes["all_match"] is True  # on a CPU: the device is the CPU
    dec = s["stream_decode"]
    assert len(dec["gop_drift"]) == 2 and all(isinstance(d, bool) for d in dec["gop_drift"])
    # bit-exact on the machine that wrote it; within one level across CPU instruction sets
    assert dec["max_abs_pixel_diff"] <= 1 and dec["fraction_values_differing"] < 1e-3
    assert dec["frames"] == [9, 48, 64, 3]
    env = s["environment"]
    assert env["backend"] == "cpu" and env["peak_tflops"] is None and "peak_note" in env
