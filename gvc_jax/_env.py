"""Process environment set before JAX is imported: deterministic GPU ops.

Every entry point imports ``gvc_jax`` first, which imports this module, so the flag is in
``XLA_FLAGS`` before the XLA backend starts (docs/method_notes.md §Determinism). The PRNG needs no
process setting: every key the codec derives names its implementation (threefry2x32) explicitly.
"""
import os

_FLAG = "--xla_gpu_deterministic_ops=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
