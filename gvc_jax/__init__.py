"""gvc-jax: zero-shot generative video coding with rectified-flow video models (Wan2.1) in JAX."""
from gvc_jax import _env  # noqa: F401  (XLA determinism flags before jax is imported)

__version__ = "0.1.0"


_API = ("CodecOptions", "PRESETS", "encode_full", "get_model")


def __getattr__(name):
    """``from gvc_jax import encode, decode, CodecOptions`` (imported on first use).

    ``gvc_jax.encode`` / ``gvc_jax.decode`` are the command-line modules, made callable as the
    API functions ``gvc_jax.api.encode`` / ``gvc_jax.api.decode``.
    """
    import importlib

    if name in ("encode", "decode"):
        return importlib.import_module(f"gvc_jax.{name}")
    if name in _API:
        return getattr(importlib.import_module("gvc_jax.api"), name)
    raise AttributeError(f"module 'gvc_jax' has no attribute {name!r}")
