"""Warm starts (``gvc_jax.compile_cache``): the command-line tools keep compiled programs under
$GVC_JAX_CACHE/xla by default; a warm run writes the cold run's bytes; ``--no-compile-cache`` and
an unsafe directory leave it unused; the reports carry ``compile_s`` and ``dit_calls``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gvc_jax import cli, compile_cache
from gvc_jax import decode as decode_cli

FAST = ["--model", "preset:tiny", "-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--quiet"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("warm") / "v.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (9, 48, 64, 3)).astype(np.uint8))
    return str(path)


def _run(module, args, cache_root, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
           and not k.startswith("JAX_PERSISTENT_CACHE")}  # the suite's own cache dir would take precedence
    env.update({"GVC_JAX_CACHE": str(cache_root), "JAX_PLATFORMS": "cpu", **(extra_env or {})})
    how = ["-c"] if module == "-c" else ["-m", module]  # a module's command line, or ``-c`` code
    proc = subprocess.run([sys.executable, *how, *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _entries(cache_root):
    xla = os.path.join(cache_root, "xla")
    return sorted(os.listdir(xla)) if os.path.isdir(xla) else []


@pytest.fixture(scope="module")
def plain_runs(video, tmp_path_factory):
    """A cold then a warm encode with one cache root: -> (cache root, [(stream, report)] of each run,
    the entries after the cold run, after the warm run, the cache directory's mode after the cold run).
    The staged test codes in that cache afterwards (its VAE programs are these)."""
    cache = tmp_path_factory.mktemp("plain") / "cache"
    outs, entries = [], []
    for run in ("cold", "warm"):
        out, js = cache.parent / f"{run}.gvc", cache.parent / f"{run}.json"
        _run("gvc_jax.encode", [video, "-o", str(out), *FAST, "--x0-cache", "alternate", "--json", str(js)], cache)
        outs.append((out.read_bytes(), json.loads(js.read_text())))
        entries.append(_entries(cache))
        if run == "cold":
            mode = oct(os.stat(cache / "xla").st_mode & 0o777)
    return cache, outs, entries[0], entries[1], mode


def test_a_warm_encode_writes_the_cold_bytes_and_reports_its_compute(plain_runs, tmp_path):
    cache, outs, cold_entries, warm_entries, mode = plain_runs
    assert any(e.startswith("jit__trajectory") for e in cold_entries), cold_entries  # no host callback in it
    assert mode == "0o700"
    (cold, cold_report), (warm, warm_report) = outs
    assert warm == cold
    assert warm_entries == cold_entries  # the warm run compiled nothing new
    for report in (cold_report, warm_report):
        assert report["dit_calls_per_gop"] == [2] * report["gops"]  # 4 steps, x0-cache alternate skips 1 and 3
        assert report["dit_calls"] == 2 * report["gops"] and report["compile_s"] >= 0
    assert cold_report["compile_s"] > 0
    # the decoder's report, from the command line run in this process (its cache is the suite's)
    dec = tmp_path / "dec.json"
    assert cli.run_main(decode_cli.main, [str(cache.parent / "warm.gvc"), "-o", str(tmp_path / "d.npy"), "--model",
                                          "preset:tiny", "--quiet", "--json", str(dec)]) == 0
    report = json.loads(dec.read_text())
    assert report["dit_calls"] == 2 * len(report["dit_calls_per_gop"]) and "compile_s" in report


def test_a_warm_staged_encode_writes_the_cold_bytes(plain_runs, video, tmp_path):
    """Multi-resolution stages (tests/test_mr_trajectory.py) with the turbo x0-cache: the staged trajectory
    is one cacheable program. Coded in the plain runs' cache (the same VAE programs), the cold staged run
    adds its own trajectory entry, and a second run with that cache compiles nothing new and writes the
    same bytes."""
    from gvc_jax.codec.format import bitstream
    from gvc_jax.codec.sampling import multires

    cache = plain_runs[0]
    outs = []
    for run in ("cold", "warm"):
        before = _entries(cache)
        out = tmp_path / f"{run}.gvc"
        _run("gvc_jax.encode", [video, "-o", str(out), *FAST, "--mr", "32x32@2", "--x0-cache", "turbo"], cache)
        outs.append(out.read_bytes())
        added = sorted(set(_entries(cache)) - set(before))
        if run == "cold":
            assert any(e.startswith("jit__trajectory") for e in added), added
        else:
            assert added == []
    assert outs[0] == outs[1]
    assert bitstream.read(outs[0])[0].sampler.stages == multires.StagePlan(((32, 32), (64, 48)), (2,))


def test_no_compile_cache_and_the_environment_switch_leave_every_cache_unused(video, tmp_path):
    cache, jax_dir = tmp_path / "off", tmp_path / "jax-dir"  # also a directory set for JAX itself
    jax_dir.mkdir()
    jax_env = {"JAX_COMPILATION_CACHE_DIR": str(jax_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    _run("gvc_jax.encode", [video, "-o", str(tmp_path / "a.gvc"), *FAST, "--no-compile-cache"], cache, jax_env)
    assert _entries(cache) == [] and os.listdir(jax_dir) == []
    # the environment switch: a process that loads a model through the library (which turns the cache on
    # unless it is off) and compiles a program leaves both caches empty too
    probe = ("import jax, jax.numpy as jnp; from gvc_jax import api; api.get_model('preset:tiny'); "
             "jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(7)).block_until_ready(); "
             "print(jax.config.jax_enable_compilation_cache)")
    assert _run("-c", [probe], cache, {**jax_env, "GVC_JAX_NO_COMPILE_CACHE": "1"}).stdout.split() == ["False"]
    assert _entries(cache) == [] and os.listdir(jax_dir) == []
    assert _run("-c", [probe], cache, jax_env).stdout.split() == ["True"]  # the probe can see a cache: it is on
    assert os.listdir(jax_dir) != []  # JAX's own directory is respected and used when the switch is off


def test_a_directory_others_can_write_to_is_refused(tmp_path):
    """The cache holds executables JAX loads without checks: only a 0700 directory of this user."""
    shared = tmp_path / "xla"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert compile_cache._safe_dir(str(shared)) == "others can write to it"
    os.chmod(shared, 0o700)
    assert compile_cache._safe_dir(str(shared)) is None
    (tmp_path / "file").write_text("x")
    assert compile_cache._safe_dir(str(tmp_path / "file")) is not None
    fresh = tmp_path / "new" / "xla"
    assert compile_cache._safe_dir(str(fresh)) is None and oct(os.stat(fresh).st_mode & 0o777) == "0o700"
