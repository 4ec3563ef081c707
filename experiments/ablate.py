"""Ablation sweeps of one gvc sampler parameter on one clip.

    python experiments/ablate.py CLIP --param steps --values 10 20 30 \\
        --frames 33 --resize 256x144 --gvc-model preset:tiny|DIR --M 8 --out results/ablate_bbb

``--param`` is one of K, M, steps, tail, g_scale, shift, codebook; every other setting comes
from the usual gvc options (``--M``, ``--K``, ``--steps``, ...). Each value is one gvc point,
evaluated like ``experiments/rd.py`` (``--metrics``, same names, checks and default
psnr,ms-ssim,lpips,dists, through ``gvc_jax.evaluation``; ``--vmaf`` adds VMAF; bpp from the
stream's size). Outputs in ``--out``:

- ``results.json``: same format and resumability as rd.py (a point is keyed by *all* its
  settings, so sweeps sharing a point -- e.g. steps=20 in a steps sweep and M=8 in an M sweep --
  code it once);
- ``ablate_PARAM.md``: the sweep's table;
- ``plots/ablate_PARAM.png``: every metric of the run and bpp against the value.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gvc_jax  # noqa: F401,E402  (XLA flags before jax)
from experiments import baselines as bl  # noqa: E402
from experiments import rd  # noqa: E402
from experiments.rd_plot import plot_sweep  # noqa: E402
from gvc_jax.io.atomic import atomic_write_bytes  # noqa: E402
from gvc_jax.pixels import VideoError  # noqa: E402

PARAMS = {"K": int, "M": int, "steps": int, "tail": int, "g_scale": float, "shift": float, "codebook": str}


def parse_values(param: str, values: Sequence[str]) -> list:
    """Command-line strings -> typed values of ``param`` (deduplicated, order kept)."""
    if param not in PARAMS:
        raise rd.RDError(f"--param must be one of {', '.join(PARAMS)}, got {param!r}")
    out = []
    for v in values:
        try:
            typed = PARAMS[param](v)
        except ValueError:
            raise rd.RDError(f"--values: {v!r} is not a valid {param} ({PARAMS[param].__name__})") from None
        if typed not in out:
            out.append(typed)
    if not out:
        raise rd.RDError("--values needs at least one value")
    return out


def sweep_specs(args, param: str, values: Sequence) -> List[rd.PointSpec]:
    specs = []
    for v in values:
        params = rd.base_gvc_params(args, K=args.K, M=args.M)
        params[param] = v
        specs.append(rd.gvc_spec(params, curve=f"ablate {param}", setting=f"{param}={v}"))
    return specs


def sweep_markdown(clip: rd.Clip, param: str, values: Sequence, records: Sequence[dict], metrics: Sequence[str],
                   base: dict) -> str:
    cols = [(m, t, f) for m, t, f in rd.TABLE_METRICS if m in metrics]
    fixed = ", ".join(f"{k}={'auto' if v is None else v}" for k, v in base.items() if k != param)
    lines = [f"# Ablation of {param} on {clip.name}", "",
             f"{clip.info['frames']} frames, {clip.info['width']}x{clip.info['height']}; fixed: {fixed}", "",
             f"| {param} | bytes | bpp | " + " | ".join(t for _, t, _ in cols) + " | enc s |",
             "|---|---:|---:|" + "---:|" * len(cols) + "---:|"]
    for v, r in zip(values, records, strict=True):
        vals = " | ".join(rd._fmt(r.get(m), f) for m, _, f in cols)
        lines.append(f"| {v} | {r['bytes']} | {r['bpp']:.5f} | {vals} | {rd._fmt(r.get('enc_seconds'), '{:.1f}')} |")
    lines += ["", f"![{param}](plots/ablate_{param}.png)", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", help="video path or a sample name (bigbuckbunny, bikes)")
    p.add_argument("--param", required=True, choices=list(PARAMS), help="the parameter to sweep")
    p.add_argument("--values", nargs="+", required=True, help="values of --param, one point each")
    rd.add_input_args(p)
    rd.add_gvc_args(p, atoms=False)
    p.add_argument("--M", type=int, default=8, help="atoms per latent frame and step (when not swept)")
    p.add_argument("--K", type=int, default=None, help="codebook size (default: 16384)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (rd.RDError, VideoError, bl.BaselineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    values = parse_values(args.param, args.values)
    names = rd.parse_metric_names(args)
    rd.apply_protocol(args)
    clip = rd.load_clip(args.clip, frames=args.frames, start=args.start, resize=rd.parse_size(args.resize))
    metrics = rd.clip_metrics(names, clip, args.metrics is not None)
    os.makedirs(args.out, exist_ok=True)
    store = rd.ResultStore(os.path.join(args.out, "results.json"))
    specs = sweep_specs(args, args.param, values)
    records = rd.run_points(clip, specs, store, args.out, metrics, rd.GvcRunner(args.gvc_model, args.verify_decode),
                            desc=f"ablate {args.param}")
    series = {m: [r[m] for r in records] for m, _, _ in rd.TABLE_METRICS if m in metrics}
    series["bpp"] = [r["bpp"] for r in records]
    plot_sweep(values, series, args.param, os.path.join(args.out, "plots", f"ablate_{args.param}.png"),
               title=f"{clip.name}: gvc {args.param} sweep")
    base = rd.base_gvc_params(args, K=args.K, M=args.M)
    md = os.path.join(args.out, f"ablate_{args.param}.md")
    atomic_write_bytes(md, sweep_markdown(clip, args.param, values, records, metrics, base).encode())
    print(f"wrote {md}, {os.path.join(args.out, 'results.json')} and plots/ablate_{args.param}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
