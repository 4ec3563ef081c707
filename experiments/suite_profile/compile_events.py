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
        if _programs is not None:
            _programs.compiled(str(kwargs.get("fun_name", "?")), seconds)
    elif event.endswith("/cache_retrieval_time_sec"):
        TOTALS["cache_hits"] += 1


class _ProgramLog:
    """With ``SUITE_PROFILE_PROGRAMS=1``: one JSON line per lowered program (its name, argument shapes
    and persistent-cache key, hit or miss, and the backend compile seconds), so that configurations
    compiled by a single test stand out. Reads JAX's DEBUG log records of the two loggers that carry
    them; those loggers stop propagating DEBUG records (WARNING and above still reach stderr)."""

    def __init__(self):
        import logging

        self.shapes = ""
        self.pending: dict | None = None
        handler = logging.Handler(logging.DEBUG)
        handler.emit = self._record
        for name in ("jax._src.interpreters.pxla", "jax._src.compiler"):
            log = logging.getLogger(name)
            log.setLevel(logging.DEBUG)
            log.propagate = False
            log.addHandler(handler)
            passthrough = logging.Handler(logging.WARNING)
            passthrough.emit = log.parent.handle  # what stderr showed before
            log.addHandler(passthrough)

    def _record(self, record) -> None:
        msg = record.msg
        if msg.startswith("Compiling %s with global shapes"):
            self.shapes = " ".join(str(a) for a in record.args[1])[-400:]  # the lowering about to be compiled
        elif "CACHE MISS" in msg or "cache hit" in msg:
            name, key = record.args
            entry = {"kind": "program", "name": name, "key": key[-16:], "hit": "hit" in msg,
                     "test": os.environ.get("PYTEST_CURRENT_TEST", ""), "pid": os.getpid(),
                     "shapes": self.shapes}
            if entry["hit"]:
                append(entry)
            else:
                self.pending = entry  # its backend compile follows in the same call

    def compiled(self, name: str, seconds: float) -> None:
        entry, self.pending = self.pending, None
        if entry is not None:
            entry["compile_s"] = round(seconds, 3)
            append(entry)


_programs = None


def install() -> None:
    """Register the listener (once; ``jax`` must be importable)."""
    global _installed, _programs
    if not _installed:
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(_on_duration)
        if os.environ.get("SUITE_PROFILE_PROGRAMS"):
            _programs = _ProgramLog()
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
