"""Per-process record of where XLA compile time goes (``experiments/suite_profile``).

Imported by ``sitecustomize.py`` in every Python process that has this folder on ``PYTHONPATH``: once
``jax`` is imported, a ``jax.monitoring`` listener sums the backend compile seconds per program name
(and the persistent-cache hits); at exit the process appends one JSON line to ``$SUITE_PROFILE_LOG``
(its argv, the test that started it, CPU seconds, the sums). The pytest plugin (``suite_profile.py``)
reads the same sums before and after each test.
"""
from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import time

LOG = os.environ.get("SUITE_PROFILE_LOG", "suite_profile.jsonl")
STARTED = time.time()
TOTALS = {"compile_s": 0.0, "compiles": 0, "cache_hits": 0}
BY_PROGRAM: dict = {}  # program name -> [compiles, seconds]
_installed = False


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if event.endswith("/backend_compile_duration"):
        TOTALS["compile_s"] += seconds
        TOTALS["compiles"] += 1
        entry = BY_PROGRAM.setdefault(str(kwargs.get("fun_name", "?")), [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
    elif event.endswith("/cache_retrieval_time_sec"):
        TOTALS["cache_hits"] += 1


def install() -> None:
    """Register the listener (once; ``jax`` must be importable)."""
    global _installed
    if not _installed:
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(_on_duration)
        _installed = True


def snapshot() -> tuple:
    return dict(TOTALS), {k: list(v) for k, v in BY_PROGRAM.items()}


def top_programs(by_program: dict, n: int = 12) -> list:
    return sorted(([k, v[0], round(v[1], 2)] for k, v in by_program.items() if v[0]), key=lambda r: -r[2])[:n]


def append(record: dict) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def _at_exit() -> None:
    if not _installed:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    append({"kind": "process", "argv": " ".join(sys.argv)[:200], "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
            "wall_s": round(time.time() - STARTED, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            **TOTALS, "programs": top_programs(BY_PROGRAM, 40)})


atexit.register(_at_exit)
