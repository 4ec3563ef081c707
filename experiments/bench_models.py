"""Benchmark the JAX models against the diffusers PyTorch models on this machine (CPU by default).

    python experiments/bench_models.py [--part dit|vae|all] [--json OUT] [--runs 5] [--dtype float32]

DiT part: a mid-size Wan DiT (dim 512 = 4 heads x 128, ffn 1536, 8 layers, text_dim 512, 512 text
rows, latent 5x40x60 -> 3000 tokens). The diffusers WanTransformer3DModel (torch fp32,
inference_mode) and the JAX WanDiT (jit, weights loaded through diffusers_key_to_path, state passed
as a jit argument) run the same inputs; reports the median of --runs timed calls after warm-up, the
ratio torch/jax and the max abs difference of the outputs.
VAE part: delegates to ``bench_vae(args) -> dict`` in experiments/_bench_vae.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gvc_jax  # noqa: F401  (XLA flags before jax)
from gvc_jax.models.configs import DiTConfig
from gvc_jax.models.dit import WanDiT
from weights_convert.to_flax import load_diffusers_dit

HERE = os.path.dirname(os.path.abspath(__file__))

BENCH_DIT = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=512, freq_dim=256, ffn_dim=1536, num_layers=8, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
LATENT = (5, 40, 60)  # F_lat, h, w -> 5 * 20 * 30 = 3000 tokens


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_dit(args) -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    tm = WanTransformer3DModel(**BENCH_DIT).eval()
    state = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, *LATENT, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 512, BENCH_DIT["text_dim"], generator=g)
    tokens = LATENT[0] * (LATENT[1] // 2) * (LATENT[2] // 2)

    def torch_fwd():
        with torch.inference_mode():
            return tm(x, t, ctx, return_dict=False)[0]

    # JAX
    cfg = DiTConfig.from_diffusers(BENCH_DIT, dtype=args.dtype, param_dtype=args.dtype,
                                   scan_layers=args.scan)
    model = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
    load_diffusers_dit(model, state)
    graphdef, params = nnx.split(model)

    @jax.jit
    def jax_fwd(params, x, t, ctx):
        return nnx.merge(graphdef, params)(x, t, ctx)

    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))
    tj, ctxj = jnp.asarray(t.numpy()), jnp.asarray(ctx.numpy())
    t0 = time.perf_counter()
    out = jax_fwd(params, xj, tj, ctxj).block_until_ready()  # compile + warm-up
    t_compile = time.perf_counter() - t0
    ref = torch_fwd().numpy().transpose(0, 2, 3, 4, 1)  # warm-up
    err = float(np.abs(np.asarray(out) - ref).max())

    # Interleave the timed runs so that load from other processes hits both sides alike.
    torch_times, jax_times = [], []
    for _ in range(args.runs):
        torch_times.append(_timed(torch_fwd))
        jax_times.append(_timed(lambda: jax_fwd(params, xj, tj, ctxj).block_until_ready()))
    t_torch, t_jax = statistics.median(torch_times), statistics.median(jax_times)

    res = dict(
        part="dit", config=dict(BENCH_DIT, latent=LATENT, tokens=tokens, jax_dtype=args.dtype, scan=args.scan),
        torch_s=t_torch, jax_s=t_jax, ratio_torch_over_jax=t_torch / t_jax, jax_first_call_s=t_compile,
        torch_times=torch_times, jax_times=jax_times, max_abs_err=err, max_abs_ref=float(np.abs(ref).max()),
        torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), jax_backend=jax.default_backend(),
    )
    print(f"DiT {tokens} tokens, {BENCH_DIT['num_layers']} layers, dim {4 * 128}: "
          f"torch {t_torch:.3f} s | jax ({args.dtype}) {t_jax:.3f} s | torch/jax {t_torch / t_jax:.2f}x | "
          f"jax first call {t_compile:.1f} s | max abs err {err:.2e} (|ref| max {res['max_abs_ref']:.2f})")
    return res


def bench_vae_part(args) -> dict:
    sys.path.insert(0, HERE)
    from _bench_vae import bench_vae

    return bench_vae(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("dit", "vae", "all"), default="all")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--runs", type=int, default=5, help="timed runs after warm-up (median reported)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="JAX DiT dtype")
    p.add_argument("--scan", action="store_true", help="JAX DiT with scan_layers")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    results = []
    if args.part in ("dit", "all"):
        results.append(bench_dit(args))
    if args.part in ("vae", "all"):
        results.append(bench_vae_part(args))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
