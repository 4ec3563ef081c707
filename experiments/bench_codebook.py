"""Benchmark: one (step, frame) codebook search per kind, vs a public-release style per-atom search.

    python experiments/bench_codebook.py [--json OUT] [--quick] [--dims 4096 230400] [--K 16384] [--M 64]

For each latent-frame size D (default 4096 = 16*16*16, a stand-in for a small model's latent frame,
and 230400 = 16*90*160, a 720p Wan latent frame) and each kind, it times ``Codebook.search`` (jit,
compiled ahead of time, median of a few runs; the slowest points run once) and reports atoms x dims
per second. A Hadamard codebook with K > P = next_pow2(D) is a union of ceil(K / P) randomised
Hadamard bases (one transform each), so every kind runs at the same K.

"Public-release style" baseline: one Gaussian atom at a time (a jitted normal(fold_in(key, k)) + dot
called from a Python loop), timed on a subset of atoms and extrapolated linearly to K.

Peak memory: each (kind, K) point at the largest D runs in a fresh subprocess (so earlier points
cannot raise the high-water mark). It reports (a) XLA's own buffer plan for the compiled search
(``memory_analysis()``: temp + argument + output bytes), the search's working set, and (b) the
resident set size sampled every millisecond by a thread while the compiled search runs, minus the
RSS just before the run (ru_maxrss alone is useless here: the JAX import and the compiler already
set a high-water mark of ~300 MB that a search below that size never moves; it is reported too).
``--quick`` skips the Gaussian 720p K = 16384 points (about 45 s each on a
2-core CPU).

Encode geometry (``--encode-geometry``, issue 24 item 5): the search as the trajectory runs it, one
``vmap`` over a GOP's latent frames, at the latent of a Wan-architecture model (VAE stride 8 spatial
and 4 temporal, z_dim 16) for ``--size 256x144 --frames 33``: 9 latent frames of D = 18 * 32 * 16 =
9216, K = 16384, M = 64. For each kind it times the code of this checkout and, with
``--before REV``, ``gvc_jax/codec/sampling/codebooks.py`` as of git revision REV (loaded as a
module from ``git show``), checks that both pick the same atoms, and extrapolates the search's
share of one GOP's encode: (T - tail) stochastic steps x one step's search. Wall and process CPU
seconds are both reported: the 2-core machine is shared with other jobs, so wall time is inflated
by their load and CPU time is the steadier measure.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

import gvc_jax  # noqa: F401  (XLA flags before jax)
from gvc_jax.codec.sampling import codebooks as current_codebooks
from gvc_jax.codec.sampling.codebooks import KINDS, frame_key, get_codebook
from gvc_jax.codec.sampling.schedule import DEFAULT_TAIL

DEFAULT_DIMS = (16 * 16 * 16, 16 * 90 * 160)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler(threading.Thread):
    """Polls the current RSS every millisecond; .peak is the largest value seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss_now_mb()
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, _rss_now_mb())
            time.sleep(0.001)

    def stop(self):
        self._halt.set()
        self.join()
        self.peak = max(self.peak, _rss_now_mb())


def _inputs(d: int):
    key = frame_key(1234, 0, 1, 2)
    r = jax.random.normal(jax.random.key(0, impl="threefry2x32"), (d,), jnp.float32)
    return key, r


def _compiled_search(cb, m, key, r):
    t0 = time.perf_counter()
    comp = jax.jit(lambda k, x: cb.search(k, x, m)).lower(key, r).compile()
    return comp, time.perf_counter() - t0


def time_search(kind: str, d: int, k: int, m: int, reps: int) -> dict:
    """Median seconds of one compiled search (no separate warm-up run for the slow points)."""
    cb = get_codebook(kind, k, d)
    key, r = _inputs(d)
    comp, t_compile = _compiled_search(cb, m, key, r)
    if reps > 1:  # warm-up run where affordable (the slowest points run once, right after compiling)
        jax.block_until_ready(comp(key, r))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(comp(key, r))
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"kind": kind, "D": d, "K_used": k, "M": m, "seconds": t, "reps": reps, "compile_s": t_compile,
            "atom_dims_per_s": k * d / t}


def time_per_atom_gaussian(d: int, k: int, n_sub: int) -> dict:
    """Public-release style: one jitted normal() + dot per atom from Python; extrapolated to k atoms."""
    key, r = _inputs(d)

    @jax.jit
    def one(key, i, r):
        return jnp.dot(jax.random.normal(jax.random.fold_in(key, i), (d,), jnp.float32), r,
                       precision=jax.lax.Precision.HIGHEST)

    jax.block_until_ready(one(key, 0, r))
    t0 = time.perf_counter()
    ips = [one(key, i, r) for i in range(n_sub)]
    jax.block_until_ready(ips)
    t_sub = time.perf_counter() - t0
    t = t_sub / n_sub * k
    return {"kind": "gaussian_per_atom", "D": d, "K_used": k, "timed_atoms": n_sub, "timed_s": t_sub,
            "seconds": t, "extrapolated": True, "atom_dims_per_s": k * d / t}


def mem_point(kind: str, d: int, k: int, m: int) -> dict:
    """Run in a fresh process: XLA buffer plan and sampled RSS of one compiled search."""
    cb = get_codebook(kind, k, d)
    key, r = _inputs(d)
    jax.block_until_ready(r)
    comp, _ = _compiled_search(cb, m, key, r)
    ma = comp.memory_analysis()
    plan = None
    if ma is not None:
        plan = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20
    rss_before = _rss_now_mb()
    sampler = _RssSampler()
    sampler.start()
    jax.block_until_ready(comp(key, r))
    sampler.stop()
    return {"kind": kind, "D": d, "K": k, "xla_plan_mb": plan, "rss_before_run_mb": rss_before,
            "rss_peak_run_mb": sampler.peak, "rss_run_delta_mb": sampler.peak - rss_before,
            "maxrss_process_mb": _maxrss_mb()}


def _mem_subprocess(kind, d, k, m) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_mem", kind, str(d), str(k), str(m)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {kind} D={d} K={k}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEBOOKS_PATH = "gvc_jax/codec/sampling/codebooks.py"


def codebooks_at(rev: str):
    """``gvc_jax.codec.sampling.codebooks`` as of git revision ``rev``, imported as a separate module."""
    src = subprocess.run(["git", "show", f"{rev}:{CODEBOOKS_PATH}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    name = f"codebooks_at_{rev.replace('/', '_').replace('~', '_').replace('^', '_')}"
    path = os.path.join(tempfile.mkdtemp(), name + ".py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def wan_latent_geometry(width: int, height: int, frames: int, stride: int = 8, t_stride: int = 4,
                        z_dim: int = 16) -> tuple:
    """(latent frames, D) of one GOP for a Wan VAE: 1 + (frames - 1) / t_stride frames of h * w * z_dim."""
    if width % stride or height % stride or (frames - 1) % t_stride:
        raise ValueError(f"{width}x{height}x{frames} does not fit the VAE strides {stride} / {t_stride}")
    return 1 + (frames - 1) // t_stride, (height // stride) * (width // stride) * z_dim


def time_step_search(mod, kind: str, frames: int, d: int, k: int, m: int, reps: int) -> dict:
    """One stochastic step's search as the trajectory runs it: a jitted vmap over ``frames`` frames.

    Returns wall and process-CPU seconds (best of ``reps`` after a warm-up run) and a hash of the picks.
    """
    cb = mod.get_codebook(kind, k, d)
    keys = jax.vmap(lambda f: mod.frame_key(1234, 0, 1, f))(jnp.arange(frames, dtype=jnp.int32))
    res = jax.random.normal(jax.random.key(0, impl="threefry2x32"), (frames, d), jnp.float32)
    t0 = time.perf_counter()
    comp = jax.jit(lambda ks, rs: jax.vmap(lambda kf, rf: cb.search(kf, rf, m))(ks, rs)).lower(keys, res).compile()
    t_compile = time.perf_counter() - t0
    idx, signs = jax.block_until_ready(comp(keys, res))
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(comp(keys, res))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    picks = hashlib.sha256(np.asarray(idx).tobytes() + np.asarray(signs).tobytes()).hexdigest()[:16]
    return {"kind": kind, "frames": frames, "D": d, "K": k, "M": m, "step_wall_s": min(walls),
            "step_cpu_s": min(cpus), "frame_cpu_s": min(cpus) / frames, "reps": reps, "compile_s": t_compile,
            "picks_sha256_16": picks}


def encode_geometry(args) -> dict:
    """Issue 24 item 5: before / after search seconds per step at the GOP geometry of the encode run."""
    w, h = (int(v) for v in args.size.split("x"))
    frames, d = wan_latent_geometry(w, h, args.frames)
    stochastic = args.steps - args.tail
    versions = [("after", current_codebooks)]
    if args.before:
        versions.insert(0, (f"before ({args.before})", codebooks_at(args.before)))
    out = {"geometry": {"size": args.size, "frames": args.frames, "latent_frames": frames, "D": d, "K": args.K,
                        "M": args.M, "steps": args.steps, "tail": args.tail, "stochastic_steps": stochastic},
           "machine": {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
                       "loadavg_start": os.getloadavg()},
           "reference": {"encode_s": args.ref_encode_s, "ours_encode_s_before": args.our_encode_s,
                         "ours_decode_s": args.our_decode_s},
           "rows": []}
    for kind in KINDS:
        for label, mod in versions:
            reps = args.reps if (kind != "gaussian" or label == "after") else 1
            row = time_step_search(mod, kind, frames, d, args.K, args.M, reps)
            row["version"] = label
            row["gop_search_cpu_s"] = stochastic * row["step_cpu_s"]
            row["gop_search_wall_s"] = stochastic * row["step_wall_s"]
            out["rows"].append(row)
            print(f"{kind:<11} {label:<22} step (all {frames} frames): wall {row['step_wall_s']:8.3f} s, "
                  f"CPU {row['step_cpu_s']:8.3f} s ({row['frame_cpu_s']:.3f} s a frame); per GOP x{stochastic}: "
                  f"CPU {row['gop_search_cpu_s']:7.1f} s, wall {row['gop_search_wall_s']:7.1f} s; "
                  f"picks {row['picks_sha256_16']}", flush=True)
        rows = [r for r in out["rows"] if r["kind"] == kind]
        if len(rows) == 2:
            same = rows[0]["picks_sha256_16"] == rows[1]["picks_sha256_16"]
            speed = rows[0]["step_cpu_s"] / max(rows[1]["step_cpu_s"], 1e-9)
            rows[1]["same_picks_as_before"] = same
            rows[1]["cpu_speedup_vs_before"] = speed
            print(f"{kind:<11} same picks as before: {same}; CPU speed-up {speed:.2f}x", flush=True)
    # Extrapolation: the before-encode minus the before-search gives the rest of the encode (DiT, VAE,
    # combine) under that run's load; the load factor of that run is (encode - decode) / search CPU.
    before_g = [r for r in out["rows"] if r["kind"] == "gaussian" and r["version"] != "after"]
    after_rows = {r["kind"]: r for r in out["rows"] if r["version"] == "after"}
    if before_g:
        load = (args.our_encode_s - args.our_decode_s) / before_g[0]["gop_search_cpu_s"]
        out["extrapolation"] = {"load_factor_of_reference_run": load, "encode_s": {}}
        for kind, row in after_rows.items():
            est = args.our_decode_s + load * row["gop_search_cpu_s"]
            out["extrapolation"]["encode_s"][kind] = est
            print(f"{kind:<11} extrapolated GOP encode: {est:6.0f} s  (decode {args.our_decode_s:.0f} s + "
                  f"{load:.2f} x {row['gop_search_cpu_s']:.1f} s search CPU) vs reference {args.ref_encode_s:.0f} s",
                  flush=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--quick", action="store_true", help="skip the slowest (Gaussian 720p K=16384) points")
    ap.add_argument("--dims", type=int, nargs="+", default=list(DEFAULT_DIMS))
    ap.add_argument("--K", type=int, default=16384)
    ap.add_argument("--M", type=int, default=64)
    ap.add_argument("--mem-K", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--_mem", nargs=4, default=None, help=argparse.SUPPRESS)
    enc = ap.add_argument_group("encode geometry (issue 24 item 5)")
    enc.add_argument("--encode-geometry", action="store_true", help="time one step's search at a GOP's geometry")
    enc.add_argument("--before", default=None, help="git revision whose codebooks.py is the 'before'")
    enc.add_argument("--size", default="256x144")
    enc.add_argument("--frames", type=int, default=33)
    enc.add_argument("--steps", type=int, default=20)
    enc.add_argument("--tail", type=int, default=DEFAULT_TAIL)
    enc.add_argument("--reps", type=int, default=2)
    enc.add_argument("--ref-encode-s", type=float, default=609.0, help="PyTorch reference's GOP encode (issue 24)")
    enc.add_argument("--our-encode-s", type=float, default=810.0, help="our --codebook gaussian encode before")
    enc.add_argument("--our-decode-s", type=float, default=116.0, help="our decode in the same comparison")
    args = ap.parse_args(argv)

    if args.encode_geometry:
        res = encode_geometry(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return

    if args._mem:
        kind, d, k, m = args._mem
        print(json.dumps(mem_point(kind, int(d), int(k), int(m))))
        return

    slow = lambda kind, d, k: kind == "gaussian" and d * k > 4096 * 16384 * 4  # noqa: E731
    res = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "K": args.K, "M": args.M,
           "search": [], "baseline": [], "ratios": [], "memory": []}
    for d in args.dims:
        per = {}
        for kind in KINDS:
            k = args.K
            if args.quick and slow(kind, d, k):
                print(f"D={d:>7} {kind:<11} skipped (--quick)", flush=True)
                continue
            reps = 1 if slow(kind, d, k) else (3 if kind != "hadamard" else 7)
            row = time_search(kind, d, k, args.M, reps)
            per[kind] = row
            res["search"].append(row)
            print(f"D={d:>7} {kind:<11} K={k:>6}: {row['seconds'] * 1e3:10.2f} ms  "
                  f"{row['atom_dims_per_s']:.3g} atom*dim/s  (compile {row['compile_s']:.1f} s)", flush=True)
        n_sub = max(16, min(256, (1 << 22) // d))
        base = time_per_atom_gaussian(d, args.K, n_sub)
        res["baseline"].append(base)
        print(f"D={d:>7} per-atom gaussian K={args.K}: {base['seconds']:.2f} s (extrapolated from "
              f"{n_sub} atoms in {base['timed_s']:.3f} s)", flush=True)
        for kind, row in per.items():
            # per-atom cost scales with K, so compare at the same K
            base_s = base["seconds"] * row["K_used"] / args.K
            ratio = base_s / row["seconds"]
            res["ratios"].append({"D": d, "kind": kind, "K_used": row["K_used"], "speedup_vs_per_atom_gaussian": ratio})
            shown = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"
            print(f"D={d:>7} {kind:<11} speed-up vs per-atom gaussian (same K={row['K_used']}): {shown}")
    d_mem = max(args.dims)
    for kind in KINDS:
        for k in args.mem_K:
            if args.quick and slow(kind, d_mem, k):
                continue
            row = _mem_subprocess(kind, d_mem, k, args.M)
            res["memory"].append(row)
            plan = "n/a" if row["xla_plan_mb"] is None else f"{row['xla_plan_mb']:.1f} MB"
            print(f"mem D={d_mem} {kind:<11} K={k:>6}: XLA plan {plan}, RSS before run "
                  f"{row['rss_before_run_mb']:.0f} MB, sampled peak during run {row['rss_peak_run_mb']:.0f} MB "
                  f"(+{row['rss_run_delta_mb']:.1f} MB), process ru_maxrss {row['maxrss_process_mb']:.0f} MB",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
