"""VAE benchmark: JAX WanVAE vs diffusers AutoencoderKLWan on this machine, and encode memory vs frames.

    python experiments/_bench_vae.py [--runs 3] [--json OUT]

Speed: a mid-size Wan VAE (base_dim 32, dim_mult [1,2,4,4], 2 res blocks, z 16, temporal
[F,T,T]) with the same weights (torch state dict -> ``weights_convert.to_flax.load_diffusers_vae``) encodes
17 frames at 64x64 and decodes the resulting 5 latent frames. JAX runs ``jit`` of
``(state, x)`` after a warm-up call; torch runs fp32 under ``inference_mode``; both report the
median of ``--runs`` calls, the ratio torch/jax and the max abs difference.

Memory: JAX encoding of 33 and of 129 frames (same config, 64x64), each in a fresh subprocess
with ``MALLOC_MMAP_THRESHOLD_=65536`` (large buffers are mmapped and returned on free). After
compile the process resets its peak-RSS counter (``echo 5 > /proc/self/clear_refs``), records
VmRSS as the baseline (weights, input, compiled code all resident), runs the first encode and
reads VmHWM: peak delta = VmHWM - baseline, with every buffer of the call freshly allocated. A
second call is measured the same way for information (the runtime keeps some buffers between
calls, so it is noisier). XLA's static figure (``memory_analysis()`` temp bytes) is also given.
``bench_vae(args)`` is also called by experiments/bench_models.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import gvc_jax  # noqa: E402,F401  (XLA flags before jax)
from gvc_jax.models.configs import VAEConfig  # noqa: E402
from gvc_jax.models.vae import WanVAE  # noqa: E402
from weights_convert.to_flax import load_diffusers_vae  # noqa: E402

BENCH_VAE = VAEConfig(base_dim=32, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                      temperal_downsample=(False, True, True))
DEFAULTS = dict(runs=3, frames=17, size=64, mem_frames=(33, 129), mem_size=64)


def _median_time(fn, runs: int):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _options(args) -> argparse.Namespace:
    """None, a list of CLI strings, or a Namespace from bench_models.py (unknown fields ignored)."""
    if args is None or isinstance(args, (list, tuple)):
        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        p.add_argument("--runs", type=int, default=DEFAULTS["runs"])
        p.add_argument("--json", default=None)
        return p.parse_args(args or [])
    opts = argparse.Namespace(**DEFAULTS)
    opts.runs = getattr(args, "runs", DEFAULTS["runs"])
    return opts


def _jitted(vae: WanVAE):
    graphdef, state = nnx.split(vae)
    enc = jax.jit(lambda st, x: nnx.merge(graphdef, st).encode(x))
    dec = jax.jit(lambda st, z: nnx.merge(graphdef, st).decode(z))
    return state, enc, dec


def bench_speed(runs: int, frames: int, size: int) -> dict:
    import torch
    from diffusers import AutoencoderKLWan

    cfg = BENCH_VAE
    torch.manual_seed(0)
    tv = AutoencoderKLWan(base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                          num_res_blocks=cfg.num_res_blocks, attn_scales=[],
                          temperal_downsample=list(cfg.temperal_downsample)).eval()
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
    state, enc, dec = _jitted(load_diffusers_vae(WanVAE(cfg, rngs=nnx.Rngs(0)), sd))

    x_t = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x_j = jnp.asarray(x_t.numpy().transpose(0, 2, 3, 4, 1))
    with torch.inference_mode():
        torch_enc = lambda: tv.encode(x_t).latent_dist.mode()  # noqa: E731
        mu_t = torch_enc()
        t_torch_enc, _ = _median_time(torch_enc, runs)
        z_t = mu_t.contiguous()
        torch_dec = lambda: tv.decode(z_t).sample  # noqa: E731
        out_t = torch_dec()
        t_torch_dec, _ = _median_time(torch_dec, runs)

    t0 = time.perf_counter()
    mu_j = enc(state, x_j).block_until_ready()
    compile_enc = time.perf_counter() - t0
    t_jax_enc, _ = _median_time(lambda: enc(state, x_j).block_until_ready(), runs)
    z_j = jnp.asarray(mu_t.numpy().transpose(0, 2, 3, 4, 1))
    t0 = time.perf_counter()
    out_j = dec(state, z_j).block_until_ready()
    compile_dec = time.perf_counter() - t0
    t_jax_dec, _ = _median_time(lambda: dec(state, z_j).block_until_ready(), runs)

    return dict(
        config=dict(base_dim=cfg.base_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
                    z_dim=cfg.z_dim, frames=frames, size=size, runs=runs, torch_threads=torch.get_num_threads()),
        encode=dict(torch_s=t_torch_enc, jax_s=t_jax_enc, torch_over_jax=t_torch_enc / t_jax_enc,
                    jax_first_call_s=compile_enc,
                    max_abs_diff=float(np.abs(np.asarray(mu_j) - mu_t.numpy().transpose(0, 2, 3, 4, 1)).max())),
        decode=dict(torch_s=t_torch_dec, jax_s=t_jax_dec, torch_over_jax=t_torch_dec / t_jax_dec,
                    jax_first_call_s=compile_dec,
                    max_abs_diff=float(np.abs(np.asarray(out_j) - out_t.numpy().transpose(0, 2, 3, 4, 1)).max())),
    )


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(frames: int, size: int) -> dict:
    """Runs in a fresh process: peak RSS growth of one JAX encode of ``frames`` frames."""
    state, enc, _ = _jitted(WanVAE(BENCH_VAE, rngs=nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32))
    compiled = enc.lower(state, x).compile()
    analysis = compiled.memory_analysis()

    def peak_delta_mb() -> float:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _proc_kb("VmRSS")
        compiled(state, x).block_until_ready()
        return (_proc_kb("VmHWM") - base) / 1024

    first = peak_delta_mb()   # every buffer of the call is new here
    second = peak_delta_mb()  # the runtime may keep some of them between calls
    return dict(frames=frames, size=size, peak_delta_mb=first, peak_delta_second_call_mb=second,
                baseline_rss_mb=_proc_kb("VmRSS") / 1024, input_mb=x.nbytes / 2**20,
                xla_temp_mb=getattr(analysis, "temp_size_in_bytes", -1) / 2**20)


def bench_memory(frame_counts, size: int) -> dict:
    runs = {}
    for f in frame_counts:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(f), str(size)]
        # Buffers >= 64 KiB get their own mmap and are unmapped when freed, so RSS tracks live buffers
        # (no reuse of glibc free lists left over from compile or warm-up).
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "MALLOC_MMAP_THRESHOLD_": "65536"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            raise RuntimeError(f"memory child ({f} frames) failed:\n{res.stderr[-2000:]}")
        runs[f] = json.loads(res.stdout.strip().splitlines()[-1])
    lo, hi = min(frame_counts), max(frame_counts)
    return dict(
        method="fresh subprocess per frame count, MALLOC_MMAP_THRESHOLD_=64KiB (freed buffers leave RSS); "
               "after compile: reset peak RSS (/proc/self/clear_refs=5), baseline = VmRSS (weights, input, "
               "executable resident), run the first encode, peak = VmHWM; peak_delta = peak - baseline "
               "(activations, caches, output). Second call measured the same way, for information. "
               "xla_temp_mb = compiled.memory_analysis().temp_size_in_bytes",
        runs={str(k): v for k, v in runs.items()},
        peak_delta_ratio=runs[hi]["peak_delta_mb"] / max(runs[lo]["peak_delta_mb"], 1e-9),
        xla_temp_ratio=runs[hi]["xla_temp_mb"] / max(runs[lo]["xla_temp_mb"], 1e-9),
        goal=f"{hi}-frame peak within 1.3x of {lo}-frame",
    )


def bench_vae(args=None) -> dict:
    """Speed (JAX vs diffusers, mid-size VAE) and encode memory vs frame count. Returns a JSON-able dict."""
    opts = _options(args)
    speed = bench_speed(opts.runs, DEFAULTS["frames"], DEFAULTS["size"])
    memory = bench_memory(DEFAULTS["mem_frames"], DEFAULTS["mem_size"])
    e, d = speed["encode"], speed["decode"]
    print(f"vae encode {DEFAULTS['frames']}x{DEFAULTS['size']}^2: torch {e['torch_s']:.3f} s | jax {e['jax_s']:.3f} s"
          f" | torch/jax {e['torch_over_jax']:.2f}x | max|diff| {e['max_abs_diff']:.1e}")
    print(f"vae decode: torch {d['torch_s']:.3f} s | jax {d['jax_s']:.3f} s | torch/jax {d['torch_over_jax']:.2f}x"
          f" | max|diff| {d['max_abs_diff']:.1e}")
    r = memory["runs"]
    lo, hi = (str(f) for f in DEFAULTS["mem_frames"])
    print(f"vae encode peak RSS delta: {lo} frames {r[lo]['peak_delta_mb']:.1f} MB, {hi} frames "
          f"{r[hi]['peak_delta_mb']:.1f} MB, ratio {memory['peak_delta_ratio']:.2f} "
          f"(XLA temp {r[lo]['xla_temp_mb']:.1f} / {r[hi]['xla_temp_mb']:.1f} MB)")
    return dict(part="vae", **speed, memory=memory)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-child"]:
        print(json.dumps(memory_child(int(argv[1]), int(argv[2]))))
        return 0
    opts = _options(argv)
    res = bench_vae(argv)
    if opts.json:
        tmp = opts.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, opts.json)
    else:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
