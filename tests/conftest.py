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

# The longest files first, so that with ``-n 2 --dist loadfile`` (make test) they start at once and
# the short files fill in around them instead of one long file running alone at the end.
LONGEST_FIRST = ("test_distributed.py", "test_train_default.py", "test_parallel.py", "test_notebook.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the order inside each file and among the others is kept
