import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One XLA compilation cache for the whole session, shared by every test, every pytest-xdist worker
# and every subprocess the tests start (CLI runs, the 4-device worker, jax.distributed processes):
# many tests compile the same tiny programs, and the cache only skips recompiling identical HLO
# (the results are those of the same compiled code). A fresh directory per session, removed at
# the end, so nothing carries over between runs; set JAX_COMPILATION_CACHE_DIR to choose another.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="gvc-jax-tests-xla-")
    atexit.register(shutil.rmtree, _cache, True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import functools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import gvc_jax  # noqa: E402,F401  (sets XLA flags before jax)
from gvc_jax.codec.sampling.schedule import SamplerConfig  # noqa: E402

# ----------------------------------------------------------------------------- shared settings
# Tests compare exact bytes against streams coded with these settings (and against each other
# across processes): change one and every stream changes.

GOP = 9
# the anchored variants, the batch and the topology matrix (tiny-anchored; tiny for T2V)
SAMPLER = SamplerConfig(steps=4, tail=1, g_scale=3.0, shift=3.0, K=256, atoms_per_frame=(3, 3, 6), seed=5)
# end-to-end T2V (test_pipeline: the picks of the v1 stream in tests/data were made with it)
T2V_SAMPLER = SamplerConfig(steps=5, tail=2, g_scale=3.0, shift=3.0, K=512, atoms_per_frame=(3, 5, 4), seed=11)
# two GOPs of 5 frames (2 latent frames), with an x0-cache step (test_execution)
SHORT_SAMPLER = SamplerConfig(steps=4, tail=1, g_scale=3.0, shift=3.0, K=256, atoms_per_frame=(4, 4), seed=1,
                              x0_cache=(2,))

# "fast CLI": the codec flags of a quick command-line encode (9-frame GOPs, 4 steps; K and steps those of
# SAMPLER, so on a 52x36 or 56x40 clip these encodes run the topology matrix's compiled programs)
FAST_ANCHORED = ["-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames", "9"]
FAST_CODEC = [*FAST_ANCHORED, "--quiet"]
FAST_T2V = ["--model", "preset:tiny", *FAST_CODEC]
FAST_I2V = ["--model", "preset:tiny-anchored", *FAST_ANCHORED, "--variant", "i2v", "--anchor-codec", "webp", "--quiet"]


def step_progress_env() -> dict:
    """The environment of a command-line run whose progress bar shows each sampling step
    (``GVC_JAX_STEP_PROGRESS=1``: the trajectory is compiled with its step callback, which JAX never
    caches; the other programs still come from the suite's compilation cache)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "GVC_JAX_STEP_PROGRESS": "1"}


def wait_for_stderr(proc, needle: bytes, timeout: float = 600) -> bytes:
    """Read ``proc``'s stderr until ``needle`` appears (a progress bar reached a sampling step); the
    process ending first is a failure, and ``timeout`` is a hang guard, not a timing (seconds are
    needed, minutes on a loaded machine). -> what was read."""
    import time

    seen, deadline = b"", time.monotonic() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    while needle not in seen:
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {needle!r}: {seen[-500:]!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"hung: no {needle!r} after {timeout} s: {seen[-500:]!r}")
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    return seen


def slow_t2v(steps: int) -> list:
    """The flags of a T2V encode slow enough to interrupt (``steps`` sampling steps per GOP)."""
    return ["--model", "preset:tiny", "-K", "512", "-M", "3", "--steps", str(steps), "--tail", "1", "--gop-frames", "9"]


@functools.lru_cache(maxsize=None)
def preset(name: str):
    """``init_preset(name)``, initialised once per process and shared (tests must not alter it:
    a test that changes weights makes its own with ``init_preset``)."""
    from gvc_jax.models.registry import init_preset

    return init_preset(name)


def model_for(variant: str):
    return preset("tiny" if variant == "t2v" else "tiny-anchored")


def variant_for(name: str):
    """The variant objects of the matrix and the batch tests (WebP anchors, quality 60)."""
    from gvc_jax.codec.gop.variants import FLF2V, I2V

    return {"t2v": "t2v", "flf2v": FLF2V(anchor_codec="webp", anchor_quality=60),
            "i2v": I2V(anchor_codec="webp", anchor_quality=60, residual_step=0.25)}[name]


@functools.lru_cache(maxsize=None)
def bikes(width: int, height: int, frames: int) -> np.ndarray:
    """The sample clip resized (read-only: tests slice it, never write into it)."""
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    video = read_video(sample_clip_path("bikes"), resize=(width, height), max_frames=frames)[0]
    video.flags.writeable = False
    return video


def matrix_video() -> np.ndarray:
    """The topology matrix's clip: 27 frames of 56x40 (padded to 64x48)."""
    return bikes(56, 40, 27)


def ramp_video(seed: int, frames: int) -> np.ndarray:
    """Random 52x36 noise brightening by 3 levels a frame (the CLI tests' clips)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (1, 36, 52, 3)) + 3 * np.arange(frames)[:, None, None, None],
                   0, 255).astype(np.uint8)


def noise_video(seed: int, frames: int, width: int = 48, height: int = 32) -> np.ndarray:
    """Uniform noise, 48x32 by default (the interrupted-encode tests' clips)."""
    return np.random.default_rng(seed).integers(0, 255, (frames, height, width, 3)).astype(np.uint8)


def run_within(seconds: float, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with a hang guard, not a timing: it fails only when ``fn`` has not
    finished at all after ``seconds`` (give 10x what it needs on a loaded machine); otherwise it
    returns what ``fn`` returned or raises what it raised. Timings belong in benchmarks."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {seconds} s (hung)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def within():
    """``within(seconds, fn, *args)``: ``run_within`` (a hang guard)."""
    return run_within


@pytest.fixture(scope="session")
def tiny():
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_anchored():
    return preset("tiny-anchored")


@pytest.fixture(scope="session")
def default_model():
    from gvc_jax.models.registry import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def video_file(tmp_path_factory):
    """``video_file(kind, seed, frames, fps)``: a ``.npy`` clip of ``ramp_video`` or ``noise_video``,
    written once per session."""
    from gvc_jax.io.video_writer import write_video

    made: dict = {}

    def make(kind: str, seed: int, frames: int, fps: float) -> str:
        key = (kind, seed, frames, fps)
        if key not in made:
            path = str(tmp_path_factory.mktemp("clip") / "in.npy")
            write_video(path, {"ramp": ramp_video, "noise": noise_video}[kind](seed, frames), fps)
            made[key] = path
        return made[key]
    return make


@pytest.fixture(scope="session")
def clip(video_file):
    """11 frames of 52x36 at 20 fps (two 9-frame GOPs): the command-line tests' clip."""
    return video_file("ramp", 3, 11, 20.0)


@pytest.fixture(scope="session")
def clip25(video_file):
    """25 frames of 52x36 at 20 fps: three GOPs of 9 frames (T2V) or of 9 frames every 8 (FLF2V, I2V)."""
    return video_file("ramp", 7, 25, 20.0)

# Files in decreasing order of their cost (CPU seconds on the 2-core CI machine, measured per
# file), so that with ``-n 2 --dist loadfile --no-loadscope-reorder`` (make test) the two workers
# start on the longest ones and the short ones fill in at the end, where they balance the two
# workers instead of one long file running alone. The multi-process files come first: their
# processes overlap the other worker's work. A file not listed (a new one) goes after the listed
# heavy ones and before the quick ones; the order inside each file is kept.
LONGEST_FIRST = (
    "test_topology.py",  # the 36-cell matrix: a 4-device worker run and a 2-process one (~5-6 min alone)
    "test_train_default.py", "test_distributed.py",  # 70-100 s each
    "test_codebooks.py", "test_release.py", "test_cli.py", "test_device_check.py", "test_warm_start.py",  # 60-110 s
    "test_pipeline.py", "test_planner.py", "test_mr_trajectory.py", "test_multires.py", "test_hostile_models.py",
    "test_resume.py", "test_vae.py", "test_signals.py", "test_notebook.py", "test_convert.py", "test_trajectory.py",
    "test_dit.py",
    "test_batch.py", "test_harness.py", "test_evaluation.py", "test_hostile_journal.py", "test_bitstream.py",
    "test_execution.py", "test_default_model.py", "test_golden_streams.py", "test_api.py",  # 15-70 s
)
QUICK_LAST = (  # under ~12 s each, shortest last
    "test_umt5.py", "test_rate.py", "test_hostile_streams.py", "test_io.py", "test_dists.py", "test_variants.py",
    "test_clip.py", "test_hostile_payloads.py", "test_metrics.py", "test_anchors.py", "test_datasets.py",
    "test_schedule_sde.py", "test_residual.py", "test_ranks.py", "test_hostile_cache.py", "test_parallel.py",
    "test_plan.py",
)


def file_rank(name: str) -> int:
    if name in LONGEST_FIRST:
        return LONGEST_FIRST.index(name)
    if name in QUICK_LAST:
        return len(LONGEST_FIRST) + 1 + QUICK_LAST.index(name)
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: file_rank(os.path.basename(str(item.fspath))))  # stable
