"""The rate-compute planner against fixed schedules at one target rate (our own design; README:
Rate-compute planner).

    python experiments/plan_check.py [--clips bikes,bigbuckbunny] [--frames 17] [--size 256x160] \
        [--target-bpp 0.02] [--speed balanced] [--out experiments/results/plan_check]

Per clip (shipped sample clips, default model, T2V) and per row, codes the clip at
``--target-bpp`` and measures the realised bpp, PSNR, LPIPS (AlexNet), DiT calls and full-size
DiT cost per GOP, and the encode's wall / CPU seconds:

- ``planner``: ``--speed`` with ``--mr`` left out (the planner weighs one size and the auto plan);
- ``planner-off``: the same with ``--mr off`` (one size only);
- ``plain``: T = 20, no skips, one size (M fitted to the rate);
- ``turbo``: the turbo preset (``--mr auto``, TURBO's refresh rule), M fitted to the rate.

Writes ``plan_check.json`` and ``plan_check.md`` to ``--out``. The default model's calibration
table is measured on the same clips, so the planner rows are in-sample.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import gvc_jax  # noqa: F401,E402  (XLA flags before jax)
from gvc_jax import api, cli, metrics  # noqa: E402
from gvc_jax.codec import planner  # noqa: E402
from gvc_jax.io.atomic import atomic_write_bytes  # noqa: E402
from gvc_jax.io.sample_clips import sample_clip_path  # noqa: E402
from gvc_jax.io.video_reader import read_video  # noqa: E402


def rows(target: float, speed: str) -> dict:
    return {"planner": api.CodecOptions(target_bpp=target, speed=speed),
            "planner-off": api.CodecOptions(target_bpp=target, speed=speed, mr="off"),
            "plain": api.CodecOptions(target_bpp=target),
            "turbo": api.CodecOptions.preset("turbo", target_bpp=target)}


def measure(name: str, options, video: np.ndarray, fps: float, model) -> dict:
    chunks: list = []
    c0, w0 = time.process_time(), time.perf_counter()
    result = api.encode_full(video, model, options, fps=fps, sink=chunks.append)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    decoded = np.concatenate(chunks)
    sampler = result.header.sampler
    plan = result.plan.schedule if result.plan is not None else None
    sched = plan or planner.Schedule(sampler.steps, tuple(sampler.x0_cache), sampler.stages)
    rep = result.report()
    out = {"row": name, "steps": sampler.steps, "x0_cache": list(sampler.x0_cache),
           "mr": sampler.stages.spec() if sampler.stages else "off", "atoms": int(sampler.atoms_per_frame[0]),
           "dit_calls": sched.dit_calls, "dit_cost": round(sched.cost, 3), "bpp": rep["bpp"],
           "psnr": metrics.psnr(video, decoded), "lpips": metrics.lpips(video, decoded),
           "encode_wall_s": round(wall, 1), "encode_cpu_s": round(cpu, 1)}
    if plan is not None:
        out.update({"predicted_lpips": result.plan.lpips, "predicted_psnr": result.plan.psnr})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default="bikes,bigbuckbunny")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=cli.parse_size, default=(256, 160), metavar="WxH")
    p.add_argument("--target-bpp", type=float, default=0.02)
    p.add_argument("--speed", default="balanced", choices=tuple(planner.SPEEDS))
    p.add_argument("--out", default=os.path.join("experiments", "results", "plan_check"))
    args = p.parse_args(argv)
    model = api.get_model(None)
    results = []
    for clip in [c for c in args.clips.split(",") if c]:
        video, fps = read_video(sample_clip_path(clip), max_frames=args.frames, resize=args.size)
        for name, options in rows(args.target_bpp, args.speed).items():
            r = {"clip": clip, **measure(name, options, video, fps, model)}
            print(json.dumps(r), flush=True)
            results.append(r)
    os.makedirs(args.out, exist_ok=True)
    meta = {"model": model.name, "size": f"{args.size[0]}x{args.size[1]}", "frames": args.frames,
            "target_bpp": args.target_bpp, "speed": args.speed, "date": time.strftime("%Y-%m-%d")}
    atomic_write_bytes(os.path.join(args.out, "plan_check.json"),
                       (json.dumps({**meta, "rows": results}, indent=1) + "\n").encode())
    lines = [f"target {args.target_bpp} bpp, --speed {args.speed}, {args.frames} frames at {meta['size']}",
             "", "| clip | row | T | mr | skips | M | DiT calls | DiT cost | bpp | PSNR | LPIPS | predicted LPIPS "
             "| enc CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        pred = f"{r['predicted_lpips']:.4f}" if "predicted_lpips" in r else "-"
        lines.append(f"| {r['clip']} | {r['row']} | {r['steps']} | {r['mr']} | {len(r['x0_cache'])} | {r['atoms']} | "
                     f"{r['dit_calls']} | {r['dit_cost']} | {r['bpp']:.5f} | {r['psnr']:.2f} | {r['lpips']:.4f} | "
                     f"{pred} | {r['encode_cpu_s']} |")
    atomic_write_bytes(os.path.join(args.out, "plan_check.md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
