"""Resolve the ``--model`` argument to a ready model: a converted checkpoint directory, the
embedded default model, or a randomly initialised preset (``preset:NAME``, for tests).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
from flax import nnx

from gvc_jax.models.configs import ModelConfig, get_preset

ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "default_model")
FALLBACK_PRESET = "tiny"


@dataclass
class CodecModel:
    """A model as the codec uses it."""

    name: str
    config: ModelConfig
    dit: "nnx.Module"
    vae: "nnx.Module"
    fingerprint: str              # sha256 hex over all parameters
    text_context: np.ndarray      # [text_len, text_dim] conditioning text rows (empty prompt)
    path: Optional[str] = None


def _empty_context(config: ModelConfig, path: Optional[str]) -> np.ndarray:
    """The empty-prompt text context: ``context.npy`` next to the checkpoint if present, else zeros.

    Wan's umT5 embedding of the empty prompt is one non-zero row followed by zero padding; a
    converted model may ship it as ``context.npy`` ([n, text_dim], n <= 512), zero-padded here.
    """
    cfg = config.dit
    ctx = np.zeros((cfg.text_len, cfg.text_dim), np.float32)
    if path and os.path.exists(os.path.join(path, "context.npy")):
        rows = np.load(os.path.join(path, "context.npy")).astype(np.float32)
        if rows.ndim != 2 or rows.shape[1] != cfg.text_dim or rows.shape[0] > cfg.text_len:
            raise ValueError(f"context.npy has shape {rows.shape}, expected [<= {cfg.text_len}, {cfg.text_dim}]")
        ctx[: rows.shape[0]] = rows
    return ctx


def init_preset(name: str, seed: int = 0) -> CodecModel:
    """A preset with deterministic random weights (no checkpoint): for tests and plumbing checks."""
    from gvc_jax.models.checkpoint import fingerprint
    from gvc_jax.models.dit import WanDiT
    from gvc_jax.models.vae import WanVAE

    config = get_preset(name)
    dit = WanDiT(config.dit, rngs=nnx.Rngs(seed))
    vae = WanVAE(config.vae, rngs=nnx.Rngs(seed + 1))
    fp = fingerprint(nnx.state(dit, nnx.Param), nnx.state(vae, nnx.Param))
    return CodecModel(f"preset:{name}", config, dit, vae, fp, _empty_context(config, None))


def load_checkpoint(path: str) -> CodecModel:
    from gvc_jax.models.checkpoint import load_model

    loaded = load_model(path)
    return CodecModel(loaded.config.name, loaded.config, loaded.dit, loaded.vae, loaded.fingerprint,
                      _empty_context(loaded.config, path), path)


def resolve_model(spec: Optional[str] = None, *, quiet: bool = False) -> CodecModel:
    """``None`` -> embedded default model (or the random ``tiny`` preset with a notice if none is
    shipped yet); ``preset:NAME`` -> random preset; anything else -> a converted checkpoint dir."""
    if spec is None:
        if os.path.isdir(ASSET_DIR):
            return load_checkpoint(ASSET_DIR)
        if not quiet:
            print(f"notice: no embedded default model is shipped yet; using the randomly initialised "
                  f"'{FALLBACK_PRESET}' preset (exercises the codec, not a meaningful reconstruction)",
                  file=sys.stderr)
        return init_preset(FALLBACK_PRESET)
    if spec.startswith("preset:"):
        return init_preset(spec.split(":", 1)[1])
    return load_checkpoint(spec)
