"""Resolve the ``--model`` argument to a ready model: a converted checkpoint directory, the
embedded default model, or a randomly initialised preset (``preset:NAME``, for tests).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

from gvc_jax.models.attention import check_implementation
from gvc_jax.models.checkpoint import abstract_model, dit_factory, fingerprint, load_model
from gvc_jax.models.configs import ModelConfig, get_preset
from gvc_jax.models.dit import WanDiT
from gvc_jax.models.vae import Conv3d, WanVAE

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
    image_encoder: Optional["nnx.Module"] = None  # CLIP vision tower (models.clip), for DiTs with an image branch
    text_encoder: Optional[dict] = None           # the manifest entry of the umT5 encoder (loaded for a prompt)


def _empty_context(config: ModelConfig, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """The empty-prompt text context [text_len, text_dim]: ``rows`` (a converted model's
    ``context.npy``, [n <= text_len, text_dim], read and checked by ``checkpoint.read_context``)
    zero-padded, or zeros.

    Wan's umT5 embedding of the empty prompt is one non-zero row followed by zero padding.
    """
    cfg = config.dit
    ctx = np.zeros((cfg.text_len, cfg.text_dim), np.float32)
    if rows is not None:
        rows = np.asarray(rows, np.float32)
        if rows.ndim != 2 or rows.shape[1] != cfg.text_dim or rows.shape[0] > cfg.text_len:
            raise ValueError(f"context.npy has shape {rows.shape}, expected [<= {cfg.text_len}, {cfg.text_dim}]")
        ctx[: rows.shape[0]] = rows
    return ctx


def init_preset(name: str, seed: int = 0) -> CodecModel:
    """A preset with deterministic random weights (no checkpoint): for tests and plumbing checks."""
    config = get_preset(name)
    dit = WanDiT(config.dit, rngs=nnx.Rngs(seed))
    vae = WanVAE(config.vae, rngs=nnx.Rngs(seed + 1))
    fp = fingerprint(nnx.state(dit, nnx.Param), nnx.state(vae, nnx.Param))
    return CodecModel(f"preset:{name}", config, dit, vae, fp, _empty_context(config, None))


def load_checkpoint(path: str, dit_sharding=None) -> CodecModel:
    """A converted model directory (relative or absolute: the model's ``path`` is absolute, so a
    later read of its text encoder does not depend on the working directory);
    ``dit_sharding(shape)``: read the DiT straight onto its shards."""
    loaded = load_model(path, dit_sharding=dit_sharding)
    return CodecModel(loaded.config.name, loaded.config, loaded.dit, loaded.vae, loaded.fingerprint,
                      _empty_context(loaded.config, loaded.context), loaded.path, loaded.image_encoder,
                      loaded.text_encoder)


DTYPES = ("auto", "float32", "bfloat16")


def compute_dtype(dtype: str = "auto", backend: Optional[str] = None) -> str:
    """``auto``: bfloat16 on accelerators (GPU / TPU), float32 on CPU; else ``dtype`` itself."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


VAE_CONVS = ("exact", "fast")


def vae_conv_path(model: CodecModel) -> str:
    """How ``model``'s VAE runs its 3D convs: ``exact`` (XLA's 3D conv) or ``fast`` (``vae.Conv3d``)."""
    fast = any(m.fast for _, m in nnx.iter_modules(model.vae) if isinstance(m, Conv3d))
    return "fast" if fast else "exact"


def execution_settings(model: CodecModel) -> tuple:
    """How ``model`` runs (``with_execution``'s settings): what else, besides the weights, decides its bytes."""
    dit = model.config.dit
    return (dit.dtype, dit.param_dtype, dit.attention, vae_conv_path(model))


def _with_vae_convs(model: CodecModel, convs: str) -> CodecModel:
    if convs not in VAE_CONVS:
        raise ValueError(f"vae_convs must be one of {', '.join(VAE_CONVS)}, got {convs!r}")
    if vae_conv_path(model) == convs:
        return model
    vae = nnx.clone(model.vae)  # new modules and parameter objects on the same arrays: ``model`` is untouched
    assert isinstance(vae, WanVAE)
    return dataclasses.replace(model, vae=vae.set_fast_convs(convs == "fast"))


def with_execution(model: CodecModel, *, dtype: Optional[str] = None, attention: Optional[str] = None,
                   vae_convs: Optional[str] = None) -> CodecModel:
    """The same model (same weights, same fingerprint) with its DiT's weights and matmuls in
    ``dtype`` (``auto``: see ``compute_dtype``; norms, modulation, RoPE and the head stay fp32),
    attention implementation ``attention`` (``models.attention``) and its VAE's 3D convs ``exact``
    or ``fast`` (``vae_convs``: ``vae.Conv3d``; about 4.5x faster on CPU, equal up to ~1e-6 but not
    bit for bit). A new model; ``model`` is untouched. Encoder and decoder must use the same
    settings to reproduce each other exactly."""
    if vae_convs is not None:
        model = _with_vae_convs(model, vae_convs)
    cfg = model.config.dit
    changes: dict[str, Any] = {}
    if dtype is not None:
        d = compute_dtype(dtype)
        changes.update(dtype=d, param_dtype=d)
    if attention is not None:
        changes["attention"] = check_implementation(attention)
    new_cfg = cfg.replace(**changes)
    if new_cfg == cfg:
        return model
    graph, abstract, rest = abstract_model(dit_factory(new_cfg))
    params = jax.tree.map(lambda want, a: a if a.dtype == want.dtype else a.astype(want.dtype),
                          abstract, nnx.state(model.dit, nnx.Param))  # the new layout's dtype, leaf by leaf
    dit = nnx.merge(graph, params, rest)
    config = dataclasses.replace(model.config, dit=new_cfg)
    return dataclasses.replace(model, config=config, dit=dit)


def resolve_model(spec: Optional[str] = None, *, quiet: bool = False, dit_sharding=None) -> CodecModel:
    """``None`` -> embedded default model (or the random ``tiny`` preset with a notice if none is
    shipped yet); ``preset:NAME`` -> random preset; anything else -> a converted checkpoint dir
    (``dit_sharding``: as ``load_checkpoint``)."""
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
    return load_checkpoint(spec, dit_sharding)
