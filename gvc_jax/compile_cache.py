"""Warm starts: JAX's persistent compilation cache, on by default, and a clock of compile time.

The command-line tools and the Python API (through ``api.get_model``) call ``ensure()`` before
any program is compiled: compiled XLA programs are then kept under ``$GVC_JAX_CACHE/xla``
(default ``~/.cache/gvc-jax/xla``) and a second run with the same programs loads them instead of
compiling. The cache key is JAX's: the program's HLO (shapes, dtypes, every static argument baked
into it), the compile options, the XLA flags, the backend and device kind, and the jax/jaxlib
versions, so anything that changes a program gets a new entry; a cached program is the same
executable, so streams do not change (tested: a warm encode writes the cold encode's bytes).

Off: ``--no-compile-cache`` on the command line, ``GVC_JAX_NO_COMPILE_CACHE=1``, or
``compile_cache.disable()`` before the first call (JAX's cache is then off for the process, also
a directory set for JAX itself). Otherwise a directory chosen by the user for JAX itself
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is respected and left as it is.

The cache holds executables that JAX loads without further checks, so it is used only when it is
a directory owned by this user and not writable by others (it is created with mode 0700);
otherwise a warning says why and the run compiles as usual.

``clock()``: seconds this process has spent tracing, lowering and compiling programs (or loading
them from the cache), from JAX's monitoring events; the reports' ``compile_s`` is its growth.
"""
from __future__ import annotations

import os
import stat
import threading
import warnings
from typing import Any, Dict, Optional

import jax
import jax.monitoring

ENV_DIR = "GVC_JAX_CACHE"
ENV_OFF = "GVC_JAX_NO_COMPILE_CACHE"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COMPILE_EVENTS = (TRACE_EVENT, "/jax/core/compile/jaxpr_to_mlir_module_duration", COMPILE_EVENT,
                   "/jax/compilation_cache/cache_retrieval_time_sec")

_state: Dict[str, Any] = {"decided": False, "disabled": False, "dir": None}
_lock = threading.Lock()
_seconds = [0.0]


def default_dir() -> str:
    """``$GVC_JAX_CACHE/xla``, default ``~/.cache/gvc-jax/xla``."""
    root = os.environ.get(ENV_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "gvc-jax")
    return os.path.join(root, "xla")


def disable() -> None:
    """No persistent cache for this process (``--no-compile-cache``); call before ``ensure``."""
    _state["disabled"] = True


def _safe_dir(path: str) -> Optional[str]:
    """``path`` created (0700) if missing; -> why it must not be used, or None when it is safe."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as err:
        return f"cannot create it ({err.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return "it belongs to another user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "others can write to it"
    return None


def ensure() -> Optional[str]:
    """Turn the persistent cache on (once per process) unless it is disabled or JAX already has a
    cache directory; -> the directory in use, or None."""
    with _lock:
        if _state["decided"]:
            return _state["dir"]
        _state["decided"] = True
        if _state["disabled"] or os.environ.get(ENV_OFF, "") not in ("", "0"):
            jax.config.update("jax_enable_compilation_cache", False)  # also a directory set for JAX itself
            return None
        current = jax.config.values.get("jax_compilation_cache_dir")
        if current:
            _state["dir"] = current  # the user's own choice for JAX (e.g. JAX_COMPILATION_CACHE_DIR)
            return current
        path = default_dir()
        problem = _safe_dir(path)
        if problem:
            warnings.warn(f"compilation cache {path} not used: {problem}", stacklevel=2)
            return None
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program: warm means warm
        _state["dir"] = path
        return path


def _on_event(name: str, seconds: float, **_kw: Any) -> None:
    if name in _COMPILE_EVENTS:
        _seconds[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)  # type: ignore[arg-type]  # (name, secs, **kw)


class TraceCounter:
    """Counts how often JAX traces functions named ``fun_name`` while it is open (a ``with``
    block): a new trace means a new program (tests check that changing M compiles nothing).
    ``event=COMPILE_EVENT`` counts XLA compilations instead (a program traced once can still be
    compiled again for arguments placed differently; a compilation cache hit is not one)."""

    def __init__(self, fun_name: str, event: str = TRACE_EVENT):
        self.fun_name, self.event, self.count = fun_name, event, 0

    def _on(self, name: str, seconds: float, **kw: Any) -> None:
        if name == self.event and kw.get("fun_name") in (self.fun_name, f"jit({self.fun_name})"):
            self.count += 1

    def __enter__(self) -> "TraceCounter":
        jax.monitoring.register_event_duration_secs_listener(self._on)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on)  # type: ignore[arg-type]


def clock() -> float:
    """Seconds spent preparing programs in this process so far (trace, lower, compile or load)."""
    return _seconds[0]
