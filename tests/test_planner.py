"""Rate-compute planner (``codec.planner``): --target-bpp with --max-dit-calls / --speed lands within
5 % of the rate and within the DiT-call budget; infeasible budgets and hostile tables are one-line
errors; the default model ships a valid table."""
import dataclasses
import json
import os

import numpy as np
import pytest

from gvc_jax import api
from gvc_jax.codec import planner
from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop.plan import ArrayReader
from gvc_jax.codec.gop.rate import RateTarget
from gvc_jax.codec.sampling.multires import StagePlan
from gvc_jax.codec.sampling.schedule import SamplerConfig, check_x0_cache

OPTS = dict(codebook_size=4096, tail=1, gop_frames=9)


def _points(steps=(3, 6), atoms=(2, 8, 32), lpips_of=None, mr=("off",)):
    """Synthetic measured points: distortion falls with rate and steps; ``lpips_of(T, mode, M, mr)`` overrides."""
    out = []
    for axis in mr:
        for t in steps:
            for mode in planner.MODES:
                for m in atoms:
                    pay = 0.004 * m * (t - 1)
                    lp = (lpips_of(t, mode, m, axis) if lpips_of else
                          0.8 - 0.05 * np.log2(m) - 0.01 * t + 0.02 * (mode != "off"))
                    out.append({"steps": t, "x0_cache": mode, "mr": axis, "atoms": m, "payload_bpp": pay,
                                "bpp": pay + 0.01, "psnr": 15 + 2 * np.log2(m) + 0.1 * t, "lpips": float(lp),
                                "dit_calls": t - (t // 2 if mode == "alternate" else 0)})
    return out


def _table(path, fingerprint, **kw):
    planner.write_table(planner.make_table(_points(**kw), fingerprint, "test", {"note": "synthetic"}), str(path))
    return str(path)


def _video(frames=9):
    rng = np.random.default_rng(1)
    return np.clip(rng.integers(0, 200, (1, 40, 56, 3)) + 3 * np.arange(frames)[:, None, None, None], 0,
                   255).astype(np.uint8)


def _plan_and_encode(model, video, **options):
    opts = api.CodecOptions(**OPTS, **options)
    setup = opts.resolve(model, [ArrayReader(video, 16.0)], lambda _: ArrayReader(video, 16.0))
    from gvc_jax.codec.session import EncodeJob
    result = setup.encode([EncodeJob(ArrayReader(video, 16.0), target=setup.targets[0])], model)[0]
    return setup, result


@pytest.mark.parametrize("target,calls", [(0.3, 3), (0.6, 5)])
def test_plan_lands_within_5_percent_and_the_dit_budget(tiny, tmp_path, target, calls):
    video = _video()
    table = _table(tmp_path / "cal.json", tiny.fingerprint)
    setup, result = _plan_and_encode(tiny, video, target_bpp=target, max_dit_calls=calls, calibration=table)
    bpp = 8 * len(result.stream) / video[..., 0].size
    assert 0.95 * target <= bpp <= target, (target, bpp)
    report = result.report()
    assert max(report["dit_calls_per_gop"]) <= calls and report["dit_calls"] > 0
    sched = setup.plan.schedule
    h = result.header.sampler
    assert (h.steps, h.x0_cache) == (sched.steps, sched.x0_cache)  # the stream uses the plan
    assert report["dit_calls_per_gop"][0] == sched.dit_calls
    assert abs(setup.plan.bpp - bpp) / bpp < 0.02  # the predicted rate is the realised one (the same formula)
    assert check_x0_cache(sched.x0_cache, sched.steps) == sched.x0_cache


def _unit_video(fingerprint_steps=6, num_frames=33, target_bytes=4000):
    h = bitstream.Header(model_fingerprint=bytes(8), preset="t", variant="t2v", width=128, height=80,
                         orig_width=128, orig_height=80, num_frames=num_frames, fps_num=16, fps_den=1, gop_frames=33,
                         num_gops=1, sampler=SamplerConfig(steps=fingerprint_steps, tail=1, K=16384,
                                                           atoms_per_frame=(8,) * 9))
    return planner.Video(h, RateTarget(target_bytes), num_frames * 128 * 80)


def test_plan_follows_the_table(tmp_path):
    """More steps predicted better: with skips as good as no skips the planner takes the most steps
    and, the prediction being equal, every skip (the fewest calls); with skips much worse it takes
    fewer steps and no skips."""
    fp = "ab" * 32
    cheap = planner.read_table(_table(tmp_path / "a.json", fp, lpips_of=lambda t, mode, m, mr: 0.9 - 0.05 * t
                                      - 0.01 * m), fp)
    p = planner.plan(cheap, [_unit_video()], tail=1, budget=4)
    assert (p.schedule.steps, p.schedule.x0_cache) == (6, (1, 3, 5)) and p.schedule.dit_calls == 3
    costly = planner.read_table(_table(tmp_path / "b.json", fp, lpips_of=lambda t, mode, m, mr: 0.9 - 0.05 * t
                                       - 0.01 * m + 0.5 * (mode == "alternate")), fp)
    p = planner.plan(costly, [_unit_video()], tail=1, budget=4)
    assert (p.schedule.steps, p.schedule.x0_cache) == (4, ())
    p = planner.plan(costly, [_unit_video()], tail=1, budget=100)  # no compute limit: the most steps
    assert p.schedule.steps == 6 and p.considered == sum(1 + t // 2 for t in range(3, 7))


def _mr_table(tmp_path, fp, name="mr.json"):
    """Skips costly, the auto plan slightly better than one size at the same T, mode and M."""
    return planner.read_table(_table(tmp_path / name, fp, mr=planner.MR_AXIS, lpips_of=lambda t, mode, m, mr: 0.9
                                     - 0.05 * t - 0.01 * m + 0.5 * (mode == "alternate") - 0.01 * (mr == "auto")), fp)


def _half_plan(steps):  # a two-stage plan for the 128x80 unit video: the low stage has 0.3 of its tokens
    return StagePlan(((64, 48), (128, 80)), (max(1, (steps - 1) // 2),))


def test_schedule_cost_counts_low_stage_calls_by_their_tokens():
    plan = StagePlan(((64, 48), (128, 96)), (2,))  # the low stage: a quarter of the tokens
    assert planner.alternate_skips(6, 1, plan) == (1, 3)  # TURBO's rule: not at the switch (2) nor in the tail
    assert planner.alternate_skips(6, 1, None) == (1, 3, 5)
    assert planner.Schedule(6, (), plan).cost == 0.25 * 2 + 4
    assert planner.Schedule(6, (1, 3), plan, 2).cost == 0.25 + 3 and planner.Schedule(6, (1, 3), plan, 2).dit_calls == 4
    assert planner.Schedule(6, (1,), plan, 2).skip_share == 0.5 and planner.Schedule(6, (1,)).skip_share == 1 / 3
    assert planner.Schedule(6, (1, 3)).cost == 4
    assert planner.Schedule(6).mr == "off" and planner.Schedule(6, (), plan).mr == "auto"


def test_plan_chooses_the_stage_plan_within_the_token_weighted_budget(tmp_path):
    """Budget 5: one size can afford 5 steps without skips, the auto plan 6 steps (its two low-stage
    calls cost 0.3 each: 4.6), predicted better: the planner takes it. ``mr`` restricted to off, or
    no plan for the size, leaves one size; a format 1 table (no MR points) never proposes stages."""
    fp = "9a" * 32
    table = _mr_table(tmp_path, fp)
    assert table.mr_values == ("off", "auto") and table.steps_of("auto") == (3, 6)
    p = planner.plan(table, [_unit_video()], 1, 5, planner.MR_AXIS, _half_plan)
    sched = p.schedule
    assert (sched.steps, sched.x0_cache, sched.stages) == (6, (), _half_plan(6))
    assert sched.dit_calls == 6 and abs(sched.cost - 4.6) < 1e-9  # more raw calls than the budget, fewer tokens
    rep = p.report()
    assert rep["plan_mr"] == "64x48@2" and rep["plan_dit_cost"] == 4.6 and rep["plan_dit_calls"] == 6
    assert p.bpp > 0 and p.payload_bpp > 0
    plain = planner.plan(table, [_unit_video()], 1, 5, ("off",), _half_plan)
    assert (plain.schedule.steps, plain.schedule.stages) == (5, None)
    assert planner.plan(table, [_unit_video()], 1, 5, planner.MR_AXIS, lambda t: None).schedule.stages is None
    with pytest.raises(planner.PlanError, match="no --mr auto plan") as err:  # auto only, and no plan for the size
        planner.plan(table, [_unit_video()], 1, 5, ("auto",), lambda t: None)
    assert "\n" not in str(err.value)
    # the rate counts the transition atoms: the stage plan's stream is fitted to the same byte budget
    assert p.bpp <= 8 * 4000 / _unit_video().pixels
    v2 = planner.make_table(_points(), fp, "test", {})
    v1 = {**v2, "version": 1, "points": [{k: v for k, v in pt.items() if k != "mr"} for pt in v2["points"]]}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    old = planner.read_table(str(tmp_path / "v1.json"), fp)
    assert old.mr_values == ("off",)
    assert planner.plan(old, [_unit_video()], 1, 100, planner.MR_AXIS, _half_plan).schedule.stages is None


def test_plan_with_stages_end_to_end(tiny, tmp_path):
    """A model whose native size is below the video's: the planner takes the auto stage plan it
    predicts better, the stream carries it, the rate lands within 5 % and the token-weighted DiT
    work within --max-dit-calls."""
    model = dataclasses.replace(tiny, config=dataclasses.replace(tiny.config, native_size=(32, 32)))
    video = _video()
    assert api.CodecOptions(**OPTS, mr="auto", steps=6).stage_plan(*video.shape[1:3], model) is not None
    table = _mr_table(tmp_path, tiny.fingerprint)
    setup, result = _plan_and_encode(model, video, target_bpp=0.6, max_dit_calls=5, calibration=table.path)
    sched = setup.plan.schedule
    assert sched.stages is not None and sched.cost <= 5 < sched.dit_calls
    assert result.header.sampler.stages == sched.stages and result.header.sampler.steps == sched.steps
    bpp = 8 * len(result.stream) / video[..., 0].size
    assert 0.95 * 0.6 <= bpp <= 0.6, bpp
    report = result.report()
    assert report["mr"] == sched.stages.spec() and report["dit_calls_per_gop"][0] == sched.dit_calls
    assert len(report["transition_bits"]) == 1 and report["transition_bits"][0] > 0
    assert report["plan_mr"] == sched.stages.spec() and report["plan_dit_cost"] <= 5  # the report carries the plan
    assert report["plan_dit_calls"] == sched.dit_calls and report["steps"] == sched.steps
    off = api.CodecOptions(**OPTS, target_bpp=0.6, max_dit_calls=5, calibration=table.path, mr="off").resolve(
        model, [ArrayReader(video, 16.0)], lambda _: ArrayReader(video, 16.0))  # planned, not coded
    assert off.plan.schedule.stages is None and off.sampler.stages is None


def test_speed_budgets():
    assert [planner.compute_budget(None, s, 20) for s in ("quality", "balanced", "fast")] == [20, 12, 8]
    assert planner.compute_budget(7, None, 20) == 7


def test_infeasible_budgets_are_one_line_errors(tiny, tmp_path):
    fp = "cd" * 32
    table = planner.read_table(_table(tmp_path / "c.json", fp), fp)
    with pytest.raises(planner.PlanError, match="no schedule within 1 DiT calls.*the cheapest costs 2 full-size") \
            as err:
        planner.plan(table, [_unit_video()], tail=1, budget=1)
    assert "\n" not in str(err.value)
    with pytest.raises(planner.PlanError, match="too low") as err:
        planner.plan(table, [_unit_video(target_bytes=60)], tail=1, budget=6)
    assert "\n" not in str(err.value)
    with pytest.raises(planner.PlanError, match="no schedule"):  # the tail leaves no calibrated steps
        planner.plan(table, [_unit_video()], tail=6, budget=6)
    cal = _table(tmp_path / "cal.json", tiny.fingerprint)
    video = _video()
    with pytest.raises(ValueError, match="too low"):  # end to end: below the header and one atom
        _plan_and_encode(tiny, video, target_bpp=0.001, max_dit_calls=4, calibration=cal)


def test_flag_validation():
    for bad, match in [(dict(max_dit_calls=4), "need target_bpp"), (dict(speed="fast"), "need target_bpp"),
                       (dict(target_bpp=0.1, max_dit_calls=0), "max_dit_calls"),
                       (dict(target_bpp=0.1, max_dit_calls=True), "max_dit_calls"),
                       (dict(target_bpp=0.1, max_dit_calls=2.5), "max_dit_calls"),
                       (dict(target_bpp=0.1, speed="turbo"), "speed"),
                       (dict(target_bpp=0.1, speed="fast", max_dit_calls=4), "not both"),
                       (dict(target_bpp=0.1, calibration="x.json"), "calibration"),
                       (dict(target_bpp=0.1, speed="fast", calibration=3), "calibration")]:
        with pytest.raises(ValueError, match=match):
            api.CodecOptions(**bad)
    assert api.CodecOptions(target_bpp=0.1, speed="balanced").plans
    with pytest.raises(ValueError, match="chooses between --mr off and auto"):
        api.CodecOptions(target_bpp=0.1, speed="fast", mr="832x480@8")
    assert api.CodecOptions(target_bpp=0.1, speed="fast").planner_mr_axis() == ("off", "auto")
    assert api.CodecOptions(target_bpp=0.1, speed="fast", mr="auto").planner_mr_axis() == ("auto",)
    assert api.CodecOptions(target_bpp=0.1, speed="fast", mr="off").planner_mr_axis() == ("off",)
    assert api.CodecOptions(mr="832x480@8", target_bpp=0.05).mr == "832x480@8"  # --target-bpp alone: any plan


def test_cli_errors_are_one_line(tmp_path, capsys):
    from gvc_jax import encode as encode_cli
    from gvc_jax.cli import run_main

    video = tmp_path / "v.npy"
    np.save(video, _video())
    out = str(tmp_path / "o.gvc")
    cases = [["--max-dit-calls", "4"], ["--speed", "fast", "--target-bpp", "0.2", "--max-dit-calls", "3"],
             ["--target-bpp", "0.2", "--max-dit-calls", "4", "--model", "preset:tiny"],  # no table for a preset
             ["--target-bpp", "0.2", "--max-dit-calls", "4", "--model", "preset:tiny",
              "--calibration", str(tmp_path / "none.json")]]
    for extra in cases:
        assert run_main(encode_cli.main, [str(video), "-o", out, "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (extra, err)
    assert "none.json" in err[0]
    assert not os.path.exists(out)


def test_cli_reports_the_plan(tiny, tmp_path):
    """``encode --json`` with the planner: the chosen schedule, its DiT cost and prediction next to the
    realised rate; the tiny preset has no stage plan at this size, so the planner stays on one size."""
    from gvc_jax import encode as encode_cli
    from gvc_jax.cli import run_main

    video = tmp_path / "v.npy"
    np.save(video, _video())
    table = _mr_table(tmp_path, tiny.fingerprint)
    out, report = str(tmp_path / "o.gvc"), tmp_path / "r.json"
    assert run_main(encode_cli.main, [str(video), "-o", out, "--quiet", "--model", "preset:tiny", "-K", "4096",
                                      "--tail", "1", "--gop-frames", "9", "--target-bpp", "0.6", "--max-dit-calls", "5",
                                      "--calibration", table.path, "--json", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["plan_mr"] == "off" and rep["plan_dit_cost"] == rep["plan_dit_calls"] <= 5
    assert rep["steps"] == rep["plan_steps"] and 0.95 * 0.6 <= rep["bpp"] <= 0.6
    assert rep["dit_calls_per_gop"][0] == rep["plan_dit_calls"] and rep["plan_table"] == table.path


def _hostile(good: dict):
    def edit(fn):
        d = json.loads(json.dumps(good))
        fn(d)
        return d

    def point(field, value):
        return edit(lambda d: d["points"][0].__setitem__(field, value))

    yield "format", edit(lambda d: d.__setitem__("format", "other"))
    yield "version", edit(lambda d: d.__setitem__("version", 3))
    yield "version", edit(lambda d: d.__setitem__("version", True))
    yield "fingerprint", edit(lambda d: d.__setitem__("model_fingerprint", "00" * 32))
    yield "fingerprint", edit(lambda d: d.__setitem__("model_fingerprint", "zz"))
    yield "points", edit(lambda d: d.__setitem__("points", {}))
    yield "points", edit(lambda d: d.__setitem__("points", d["points"][:1]))
    yield "points", edit(lambda d: d.__setitem__("points", d["points"] * 400))
    yield "lpips", point("lpips", -0.1)
    yield "lpips", point("lpips", "0.3")
    yield "non-finite", point("psnr", 1e308 * 10)
    yield "psnr", point("psnr", 120.0)
    yield "payload_bpp", point("payload_bpp", 0)
    yield "steps", point("steps", 10**9)
    yield "atoms", point("atoms", 1.5)
    yield "x0_cache", point("x0_cache", "sometimes")
    yield "dit_calls", point("dit_calls", 1)
    yield "exactly the fields", edit(lambda d: d["points"][0].pop("bpp"))
    yield "exactly the fields", edit(lambda d: d["points"][0].pop("mr"))  # format 2 points say their mr
    yield "exactly the fields", edit(lambda d: d.__setitem__("version", 1))  # format 1 points do not
    yield "mr must be", point("mr", "sometimes")
    yield "no mr 'off' points", edit(lambda d: [p.__setitem__("mr", "auto") for p in d["points"]])
    yield "mr auto", edit(lambda d: [p.__setitem__("mr", "auto") for p in d["points"] if p["steps"] == 6
                                     and p["x0_cache"] == "off"])  # (6, auto) without its alternate points
    yield "dit_calls", edit(lambda d: [p.__setitem__("dit_calls", 1) for p in d["points"] if p["steps"] == 6
                                       and p["x0_cache"] == "alternate" and not p.__setitem__("mr", "auto")])
    yield "exactly the fields", edit(lambda d: d["points"][0].__setitem__("extra", 1))
    yield "needs both", edit(lambda d: d.__setitem__("points", [p for p in d["points"]
                                                              if (p["steps"], p["x0_cache"]) != (6, "alternate")]))
    yield "not a JSON object", [1, 2]


def test_hostile_tables_are_refused(tmp_path):
    fp = "ef" * 32
    good = planner.make_table(_points(), fp, "test", {})
    for i, (match, data) in enumerate(_hostile(good)):
        path = tmp_path / f"h{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(planner.CalibrationError, match=match) as err:
            planner.read_table(str(path), fp)
        assert str(path) in str(err.value) and "\n" not in str(err.value), (match, err.value)
    raws = [b"{", b"\xff\xfe", b'{"format": NaN}', b"[" * 100000, b" " * (planner.MAX_TABLE_BYTES + 1)]
    for i, raw in enumerate(raws):
        path = tmp_path / f"r{i}.json"
        path.write_bytes(raw)
        with pytest.raises(planner.CalibrationError, match=str(path)):
            planner.read_table(str(path), fp)
    with pytest.raises(planner.CalibrationError, match="not found"):
        planner.read_table(str(tmp_path / "missing.json"), fp)


def test_default_model_ships_a_valid_table(default_model):
    path = planner.table_path(default_model)
    table = planner.read_table(path, default_model.fingerprint)
    assert os.path.dirname(path) == os.path.realpath(os.path.dirname(path)) or os.path.isfile(path)
    assert table.mr_values == planner.MR_AXIS  # the shipped table measured the MR axis too
    assert all(len(table.steps_of(mr)) >= 2 for mr in planner.MR_AXIS)
    assert all((t, m, mr) in table.curves for mr in planner.MR_AXIS for t in table.steps_of(mr) for m in planner.MODES)
    assert table.data["measured"]["clips"]


def test_default_model_plan_end_to_end(default_model):
    """The shipped table drives a real encode: within 5 % of the rate and the --speed budget."""
    video = _video(frames=9)
    target = 0.25
    setup, result = _plan_and_encode(default_model, video, target_bpp=target, speed="fast",
                                     steps=20)
    bpp = 8 * len(result.stream) / video[..., 0].size
    assert 0.95 * target <= bpp <= target
    assert max(result.report()["dit_calls_per_gop"]) <= 8
    assert setup.plan.lpips > 0 and setup.plan.table.endswith(planner.TABLE_NAME)


def test_calibrate_writes_a_table_the_planner_reads(default_model, tmp_path, capsys):
    """experiments/calibrate.py on a few frames of one clip: a valid table for the model, every point
    measured, the MR axis where the model has a stage plan (above its 192x128 native size, T = 5)."""
    from experiments import calibrate

    args = calibrate.build_parser().parse_args(["--size", "208x144", "--steps", "4,5", "--atoms", "2"])
    grid = list(calibrate._grid(args, default_model))  # T = 4, tail 3: one stochastic step, no stage plan
    assert "steps 4: no --mr auto plan at 208x144" in capsys.readouterr().out
    assert [(t, mode, mr) for t, mode, mr, _ in grid] == [(4, "off", "off"), (4, "alternate", "off"),
                                                          (5, "off", "off"), (5, "alternate", "off"),
                                                          (5, "off", "auto"), (5, "alternate", "auto")]
    out = tmp_path / "cal.json"
    assert calibrate.main(["--clips", "bikes", "--frames", "5", "--size", "208x144", "--steps", "5", "--atoms", "2",
                           "--out", str(out)]) == 0
    table = planner.read_table(str(out), default_model.fingerprint)
    assert table.steps == table.steps_of("auto") == (5,) and len(table.data["points"]) == 4
    assert table.data["version"] == planner.TABLE_VERSION and table.data["measured"]["mr"] == ["off", "auto"]
    assert {(p["mr"], p["x0_cache"], p["dit_calls"]) for p in table.data["points"]} == {
        ("off", "off", 5), ("off", "alternate", 3), ("auto", "off", 5), ("auto", "alternate", 5)}  # no skip: tail
    assert all(0 < p["lpips"] < 2 and p["psnr"] > 5 for p in table.data["points"])
    auto = [p for p in table.data["points"] if p["mr"] == "auto"]
    off = [p for p in table.data["points"] if p["mr"] == "off"]
    assert min(p["payload_bpp"] for p in auto) > max(p["payload_bpp"] for p in off)  # the transition atoms' bits
    assert not os.path.exists(str(out) + ".partial.json")
