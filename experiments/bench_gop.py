"""Benchmark: encode and decode one GOP at any model preset and size, with random weights.

    python -m experiments.bench_gop                                     # tiny preset, 256x144, CPU
    python -m experiments.bench_gop --model preset:wan2.1-t2v-1.3b --size 1280x720 \\
        --dtype bfloat16 --json out/bench_gop_h100.json                 # the 1.3B / 720p GOP on a GPU
    python -m experiments.bench_gop --model preset:wan2.1-t2v-1.3b --size 1280x720 --abstract
                                                                        # compile only: no weights

One GOP = VAE encode of the frames, the coded trajectory searching atoms (encoder), the same
trajectory reading them (decoder), VAE decode. The trajectory is compiled ahead of time
(``jit(...).lower(...).compile()``), so compile time is measured on its own and the timed runs
call the compiled executable. Reports:

- seconds per GOP for encode and decode (median of ``--runs``), their parts, and DiT forwards
  per second (``steps - len(x0_cache)`` forwards per trajectory);
- compile time of the trajectory and XLA's ``memory_analysis()`` of it;
- peak memory: the device's ``peak_bytes_in_use`` on accelerators, the process's max RSS on CPU;
- MFU: FLOPs of one DiT forward from the compiled program's cost analysis (layers unrolled and
  one-op attention, so XLA counts every loop iteration), times the forwards, over trajectory time and the chip's
  peak (a table
  of known chips, or ``--peak-tflops``). The codebook search is not counted as useful FLOPs.

``--abstract`` builds the model with abstract shapes only (``nnx.eval_shape``): no weights are
allocated, nothing runs; it reports the compile time and memory estimate of the trajectory at
that size, on whatever backend JAX has (the 1.3B / 720p check on CPU).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import gvc_jax  # noqa: F401

# Dense peak TFLOP/s per chip (vendor figures, no sparsity) by compute dtype.
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 494.0},   # SXM; float32 runs as TF32 on tensor cores
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5e": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
}


def peak_tflops(dtype: str):
    kind = jax.devices()[0].device_kind
    for name, table in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return table.get(dtype, table.get("bfloat16")), kind
    return None, kind


def build_config(args):
    from gvc_jax.models.configs import get_preset

    name = args.model.split(":", 1)[1]
    cfg = get_preset(name)
    dit = cfg.dit.replace(dtype=args.dtype, param_dtype=args.dtype, scan_layers=args.scan_layers,
                          attention=args.attention)
    import dataclasses

    return dataclasses.replace(cfg, dit=dit)


def forward_flops(dit_cfg, latent_shape):
    """FLOPs of one DiT forward at this latent shape, from XLA's cost analysis. XLA counts a loop's
    body once, so the program counted has its layers unrolled and one-op ("xla") attention; it is
    compiled, never run."""
    from gvc_jax.codec.sampling.velocity import WanVelocity
    from gvc_jax.models.checkpoint import abstract_model, dit_factory

    cfg = dit_cfg.replace(scan_layers=False, remat=False, attention="xla")
    graphdef, params, _ = abstract_model(dit_factory(cfg))
    velocity = WanVelocity(graphdef, cfg)
    f, h, w, c = latent_shape
    in_extra = cfg.in_channels - cfg.out_channels
    cond = {"context": jax.ShapeDtypeStruct((cfg.text_len, cfg.text_dim), jnp.float32)}
    if in_extra:
        cond["y"] = jax.ShapeDtypeStruct((f, h, w, in_extra), jnp.float32)
    x = jax.ShapeDtypeStruct((f, h, w, c), jnp.float32)
    t = jax.ShapeDtypeStruct((), jnp.float32)
    feats = jax.ShapeDtypeStruct((cfg.freq_dim,), jnp.float32)
    lowered = jax.jit(velocity).lower(params, x, t, feats, cond)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def trajectory_args(traj, params, cond, target, use_search, picks, atoms, gop=0):
    """``_trajectory``'s (Shared, GopSlot) inputs for one GOP, without a progress listener."""
    from gvc_jax.codec.sampling.trajectory import GopSlot, Shared

    return (Shared(params, jnp.asarray(traj.sampler.seed, jnp.uint32), traj.tables),
            GopSlot(cond, target, use_search, picks, atoms, jnp.asarray(gop, jnp.uint32), jnp.asarray(0, jnp.int32)))


def compile_trajectory(traj, args_):
    from gvc_jax.codec.sampling.trajectory import _trajectory_jit

    t0 = time.perf_counter()
    lowered = _trajectory_jit.lower(*traj._fns[False].args, *args_)  # the program without progress callbacks
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    mem_info = None
    if mem is not None:
        mem_info = {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                      "temp_size_in_bytes", "generated_code_size_in_bytes")
                    if hasattr(mem, k)}
    return compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1, "memory_analysis": mem_info}


def abstract_run(args, model_cfg, sampler, latent_shape):
    """Compile the trajectory with abstract weights; with ``--weight-shards S`` on a ``model`` mesh
    axis of S devices (the DiT's matrices split as ``parallel.shard_spec``), so that
    ``memory_analysis`` gives one device's share."""
    import contextlib

    from gvc_jax.codec.sampling.trajectory import Picks, Trajectory
    from gvc_jax.codec.sampling.velocity import WanVelocity
    from gvc_jax.models.checkpoint import abstract_model, dit_factory
    from gvc_jax.parallel import GopMesh

    shards = getattr(args, "weight_shards", 1)
    mesh = GopMesh(shards, weight_shards=shards)
    place = mesh.weight_sharding if shards > 1 else (lambda shape: None)
    shared = jax.sharding.NamedSharding(mesh.mesh, jax.sharding.PartitionSpec()) if shards > 1 else None
    graphdef, params, _ = abstract_model(dit_factory(model_cfg.dit))
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=place(a.shape)), params)
    velocity = WanVelocity(graphdef, model_cfg.dit)
    f, h, w, c = latent_shape
    grids = [(h, w)] if sampler.stages is None else sampler.stages.latent_sizes(model_cfg.vae.spatial_stride)
    traj = Trajectory(velocity, sampler, latent_shape, velocity.time_features, stage_grids=grids)
    cfg = model_cfg.dit

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=shared)

    def stage_cond(gh, gw):
        cond = {"context": sds((cfg.text_len, cfg.text_dim), jnp.float32)}
        if cfg.in_channels > cfg.out_channels:
            cond["y"] = sds((f, gh, gw, cfg.in_channels - cfg.out_channels), jnp.float32)
        if cfg.image_dim is not None:
            cond["image_context"] = sds((cfg.pos_embed_seq_len or 257, cfg.image_dim), jnp.float32)
        return cond

    rows = sampler.dense_rows
    picks = Picks(sds((rows, f, traj.slots), jnp.int32), sds((rows, f, traj.slots), jnp.float32))
    a = trajectory_args(traj, params, tuple(stage_cond(gh, gw) for gh, gw in grids), sds(latent_shape, jnp.float32),
                        sds((), jnp.bool_), picks, sds((f,), jnp.int32))
    if shared is not None:
        a = jax.tree.map(lambda x: jax.device_put(x, shared) if isinstance(x, jax.Array) else x, a)
    with jax.set_mesh(mesh.mesh) if shards > 1 else contextlib.nullcontext():
        _, info = compile_trajectory(traj, a)
    return {"weight_shards": shards, **info}


def real_run(args, model_cfg, sampler, latent_shape, model=None):
    from flax import nnx

    from gvc_jax.codec.gop.engine import GopEngine
    from gvc_jax.codec.sampling.trajectory import Picks
    from gvc_jax.models.dit import WanDiT
    from gvc_jax.models.registry import CodecModel, _empty_context
    from gvc_jax.models.vae import WanVAE

    t0 = time.perf_counter()
    if model is None:  # a preset: random weights
        dit = WanDiT(model_cfg.dit, rngs=nnx.Rngs(0))
        vae = WanVAE(model_cfg.vae, rngs=nnx.Rngs(1))
        model = CodecModel(args.model, model_cfg, dit, vae, "0" * 64, _empty_context(model_cfg, None))
    build_s = time.perf_counter() - t0
    w, h = args.size
    engine = GopEngine(model, sampler, h, w, args.gop_frames)
    frames = np.random.default_rng(0).integers(0, 256, (args.gop_frames, h, w, 3), dtype=np.uint8)
    cond = engine.unconditioned() if model_cfg.dit.in_channels == model_cfg.dit.out_channels else engine.condition()
    traj = engine.trajectory
    f = latent_shape[0]
    atoms = jnp.asarray(traj.check_atoms(None))
    empty = Picks(*(jnp.asarray(a) for a in Picks.empty(sampler.dense_rows, f, traj.slots)))
    target0 = jnp.zeros(latent_shape, jnp.float32)
    compiled, info = compile_trajectory(traj, trajectory_args(traj, engine.dit_params, cond, target0,
                                                              jnp.asarray(True), empty, atoms))
    t0 = time.perf_counter()
    jax.block_until_ready(engine.target_latents([frames])[0])  # VAE encode: compile + first run
    vae_enc_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(engine.frames_many([target0])[0])
    vae_dec_first = time.perf_counter() - t0

    def timed(fn):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        return time.perf_counter() - t, out

    parts = {"vae_encode": [], "encode_trajectory": [], "decode_trajectory": [], "vae_decode": []}
    for _ in range(args.runs):
        dt, target = timed(lambda: engine.target_latents([frames])[0])
        parts["vae_encode"].append(dt)
        dt, (x_enc, picks) = timed(lambda target=target: compiled(*trajectory_args(
            traj, engine.dit_params, cond, target, jnp.asarray(True), empty, atoms)))
        parts["encode_trajectory"].append(dt)
        dt, (x_dec, _) = timed(lambda target=target, picks=picks: compiled(*trajectory_args(
            traj, engine.dit_params, cond, target, jnp.asarray(False), picks, atoms)))
        parts["decode_trajectory"].append(dt)
        if not bool(jnp.array_equal(x_enc, x_dec)):
            raise SystemExit("decode trajectory differs from encode: the benchmark is broken")
        dt, _ = timed(lambda x_dec=x_dec: engine.frames_many([x_dec])[0])
        parts["vae_decode"].append(dt)
    med = {k: statistics.median(v) for k, v in parts.items()}
    forwards = sampler.steps - len(sampler.x0_cache)
    out = {"build_s": build_s, "vae_encode_first_s": vae_enc_first, "vae_decode_first_s": vae_dec_first, **info,
           **{f"{k}_s": v for k, v in med.items()},
           "encode_gop_s": med["vae_encode"] + med["encode_trajectory"] + med["vae_decode"],
           "decode_gop_s": med["decode_trajectory"] + med["vae_decode"],
           "dit_forwards_per_gop": forwards,
           "dit_forwards_per_s_decode": forwards / med["decode_trajectory"]}
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats:
        out["peak_device_bytes"] = int(stats.get("peak_bytes_in_use", 0))
    else:
        out["peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return out


def main(argv=None) -> int:
    from gvc_jax.cli import parse_size
    from gvc_jax.codec.sampling.schedule import SamplerConfig, latent_frames, x0_cache_schedule
    from gvc_jax.models.attention import IMPLEMENTATIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="preset:tiny", help="preset:NAME (random weights) or a converted model directory")
    p.add_argument("--size", type=parse_size, default=(256, 144), metavar="WxH")
    p.add_argument("--gop-frames", type=int, default=33)
    p.add_argument("-M", "--atoms", type=int, default=64)
    p.add_argument("-K", "--codebook-size", type=int, default=16384)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tail", type=int, default=3)
    p.add_argument("--x0-cache", default="off", help="off, alternate or step indices (see encode --help)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="DiT weights and compute dtype (presets only)")
    p.add_argument("--attention", default="auto", choices=IMPLEMENTATIONS)
    p.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=True,
                   help="scan the DiT's layers (one compiled block; default on)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--abstract", action="store_true", help="compile only, with abstract shapes (no weights)")
    p.add_argument("--weight-shards", type=int, default=1, metavar="S",
                   help="with --abstract: split the DiT's matrices over S devices (memory_analysis per device; "
                        "on a CPU use XLA_FLAGS=--xla_force_host_platform_device_count=S)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (it compiles one unrolled forward)")
    p.add_argument("--peak-tflops", type=float, default=None, help="chip peak for MFU when it is not in the table")
    p.add_argument("--json", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if (args.abstract or args.dtype != "float32") and not args.model.startswith("preset:"):
        p.error("--abstract and --dtype need a preset:NAME model")
    if args.weight_shards != 1 and not args.abstract:
        p.error("--weight-shards needs --abstract (the codec's --weight-shards runs real weights)")
    if args.weight_shards < 1 or args.weight_shards > jax.device_count():
        p.error(f"--weight-shards must be in [1, {jax.device_count()}] (the devices here)")

    model = None
    if args.model.startswith("preset:"):
        model_cfg = build_config(args)
    else:
        from gvc_jax.models.dit import set_attention
        from gvc_jax.models.registry import load_checkpoint

        model = load_checkpoint(args.model)
        set_attention(model.dit, args.attention)
        model_cfg = model.config
    w, h = args.size
    s, ts = model_cfg.vae.spatial_stride, model_cfg.vae.temporal_stride
    latent_shape = (latent_frames(args.gop_frames, ts), h // s, w // s, model_cfg.vae.z_dim)
    sampler = SamplerConfig.for_gop(args.gop_frames, args.atoms, temporal_stride=ts, steps=args.steps, tail=args.tail,
                                    K=args.codebook_size, x0_cache=x0_cache_schedule(args.x0_cache, args.steps))
    tokens = latent_shape[0] * (latent_shape[1] // 2) * (latent_shape[2] // 2)
    result = {"model": args.model, "size": f"{w}x{h}", "gop_frames": args.gop_frames, "latent_shape": latent_shape,
              "tokens": tokens, "dtype": args.dtype, "attention": args.attention, "x0_cache": sampler.x0_cache,
              "M": args.atoms, "K": args.codebook_size, "steps": args.steps, "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind}
    print(f"{args.model} at {w}x{h}, {args.gop_frames} frames: latent {latent_shape}, {tokens} tokens, "
          f"{jax.devices()[0].device_kind}", file=sys.stderr)
    if args.abstract:
        result.update(abstract_run(args, model_cfg, sampler, latent_shape))
    else:
        result.update(real_run(args, model_cfg, sampler, latent_shape, model))
    if not args.no_flops:
        flops = forward_flops(model_cfg.dit, latent_shape)
        result["dit_forward_tflop"] = flops / 1e12
        peak, kind = peak_tflops(args.dtype)
        peak = args.peak_tflops or peak
        if peak and "decode_trajectory_s" in result:
            for side in ("encode", "decode"):
                achieved = flops * result["dit_forwards_per_gop"] / result[f"{side}_trajectory_s"]
                result[f"mfu_{side}_trajectory"] = achieved / (peak * 1e12)
            result["peak_tflops"] = peak
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
