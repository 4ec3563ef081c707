"""gvc-jax: zero-shot generative video coding with rectified-flow video models (Wan2.1) in JAX."""
from gvc_jax import _env  # noqa: F401  (XLA determinism flags before jax is imported)

__version__ = "0.1.0"
