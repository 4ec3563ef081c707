"""Accelerator check: one script, one JSON and one markdown table (issue 24 item 6).

    python -m experiments.device_check --out results/device_h100       # Wan2.1 1.3B / 720p, bf16, on a GPU
    python -m experiments.device_check --tiny --out /tmp/dc             # the same sections, tiny model, CPU
    python -m experiments.device_check --out DIR --size 832x480 --sections gop_plain,gop_x0_cache
                                        # any setting of the mode overridden; a subset of the sections

Writes ``DIR/device_check.json`` (after every section, so a run cut short keeps what it measured) and
``DIR/device_check.md``. Sections, in this order, each fail-soft (an exception is recorded in the JSON
and the table, with whatever the section measured before it, and the next section runs):

- ``compile_cache`` (first, before this process touches the device): the GOP trajectory compiled
  (abstract weights, ``bench_gop --abstract``) in a cold process with an empty persistent compilation
  cache (a fresh temp dir), then in a second process with the same cache: lower / compile seconds of
  each, and whether the second one was served from the cache (JAX's own cache-miss log). A program
  with a host callback (the trajectory's progress ``jax.debug.callback``) is never written to the
  cache; when the cold process says so, the warm one is not run and the reason is recorded;
- ``environment``: JAX, backend, device kind, the chip's peak dense FLOP/s (``bench_gop.PEAK_TFLOPS``);
- ``codebook_hashes``: the golden atom hashes of ``tests/test_codebooks.py`` (its ``GOLDEN`` values,
  same recipe) computed on the device and on the host CPU;
- ``dit_flops``: ``experiments/dit_flops.py``, run in a CPU subprocess started first (alongside the
  device work): per-call FLOPs from XLA's cost analysis and the DiT calls of each schedule;
- ``gop_plain``, ``gop_x0_cache``, ``gop_turbo``: ``bench_gop.real_run`` with random weights (built once):
  encode and decode seconds per GOP (median of ``--runs``), trajectory seconds, compile time, peak
  memory (the device's ``peak_bytes_in_use`` of the process so far; max RSS on CPU), MFU = DiT FLOPs of
  the schedule / trajectory seconds / peak. ``gop_turbo`` runs once an options preset named ``turbo``
  exists (``gvc_jax.api.PRESETS``); until then it records that it is not available;
- ``attention``: cuDNN attention (``models.attention``, ``cudnn``) against the ``chunked`` reference path
  on the model's real attention shape (1.3B / 720p: 32,400 tokens, 12 heads x 128, bf16): median
  seconds and the max abs difference. Off an NVIDIA GPU the cuDNN part is recorded as unavailable;
- ``stream_decode``: ``tests/data/golden_t2v.gvc`` (written on the 2-core CPU, default model) decoded
  here: each GOP's drift flag (final-latent hash) and the max pixel difference to the shipped frames.

The main process uses its own empty persistent cache, so the GOP rows' compile times are cold. A
section that would start after ``--deadline-s`` (default 420 s) is recorded as skipped, so that the
whole check stays within 8 minutes. ``--tiny``: preset ``tiny``, 64x48, 5 frames, 4 steps, K = 256,
M = 8, so that a CPU runs it in about a minute (``tests/test_device_check.py``).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
GOLDEN_STREAM = os.path.join(TESTS, "data", "golden_t2v.gvc")
GOLDEN_FRAMES = os.path.join(TESTS, "data", "golden_t2v_decoded.npy")

FULL: Dict[str, Any] = dict(model="preset:wan2.1-t2v-1.3b", size=(1280, 720), low=(832, 480), gop_frames=33,
                            steps=20, tail=3, M=64, K=16384, dtype="bfloat16",
                            attn_tokens=None)  # attn_tokens None: the GOP's DiT tokens
TINY: Dict[str, Any] = dict(model="preset:tiny", size=(64, 48), low=(48, 32), gop_frames=5, steps=4, tail=1,
                            M=8, K=256, dtype="bfloat16", attn_tokens=1024)
SECTIONS = ("compile_cache", "environment", "codebook_hashes", "dit_flops", "gop_plain", "gop_x0_cache",
            "gop_turbo", "attention", "stream_decode")


class NotAvailable(RuntimeError):
    """A section (or part of one) that cannot run on this machine: recorded as such, not as a number."""


def log(msg: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Report:
    """Sections run one by one; each one's result (or its error, with whatever it measured before it
    failed) goes into the JSON, written again after every section."""

    def __init__(self, out_dir: str, meta: dict):
        self.out_dir = out_dir
        self.meta = meta
        self.sections: Dict[str, dict] = {}
        self.t0 = time.perf_counter()
        os.makedirs(out_dir, exist_ok=True)

    @property
    def json_path(self) -> str:
        return os.path.join(self.out_dir, "device_check.json")

    def run(self, name: str, fn: Callable[[dict], Optional[dict]]) -> dict:
        log(f"{name} ...")
        partial: dict = {}
        t0 = time.perf_counter()
        try:
            result = fn(partial) or {}
            entry = {"ok": True, **partial, **result}
        except (Exception, SystemExit) as err:  # bench_gop raises SystemExit on a broken benchmark
            entry = {"ok": False, **partial, "error": f"{type(err).__name__}: {err}",
                     "not_available": isinstance(err, NotAvailable),
                     "traceback": traceback.format_exc(limit=8)}
        entry["seconds"] = time.perf_counter() - t0
        self.sections[name] = entry
        log(f"{name}: {'ok' if entry['ok'] else 'ERROR ' + entry['error']} ({entry['seconds']:.1f} s)")
        self.write()
        return entry

    def write(self) -> None:
        data = {"meta": {**self.meta, "elapsed_s": time.perf_counter() - self.t0}, "sections": self.sections}
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=_jsonable)
        os.replace(tmp, self.json_path)


def _jsonable(v):
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(v)


# ----------------------------------------------------------------------------- subprocesses

def _subprocess_env(cache_dir: Optional[str] = None, cpu: bool = False) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # several processes may share the device
    if cpu:
        env["JAX_PLATFORMS"] = "cpu"
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    else:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def start_flops(cfg: dict, work: str) -> subprocess.Popen:
    """``dit_flops`` in a CPU process, started before anything else (it runs alongside the device work)."""
    size, low = cfg["size"], cfg["low"]
    cmd = [sys.executable, "-m", "experiments.dit_flops", "--model", cfg["model"], "--size", f"{size[0]}x{size[1]}",
           "--low", f"{low[0]}x{low[1]}", "--gop-frames", str(cfg["gop_frames"]), "--steps", str(cfg["steps"]),
           "--tail", str(cfg["tail"]), "--dtype", cfg["dtype"], "--json", os.path.join(work, "dit_flops.json")]
    log("dit_flops: started in a CPU subprocess")
    return subprocess.Popen(cmd, cwd=REPO, env=_subprocess_env(cpu=True), stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(work, "dit_flops.log"), "w"))


def section_dit_flops(proc: subprocess.Popen, work: str, timeout: float) -> Callable[[dict], dict]:
    def run(partial: dict) -> dict:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise TimeoutError(f"dit_flops took over {timeout:.0f} s") from None
        if rc != 0:
            raise RuntimeError(f"dit_flops exited {rc}: {_tail(os.path.join(work, 'dit_flops.log'))}")
        with open(os.path.join(work, "dit_flops.json")) as f:
            result = json.load(f)
        result["counted_on"] = "XLA cost analysis of the forward compiled for the host CPU (abstract weights)"
        return result
    return run


def section_compile_cache(cfg: dict, work: str) -> Callable[[dict], dict]:
    """The trajectory compiled by ``bench_gop --abstract`` twice, in two processes sharing a fresh
    persistent cache: cold, then warm. Whether the warm one found the trajectory in the cache is read
    from JAX's own account (``JAX_EXPLAIN_CACHE_MISSES``: it logs every persistent-cache miss and why
    an entry was not written) and from the cache directory's ``jit__trajectory`` entries."""
    def run(partial: dict) -> dict:
        cache = tempfile.mkdtemp(prefix="xla-cache-", dir=work)
        size = cfg["size"]
        base = [sys.executable, "-m", "experiments.bench_gop", "--model", cfg["model"], "--size",
                f"{size[0]}x{size[1]}", "--gop-frames", str(cfg["gop_frames"]), "--steps", str(cfg["steps"]),
                "--tail", str(cfg["tail"]), "-M", str(cfg["M"]), "-K", str(cfg["K"]), "--dtype", cfg["dtype"],
                "--abstract", "--no-flops"]
        env = {**_subprocess_env(cache), "JAX_EXPLAIN_CACHE_MISSES": "1"}
        for run_name in ("cold", "warm"):
            unwritten = [n for n in partial.get("cold", {}).get("trajectory_cache_log", []) if "Not writing" in n]
            if run_name == "warm" and unwritten:  # a second process can only compile it again: not timed
                partial["warm"] = {"skipped": f"the cold process wrote no trajectory entry: {unwritten[0]}"}
                break
            out = os.path.join(work, f"compile_{run_name}.json")
            err = os.path.join(work, f"compile_{run_name}.log")
            t0 = time.perf_counter()
            with open(err, "w") as ferr:
                rc = subprocess.run(base + ["--json", out], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                    stderr=ferr, timeout=600).returncode
            wall = time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"{run_name} compile process exited {rc}: {_tail(err)}")
            with open(out) as f:
                r = json.load(f)
            with open(err, errors="replace") as f:
                notes = [line.strip()[:300] for line in f
                         if "jit__trajectory" in line and ("PERSISTENT" in line or "persistent" in line)]
            partial[run_name] = {"process_s": wall, "lower_s": r["lower_s"], "compile_s": r["compile_s"],
                                 "memory_analysis": r.get("memory_analysis"),
                                 "trajectory_cache_entries": _entries(cache, "jit__trajectory"),
                                 "trajectory_cache_log": notes}
        partial["what"] = ("the GOP trajectory (abstract weights) compiled in a fresh process with an empty "
                           "persistent cache (cold), then in a second process with that cache (warm)")
        warm = partial["warm"]
        if "skipped" in warm:
            partial["warm_hit"] = False
            partial["warm_miss_reason"] = warm["skipped"]
            return {}
        warm_log = " ".join(warm["trajectory_cache_log"])
        partial["warm_hit"] = bool(partial["cold"]["trajectory_cache_entries"]) and "MISS" not in warm_log
        if not partial["warm_hit"]:
            partial["warm_miss_reason"] = warm_log or "no trajectory entry in the cache"
        partial["compile_speedup"] = partial["cold"]["compile_s"] / max(warm["compile_s"], 1e-9)
        return {}
    return run


def _entries(root: str, prefix: str) -> int:
    return sum(1 for name in os.listdir(root) if name.startswith(prefix))


# ----------------------------------------------------------------------------- in-process sections

def section_environment(cfg: dict) -> dict:
    import jax

    from experiments.bench_gop import peak_tflops

    dev = jax.devices()[0]
    peak, kind = peak_tflops(cfg["dtype"])
    out = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": kind,
           "device_count": jax.device_count(), "peak_tflops": peak, "dtype": cfg["dtype"],
           "python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count(),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if peak is None:
        out["peak_note"] = f"no peak FLOP/s known for {kind!r}: MFU is not computed (see bench_gop.PEAK_TFLOPS)"
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats:
        out["device_memory_bytes"] = int(stats.get("bytes_limit", 0))
    return out


def golden_hash_values() -> dict:
    """``GOLDEN`` of tests/test_codebooks.py (read from its source: the test module needs pytest)."""
    with open(os.path.join(TESTS, "test_codebooks.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "GOLDEN" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError("no GOLDEN in tests/test_codebooks.py")


def atoms_hash(kind: str, device) -> str:
    """sha256 of ``atoms(frame_key(1234, 0, 1, 2), arange(8))`` at K = 64, D = 300 (float32 little
    endian): ``test_codebooks.test_golden_hashes``' recipe, computed on ``device``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gvc_jax.codec.sampling.codebooks import frame_key, get_codebook

    cb = get_codebook(kind, 64, 300)
    with jax.default_device(device):
        a = jax.jit(lambda k, i: cb.atoms(k, i))(frame_key(1234, 0, 1, 2), jnp.arange(8, dtype=jnp.int32))
        a = np.asarray(a, dtype="<f4")
    return hashlib.sha256(a.tobytes()).hexdigest()


def section_codebook_hashes(partial: dict) -> dict:
    import jax

    golden = golden_hash_values()
    dev, cpu = jax.devices()[0], jax.devices("cpu")[0]
    rows = {}
    for kind, want in golden.items():
        on_dev = atoms_hash(kind, dev)
        on_cpu = on_dev if dev.platform == "cpu" else atoms_hash(kind, cpu)
        rows[kind] = {"golden": want, "device": on_dev, "host_cpu": on_cpu,
                      "device_matches": on_dev == want, "host_cpu_matches": on_cpu == want}
    partial["kinds"] = rows
    partial["device"] = dev.device_kind
    partial["all_match"] = all(r["device_matches"] and r["host_cpu_matches"] for r in rows.values())
    return {}


def section_attention(cfg: dict, runs: int) -> Callable[[dict], dict]:
    def run(partial: dict) -> dict:
        import jax
        import jax.numpy as jnp

        from experiments import dit_flops
        from experiments.bench_step import median_time
        from gvc_jax.models.attention import attend

        mcfg = dit_flops.model_config(cfg["model"], cfg["dtype"])
        w, h = cfg["size"]
        n = cfg["attn_tokens"] or dit_flops.tokens(mcfg.dit, dit_flops.latent_shape(mcfg, w, h, cfg["gop_frames"]))
        heads, hd = mcfg.dit.num_attention_heads, mcfg.dit.attention_head_dim
        dtype = jnp.dtype(cfg["dtype"])
        q, k, v = (jax.random.normal(jax.random.key(i), (1, n, heads, hd), jnp.float32).astype(dtype)
                   for i in range(3))
        partial["shape"] = [1, n, heads, hd]
        partial["dtype"] = cfg["dtype"]
        fns = {impl: jax.jit(lambda q, k, v, impl=impl: attend(q, k, v, impl)) for impl in ("chunked", "cudnn")}
        ref = fns["chunked"](q, k, v)
        partial["chunked_s"] = median_time(lambda: fns["chunked"](q, k, v), runs)
        backend = jax.default_backend()
        if backend not in ("gpu", "cuda"):
            raise NotAvailable(f"cuDNN attention cannot run here: backend {backend!r} (it needs an NVIDIA GPU); "
                               f"only the chunked path was timed")
        out = fns["cudnn"](q, k, v)
        partial["cudnn_s"] = median_time(lambda: fns["cudnn"](q, k, v), runs)
        diff = jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))
        partial["max_abs_diff"] = float(diff.max())
        partial["mean_abs_diff"] = float(diff.mean())
        partial["max_abs_ref"] = float(jnp.abs(ref.astype(jnp.float32)).max())
        partial["cudnn_speedup"] = partial["chunked_s"] / partial["cudnn_s"]
        return {}
    return run


def section_stream_decode(partial: dict) -> dict:
    import numpy as np

    from gvc_jax import api
    from gvc_jax.codec.session import decode_video

    with open(GOLDEN_STREAM, "rb") as f:
        stream = f.read()
    expected = np.load(GOLDEN_FRAMES)
    partial["stream"] = os.path.relpath(GOLDEN_STREAM, REPO)
    partial["stream_bytes"] = len(stream)
    t0 = time.perf_counter()
    result = decode_video(stream, api.get_model(None), allow_drift=True)
    partial["decode_s_with_compile"] = time.perf_counter() - t0
    video = np.asarray(result.video)
    partial["gop_drift"] = [bool(g.drift) for g in result.gops]
    partial["any_drift"] = any(partial["gop_drift"])
    if video.shape != expected.shape:
        raise RuntimeError(f"decoded {video.shape}, the shipped frames are {expected.shape}")
    diff = np.abs(video.astype(np.int16) - expected.astype(np.int16))
    partial["frames"] = list(video.shape)
    partial["max_abs_pixel_diff"] = int(diff.max())
    partial["fraction_values_differing"] = float((diff > 0).mean())
    return {}


# ----------------------------------------------------------------------------- GOP rows

def random_model(cfg: dict):
    """The preset's ``CodecModel`` with random weights, built once for every GOP row (as
    ``bench_gop.real_run`` builds it for a preset)."""
    from flax import nnx

    from experiments.bench_gop import build_config
    from gvc_jax.models.dit import WanDiT
    from gvc_jax.models.registry import CodecModel, _empty_context
    from gvc_jax.models.vae import WanVAE

    model_cfg = build_config(SimpleNamespace(model=cfg["model"], dtype=cfg["dtype"], scan_layers=True,
                                             attention="auto"))
    t0 = time.perf_counter()
    dit = WanDiT(model_cfg.dit, rngs=nnx.Rngs(0))
    vae = WanVAE(model_cfg.vae, rngs=nnx.Rngs(1))
    model = CodecModel(cfg["model"], model_cfg, dit, vae, "0" * 64, _empty_context(model_cfg, None))
    return model, model_cfg, time.perf_counter() - t0


def turbo_options():
    """The ``turbo`` options preset once it exists (``gvc_jax.api.PRESETS``), else None."""
    from gvc_jax import api

    return api.PRESETS.get("turbo")


def section_gop(name: str, cfg: dict, runs: int, state: dict, report: Report) -> Callable[[dict], dict]:
    def run(partial: dict) -> dict:
        from experiments import dit_flops
        from experiments.bench_gop import peak_tflops, real_run
        from gvc_jax.api import CodecOptions

        if name == "turbo":
            opts = turbo_options()
            if opts is None:
                raise NotAvailable("no `turbo` options preset in gvc_jax.api.PRESETS yet "
                                   "(this row runs without edits once it exists)")
            # the preset's refresh rule with the stage plan dit_flops counts (832x480@8 at 720p, T = 20)
            low = cfg["low"]
            opts = opts.replace(mr=f"{low[0]}x{low[1]}@{dit_flops.turbo_switch(cfg['steps'], cfg['tail'])}")
        else:
            opts = CodecOptions(x0_cache="alternate" if name == "x0-cache" else "off")
        opts = opts.replace(atoms=cfg["M"], codebook_size=cfg["K"], steps=cfg["steps"], tail=cfg["tail"],
                            gop_frames=cfg["gop_frames"])
        if "model" not in state:
            log(f"building {cfg['model']} with random weights ({cfg['dtype']})")
            state["model"], state["model_cfg"], state["build_s"] = random_model(cfg)
        model, model_cfg = state["model"], state["model_cfg"]
        w, h = cfg["size"]
        ts = model_cfg.vae.temporal_stride
        sampler = opts.sampler(h, w, cfg["gop_frames"], ts)
        shape = dit_flops.latent_shape(model_cfg, w, h, cfg["gop_frames"])
        partial.update({"schedule": name, "steps": sampler.steps, "tail": sampler.tail,
                        "x0_cache": list(sampler.x0_cache), "model_build_s": state["build_s"]})
        args = SimpleNamespace(model=cfg["model"], size=(w, h), gop_frames=cfg["gop_frames"], runs=runs)
        partial.update(real_run(args, model_cfg, sampler, shape, model))
        flops = report.sections.get("dit_flops", {})
        row = flops.get("schedules", {}).get(name) if flops.get("ok") else None
        calls = sampler.steps - len(sampler.x0_cache)  # the codec's sampler: every step its x0-cache does not skip
        partial["dit_calls"] = calls
        partial["mr"] = sampler.stages.spec() if sampler.stages is not None else "off"
        if row is None or row["calls"] != calls:
            partial["mfu_note"] = "no FLOP count for this schedule (dit_flops failed or counts other calls)"
            return {}
        peak, _ = peak_tflops(cfg["dtype"])
        partial["dit_flops_per_gop"] = row["gop_flops"]
        for side in ("encode", "decode"):
            achieved = row["gop_flops"] / partial[f"{side}_trajectory_s"]
            partial[f"achieved_tflops_{side}_trajectory"] = achieved / 1e12
            partial[f"mfu_{side}_trajectory"] = achieved / (peak * 1e12) if peak else None
        if not peak:
            partial["mfu_note"] = "no peak FLOP/s known for this device: MFU not computed"
        return {}
    return run


# ----------------------------------------------------------------------------- the table

def _s(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _gib(v) -> str:
    return "-" if v is None else f"{v / 2**30:.2f} GiB"


def _cell(entry: dict, what: Callable[[dict], str]) -> str:
    if not entry:
        return "not run"
    if not entry.get("ok"):
        if entry.get("not_available"):
            return "NOT AVAILABLE: " + entry.get("error", "?").removeprefix("NotAvailable: ")[:300]
        return "ERROR: " + entry.get("error", "?")[:300]
    try:
        return what(entry)
    except (KeyError, TypeError, ValueError) as err:
        return f"(table: {type(err).__name__}: {err})"


def markdown(report: Report) -> str:
    sec = report.sections
    meta = report.meta
    env = sec.get("environment", {})
    lines = [f"# device_check: {env.get('device_kind', '?')} ({env.get('backend', '?')}), "
             f"{'--tiny' if meta['tiny'] else 'full check'}", "",
             f"{meta['model']} at {meta['size']}, {meta['gop_frames']} frames, T = {meta['steps']}, tail "
             f"{meta['tail']}, M = {meta['M']}, K = {meta['K']}, {meta['dtype']}, random weights; "
             f"runs per row: {meta['runs']}; JAX {env.get('jax', '?')}; git {str(env.get('git_commit'))[:10]}; "
             f"peak {env.get('peak_tflops')} TFLOP/s; total {report_elapsed(report):.0f} s.", "",
             "## GOP", "",
             "| schedule | DiT calls | encode s/GOP | decode s/GOP | encode traj s | decode traj s | "
             "MFU enc / dec | peak memory | traj compile s |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ("plain", "x0-cache", "turbo"):
        e = sec.get(f"gop_{name.replace('-', '_')}", {})
        if e.get("ok"):
            mem = e.get("peak_device_bytes", e.get("peak_rss_bytes"))
            mfu = ("-" if e.get("mfu_encode_trajectory") is None else
                   f"{100 * e['mfu_encode_trajectory']:.1f} % / {100 * e['mfu_decode_trajectory']:.1f} %")
            lines.append(f"| {name} | {e['dit_calls']} | {_s(e['encode_gop_s'])} | {_s(e['decode_gop_s'])} | "
                         f"{_s(e['encode_trajectory_s'])} | {_s(e['decode_trajectory_s'])} | {mfu} | {_gib(mem)} | "
                         f"{_s(e['compile_s'])} |")
        else:
            lines.append(f"| {name} | {_cell(e, lambda e: '')} | | | | | | | |")
    lines += ["", "Peak memory: the process's peak so far (device `peak_bytes_in_use`; max RSS on CPU). MFU: DiT "
              "FLOPs of the schedule (section dit_flops) / trajectory seconds / peak; the codebook search is not "
              "counted. The x0-cache schedule is data of the same compiled trajectory (`StepTables`), so that "
              "row reuses plain's compiled program.", "",
              "## Checks", "", "| section | result | seconds |", "|---|---|---|"]

    def compile_text(e):
        c, w = e["cold"], e["warm"]
        text = (f"trajectory compile cold {c['compile_s']:.2f} s (lower {c['lower_s']:.2f} s, "
                f"process {c['process_s']:.1f} s)")
        if "skipped" in w:
            return text + f"; warm not run: {w['skipped']}"
        return (text + f", warm {w['compile_s']:.2f} s (lower {w['lower_s']:.2f} s, process "
                f"{w['process_s']:.1f} s); persistent-cache hit: {e['warm_hit']}"
                + (f" ({e['warm_miss_reason']})" if not e["warm_hit"] else ""))

    def hashes_text(e):
        return ", ".join(f"{k}: device {'=' if r['device_matches'] else '!='} golden, host CPU "
                         f"{'=' if r['host_cpu_matches'] else '!='} golden" for k, r in e["kinds"].items())

    def attention_text(e):
        return (f"shape {e['shape']} {e['dtype']}: cuDNN {e['cudnn_s'] * 1e3:.2f} ms, chunked "
                f"{e['chunked_s'] * 1e3:.2f} ms ({e['cudnn_speedup']:.1f}x), max abs diff {e['max_abs_diff']:.3g} "
                f"(max |out| {e['max_abs_ref']:.3g})")

    def decode_text(e):
        return (f"{e['stream']} ({e['stream_bytes']} B): drift per GOP {e['gop_drift']}, max pixel diff "
                f"{e['max_abs_pixel_diff']} ({100 * e['fraction_values_differing']:.3f} % of values differ), "
                f"{e['decode_s_with_compile']:.1f} s with compile")

    def flops_text(e):
        from experiments.dit_flops import fmt_flops

        return "; ".join(f"{k} {v['calls']} calls ({v['calls_low']} low) {fmt_flops(v['gop_flops'])} "
                         f"= {v['ratio_to_plain']:.3f}x plain" for k, v in e["schedules"].items())

    def env_text(e):
        return f"{e['device_kind']} x{e['device_count']}, JAX {e['jax']}, host {e['host']} ({e['cpus']} CPUs)"

    texts = {"environment": env_text, "compile_cache": compile_text, "codebook_hashes": hashes_text,
             "attention": attention_text, "stream_decode": decode_text, "dit_flops": flops_text}
    for name, fn in texts.items():
        e = sec.get(name, {})
        text = _cell(e, fn)
        if name == "attention" and e and not e.get("ok") and e.get("chunked_s") is not None:
            text += f" (chunked: {e['chunked_s'] * 1e3:.2f} ms at {e['shape']})"
        lines.append(f"| {name} | {text.replace('|', '/')} | {_s(e.get('seconds'), '{:.1f}')} |")
    if sec.get("dit_flops", {}).get("ok"):
        from experiments import dit_flops

        lines += ["", "## DiT FLOPs", "", dit_flops.markdown(sec["dit_flops"])]
    return "\n".join(lines) + "\n"


def _skipped(why: str) -> Callable[[dict], dict]:
    def run(partial: dict) -> dict:
        raise NotAvailable(why)
    return run


def report_elapsed(report: Report) -> float:
    return time.perf_counter() - report.t0


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (device_check.json, device_check.md)")
    p.add_argument("--tiny", action="store_true", help="tiny preset, small frames, few steps (CPU, tests)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per GOP row (default 1; tiny 1)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="sections that would start after this many seconds are recorded as skipped "
                        "(default 420 for the full check, none with --tiny)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all)")
    from gvc_jax.cli import parse_size

    g = p.add_argument_group("overrides of the mode's settings (e.g. a smaller shape on a smaller chip)")
    g.add_argument("--model", help="preset:NAME (random weights)")
    g.add_argument("--size", type=parse_size, metavar="WxH")
    g.add_argument("--low", type=parse_size, metavar="WxH", help="turbo's lower stage (FLOP count)")
    g.add_argument("--gop-frames", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--tail", type=int)
    g.add_argument("-M", "--atoms", dest="M", type=int)
    g.add_argument("-K", "--codebook-size", dest="K", type=int)
    g.add_argument("--dtype", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)
    cfg: Dict[str, Any] = dict(TINY if args.tiny else FULL)
    cfg.update({k: getattr(args, k) for k in ("model", "size", "low", "gop_frames", "steps", "tail", "M", "K", "dtype")
                if getattr(args, k) is not None})
    if args.model is not None and not args.model.startswith("preset:"):
        p.error("--model must be preset:NAME (the GOP rows use random weights)")
    runs = args.runs or 1
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown or runs < 1:
        p.error(f"unknown sections {sorted(unknown)}" if unknown else "--runs must be >= 1")
    size = cfg["size"]
    meta = {"tiny": args.tiny, "model": cfg["model"], "size": f"{size[0]}x{size[1]}", "low": f"{cfg['low'][0]}x"
            f"{cfg['low'][1]}", "gop_frames": cfg["gop_frames"], "steps": cfg["steps"], "tail": cfg["tail"],
            "M": cfg["M"], "K": cfg["K"], "dtype": cfg["dtype"], "runs": runs, "sections": chosen,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report = Report(args.out, meta)
    work = tempfile.mkdtemp(prefix="device_check-")
    # The main process compiles into its own empty persistent cache: the GOP rows' compile times are cold.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(work, "main-xla-cache")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    import gvc_jax  # noqa: F401, I001  (XLA flags before jax)
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    flops_proc = start_flops(cfg, work) if "dit_flops" in chosen else None
    state: dict = {}
    plan: Dict[str, Any] = {  # the device is first touched by the subprocesses of compile_cache, then by this process
        "compile_cache": section_compile_cache(cfg, work),
        "environment": lambda partial: section_environment(cfg),
        "codebook_hashes": section_codebook_hashes,
        "attention": section_attention(cfg, runs=3),
        "stream_decode": section_stream_decode,
        "dit_flops": section_dit_flops(flops_proc, work, timeout=600) if flops_proc else None,
        "gop_plain": section_gop("plain", cfg, runs, state, report),
        "gop_x0_cache": section_gop("x0-cache", cfg, runs, state, report),
        "gop_turbo": section_gop("turbo", cfg, runs, state, report),
    }
    try:
        deadline = args.deadline_s if args.deadline_s is not None else (None if args.tiny else 420.0)
        for name in SECTIONS:
            if name not in chosen:
                continue
            if deadline is not None and report_elapsed(report) > deadline:
                report.run(name, _skipped(f"skipped: past the time budget (--deadline-s {deadline:.0f})"))
            else:
                report.run(name, plan[name])
    finally:
        if flops_proc is not None and flops_proc.poll() is None:
            flops_proc.kill()
        report.write()
        with open(os.path.join(args.out, "device_check.md"), "w") as f:
            f.write(markdown(report))
    log(f"done in {report_elapsed(report):.0f} s: {report.json_path}")
    print(open(os.path.join(args.out, "device_check.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
