"""Process environment set before JAX is imported: deterministic GPU ops, threefry PRNG.

Every entry point imports ``gvc_jax`` first, which imports this module (PORTING.md §6).
"""
import os

_FLAG = "--xla_gpu_deterministic_ops=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()


def check_prng() -> None:
    """Refuse PRNG implementations that are not backend-invariant (rbg, unsafe_rbg)."""
    import jax

    impl = str(jax.config.jax_default_prng_impl)
    if "rbg" in impl:
        raise RuntimeError(f"gvc-jax needs the threefry2x32 PRNG, not {impl!r} (set JAX_DEFAULT_PRNG_IMPL=threefry2x32)")
