"""Streaming evaluation (``--eval`` / ``decode --reference``): GOP-by-GOP running means equal the
whole-video metrics, pair metrics across piece boundaries, ``--metrics`` validation, per-frame JSON."""
import json

import numpy as np
import pytest

from gvc_jax import cli
from gvc_jax import encode as encode_cli
from gvc_jax import metrics as M
from gvc_jax.evaluation import DEFAULT_METRICS, RunningEval, fit_metrics, parse_metrics
from gvc_jax.io.video_writer import write_video


def _videos(frames=7, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    dec = np.clip(ref.astype(np.int16) + rng.integers(-25, 26, ref.shape), 0, 255).astype(np.uint8)
    return ref, dec


def test_pieces_give_the_whole_video_numbers():
    """Fed in uneven pieces (as GOPs arrive), every streaming metric equals metrics.evaluate on the whole
    videos; the pair metrics include the pairs across piece boundaries."""
    ref, dec = _videos()
    names = ("psnr", "ms_ssim", "lpips", "dists", "tlp", "warp")
    ev = RunningEval(names)
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        ev.reference(ref[lo:hi])
        ev.decoded(dec[lo:hi])
    whole = M.evaluate(ref, dec, metrics=names)
    got = ev.result()
    for m in names:
        assert got[m] == pytest.approx(whole[m], rel=1e-5, abs=1e-7), m
    per = ev.per_frame()
    assert len(per["psnr"]) == 7 and len(per["tlp"]) == 6 and len(per["warp"]) == 6


def test_metrics_lists_and_small_frames():
    assert parse_metrics("psnr, MS-SSIM,lpips,psnr") == ("psnr", "ms_ssim", "lpips")
    for bad in ("psnr,fid", "", "vmaf"):
        with pytest.raises(ValueError) as err:
            parse_metrics(bad)
        assert "\n" not in str(err.value)
    assert "whole videos only" in str(pytest.raises(ValueError, parse_metrics, "vmaf").value)
    assert DEFAULT_METRICS == ("psnr", "ms_ssim", "lpips", "dists")
    assert fit_metrics(("psnr", "dists"), 16, 64, requested=False) == ("psnr",)  # not asked for: dropped
    with pytest.raises(ValueError, match="DISTS needs"):
        fit_metrics(("dists",), 16, 64, requested=True)


def test_encode_eval_metrics_from_the_command_line(tmp_path, capsys):
    ref, _ = _videos(frames=9, h=36, w=52, seed=3)
    clip = str(tmp_path / "in.npy")
    write_video(clip, ref, 20.0)
    fast = ["--model", "preset:tiny", "-K", "256", "-M", "2", "--steps", "2", "--tail", "1", "--gop-frames", "5",
            "--quiet"]
    js = str(tmp_path / "r.json")
    assert cli.run_main(encode_cli.main, [clip, "-o", str(tmp_path / "a.gvc"), *fast, "--eval",
                                          "--metrics", "psnr,tlp,warp", "--json", js]) == 0
    report = json.load(open(js))
    assert {"psnr", "tlp", "warp"} <= set(report) and "lpips" not in report
    assert len(report["per_frame"]["psnr"]) == 9 and len(report["per_frame"]["tlp"]) == 8
    capsys.readouterr()
    bad = ((["--eval", "--metrics", "psnr,fid"], "unknown metric"), (["--metrics", "psnr"], "needs --eval"))
    for argv, needle in bad:
        assert cli.run_main(encode_cli.main, [clip, "-o", str(tmp_path / "b.gvc"), *fast, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "b.gvc").exists()


def test_whole_video_entry_point_of_rd_and_ablate():
    """rd.py / ablate.py: the same names plus VMAF; evaluate_video gives metrics.evaluate's numbers."""
    from gvc_jax.evaluation import BATCH_DEFAULT_METRICS, evaluate_video

    assert parse_metrics("psnr,VMAF,dists", whole_video=True) == ("psnr", "vmaf", "dists")
    assert "fid" in str(pytest.raises(ValueError, parse_metrics, "fid", whole_video=True).value)
    assert BATCH_DEFAULT_METRICS == ("psnr", "ms_ssim", "lpips", "dists")
    assert fit_metrics(("psnr", "tlp", "warp"), 64, 64, requested=False, frames=1) == ("psnr",)
    with pytest.raises(ValueError, match="at least 2 frames"):
        fit_metrics(("psnr", "tlp"), 64, 64, requested=True, frames=1)
    ref, dec = _videos(frames=4, h=36, w=40, seed=5)
    names = ("psnr", "lpips", "tlp", "vmaf")
    got = evaluate_video(ref, dec, names, fps=25.0)
    want = M.evaluate(ref, dec, metrics=names, fps=25.0)
    assert list(got) == list(names)
    for m in names:
        assert got[m] == pytest.approx(want[m], rel=1e-5, abs=1e-7), m
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_video(ref, dec, ("fid",))
