"""Loaded by every Python process started with ``experiments/suite_profile`` on ``PYTHONPATH``: installs
``compile_events``'s listener as soon as ``jax`` has been imported (a wrapper of ``__import__`` that
steps aside once it has done so). Profiling only: nothing here changes what a program computes."""
import builtins
import sys

import compile_events

_real_import = builtins.__import__


def _import(name, *args, **kwargs):
    module = _real_import(name, *args, **kwargs)
    monitoring = sys.modules.get("jax.monitoring")
    if hasattr(monitoring, "register_event_duration_secs_listener") and not compile_events._installed:
        builtins.__import__ = _real_import
        compile_events.install()
    return module


builtins.__import__ = _import
