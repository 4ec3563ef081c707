"""One command for a whole Wan2.1 release: DiT, VAE, umT5 + tokenizer and, for I2V / FLF2V, the
CLIP vision tower -> one model directory (``python -m weights_convert release DIR --out OUT``).

Two layouts are recognised:

- **diffusers** (``Wan-AI/Wan2.1-*-Diffusers``): ``transformer/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/tokenizer.json`` and, with an image branch, ``image_encoder/``;
- **original** (``Wan-AI/Wan2.1-*``): ``config.json`` + ``diffusion_pytorch_model*.safetensors``,
  ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/tokenizer.json`` and,
  with an image branch, ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (umT5-XXL and
  ViT-H/14 architectures; the DiT's from ``config.json``).

Every part the release's variant needs is looked for before anything is read: a missing part is
one error line naming it. The components are converted and written one after another
(``checkpoint.ModelWriter``), each released before the next is read; the DiT is read, written and
released in parts of ``part_bytes`` (``dit/part-NNN``), so the peak host memory is about the
largest of a DiT part, the VAE, CLIP and the umT5 encoder (one file of the release, 11 GB in
bf16 for umT5-XXL), not the release. The empty prompt's umT5 rows are computed here and stored
as ``context.npy``.
"""
from __future__ import annotations

import gc
import io
import os
import resource
from dataclasses import dataclass
from typing import Optional

import numpy as np
from flax import nnx

from gvc_jax.models.checkpoint import (
    MAX_TOKENIZER_BYTES,
    CheckpointError,
    abstract_model,
    check_regular_file,
    read_regular,
)
from gvc_jax.models.clip import VIT_H_14
from gvc_jax.models.configs import WAN_VAE, DiTConfig, ModelConfig, VAEConfig
from gvc_jax.models.tokenizer import TextTokenizer
from gvc_jax.models.umt5 import UMT5_XXL, text_context
from weights_convert import rules
from weights_convert.clip import convert_clip, read_clip_hf, read_clip_original
from weights_convert.convert import DTYPES, Progress, _read_json, convert_dit_parts, convert_vae
from weights_convert.model_writer import ModelWriter, check_output_dir
from weights_convert.sources import read_checkpoint, read_safetensors, renamed
from weights_convert.umt5 import convert_umt5, read_umt5_hf, read_umt5_original, umt5_factory

ORIGINAL_FILES = {
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": os.path.join("google", "umt5-xxl", "tokenizer.json"),
    "image_encoder": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
}
PREPROCESS_MODES = ("wan", "center_crop")
PART_BYTES = 1 << 30  # DiT tensors per written part


@dataclass(frozen=True)
class Release:
    """Where each part of a release is (``image_encoder`` only for a DiT with an image branch)."""

    layout: str
    root: str
    dit: str
    dit_config: DiTConfig
    vae: str
    text_encoder: str
    tokenizer: str
    image_encoder: Optional[str]


def _need(path: str, part: str, root: str, isdir: bool = False) -> str:
    if isdir:
        if not os.path.isdir(path):
            raise CheckpointError(f"the release {root} has no {part} ({os.path.relpath(path, root)} is missing)")
        return path
    if not os.path.lexists(path) or os.path.isdir(path):
        raise CheckpointError(f"the release {root} has no {part} ({os.path.relpath(path, root)} is missing)")
    check_regular_file(path, part)  # not a FIFO or a device (also behind a symlink)
    return path


def original_dit_config(cfg: dict, *, param_dtype: str = "float32", source: str = "config.json") -> DiTConfig:
    """An original Wan ``config.json`` (``WanModel``: model_type, dim, num_heads, in_dim, ...) -> DiTConfig;
    every field type- and range-checked (one CheckpointError line naming ``source``)."""
    def num(name, default=None, kind=int):
        v = cfg.get(name, default)
        if v is None:
            raise CheckpointError(f"{source}: not an original Wan DiT config (field {name!r} missing)")
        ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise CheckpointError(f"{source}: field {name!r} must be {'an integer' if kind is int else 'a number'}, "
                                  f"got {str(v)[:40]!r}")
        return v

    model_type = cfg.get("model_type")
    dim, heads = num("dim"), num("num_heads")
    if heads < 1 or dim < 1:
        raise CheckpointError(f"{source}: dim {dim} and num_heads {heads} must be positive")
    kw = dict(num_attention_heads=heads, attention_head_dim=dim // heads, in_channels=num("in_dim"),
              out_channels=num("out_dim"), ffn_dim=num("ffn_dim"), freq_dim=num("freq_dim"),
              num_layers=num("num_layers"), eps=float(num("eps", 1e-6, float)),
              text_len=num("text_len", 512), text_dim=num("text_dim", 4096))
    if model_type not in ("t2v", "i2v", "flf2v"):
        raise CheckpointError(f"{source}: model_type {str(model_type)[:40]!r} is not t2v, i2v or flf2v (Wan2.1)")
    if dim % heads:
        raise CheckpointError(f"{source}: dim {dim} is not a multiple of num_heads {heads}")
    if model_type != "t2v":
        kw.update(image_dim=1280, added_kv_proj_dim=dim)
    if model_type == "flf2v":
        kw.update(pos_embed_seq_len=2 * 257)
    try:
        return DiTConfig(**kw, param_dtype=param_dtype)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def find_release(root: str, *, dtype: str = "float32") -> Release:
    """The parts of the release at ``root`` (either layout), or one CheckpointError naming a missing part."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise CheckpointError(f"release directory {root} does not exist")
    if os.path.isdir(os.path.join(root, "transformer")):
        tdir = os.path.join(root, "transformer")
        _need(os.path.join(tdir, "config.json"), "DiT config", root)
        try:
            dit_cfg = DiTConfig.from_diffusers(_read_json(os.path.join(tdir, "config.json")), param_dtype=dtype)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{os.path.join(tdir, 'config.json')}: unsupported diffusers transformer config: "
                                  f"{e}") from None
        parts = dict(
            vae=_need(os.path.join(root, "vae"), "VAE (vae/)", root, isdir=True),
            text_encoder=_need(os.path.join(root, "text_encoder"), "umT5 text encoder (text_encoder/)", root,
                               isdir=True),
            tokenizer=_need(os.path.join(root, "tokenizer", "tokenizer.json"), "umT5 tokenizer", root))
        image = None
        if dit_cfg.image_dim is not None:
            image = _need(os.path.join(root, "image_encoder"), "CLIP image encoder (image_encoder/), which "
                          f"the {dit_cfg.variant} DiT needs", root, isdir=True)
        return Release("diffusers", root, tdir, dit_cfg, image_encoder=image, **parts)
    if os.path.isfile(os.path.join(root, "config.json")):
        cpath = os.path.join(root, "config.json")
        dit_cfg = original_dit_config(_read_json(cpath), param_dtype=dtype, source=cpath)
        shards = [f for f in os.listdir(root) if f.startswith("diffusion_pytorch_model") and
                  (f.endswith(".safetensors") or f.endswith(".safetensors.index.json"))]
        if not shards:
            raise CheckpointError(f"the release {root} has no DiT weights (diffusion_pytorch_model*.safetensors)")
        parts = {k: _need(os.path.join(root, f), {"vae": "VAE", "text_encoder": "umT5 text encoder",
                                                   "tokenizer": "umT5 tokenizer"}[k], root)
                 for k, f in ORIGINAL_FILES.items() if k != "image_encoder"}
        image = None
        if dit_cfg.image_dim is not None:
            image = _need(os.path.join(root, ORIGINAL_FILES["image_encoder"]),
                          f"CLIP image encoder, which the {dit_cfg.variant} DiT needs", root)
        return Release("original", root, root, dit_cfg, image_encoder=image, **parts)
    raise CheckpointError(f"{root} is not a Wan2.1 release: neither transformer/ (diffusers layout) nor "
                          "config.json (original layout) is there")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def convert_release(root: str, out_dir: str, *, dtype: str = "float32", vae_dtype: str = "float32",
                    encoder_dtype: Optional[str] = None, clip_preprocess: str = "wan", name: Optional[str] = None,
                    overwrite: bool = False, progress: Progress = None, log=None, part_bytes: int = PART_BYTES) -> dict:
    """Convert the release at ``root`` into the model directory ``out_dir``; returns a summary
    {out, name, fingerprint, params, peak_rss_mib, parts}. ``encoder_dtype`` (default ``dtype``) is
    the umT5 / CLIP parameter dtype; ``clip_preprocess``: "wan" (plain resize, the reference) or
    "center_crop" (the diffusers pipelines), recorded in the model."""
    for what, d in (("dtype", dtype), ("vae_dtype", vae_dtype), ("encoder_dtype", encoder_dtype or dtype)):
        if d not in DTYPES:
            raise ValueError(f"{what} must be one of {', '.join(DTYPES)}, got {d!r}")
    if clip_preprocess not in PREPROCESS_MODES:
        raise ValueError(f"clip_preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {clip_preprocess!r}")
    if not isinstance(part_bytes, int) or part_bytes < 1:
        raise ValueError(f"part_bytes must be a positive integer, got {part_bytes!r}")
    check_output_dir(out_dir, overwrite)
    rel = find_release(root, dtype=dtype)
    enc_dtype = encoder_dtype or dtype
    say = log or (lambda msg: None)
    peaks = {}

    # Sources are opened (headers only) before anything is written, so bad files fail early.
    if rel.layout == "diffusers":
        vcfg_json = _read_json(os.path.join(rel.vae, "config.json"))
        if vcfg_json.get("is_residual") or vcfg_json.get("patch_size"):
            raise CheckpointError(f"{rel.vae}: a Wan2.2-style VAE; only the Wan2.1 VAE is supported")
        try:
            vae_cfg = VAEConfig.from_diffusers(vcfg_json, param_dtype=vae_dtype)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{os.path.join(rel.vae, 'config.json')}: unsupported diffusers VAE config: "
                                  f"{e}") from None
        dit_src, vae_src = read_safetensors(rel.dit), read_safetensors(rel.vae)
        t5_cfg, t5_src = read_umt5_hf(rel.text_encoder, param_dtype=enc_dtype, dtype=enc_dtype)
    else:
        vae_cfg = WAN_VAE.replace(param_dtype=vae_dtype)
        dit_raw, vae_raw = read_safetensors(rel.dit), read_checkpoint(rel.vae)
        dit_src = renamed(dit_raw, rules.rename_dit(dit_raw, rel.dit_config))
        vae_src = renamed(vae_raw, rules.rename_vae(vae_raw, vae_cfg))
        t5_cfg = UMT5_XXL.replace(param_dtype=enc_dtype, dtype=enc_dtype)
        t5_src = read_umt5_original(rel.text_encoder, t5_cfg)  # renamed to the transformers keys
    if t5_cfg.d_model != rel.dit_config.text_dim:
        raise CheckpointError(f"the umT5 encoder is {t5_cfg.d_model} wide, the DiT reads {rel.dit_config.text_dim}")
    clip = None
    if rel.image_encoder is not None:
        if rel.layout == "diffusers":
            clip_cfg, clip_src = read_clip_hf(rel.image_encoder, clip_preprocess)
            clip_layout = "hf"
        else:
            clip_cfg = VIT_H_14.replace(preprocess=clip_preprocess)
            clip_src, clip_layout = read_clip_original(rel.image_encoder, clip_cfg), "original"
        clip_cfg = clip_cfg.replace(param_dtype=enc_dtype, dtype=enc_dtype)
        if clip_cfg.hidden_size != rel.dit_config.image_dim:
            raise CheckpointError(f"the CLIP tower is {clip_cfg.hidden_size} wide, the DiT's image branch reads "
                                  f"{rel.dit_config.image_dim}")
        clip = (clip_cfg, clip_src, clip_layout)

    config = ModelConfig(name or os.path.basename(rel.root.rstrip(os.sep)), rel.dit_config, vae_cfg)
    with ModelWriter(out_dir, overwrite=overwrite, image_encoder=clip is not None) as w:
        def write(name, what, state, cfg=None):
            say(what)
            w.add(name, state, cfg)
            gc.collect()
            peaks[name] = _peak_rss_mib()

        write("dit", "DiT", convert_dit_parts(dit_src, rel.dit_config.replace(scan_layers=False),
                                              part_bytes=part_bytes, progress=progress))
        write("vae", "VAE", convert_vae(vae_src, vae_cfg, progress=progress))
        if clip is not None:
            clip_cfg, clip_src, clip_layout = clip
            write("image_encoder", "CLIP image encoder",
                  convert_clip(clip_src, clip_cfg, layout=clip_layout, progress=progress), clip_cfg.to_dict())
        t5_state = convert_umt5(t5_src, t5_cfg, layout="hf", progress=progress)
        context = _empty_prompt_rows(t5_cfg, t5_state, rel.tokenizer)
        write("text_encoder", "umT5 text encoder and the empty prompt's context", t5_state, t5_cfg.to_dict())
        del t5_state
        buf = io.BytesIO()
        np.save(buf, context)
        w.add_file("context.npy", buf.getvalue())
        w.add_file("tokenizer.json", read_regular(rel.tokenizer, "umT5 tokenizer", MAX_TOKENIZER_BYTES))
        source = {"layout": f"release-{rel.layout}", "root": rel.root, "clip_preprocess": clip_preprocess
                  if clip is not None else None}
        fp = w.commit(config, source)
    return {"out": os.path.abspath(out_dir), "name": config.name, "fingerprint": fp, "params": dict(w.params),
            "layout": rel.layout, "variant": rel.dit_config.variant, "peak_rss_mib": peaks,
            "dit_parts": w.extra.get("parts", {}).get("dit", 1)}


def _empty_prompt_rows(t5_cfg, t5_state, tokenizer_path: str) -> np.ndarray:
    """The empty prompt's umT5 rows, only the token rows (``registry`` zero-pads them to text_len)."""
    graph, _, rest = abstract_model(umt5_factory(t5_cfg))
    tokenizer = TextTokenizer.from_file(tokenizer_path)
    rows = text_context(nnx.merge(graph, t5_state, rest), tokenizer, "")
    return np.ascontiguousarray(rows[:len(tokenizer.encode(""))], np.float32)
