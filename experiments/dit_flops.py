"""DiT FLOPs per GOP for the plain, x0-cache and ``turbo`` (multi-resolution) schedules.

    python -m experiments.dit_flops                       # Wan2.1 1.3B, 1280x720, 33 frames, T = 20, tail 3
    python -m experiments.dit_flops --model preset:tiny --size 64x48 --low 48x32 --gop-frames 5 --steps 6 --tail 2
    python -m experiments.dit_flops --json out.json --markdown out.md

One DiT call's FLOPs come from XLA's cost analysis of the compiled forward (``bench_gop.forward_flops``:
layers unrolled and one-op attention so that XLA counts every layer, abstract weights from
``nnx.eval_shape``: nothing of the model's size is allocated, nothing runs). A GOP's DiT FLOPs are the
calls of its schedule times the per-call FLOPs at the resolution of each call:

- ``plain``: one call per step (T calls at the coded size);
- ``x0-cache``: the codec's ``--x0-cache alternate`` (``schedule.x0_cache_schedule``): the odd steps
  reuse the previous clean estimate, so T - floor(T / 2) calls, tail steps included;
- ``turbo``: the multi-resolution trajectory with the x0-cache of TURBO.md §6 (period 2, one stage
  switch, warmup refresh after it, never a skip in the tail or at a switch): the calls of the
  codec's own sampler for ``--mr 832x480@8 --x0-cache turbo`` (its stage plan and skip schedule,
  which the trajectory runs: the x0-cache table decides which steps call the DiT); at 720p: 12
  calls, 4 of them at 832x480.

The codebook search and the VAE are not DiT FLOPs and are not counted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gvc_jax  # noqa: F401

DEFAULT_MODEL = "preset:wan2.1-t2v-1.3b"
TURBO_PERIOD = 2          # TURBO.md §6: refresh every other step within a stage
TURBO_SWITCH_720P = 8     # `--mr 832x480@8`: the 480p stage ends at (stochastic) step 8
TURBO_LOW_720P = (832, 480)


def mr_refresh_calls(steps: int, tail: int, switches: Sequence[int] = (), period: int = TURBO_PERIOD,
                     warmup: bool = True) -> List[Tuple[int, int]]:
    """The DiT calls of a multi-resolution trajectory with the x0-cache, as (step, stage) pairs: the
    codec's refresh rule (``multires.mr_refresh_schedule``, TURBO.md §6): a step skips only if it is
    stochastic, not a switch step, and ``(i - stage_start) % period != 0`` (``stage_start``: 0, or the
    switch step, + 1 with ``warmup``). ``period = 1``: every step is a call."""
    from gvc_jax.codec.sampling.multires import mr_refresh_schedule

    rule = mr_refresh_schedule(steps, tail, period, tuple(int(s) for s in switches), warmup=warmup)
    return [(i, rule.stage[i]) for i in rule.calls]


def turbo_switch(steps: int, tail: int) -> int:
    """turbo's switch step: 8 of 20 steps (720p), scaled with T, strictly inside the stochastic steps."""
    return min(max(1, round(TURBO_SWITCH_720P * steps / 20)), steps - tail - 1)


def sampler_calls(sampler) -> List[Tuple[int, int]]:
    """The DiT calls of a codec ``SamplerConfig`` as (step, stage) pairs: every step its x0-cache does
    not skip, with the stage of its stage plan (0 without one)."""
    stages = sampler.stages.step_stages(sampler.steps) if sampler.stages is not None else [0] * sampler.steps
    return [(i, int(stages[i])) for i in range(sampler.steps) if i not in set(sampler.x0_cache)]


def x0_cache_calls(spec: str, steps: int) -> List[int]:
    """The steps that call the DiT under the codec's ``--x0-cache SPEC``."""
    from gvc_jax.codec.sampling.schedule import x0_cache_schedule

    skips = set(x0_cache_schedule(spec, steps))
    return [i for i in range(steps) if i not in skips]


def latent_shape(model_cfg, width: int, height: int, gop_frames: int) -> Tuple[int, int, int, int]:
    from gvc_jax.temporal import latent_frames

    s, ts = model_cfg.vae.spatial_stride, model_cfg.vae.temporal_stride
    if width % (2 * s) or height % (2 * s):
        raise ValueError(f"{width}x{height} is not a multiple of {2 * s} (the model's patch grid)")
    return (latent_frames(gop_frames, ts), height // s, width // s, model_cfg.vae.z_dim)


def tokens(dit_cfg, shape) -> int:
    pf, ph, pw = dit_cfg.patch_size
    return (shape[0] // pf) * (shape[1] // ph) * (shape[2] // pw)


def analytic_matmul_flops(dit_cfg, shape) -> float:
    """2 x multiply-adds of the DiT's matrix products at this latent shape (T2V layout: self-attention,
    text cross-attention, FFN, patch embedding and head; no norms, softmax or elementwise work): a
    check on the cost analysis, which also counts the elementwise operations."""
    n, d, f = tokens(dit_cfg, shape), dit_cfg.dim, dit_cfg.ffn_dim
    lt = dit_cfg.text_len
    patch = dit_cfg.patch_size[0] * dit_cfg.patch_size[1] * dit_cfg.patch_size[2]
    layer = (8 * n * d * d + 4 * n * n * d            # self-attention projections, QK^T and PV
             + 4 * n * d * d + 4 * lt * d * d + 4 * n * lt * d  # cross-attention
             + 4 * n * d * f)                          # FFN
    embed = 2 * n * dit_cfg.in_channels * patch * d + 2 * n * d * dit_cfg.out_channels * patch
    text = 2 * lt * (dit_cfg.text_dim * d + d * d)
    return float(dit_cfg.num_layers * layer + embed + text)


def per_call_flops(dit_cfg, shape) -> float:
    """FLOPs of one DiT call at this latent shape, from the compiled program's cost analysis."""
    from experiments.bench_gop import forward_flops

    return forward_flops(dit_cfg, shape)


def model_config(model: str, dtype: str = "bfloat16"):
    """A preset's config with the DiT in ``dtype`` (the FLOP count does not depend on weights)."""
    import dataclasses

    from gvc_jax.models.configs import get_preset

    if not model.startswith("preset:"):
        raise ValueError(f"--model must be preset:NAME (abstract weights), got {model!r}")
    cfg = get_preset(model.split(":", 1)[1])
    return dataclasses.replace(cfg, dit=cfg.dit.replace(dtype=dtype, param_dtype=dtype))


def gop_flops(model: str = DEFAULT_MODEL, size: Tuple[int, int] = (1280, 720), low: Optional[Tuple[int, int]] =
              TURBO_LOW_720P, gop_frames: int = 33, steps: int = 20, tail: int = 3, switch: Optional[int] = None,
              dtype: str = "bfloat16", progress=None) -> Dict:
    """Per-call and per-GOP DiT FLOPs of the plain, x0-cache and turbo schedules (see the module
    docstring). ``low``: the lower stage's pixel size for turbo (None: no turbo row); ``switch``: its
    last step (default: 8 of 20 steps, scaled with T)."""
    say = progress or (lambda msg: None)
    cfg = model_config(model, dtype)
    full_shape = latent_shape(cfg, *size, gop_frames)
    t0 = time.perf_counter()
    say(f"cost analysis of one DiT call at {size[0]}x{size[1]} (latent {full_shape})")
    per_call = {"full": per_call_flops(cfg.dit, full_shape)}
    out: Dict = {"model": model, "dtype": dtype, "size": f"{size[0]}x{size[1]}", "gop_frames": gop_frames,
                 "steps": steps, "tail": tail, "latent_shape": list(full_shape),
                 "tokens": tokens(cfg.dit, full_shape),
                 "per_call_flops": {f"{size[0]}x{size[1]}": per_call["full"]},
                 "analytic_matmul_flops": {f"{size[0]}x{size[1]}": analytic_matmul_flops(cfg.dit, full_shape)}}
    rows: Dict[str, Dict[str, Any]] = {"plain": {"calls": steps, "calls_low": 0, "source": "one call per step"}}
    x0 = x0_cache_calls("alternate", steps)
    rows["x0-cache"] = {"calls": len(x0), "calls_low": 0, "call_steps": x0,
                        "source": "the codec's --x0-cache alternate (schedule.x0_cache_schedule)"}
    if low is not None and steps - tail < 2:
        out["turbo_note"] = f"no turbo row: a switch needs at least 2 stochastic steps (T - tail = {steps - tail})"
        low = None
    if low is not None:
        low_shape = latent_shape(cfg, *low, gop_frames)
        say(f"cost analysis of one DiT call at {low[0]}x{low[1]} (latent {low_shape})")
        per_call["low"] = per_call_flops(cfg.dit, low_shape)
        out["per_call_flops"][f"{low[0]}x{low[1]}"] = per_call["low"]
        out["analytic_matmul_flops"][f"{low[0]}x{low[1]}"] = analytic_matmul_flops(cfg.dit, low_shape)
        out["low_tokens"] = tokens(cfg.dit, low_shape)
        tau = switch if switch is not None else turbo_switch(steps, tail)
        from gvc_jax.api import CodecOptions

        sampler = CodecOptions(mr=f"{low[0]}x{low[1]}@{tau}", x0_cache="turbo", steps=steps, tail=tail).sampler(
            size[1], size[0], gop_frames)
        calls = sampler_calls(sampler)
        rows["turbo"] = {"calls": len(calls), "calls_low": sum(1 for _, s in calls if s == 0),
                         "call_steps": [i for i, _ in calls], "switch_step": tau, "low_size": f"{low[0]}x{low[1]}",
                         "source": f"the codec's sampler for --mr {sampler.stages.spec()} --x0-cache turbo (the "
                                   "stage plan and skip schedule the trajectory runs)"}
    for row in rows.values():
        low_calls = row["calls_low"]
        row["gop_flops"] = (row["calls"] - low_calls) * per_call["full"] + low_calls * per_call.get("low", 0.0)
    for row in rows.values():
        row["ratio_to_plain"] = row["gop_flops"] / rows["plain"]["gop_flops"]
    out["schedules"] = rows
    out["seconds"] = time.perf_counter() - t0
    return out


def fmt_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f} FLOP"


def markdown(result: Dict) -> str:
    sizes = list(result["per_call_flops"])
    lines = [f"DiT FLOPs per GOP: {result['model']} ({result['dtype']}), {result['size']}, "
             f"{result['gop_frames']} frames, T = {result['steps']}, tail {result['tail']}; per call: "
             + ", ".join(f"{s} {fmt_flops(result['per_call_flops'][s])}" for s in sizes), "",
             "| schedule | DiT calls | of them at the low size | DiT FLOPs per GOP | vs plain | calls counted from |",
             "|---|---|---|---|---|---|"]
    for name, row in result["schedules"].items():
        lines.append(f"| {name} | {row['calls']} | {row['calls_low']} | {fmt_flops(row['gop_flops'])} | "
                     f"{row['ratio_to_plain']:.3f}x | {row['source']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from gvc_jax.cli import parse_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="preset:NAME (abstract weights)")
    p.add_argument("--size", type=parse_size, default=(1280, 720), metavar="WxH")
    p.add_argument("--low", default="832x480", help="turbo's lower stage, WxH ('none': no turbo row)")
    p.add_argument("--switch", type=int, default=None, help="turbo's switch step (default 8 at T = 20, scaled)")
    p.add_argument("--gop-frames", type=int, default=33)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tail", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--json", help="write the result as JSON")
    p.add_argument("--markdown", help="write the table as markdown")
    args = p.parse_args(argv)
    low = None if args.low == "none" else parse_size(args.low)
    result = gop_flops(args.model, args.size, low, args.gop_frames, args.steps, args.tail, args.switch, args.dtype,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    import jax

    result["backend"] = jax.default_backend()
    table = markdown(result)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
