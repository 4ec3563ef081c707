"""umT5 text encoder checkpoints -> ``gvc_jax.models.umt5.UMT5Encoder`` parameters.

Two layouts:

- ``hf``: a transformers ``UMT5EncoderModel`` state dict (the diffusers releases' ``text_encoder/``:
  ``config.json`` + safetensors; ``read_umt5_hf``).
- ``original``: Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (``wan/modules/t5.py`` names, e.g.
  ``blocks.3.attn.q.weight``), renamed to the transformers names by ``UMT5_RULES``.

Conversion is strict (``weights_convert.to_flax.convert_state``): a missing, unused or misshapen
key raises ``CheckpointError`` naming it. The tied embedding may come as ``shared.weight``,
``encoder.embed_tokens.weight`` or both (then ``shared.weight`` is used; the two must have the same
shape). Linear weights are transposed to Flax ``kernel`` [in, out]; embedding tables (token
embedding, relative-attention bias [buckets, heads]) are copied as they are.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
from flax import nnx

from gvc_jax.models.checkpoint import CheckpointError, abstract_model, path_str
from gvc_jax.models.umt5 import UMT5Config, UMT5Encoder, hf_key_to_path, is_embedding_key
from weights_convert.convert import _read_json
from weights_convert.rules import Rule, rename_keys
from weights_convert.sources import LazyTensor, read_checkpoint, read_safetensors, renamed
from weights_convert.to_flax import convert_state, torch_to_flax

LAYOUTS = ("hf", "original")
_FFN = {"gate.0": "wi_0", "fc1": "wi_1", "fc2": "wo"}

# Wan (wan/modules/t5.py: T5Encoder, shared_pos=False) -> transformers UMT5EncoderModel.
UMT5_RULES = (
    Rule(r"token_embedding\.weight", "shared.weight"),
    Rule(r"blocks\.(\d+)\.norm1\.weight", r"encoder.block.\1.layer.0.layer_norm.weight"),
    Rule(r"blocks\.(\d+)\.attn\.([qkvo])\.weight", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    Rule(r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
         r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    Rule(r"blocks\.(\d+)\.norm2\.weight", r"encoder.block.\1.layer.1.layer_norm.weight"),
    Rule(r"blocks\.(\d+)\.ffn\.(gate\.0|fc1|fc2)\.weight",
         lambda m: f"encoder.block.{m[1]}.layer.1.DenseReluDense.{_FFN[m[2]]}.weight"),
    Rule(r"norm\.weight", "encoder.final_layer_norm.weight"),
)


def rename_umt5(keys: Iterable[str]) -> Dict[str, str]:
    """{transformers_key: original_key} for Wan's original umT5 encoder checkpoint."""
    return rename_keys(keys, UMT5_RULES, set(), "original umT5 checkpoint")


def original_to_hf(source: Mapping[str, LazyTensor]) -> Dict[str, LazyTensor]:
    """An original-layout source with transformers key names (strict renaming)."""
    return renamed(source, rename_umt5(source))


def expected_keys(cfg: UMT5Config, layout: str = "hf") -> Dict[str, str]:
    """{source key: '/'-joined parameter path} of a complete checkpoint for ``cfg`` in ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    orig = ["token_embedding.weight", "norm.weight"]
    for i in range(cfg.num_layers):
        orig += [f"blocks.{i}.{n}.weight" for n in ("norm1", "attn.q", "attn.k", "attn.v", "attn.o",
                                                     "pos_embedding.embedding", "norm2", "ffn.gate.0",
                                                     "ffn.fc1", "ffn.fc2")]
    hf_to_orig = rename_umt5(orig)
    return {(o if layout == "original" else h): path_str(hf_key_to_path(h)) for h, o in hf_to_orig.items()}


_MISSING = re.compile(r"missing parameter (\S+) \(no source key for it\)")


def _name_missing_keys(err: CheckpointError, cfg: UMT5Config, layout: str) -> CheckpointError:
    """The same error with each missing parameter named by the source key it needs."""
    by_path = {p: k for k, p in expected_keys(cfg, layout).items()}
    msg = _MISSING.sub(lambda m: (f"missing source key {by_path[m[1]]!r} (parameter {m[1]})"
                                  if m[1] in by_path else m[0]), str(err))
    return CheckpointError(msg)


def umt5_transform(key: str, a: np.ndarray, target_shape: Sequence[int]) -> np.ndarray:
    """torch -> Flax layout: embedding tables unchanged, linear weights transposed."""
    if is_embedding_key(key):
        return a
    return torch_to_flax(key, a, target_shape)


def umt5_factory(cfg: UMT5Config) -> Callable[[], UMT5Encoder]:
    return lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0))


def _dedupe_embedding(source: Mapping[str, LazyTensor]) -> Dict[str, LazyTensor]:
    src = dict(source)
    a, b = "shared.weight", "encoder.embed_tokens.weight"
    if a in src and b in src and tuple(src[a].shape) == tuple(src[b].shape):
        del src[b]  # tied copies; with different shapes both stay and the conversion reports them
    return src


def convert_umt5(source: Mapping[str, LazyTensor], cfg: UMT5Config, *, layout: str = "hf",
                 progress: Optional[Callable[[Iterable], Iterable]] = None, device=None):
    """Parameters (``nnx.State``) of ``UMT5Encoder(cfg)`` from ``source`` ({key: LazyTensor}).

    ``layout``: ``"hf"`` (transformers names) or ``"original"`` (Wan's names). Tensors are cast to
    ``cfg.param_dtype``. Raises CheckpointError listing every missing, unused or misshapen key.
    Use ``nnx.merge(graphdef, state)`` with ``abstract_model(umt5_factory(cfg))`` or
    ``load_umt5`` to get a module.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "original":
        source = original_to_hf(source)
    source = _dedupe_embedding(source)
    _, params, _ = abstract_model(umt5_factory(cfg))
    what = f"umT5 encoder checkpoint ({layout} layout)"
    try:
        return convert_state(source, params, hf_key_to_path, umt5_transform, what=what, ignore=None,
                             device=device, progress=progress)
    except CheckpointError as e:
        raise _name_missing_keys(e, cfg, layout) from None


def load_umt5(source: Mapping[str, LazyTensor], cfg: UMT5Config, *, layout: str = "hf",
              progress=None, device=None) -> UMT5Encoder:
    """``convert_umt5`` merged into a ready ``UMT5Encoder`` module."""
    state = convert_umt5(source, cfg, layout=layout, progress=progress, device=device)
    graphdef, _, rest = abstract_model(umt5_factory(cfg))
    return nnx.merge(graphdef, state, rest)


def read_umt5_hf(path: str, **over) -> tuple:
    """(UMT5Config, {key: LazyTensor}) of a transformers ``text_encoder/`` directory
    (``config.json`` + one safetensors file or a sharded index). ``over``: config overrides
    (``param_dtype``, ``dtype``, ``text_len``)."""
    cpath = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"umT5 directory {path} does not exist")
    if not os.path.isfile(cpath):
        raise CheckpointError(f"{path} is not a transformers model directory: config.json is missing")
    d = _read_json(cpath)
    try:
        cfg = UMT5Config.from_hf(d, **over)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cpath}: {e}") from None
    return cfg, read_safetensors(path)


def read_umt5_original(path: str, cfg: UMT5Config) -> Dict[str, LazyTensor]:
    """Wan's original ``.pth`` (or a safetensors copy) as a source with transformers key names,
    ready for ``convert_umt5(..., layout="hf")``. Checks the file's layer count against ``cfg``."""
    source = original_to_hf(read_checkpoint(path))
    layers = {int(k.split(".")[2]) for k in source if k.startswith("encoder.block.")}
    if layers and len(layers) != cfg.num_layers:
        raise CheckpointError(f"{path}: holds {len(layers)} encoder blocks, config has {cfg.num_layers}")
    return source
