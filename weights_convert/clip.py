"""CLIP image-encoder checkpoints -> parameter ``nnx.State`` of ``gvc_jax.models.clip.CLIPVisionTower``.

Two layouts:

- ``"hf"``: a transformers ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` state dict (the
  ``image_encoder/`` of the diffusers Wan I2V / FLF2V releases; keys with or without the
  ``vision_model.`` prefix). Read with ``read_clip_hf(dir)``.
- ``"original"``: Wan2.1's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (open-clip
  names, ``wan/modules/clip.py``). Renamed to transformers names with strict regex rules
  (``ORIGINAL_RULES``, ``rules.rename_keys``); the fused ``attn.to_qkv`` [3*D, D] is split into
  three lazy q / k / v tensors (rows 0:D, D:2D, 2D:3D, as ``view(b, s, 3, n, d)`` in Wan).

Keys deliberately not used are skipped by explicit patterns (``hf_skip_pattern`` /
``original_skip_pattern``), never silently: the last encoder layer (Wan uses the output of block
``N - 1``), the post LayerNorm, the projection / head; for the original file also everything
outside ``visual.`` (the XLM-RoBERTa text tower and ``log_scale``). Any other unknown key, any
missing key and any shape mismatch raises ``CheckpointError`` naming the key.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
from flax import nnx

from gvc_jax.models.checkpoint import CheckpointError, abstract_model, raise_problems
from gvc_jax.models.clip import CLIPVisionConfig, hf_key_to_path, hf_keys, tower_factory
from weights_convert.convert import _read_json
from weights_convert.rules import Rule, rename_keys
from weights_convert.sources import LazyTensor, read_checkpoint, read_safetensors, renamed
from weights_convert.to_flax import convert_state, torch_to_flax

Progress = Optional[Callable[[Iterable], Iterable]]
LAYOUTS = ("hf", "original")
_HF_PREFIX = "vision_model."
_WB = r"(weight|bias)"


# ----------------------------------------------------------------------------- skip patterns

def hf_skip_pattern(cfg: CLIPVisionConfig) -> re.Pattern:
    """transformers keys not used: the last encoder layer (index N-1), ``post_layernorm``,
    ``visual_projection`` (WithProjection) and the non-learned ``embeddings.position_ids`` buffer
    that transformers 4.x files may hold."""
    last = cfg.num_hidden_layers - 1
    return re.compile(
        rf"^(?:(?:vision_model\.)?(?:encoder\.layers\.{last}\.(?:self_attn\.(?:q|k|v|out)_proj|layer_norm[12]"
        rf"|mlp\.fc[12])\.{_WB}|post_layernorm\.{_WB}|embeddings\.position_ids)|visual_projection\.weight)$")


def original_skip_pattern(cfg: CLIPVisionConfig) -> re.Pattern:
    """Original Wan keys not used: everything outside ``visual.`` (``textual.*``, ``log_scale``),
    ``visual.post_norm.*``, ``visual.head`` (pool 'token' projection) and the last block
    ``visual.transformer.{N-1}.*``."""
    last = cfg.num_hidden_layers - 1
    return re.compile(rf"^(?:(?!visual\.).*|visual\.post_norm\.{_WB}|visual\.head(?:\.{_WB})?"
                      rf"|visual\.transformer\.{last}\..+)$")


# ----------------------------------------------------------------------------- original names

_QKV = "self_attn.qkv_fused"  # intermediate name of the fused projection, split before conversion
ORIGINAL_RULES = (
    Rule(r"visual\.patch_embedding\.weight", "embeddings.patch_embedding.weight"),
    Rule(r"visual\.cls_embedding", "embeddings.class_embedding"),
    Rule(r"visual\.pos_embedding", "embeddings.position_embedding.weight"),
    Rule(rf"visual\.pre_norm\.{_WB}", r"pre_layrnorm.\1"),
    Rule(rf"visual\.transformer\.(\d+)\.norm1\.{_WB}", r"encoder.layers.\1.layer_norm1.\2"),
    Rule(rf"visual\.transformer\.(\d+)\.norm2\.{_WB}", r"encoder.layers.\1.layer_norm2.\2"),
    Rule(rf"visual\.transformer\.(\d+)\.attn\.to_qkv\.{_WB}", rf"encoder.layers.\1.{_QKV}.\2"),
    Rule(rf"visual\.transformer\.(\d+)\.attn\.proj\.{_WB}", r"encoder.layers.\1.self_attn.out_proj.\2"),
    Rule(rf"visual\.transformer\.(\d+)\.mlp\.0\.{_WB}", r"encoder.layers.\1.mlp.fc1.\2"),
    Rule(rf"visual\.transformer\.(\d+)\.mlp\.2\.{_WB}", r"encoder.layers.\1.mlp.fc2.\2"),
)


def original_keys(cfg: CLIPVisionConfig) -> list:
    """The original Wan keys the tower needs, in order."""
    keys = ["visual.patch_embedding.weight", "visual.cls_embedding", "visual.pos_embedding",
            "visual.pre_norm.weight", "visual.pre_norm.bias"]
    for i in range(cfg.num_built_layers):
        for mod in ("norm1", "attn.to_qkv", "attn.proj", "norm2", "mlp.0", "mlp.2"):
            keys += [f"visual.transformer.{i}.{mod}.weight", f"visual.transformer.{i}.{mod}.bias"]
    return keys


def _rows(t: LazyTensor, j: int, n: int) -> LazyTensor:
    """Rows j*n:(j+1)*n of ``t`` (lazily)."""
    return LazyTensor((n,) + tuple(t.shape[1:]), t.dtype, lambda: t.load()[j * n:(j + 1) * n],
                      origin=f"{t.origin}[{j * n}:{(j + 1) * n}]")


def original_to_hf(source: Mapping[str, LazyTensor],
                   cfg: CLIPVisionConfig) -> Tuple[Dict[str, LazyTensor], Dict[str, str]]:
    """Original-layout tensors -> (transformers-named lazy tensors, {hf_key: original_key}).

    Skips ``original_skip_pattern`` keys, checks every needed key is present, renames with
    ``ORIGINAL_RULES`` (unknown keys fail) and splits each fused ``to_qkv`` into q / k / v."""
    kept = {k: v for k, v in source.items() if not original_skip_pattern(cfg).match(k)}
    raise_problems([f"missing source key {k!r}" for k in original_keys(cfg) if k not in kept],
                   "original CLIP checkpoint")
    mapping = rename_keys(kept, ORIGINAL_RULES, set(), "original CLIP checkpoint")
    fused = re.compile(rf"(encoder\.layers\.\d+)\.{re.escape(_QKV)}\.{_WB}")
    plain = {new: old for new, old in mapping.items() if not fused.fullmatch(new)}
    out, names, problems = renamed(kept, plain), dict(plain), []
    d = cfg.hidden_size
    for new, old in mapping.items():
        m = fused.fullmatch(new)
        if m is None:
            continue
        t = kept[old]
        want = (3 * d, d) if m[2] == "weight" else (3 * d,)
        if tuple(t.shape) != want:
            problems.append(f"shape mismatch for {old!r}: source {tuple(t.shape)}, fused q/k/v needs {want}")
            continue
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            key = f"{m[1]}.self_attn.{proj}.{m[2]}"
            out[key], names[key] = _rows(t, j, d), f"{old}[{j * d}:{(j + 1) * d}]"
    raise_problems(problems, "original CLIP checkpoint")
    return out, names


# ----------------------------------------------------------------------------- conversion

def _transform(key: str, a: np.ndarray, target_shape: Sequence[int]) -> np.ndarray:
    """``torch_to_flax``, except the position table (an ``nn.Embedding`` ``weight`` [P, D], or
    open-clip's [1, P, D]) keeps its axis order."""
    if key.endswith("position_embedding.weight"):
        target_shape = tuple(int(s) for s in target_shape)
        if a.shape != target_shape and [s for s in a.shape if s != 1] == [s for s in target_shape if s != 1]:
            return a.reshape(target_shape)
        return a
    return torch_to_flax(key, a, target_shape)


def _rename_in_message(e: CheckpointError, names: Mapping[str, str]) -> CheckpointError:
    msg = str(e)
    for new, old in sorted(names.items(), key=lambda kv: -len(kv[0])):
        msg = msg.replace(repr(new), repr(old))
    return CheckpointError(msg)


def convert_clip(source: Mapping[str, LazyTensor], cfg: CLIPVisionConfig, *, layout: str = "hf",
                 progress: Progress = None, device=None):
    """Checkpoint tensors -> parameter ``nnx.State`` of ``CLIPVisionTower(cfg)`` (cast to
    ``cfg.param_dtype``; norms and embeddings fp32). ``layout``: "hf" (transformers keys) or
    "original" (Wan's .pth keys). Strict: a missing, unknown or misshapen key raises
    ``CheckpointError`` naming the source key; only the documented skip patterns are ignored."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _, abstract, _ = abstract_model(tower_factory(cfg))
    if layout == "original":
        hf_source, names = original_to_hf(source, cfg)
        try:
            return convert_state(hf_source, abstract, hf_key_to_path, _transform, what="original CLIP checkpoint",
                                 ignore=None, progress=progress, device=device)
        except CheckpointError as e:
            raise _rename_in_message(e, names) from None
    skip = hf_skip_pattern(cfg)
    present = {k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k for k in source if not skip.match(k)}
    prefix = _HF_PREFIX if any(k.startswith(_HF_PREFIX) for k in source) else ""
    raise_problems([f"missing source key {prefix + k!r}" for k in hf_keys(cfg) if k not in present],
                   "CLIP checkpoint")
    return convert_state(source, abstract, hf_key_to_path, _transform, what="CLIP checkpoint", ignore=skip,
                         progress=progress, device=device)


# ----------------------------------------------------------------------------- readers

def read_clip_hf(path: str, preprocess: str = "wan") -> Tuple[CLIPVisionConfig, Dict[str, LazyTensor]]:
    """(config, lazy tensors) of a transformers ``image_encoder/`` directory (config.json and one
    .safetensors file or an index). ``preprocess`` sets ``cfg.preprocess`` (Wan's reference
    resizes without cropping: "wan"; diffusers pipelines crop: "center_crop")."""
    cpath = os.path.join(path, "config.json")
    d = _read_json(cpath)
    try:
        cfg = CLIPVisionConfig.from_hf(d, preprocess=preprocess)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cpath}: {e}") from None
    return cfg, read_safetensors(path)


def read_clip_original(path: str, cfg: CLIPVisionConfig) -> Dict[str, LazyTensor]:
    """Lazy tensors (original Wan names) of ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``;
    convert with ``convert_clip(source, cfg, layout="original")``. Fails early when the file has
    no ``visual.`` tower of ``cfg``'s width."""
    source = read_checkpoint(path)
    pe = source.get("visual.patch_embedding.weight")
    if pe is None:
        raise CheckpointError(f"{path}: no 'visual.patch_embedding.weight' (not a Wan/open-clip CLIP checkpoint)")
    if pe.shape[0] != cfg.hidden_size:
        raise CheckpointError(f"{path}: visual width {pe.shape[0]}, config has hidden_size {cfg.hidden_size}")
    return source


def load_clip_hf(path: str, preprocess: str = "wan", *, dtype: str = "float32", attention: str = "auto"):
    """A ready ``CLIPVisionTower`` from a transformers ``image_encoder/`` directory."""
    cfg, source = read_clip_hf(path, preprocess)
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    graphdef, _, rest = abstract_model(tower_factory(cfg, attention))
    return nnx.merge(graphdef, convert_clip(source, cfg, layout="hf"), rest)


def load_clip_original(path: str, cfg: CLIPVisionConfig, *, attention: str = "auto"):
    """A ready ``CLIPVisionTower`` from Wan's original CLIP ``.pth``."""
    graphdef, _, rest = abstract_model(tower_factory(cfg, attention))
    return nnx.merge(graphdef, convert_clip(read_clip_original(path, cfg), cfg, layout="original"), rest)


__all__ = ["convert_clip", "read_clip_hf", "read_clip_original", "load_clip_hf", "load_clip_original",
           "original_to_hf", "hf_skip_pattern", "original_skip_pattern", "ORIGINAL_RULES", "original_keys"]
