"""Evaluation harness: Bjontegaard deltas, conventional-codec baselines, rd.py / ablate.py end to end."""
import importlib.machinery
import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/ lives at the root

from experiments import baselines as bl
from experiments import bjontegaard as bd
from gvc_jax.io.sample_clips import sample_clip_path
from gvc_jax.io.video_reader import read_video
from gvc_jax.metrics import psnr

# ----------------------------------------------------------------------------- Bjontegaard

RATES = np.array([100.0, 200.0, 400.0, 800.0])
PSNRS = np.array([30.0, 33.0, 35.5, 37.0])  # concave, as real RD curves


@pytest.mark.parametrize("method", bd.METHODS)
def test_bd_identical_curves_is_zero(method):
    assert bd.bd_rate(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)
    assert bd.bd_quality(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", bd.METHODS)
@pytest.mark.parametrize("factor, expected", [(0.5, -50.0), (2.0, 100.0), (0.8, -20.0)])
def test_bd_rate_constant_factor(method, factor, expected):
    assert bd.bd_rate(RATES, PSNRS, factor * RATES, PSNRS, method=method) == pytest.approx(expected, abs=1e-9)


def test_bd_quality_of_shifted_log_linear_curve():
    # quality linear in log10(rate): pchip is exact, so the mean shift is the shift itself
    q = 20.0 + 6.0 * np.log10(RATES)
    assert bd.bd_quality(RATES, q, RATES, q + 1.25) == pytest.approx(1.25, abs=1e-9)
    # the same curve at half the rate is 6 * log10(2) dB better at equal rate (over the overlap)
    assert bd.bd_quality(RATES, q, RATES / 2, q) == pytest.approx(6.0 * np.log10(2.0), abs=1e-9)
    assert bd.bd_rate(RATES, q, RATES, q + 6.0 * np.log10(2.0)) == pytest.approx(-50.0, abs=1e-6)


def test_bd_lower_is_better_metric():
    lp = np.array([0.40, 0.25, 0.15, 0.10])  # LPIPS falls with rate
    assert bd.bd_rate(RATES, lp, RATES / 2, lp, higher_is_better=False) == pytest.approx(-50.0, abs=1e-9)
    # test curve 0.02 lower LPIPS everywhere: BD-LPIPS is -0.02 in LPIPS units, BD-rate negative
    assert bd.bd_quality(RATES, lp, RATES, lp - 0.02, higher_is_better=False) == pytest.approx(-0.02, abs=1e-9)
    assert bd.bd_rate(RATES, lp, RATES, lp - 0.02, higher_is_better=False) < 0
    # read as higher-is-better, LPIPS falls with rate: no usable curve, an error rather than a number
    with pytest.raises(bd.BDError, match="usable point"):
        bd.bd_rate(RATES, lp, RATES / 2, lp, higher_is_better=True)
    assert not bd.higher_is_better("lpips") and bd.higher_is_better("psnr")


def test_bd_pchip_and_cubic_agree_on_smooth_curves():
    r2 = RATES * np.array([0.7, 0.72, 0.75, 0.8])
    a = bd.bd_rate(RATES, PSNRS, r2, PSNRS, method="pchip")
    b = bd.bd_rate(RATES, PSNRS, r2, PSNRS, method="cubic")
    assert -30.0 < a < -20.0 and abs(a - b) < 1.5


def test_bd_errors_and_pareto():
    with pytest.raises(bd.BDError, match="overlap"):
        bd.bd_rate(RATES, PSNRS, RATES, PSNRS + 20.0)
    with pytest.raises(bd.BDError, match="usable point"):
        bd.bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS)
    with pytest.raises(bd.BDError, match="> 0"):
        bd.bd_rate(-RATES, PSNRS, RATES, PSNRS)
    with pytest.raises(bd.BDError, match="4 points"):
        bd.bd_rate(RATES[:3], PSNRS[:3], RATES[:3], PSNRS[:3], method="cubic")
    # a dominated point (more rate, worse quality) is dropped before fitting
    r, q = bd.pareto_front([100, 200, 300, 400], [30, 33, 32, 35])
    assert r.tolist() == [100, 200, 400] and q.tolist() == [30, 33, 35]
    noisy_r, noisy_q = np.append(RATES, 500.0), np.append(PSNRS, 34.0)
    assert bd.bd_rate(RATES, PSNRS, noisy_r, noisy_q) == pytest.approx(0.0, abs=1e-9)


def test_interpolation_helpers():
    q = 20.0 + 6.0 * np.log10(RATES)
    assert bd.quality_at_rate(RATES, q, 283.0) == pytest.approx(20.0 + 6.0 * np.log10(283.0), abs=1e-9)
    assert bd.rate_at_quality(RATES, q, 20.0 + 6.0 * np.log10(150.0)) == pytest.approx(150.0, rel=1e-9)
    with pytest.raises(bd.BDError, match="outside"):
        bd.quality_at_rate(RATES, q, 50.0)
    lo, hi = bd.overlap(RATES, q, RATES * 2, q, axis="rate")
    assert (lo, hi) == pytest.approx((200.0, 800.0))


# ----------------------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def tiny_clip():
    video, fps = read_video(sample_clip_path(), max_frames=9, resize=(64, 64))
    return video, fps


@pytest.mark.parametrize("codec", list(bl.CODECS))
def test_baseline_round_trip(codec, tiny_clip, tmp_path):
    video, fps = tiny_clip
    lo_q, hi_q = bl.default_ladder(codec)[1], bl.default_ladder(codec)[-2]  # low and high quality
    low = bl.encode_baseline(codec, video, fps, lo_q, tmp_path, preset=bl.FAST_PRESETS[codec])
    high = bl.encode_baseline(codec, video, fps, hi_q, tmp_path, preset=bl.FAST_PRESETS[codec])
    for res in (low, high):
        assert res["video"].shape == video.shape and res["video"].dtype == np.uint8
        assert res["bytes"] == os.path.getsize(res["path"]) > 0
        assert res["path"].endswith(bl.CODECS[codec].suffix)
        assert bl.count_key_frames(res["path"]) == 1
    p_low, p_high = psnr(video, low["video"]), psnr(video, high["video"])
    assert 15.0 < p_low < p_high and high["bytes"] > low["bytes"]


def test_baseline_one_key_frame_across_scene_cuts(tmp_path):
    # hard cuts every 6 frames at 2 fps: default settings put key frames at the cuts / every second
    a, _ = read_video(sample_clip_path(), max_frames=6, resize=(64, 64))
    b, _ = read_video(sample_clip_path("bikes"), max_frames=6, resize=(64, 64))
    video = np.concatenate([a, b, a, b, a])
    for codec in bl.CODECS:
        res = bl.encode_baseline(codec, video, 2.0, bl.default_ladder(codec)[3], tmp_path,
                                 preset=bl.FAST_PRESETS[codec])
        assert res["video"].shape == video.shape
        assert bl.count_key_frames(res["path"]) == 1, codec


def test_baseline_odd_size_and_errors(tiny_clip, tmp_path):
    video, fps = tiny_clip
    odd = np.ascontiguousarray(video[:3, :37, :45])
    res = bl.encode_baseline("x264", odd, fps, 18, tmp_path, preset="ultrafast")
    assert res["video"].shape == odd.shape and psnr(odd, res["video"]) > 30.0
    with pytest.raises(bl.BaselineError, match="unknown baseline"):
        bl.encode_baseline("mpeg2", video, fps, 20, tmp_path)
    with pytest.raises(bl.BaselineError, match="crf must be in"):
        bl.encode_baseline("x264", video, fps, 70, tmp_path)


def test_baseline_strips_sei(tiny_clip, tmp_path):
    # x265 writes its ~2 kB option string as an SEI; it must not be in the measured stream
    video, fps = tiny_clip
    res = bl.encode_baseline("x265", video, fps, 40, tmp_path, preset="ultrafast")
    with open(res["path"], "rb") as fh:
        data = fh.read()
    assert b"x265 (build" not in data and b"options:" not in data


# ----------------------------------------------------------------------------- rd.py / ablate.py


def test_rd_end_to_end_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("gvc_jax.codec.session")
    from experiments import ablate, rd

    out = str(tmp_path / "rd")
    argv = ["bigbuckbunny", "--frames", "9", "--resize", "64x48", "--gvc-model", "preset:tiny",
            "--gvc-atoms", "2", "4", "--K", "256", "--steps", "4", "--tail", "1", "--gop-frames", "9",
            "--baselines", "x264", "--ladder", "x264=51,43,35,27", "--preset", "x264=ultrafast",
            "--anchor", "x264", "--metrics", "psnr,ms-ssim,lpips,dists,tlp,vmaf", "--out", out]
    assert rd.main(argv) == 0
    with open(os.path.join(out, "results.json")) as fh:
        data = json.load(fh)
    points = data["points"]
    assert len(points) == 6 and data["clips"]["bigbuckbunny"]["frames"] == 9
    gvc = sorted((p for p in points if p["codec"] == "gvc"), key=lambda p: p["params"]["M"])
    assert [p["params"]["M"] for p in gvc] == [2, 4]
    for p in points:
        stream = os.path.join(out, p["stream"])
        assert os.path.getsize(stream) == p["bytes"] > 0
        assert p["bpp"] == pytest.approx(8.0 * p["bytes"] / (9 * 64 * 48))
        assert np.isfinite(p["psnr"]) and 0.0 <= p["lpips"] <= 1.5 and 0.0 <= p["ms_ssim"] <= 1.0
        assert 0.0 < p["dists"] < 1.0 and p["tlp"] >= 0.0 and 0.0 <= p["vmaf"] <= 100.0 and "warp" not in p
    x264 = sorted((p for p in points if p["codec"] == "x264"), key=lambda p: p["bpp"])
    assert x264[-1]["psnr"] > x264[0]["psnr"]
    assert x264[-1]["dists"] < x264[0]["dists"] and x264[-1]["vmaf"] > x264[0]["vmaf"]
    assert gvc[1]["bytes"] > gvc[0]["bytes"]  # more atoms, more bits
    md = open(os.path.join(out, "results.md")).read()
    assert "| gvc | M=2 |" in md and "Bjontegaard" in md and "lowest rate" in md
    assert "| DISTS | tLP | VMAF |" in md and "BD-rate (LPIPS) | BD-rate (DISTS) |" in md and "BD-DISTS" in md
    for m in ("psnr", "ms_ssim", "lpips", "dists", "tlp", "vmaf"):
        with open(os.path.join(out, "plots", f"bigbuckbunny_{m}.png"), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

    # resumable: nothing is coded again
    def boom(*a, **k):
        raise AssertionError("a finished point was run again")

    real_run = rd.GvcRunner.run
    monkeypatch.setattr(rd.GvcRunner, "run", boom)
    monkeypatch.setattr(bl, "encode_baseline", boom)
    assert rd.main(argv) == 0
    with open(os.path.join(out, "results.json")) as fh:
        assert json.load(fh)["points"] == points

    # a metric added later is measured on the stored streams (decoded again), nothing is coded again
    assert rd.main([*argv[:-4], "--metrics", "psnr,warp", "--out", out]) == 0
    with open(os.path.join(out, "results.json")) as fh:
        added = {p["key"]: p for p in json.load(fh)["points"]}
    for p in points:
        assert added[p["key"]]["warp"] >= 0.0 and added[p["key"]]["psnr"] == p["psnr"]  # same decode
        assert {k: v for k, v in added[p["key"]].items() if k != "warp"} == p
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(data, fh)  # as before the warp pass, for what follows

    # gvc points made with other weights (another fingerprint) are recomputed; baselines are kept
    stale = {**data, "points": [{**p, "model_fingerprint": "0" * 64} if p["codec"] == "gvc" else p for p in points]}
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(stale, fh)
    rerun = []
    monkeypatch.setattr(rd.GvcRunner, "run", lambda self, *a: rerun.append(1) or real_run(self, *a))
    assert rd.main(argv) == 0
    assert len(rerun) == 2
    with open(os.path.join(out, "results.json")) as fh:
        again = {p["key"]: p for p in json.load(fh)["points"]}
    assert all(again[p["key"]]["model_fingerprint"] == p["model_fingerprint"] for p in gvc)
    assert all(again[p["key"]] == p for p in x264)

    # ablate over M on the same output reuses those very points (same keys) and plots the sweep
    assert ablate.main(["bigbuckbunny", "--frames", "9", "--resize", "64x48", "--gvc-model", "preset:tiny",
                        "--param", "M", "--values", "2", "4", "--K", "256", "--steps", "4", "--tail", "1",
                        "--gop-frames", "9", "--out", out]) == 0
    assert os.path.isfile(os.path.join(out, "plots", "ablate_M.png"))
    assert "| 4 |" in open(os.path.join(out, "ablate_M.md")).read()

    # a different clip setting in the same output directory is refused with a clear message
    assert rd.main([*argv, "--start", "3"]) == 2


def test_rd_argument_errors(tmp_path, capsys):
    from experiments import ablate, rd

    assert rd.main(["--out", str(tmp_path)]) == 2
    assert "either a CLIP or --dataset" in capsys.readouterr().err
    assert rd.main(["bigbuckbunny", "--baselines", "mpeg2", "--out", str(tmp_path)]) == 2
    assert "unknown baseline" in capsys.readouterr().err
    assert rd.main(["bigbuckbunny", "--resize", "big", "--out", str(tmp_path)]) == 2
    assert "--resize" in capsys.readouterr().err
    if importlib.util.find_spec("experiments.datasets") is None:
        assert rd.main(["--dataset", "uvg", "--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
        assert "experiments.datasets" in capsys.readouterr().err
    # --metrics: the names and checks of encode --eval --metrics (vmaf too), one line each
    for argv, needle in ((["--metrics", "psnr,fid"], "unknown metric"), (["--metrics", ""], "at least one"),
                         (["--frames", "1", "--metrics", "psnr,tlp"], "at least 2 frames"),
                         (["--resize", "24x24", "--metrics", "dists"], "DISTS needs"),
                         (["--protocol", "ctc96", "--frames", "33"], "--frames 96"),
                         (["--protocol", "gvcc", "--gop-frames", "17"], "--gop-frames 33"),
                         (["--protocol", "gvcc", "--frames", "40"], "multiple of 33")):
        assert rd.main(["bigbuckbunny", "--baselines", "--gvc-atoms", *argv, "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
    assert ablate.main(["bigbuckbunny", "--param", "M", "--values", "2", "--metrics", "psnr,nope",
                        "--out", str(tmp_path / "a")]) == 2
    assert "unknown metric" in capsys.readouterr().err
    with pytest.raises(rd.RDError, match="not a valid steps"):
        ablate.parse_values("steps", ["ten"])
    assert ablate.parse_values("codebook", ["hadamard", "rademacher", "hadamard"]) == ["hadamard", "rademacher"]


def test_rd_protocols_resolve_the_clip_settings():
    import argparse

    from experiments import rd

    def resolved(**given):
        args = argparse.Namespace(**{"protocol": None, "frames": None, "start": None, "gop_frames": None,
                                     "resize": None, **given})
        rd.apply_protocol(args)
        return args.frames, args.start, args.gop_frames, args.resize

    assert resolved() == (33, 0, 33, None)
    assert resolved(protocol="gvcc") == (99, 0, 33, "1280x720")  # 3 GOPs of 33 at 720p, as the paper
    assert resolved(protocol="gvcc", frames=66, resize="256x144") == (66, 0, 33, "256x144")
    assert resolved(protocol="ctc96") == (96, 0, 33, None)  # the first 96 frames, native size
    assert resolved(protocol="ctc96", resize="832x480", gop_frames=17) == (96, 0, 17, "832x480")
    with pytest.raises(rd.RDError, match="--start 0"):
        resolved(protocol="ctc96", start=5)


def test_rd_dataset_loader(monkeypatch):
    from experiments import rd

    rng = np.random.default_rng(0)
    calls = []

    def load_clips(name, data_dir, max_frames=None):  # no start / resize: rd.py applies them itself
        calls.append((name, data_dir, max_frames))
        for clip in ("Beauty", "Bosphorus"):
            yield clip, rng.integers(0, 256, (max_frames + 2, 40, 48, 3), dtype=np.uint8), 120.0

    fake = types.ModuleType("experiments.datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("experiments.datasets", None)
    fake.load_clips = load_clips
    monkeypatch.setitem(sys.modules, "experiments.datasets", fake)
    clips = list(rd.load_dataset("uvg", "/data/uvg", frames=5, start=1, resize=(32, 24), only=["Bosphorus"]))
    assert calls == [("uvg", "/data/uvg", 6)]  # 5 frames after the 1 it must skip
    assert [c.name for c in clips] == ["Bosphorus"]
    assert clips[0].frames.shape == (5, 24, 32, 3) and clips[0].fps == 120.0  # start applied after loading
    assert clips[0].info["source"].startswith("uvg:Bosphorus@")
    with pytest.raises(rd.RDError, match="unknown dataset"):
        list(rd.load_dataset("kinetics", "/data", frames=5))
