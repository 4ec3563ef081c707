"""Convert Wan2.1 checkpoints (diffusers layout or original Wan layout) to gvc-jax model directories.

``python -m weights_convert diffusers SRC --out OUT`` / ``python -m weights_convert original ...``;
the library API is ``convert_diffusers`` and ``convert_original`` (see ``convert.py``), the
directory format and its loader live in ``gvc_jax.models.checkpoint``.
"""
from weights_convert.convert import convert_diffusers, convert_dit, convert_original, convert_vae  # noqa: F401
