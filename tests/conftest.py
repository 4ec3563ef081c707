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

import gvc_jax  # noqa: E402,F401  (sets XLA flags before jax)

# Files in decreasing order of their cost (CPU seconds on the 2-core CI machine, measured per
# file), so that with ``-n 2 --dist loadfile --no-loadscope-reorder`` (make test) the two workers
# start on the longest ones and the short ones fill in at the end, where they balance the two
# workers instead of one long file running alone. The multi-process files come first: their
# processes overlap the other worker's work. A file not listed (a new one) goes after the listed
# heavy ones and before the quick ones; the order inside each file is kept.
LONGEST_FIRST = (
    "test_distributed.py", "test_parallel.py", "test_train_default.py",  # 110-250 s each
    "test_release.py", "test_codebooks.py", "test_cli.py", "test_pipeline.py", "test_hostile_models.py",
    "test_resume.py", "test_vae.py", "test_signals.py", "test_notebook.py", "test_convert.py",
    "test_trajectory.py", "test_dit.py", "test_batch.py", "test_harness.py", "test_evaluation.py",
    "test_hostile_journal.py", "test_bitstream.py", "test_execution.py", "test_default_model.py",  # 15-70 s
)
QUICK_LAST = (  # under ~12 s each, shortest last
    "test_umt5.py", "test_rate.py", "test_hostile_streams.py", "test_io.py", "test_dists.py", "test_variants.py",
    "test_clip.py", "test_hostile_payloads.py", "test_metrics.py", "test_anchors.py", "test_datasets.py",
    "test_schedule_sde.py", "test_residual.py", "test_ranks.py", "test_hostile_cache.py", "test_plan.py",
)


def file_rank(name: str) -> int:
    if name in LONGEST_FIRST:
        return LONGEST_FIRST.index(name)
    if name in QUICK_LAST:
        return len(LONGEST_FIRST) + 1 + QUICK_LAST.index(name)
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: file_rank(os.path.basename(str(item.fspath))))  # stable
