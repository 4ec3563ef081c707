"""Benchmark: one sampling step's codebook search (all latent frames) vs that step's DiT forward.

    python experiments/bench_step.py [--model DIR|preset:NAME] [--size 256x144] [--gop-frames 33]
                                     [-K 16384] [-M 64] [--codebook hadamard] [--runs 5] [--json OUT]

Both are jit-compiled and timed after warm-up (median of ``--runs``), at the model's latent shape
for the given frame size: the DiT forward as the codec calls it (``WanVelocity``), and the search
``vmap``-ed over the GOP's latent frames exactly as the trajectory does it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gvc_jax  # noqa: F401
from gvc_jax.cli import parse_size
from gvc_jax.codec.gop.engine import GopEngine
from gvc_jax.codec.sampling.codebooks import frame_key
from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.codec.sampling.velocity import WanVelocity
from gvc_jax.models.registry import resolve_model


def median_time(fn, runs: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model dir or preset:NAME (default: the embedded default model)")
    p.add_argument("--size", type=parse_size, default=(256, 144), metavar="WxH")
    p.add_argument("--gop-frames", type=int, default=33)
    p.add_argument("-K", type=int, default=16384)
    p.add_argument("-M", type=int, default=64)
    p.add_argument("--codebook", default="hadamard")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    model = resolve_model(args.model)
    sampler = SamplerConfig.for_gop(args.gop_frames, args.M, K=args.K, codebook=args.codebook)
    engine = GopEngine(model, sampler, args.size[1], args.size[0], args.gop_frames)  # as the codec builds it
    shape = engine.latent_shape
    frames = shape[0]
    velocity = WanVelocity(nnx.graphdef(model.dit), model.config.dit)
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    feat = jnp.asarray(velocity.time_features(np.array([0.5]))[0])
    fwd = jax.jit(velocity)
    cond = engine.unconditioned()[-1]  # the coded stage's conditioning
    t_dit = median_time(lambda: fwd(engine.dit_params, x, jnp.float32(0.5), feat, cond), args.runs)

    cb = engine.trajectory.codebook
    frame_ids = jnp.arange(frames)

    @jax.jit
    def search_step(residual):
        keys = jax.vmap(lambda f: frame_key(0, 0, 3, f))(frame_ids)
        return jax.vmap(lambda k, r: cb.search(k, r, args.M))(keys, residual.reshape(frames, -1))

    t_search = median_time(lambda: search_step(x), args.runs)
    result = {"model": model.name, "device": str(jax.devices()[0]), "latent_shape": shape,
              "tokens": int(shape[0] * shape[1] * shape[2] // 4), "D": cb.D, "K": args.K, "M": args.M,
              "codebook": args.codebook, "dit_forward_s": t_dit, "search_step_s": t_search,
              "search_over_dit": t_search / t_dit}
    for k, v in result.items():
        print(f"{k:<16} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
