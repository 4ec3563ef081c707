"""Checkpoint conversion pipelines: diffusers layout or original Wan layout -> converted model dir.

Both layouts end in the same diffusers -> Flax step (``convert_dit`` / ``convert_vae``): the
original layout is first renamed to diffusers keys with the regex rules in ``rules.py``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Mapping, Optional

from gvc_jax.models import dit as dit_lib
from gvc_jax.models import vae as vae_lib
from gvc_jax.models.checkpoint import CheckpointError, abstract_model, dit_factory, vae_factory
from gvc_jax.models.configs import DiTConfig, ModelConfig, VAEConfig, get_preset
from weights_convert import rules
from weights_convert.model_writer import check_output_dir, param_count, save_model
from weights_convert.sources import LazyTensor, read_checkpoint, read_json_object, read_safetensors, renamed
from weights_convert.to_flax import convert_state, convert_state_parts, torch_to_flax

DTYPES = ("float32", "bfloat16")
MAX_CONFIG_BYTES = 16 << 20  # a config.json (a few kB)
Progress = Optional[Callable[[Iterable], Iterable]]


def _dit_key_to_path(key: str) -> tuple:
    return dit_lib.diffusers_key_to_path(key)


def _vae_key_to_path(key: str) -> tuple:
    return vae_lib.diffusers_key_to_path(key)


def convert_dit(source: Mapping[str, LazyTensor], cfg: DiTConfig, *, progress: Progress = None, device=None):
    """diffusers-named DiT tensors -> parameter ``nnx.State`` of ``WanDiT(cfg)`` (stacked if scan_layers)."""
    _, abstract, _ = abstract_model(dit_factory(cfg))
    return convert_state(source, abstract, _dit_key_to_path, torch_to_flax, what="DiT checkpoint",
                         progress=progress, device=device)


def convert_dit_parts(source: Mapping[str, LazyTensor], cfg: DiTConfig, *, part_bytes: int,
                      progress: Progress = None, device=None):
    """``convert_dit`` as an iterator of States of about ``part_bytes`` each (``convert_state_parts``)."""
    _, abstract, _ = abstract_model(dit_factory(cfg))
    return convert_state_parts(source, abstract, _dit_key_to_path, torch_to_flax, part_bytes=part_bytes,
                               what="DiT checkpoint", progress=progress, device=device)


def convert_vae(source: Mapping[str, LazyTensor], cfg: VAEConfig, *, progress: Progress = None, device=None):
    """diffusers-named VAE tensors -> parameter ``nnx.State`` of ``WanVAE(cfg)``."""
    _, abstract, _ = abstract_model(vae_factory(cfg))
    return convert_state(source, abstract, _vae_key_to_path, torch_to_flax, what="VAE checkpoint",
                         progress=progress, device=device)


def _read_json(path: str) -> dict:
    """A JSON object from a regular file of at most 16 MiB (``sources.read_json_object``)."""
    return read_json_object(path, "config file", MAX_CONFIG_BYTES)


def _check_preset(name: Optional[str], dit: DiTConfig, vae: VAEConfig) -> str:
    """The model name; with a preset, the checkpoint configs must equal the preset's."""
    if not name:
        return "custom"
    try:
        preset = get_preset(name)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    exec_opts = dict(param_dtype=dit.param_dtype, dtype=dit.dtype, scan_layers=dit.scan_layers, remat=dit.remat)
    diffs = [f"dit.{f.name}: checkpoint {getattr(dit, f.name)!r}, preset {getattr(preset.dit, f.name)!r}"
             for f in dataclasses.fields(DiTConfig)
             if getattr(dit, f.name) != getattr(preset.dit.replace(**exec_opts), f.name)]
    diffs += [f"vae.{f.name}: checkpoint {getattr(vae, f.name)!r}, preset {getattr(preset.vae, f.name)!r}"
              for f in dataclasses.fields(VAEConfig)
              if f.name != "param_dtype" and getattr(vae, f.name) != getattr(preset.vae, f.name)]
    if diffs:
        raise CheckpointError(f"checkpoint config differs from preset {name!r}: " + "; ".join(diffs))
    return name


def _finish(out_dir, name, dit_cfg, vae_cfg, dit_state, vae_state, source, overwrite) -> dict:
    try:
        config = ModelConfig(name, dit_cfg, vae_cfg)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    fp = save_model(out_dir, config, dit_state, vae_state, source=source, overwrite=overwrite)
    return {"out": os.path.abspath(out_dir), "name": name, "fingerprint": fp,
            "params": {"dit": param_count(dit_state), "vae": param_count(vae_state)}}


def convert_diffusers(transformer_dir: str, vae_dir: str, out_dir: str, *, dtype: str = "float32",
                      vae_dtype: str = "float32", preset: Optional[str] = None, overwrite: bool = False,
                      progress: Progress = None) -> dict:
    """Convert a diffusers ``transformer/`` + ``vae/`` pair (config.json + safetensors, single or
    sharded) to a model directory. Returns a summary {out, name, fingerprint, params}."""
    check_output_dir(out_dir, overwrite)
    tcfg = _read_json(os.path.join(transformer_dir, "config.json"))
    vcfg = _read_json(os.path.join(vae_dir, "config.json"))
    if vcfg.get("is_residual") or vcfg.get("patch_size"):
        raise CheckpointError(f"{vae_dir}: this is a Wan2.2-style VAE (is_residual/patch_size); "
                              "only the Wan2.1 VAE is supported")
    try:
        dit_cfg = DiTConfig.from_diffusers(tcfg, param_dtype=dtype)
        vae_cfg = VAEConfig.from_diffusers(vcfg, param_dtype=vae_dtype)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"unsupported diffusers config ({transformer_dir}, {vae_dir}): {e}") from None
    name = _check_preset(preset, dit_cfg, vae_cfg)
    dit_src = read_safetensors(transformer_dir)
    vae_src = read_safetensors(vae_dir)
    dit_state = convert_dit(dit_src, dit_cfg, progress=progress)
    vae_state = convert_vae(vae_src, vae_cfg, progress=progress)
    source = {"layout": "diffusers", "transformer": os.path.abspath(transformer_dir),
              "vae": os.path.abspath(vae_dir), "transformer_config": tcfg, "vae_config": vcfg}
    return _finish(out_dir, name, dit_cfg, vae_cfg, dit_state, vae_state, source, overwrite)


def original_sources(dit_path: str, vae_path: str, config: ModelConfig):
    """Original-layout DiT + VAE checkpoints renamed to diffusers keys: (dit_source, vae_source)."""
    dit_raw = read_checkpoint(dit_path)
    vae_raw = read_checkpoint(vae_path)
    dit_src = renamed(dit_raw, rules.rename_dit(dit_raw, config.dit))
    vae_src = renamed(vae_raw, rules.rename_vae(vae_raw, config.vae))
    return dit_src, vae_src


def convert_original(dit_path: str, vae_path: str, preset: str, out_dir: str, *, dtype: str = "float32",
                     vae_dtype: str = "float32", overwrite: bool = False, progress: Progress = None) -> dict:
    """Convert original Wan2.1 checkpoints (DiT safetensors file/dir, ``Wan2.1_VAE.pth``) for a preset."""
    check_output_dir(out_dir, overwrite)
    try:
        config = get_preset(preset)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    dit_cfg = config.dit.replace(param_dtype=dtype)
    vae_cfg = config.vae.replace(param_dtype=vae_dtype)
    dit_src, vae_src = original_sources(dit_path, vae_path, config)
    dit_state = convert_dit(dit_src, dit_cfg, progress=progress)
    vae_state = convert_vae(vae_src, vae_cfg, progress=progress)
    source = {"layout": "original", "dit": os.path.abspath(dit_path), "vae": os.path.abspath(vae_path),
              "preset": preset}
    return _finish(out_dir, preset, dit_cfg, vae_cfg, dit_state, vae_state, source, overwrite)
