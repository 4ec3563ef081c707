"""Wan2.1 video DiT (T2V / I2V / FLF2V) in Flax NNX, channels-last.

Attribute names mirror the diffusers ``WanTransformer3DModel`` state-dict keys, so a diffusers
key maps to an NNX path mechanically (``diffusers_key_to_path``), with five container renames:
``attn{1,2}.to_out.0 -> to_out``, ``ffn.net.0.proj -> ffn.proj_in``, ``ffn.net.2 -> ffn.proj_out``
and the same two for ``condition_embedder.image_embedder.ff``.

Precision (docs/method_notes.md §Wan numerics): adaLN modulation, every norm, RoPE, gated residual
adds, the time embedding and the head run in fp32; the remaining matmuls and attention run in
``cfg.dtype``. Attention runs through ``models.attention`` (``cfg.attention``: chunked on CPU,
cuDNN flash attention on GPU for bf16, splash on TPU, by default; ``set_attention`` overrides it).
With ``cfg.scan_layers`` all block leaves are stacked on a leading axis [N, ...] (attribute still
``blocks``) and applied with ``jax.lax.scan``; ``cfg.remat`` wraps each block in ``jax.checkpoint``.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from gvc_jax.models.attention import attend, check_implementation
from gvc_jax.models.configs import DiTConfig
from gvc_jax.models.rope import apply_rope, rope_tables_in_graph

F32 = jnp.float32


class DiTInputError(ValueError):
    """Inputs whose shapes or presence do not match the DiT configuration."""


def _dtype(name: str):
    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[str(name)]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; use 'float32' or 'bfloat16'") from None


# --------------------------------------------------------------------------------------------
# Time sinusoid
# --------------------------------------------------------------------------------------------
def timestep_features(timesteps, freq_dim: int) -> np.ndarray:
    """Sinusoid of already-scaled timesteps (1000*t) in numpy float64, cast to float32.

    timesteps: [B] (or scalar); returns [B, freq_dim] = [cos(t*f_i) | sin(t*f_i)],
    f_i = 10000^(-i/(freq_dim/2)), cos half first.
    """
    if freq_dim % 2:
        raise ValueError(f"freq_dim must be even, got {freq_dim}")
    half = freq_dim // 2
    t = np.asarray(timesteps, dtype=np.float64).reshape(-1)
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    arg = t[:, None] * freqs[None, :]
    return np.concatenate([np.cos(arg), np.sin(arg)], axis=-1).astype(np.float32)


def _timestep_features_fp32(timesteps: jax.Array, freq_dim: int) -> jax.Array:
    """In-graph fp32 sinusoid with the same operation order as diffusers. [B] -> [B, freq_dim]."""
    half = freq_dim // 2
    exponent = (-math.log(10000.0) * jnp.arange(half, dtype=F32)) / half
    arg = timesteps.astype(F32)[:, None] * jnp.exp(exponent)[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def _layer_norm(dim: int, eps: float, affine: bool, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """fp32 LayerNorm matching torch (exact variance); no params when affine=False."""
    return nnx.LayerNorm(
        dim, epsilon=eps, use_scale=affine, use_bias=affine, use_fast_variance=False,
        dtype=F32, param_dtype=F32, rngs=rngs,
    )


def _rms_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """fp32 RMSNorm over the whole feature dim (leaf ``scale`` [dim])."""
    return nnx.RMSNorm(dim, epsilon=eps, dtype=F32, param_dtype=F32, rngs=rngs)


class FeedForward(nnx.Module):
    """proj_in -> GELU (fp32; tanh or erf) -> proj_out. [..., d_in] -> [..., d_out] (compute dtype)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, approximate: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        lin = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_in = lin(d_in, d_hidden)
        self.proj_out = lin(d_hidden, d_out)
        self.approximate = approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.proj_in(x)
        h = jax.nn.gelu(h.astype(F32), approximate=self.approximate).astype(h.dtype)
        return self.proj_out(h)


class WanAttention(nnx.Module):
    """Self- or cross-attention with RMS qk-norm across heads; optional I2V image k/v branch."""

    def __init__(self, dim: int, heads: int, eps: float, *, added_kv_proj_dim: Optional[int], dtype,
                 param_dtype, rngs: nnx.Rngs, attention: str = "auto"):
        lin = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.dtype = dtype
        self.attention = attention  # models.attention implementation (static; set_attention changes it)
        self.to_q = lin(dim, dim)
        self.to_k = lin(dim, dim)
        self.to_v = lin(dim, dim)
        self.to_out = lin(dim, dim)
        self.norm_q = _rms_norm(dim, eps, rngs)
        self.norm_k = _rms_norm(dim, eps, rngs)
        if added_kv_proj_dim is not None:
            self.add_k_proj: Optional[nnx.Linear] = lin(added_kv_proj_dim, dim)
            self.add_v_proj: Optional[nnx.Linear] = lin(added_kv_proj_dim, dim)
            self.norm_added_k: Optional[nnx.RMSNorm] = _rms_norm(dim, eps, rngs)
        else:
            self.add_k_proj = self.add_v_proj = self.norm_added_k = None

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return attend(q, k, v, self.attention)

    def _split(self, t: jax.Array) -> jax.Array:
        """[B, L, D] -> [B, L, heads, D / heads] (head-major channels)."""
        return rearrange(t, "b l (n h) -> b l n h", n=self.heads)

    def self_attention(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """x [B,L,D] (compute dtype), RoPE tables [L, hd/2] -> [B,L,D]."""
        q = self.norm_q(self.to_q(x).astype(F32))
        k = self.norm_k(self.to_k(x).astype(F32))
        v = self._split(self.to_v(x))
        q = apply_rope(self._split(q), cos, sin).astype(self.dtype)
        k = apply_rope(self._split(k), cos, sin).astype(self.dtype)
        return self.to_out(self._attend(q, k, v))

    def cross_attention(self, x: jax.Array, ctx: jax.Array, ctx_img: Optional[jax.Array]) -> jax.Array:
        """x [B,L,D], text ctx [B,512,D], image ctx [B,N_img,D] or None -> [B,L,D]."""
        q = self._split(self.norm_q(self.to_q(x).astype(F32)).astype(self.dtype))
        k = self._split(self.norm_k(self.to_k(ctx).astype(F32)).astype(self.dtype))
        v = self._split(self.to_v(ctx))
        out = self._attend(q, k, v)
        if ctx_img is not None:
            if self.add_k_proj is None:
                raise DiTInputError("image context given but this model has no image k/v projections")
            assert self.add_v_proj is not None and self.norm_added_k is not None  # set with add_k_proj
            k_img = self._split(self.norm_added_k(self.add_k_proj(ctx_img).astype(F32)).astype(self.dtype))
            v_img = self._split(self.add_v_proj(ctx_img))
            out = out + self._attend(q, k_img, v_img)
        return self.to_out(out)


class WanBlock(nnx.Module):
    """One DiT block (diffusers names): norm1/attn1 (gated), norm2/attn2, norm3/ffn (gated)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        self.dtype = dtype
        self.norm1 = _layer_norm(d, cfg.eps, False, rngs)
        self.attn1 = WanAttention(d, cfg.num_attention_heads, cfg.eps, added_kv_proj_dim=None,
                                  dtype=dtype, param_dtype=param_dtype, rngs=rngs, attention=cfg.attention)
        self.attn2 = WanAttention(d, cfg.num_attention_heads, cfg.eps,
                                  added_kv_proj_dim=cfg.added_kv_proj_dim if cfg.image_dim else None,
                                  dtype=dtype, param_dtype=param_dtype, rngs=rngs, attention=cfg.attention)
        self.norm2 = _layer_norm(d, cfg.eps, True, rngs) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(d, cfg.ffn_dim, d, approximate=True, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
        self.norm3 = _layer_norm(d, cfg.eps, False, rngs)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (1, 6, d), F32) / d**0.5)

    def __call__(self, x: jax.Array, e6: jax.Array, ctx: jax.Array, ctx_img: Optional[jax.Array],
                 cos: jax.Array, sin: jax.Array) -> jax.Array:
        """x [B,L,D] fp32, e6 [B,6,D] fp32, ctx [B,512,D], ctx_img [B,N,D]|None -> [B,L,D] fp32."""
        mod = self.scale_shift_table[...].astype(F32) + e6
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, i:i + 1] for i in range(6))
        h = (self.norm1(x) * (1.0 + scale1) + shift1).astype(self.dtype)
        x = x + self.attn1.self_attention(h, cos, sin).astype(F32) * gate1
        h = (self.norm2(x) if self.norm2 is not None else x).astype(self.dtype)
        x = x + self.attn2.cross_attention(h, ctx, ctx_img).astype(F32)
        h = (self.norm3(x) * (1.0 + scale2) + shift2).astype(self.dtype)
        return x + self.ffn(h).astype(F32) * gate2


class TimestepEmbedding(nnx.Module):
    """linear_1 -> SiLU -> linear_2, fp32 params and compute. [B, freq] -> [B, D]."""

    def __init__(self, d_in: int, d: int, *, rngs: nnx.Rngs):
        self.linear_1 = nnx.Linear(d_in, d, dtype=F32, param_dtype=F32, rngs=rngs)
        self.linear_2 = nnx.Linear(d, d, dtype=F32, param_dtype=F32, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(t)))


class TextProjection(nnx.Module):
    """linear_1 -> GELU(tanh) -> linear_2. [B, 512, text_dim] -> [B, 512, D] (compute dtype)."""

    def __init__(self, d_in: int, d: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.linear_1 = nnx.Linear(d_in, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_2 = nnx.Linear(d, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.linear_1(x)
        h = jax.nn.gelu(h.astype(F32), approximate=True).astype(h.dtype)
        return self.linear_2(h)


class ImageEmbedding(nnx.Module):
    """[+pos_embed] -> LN(1e-5) -> Lin -> GELU(erf) -> Lin -> LN(1e-5). [B,N,img] -> [B,N,D]."""

    def __init__(self, d_img: int, d: int, pos_embed_seq_len: Optional[int], *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.norm1 = _layer_norm(d_img, 1e-5, True, rngs)
        self.ff = FeedForward(d_img, d_img, d, approximate=False, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
        self.norm2 = _layer_norm(d, 1e-5, True, rngs)
        self.pos_embed = nnx.Param(jnp.zeros((1, pos_embed_seq_len, d_img), F32)) if pos_embed_seq_len else None

    def __call__(self, img: jax.Array) -> jax.Array:
        img = img.astype(F32)
        if self.pos_embed is not None:
            n = self.pos_embed.shape[1]
            if img.shape[1] != n:
                raise DiTInputError(f"FLF2V image context needs {n} tokens (first ‖ last), got {img.shape[1]}")
            img = img + self.pos_embed[...].astype(F32)
        h = self.ff(self.norm1(img).astype(self.dtype))
        return self.norm2(h.astype(F32)).astype(self.dtype)


class ConditionEmbedder(nnx.Module):
    """Time (fp32), text and optional image embeddings."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, d, rngs=rngs)
        self.time_proj = nnx.Linear(d, 6 * d, dtype=F32, param_dtype=param_dtype, rngs=rngs)
        self.text_embedder = TextProjection(cfg.text_dim, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.image_embedder = (
            ImageEmbedding(cfg.image_dim, d, cfg.pos_embed_seq_len, dtype=dtype, param_dtype=param_dtype,
                           rngs=rngs)
            if cfg.image_dim else None
        )


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def set_attention(model: nnx.Module, impl: str) -> None:
    """Switch every attention layer of ``model`` to implementation ``impl`` (models.attention)."""
    check_implementation(impl)
    for _, module in model.iter_modules():
        if isinstance(module, WanAttention):
            module.attention = impl


class WanDiT(nnx.Module):
    """Wan2.1 DiT velocity network. See module docstring for names and precision."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        if tuple(cfg.patch_size) != (1, 2, 2):
            raise ValueError(f"only patch_size (1, 2, 2) is supported, got {cfg.patch_size}")
        if cfg.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"only qk_norm 'rms_norm_across_heads' is supported, got {cfg.qk_norm!r}")
        if cfg.image_dim and cfg.added_kv_proj_dim != cfg.dim:
            raise ValueError(f"added_kv_proj_dim must equal dim ({cfg.dim}), got {cfg.added_kv_proj_dim}")
        self.cfg = cfg
        d = cfg.dim
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        self.dtype = dtype
        self.patch_embedding = nnx.Conv(
            cfg.in_channels, d, kernel_size=tuple(cfg.patch_size), strides=tuple(cfg.patch_size),
            padding="VALID", dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        )
        self.condition_embedder = ConditionEmbedder(cfg, rngs=rngs)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def _make(r):
                return WanBlock(cfg, rngs=r)

            self.blocks = _make(rngs)
        else:
            self.blocks = nnx.List([WanBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm_out = _layer_norm(d, cfg.eps, False, rngs)
        self.proj_out = nnx.Linear(d, cfg.out_channels * math.prod(cfg.patch_size), dtype=F32,
                                   param_dtype=param_dtype, rngs=rngs)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (1, 2, d), F32) / d**0.5)

    # -- pieces --------------------------------------------------------------------------------
    def _check_inputs(self, x, timestep, context, image_context):
        cfg = self.cfg
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise DiTInputError(f"x must be [B, F, h, w, {cfg.in_channels}], got {tuple(x.shape)}")
        b, f, h, w, _ = x.shape
        if h % 2 or w % 2:
            raise DiTInputError(f"latent height/width must be even, got {h}x{w}")
        if timestep.shape != (b,):
            raise DiTInputError(f"timestep must be [B={b}], got {tuple(timestep.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise DiTInputError(f"context must be [{b}, <= {cfg.text_len}, {cfg.text_dim}], got {tuple(context.shape)}")
        if context.shape[1] > cfg.text_len:
            raise DiTInputError(f"context has {context.shape[1]} rows, more than text_len {cfg.text_len}")
        if (image_context is None) != (cfg.image_dim is None):
            raise DiTInputError(f"{cfg.variant} model: image_context must be "
                                f"{'given' if cfg.image_dim else 'None'}")
        if image_context is not None and (image_context.ndim != 3 or image_context.shape[0] != b
                                          or image_context.shape[2] != cfg.image_dim):
            raise DiTInputError(f"image_context must be [{b}, N, {cfg.image_dim}], got {tuple(image_context.shape)}")

    def _run_blocks(self, x, e6, ctx, ctx_img, cos, sin):
        """Apply all blocks to x [B,L,D] fp32 (unrolled, or lax.scan over stacked leaves)."""
        def apply(graphdef, state, h):
            return nnx.merge(graphdef, state)(h, e6, ctx, ctx_img, cos, sin)

        if self.cfg.remat:
            apply = jax.checkpoint(apply, static_argnums=(0,))
        if self.cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, st):
                return apply(graphdef, st, h), None

            x, _ = jax.lax.scan(body, x, state)
            return x
        for block in self.blocks:
            if self.cfg.remat:
                graphdef, state = nnx.split(block)
                x = apply(graphdef, state, x)
            else:
                x = block(x, e6, ctx, ctx_img, cos, sin)
        return x

    def __call__(self, x, timestep, context, image_context=None, *, time_features=None) -> jax.Array:
        """Velocity [B, F, h, w, out_channels] fp32.

        x [B, F, h, w, in_channels]; timestep [B] (already 1000*t); context [B, <=text_len, text_dim]
        (zero-padded to text_len rows here, all rows attended); image_context [B, N_img, image_dim]
        (I2V: 257, FLF2V: 2*257 = first ‖ last); time_features [B, freq_dim] fp32 overrides the
        in-graph fp32 sinusoid.
        """
        cfg = self.cfg
        timestep = jnp.asarray(timestep)
        self._check_inputs(x, timestep, context, image_context)
        _, f, h, w, _ = x.shape
        pt, ph, pw = cfg.patch_size
        grid = (f // pt, h // ph, w // pw)

        # Conditioning.
        emb = self.condition_embedder
        if time_features is None:
            time_features = _timestep_features_fp32(timestep, cfg.freq_dim)
        temb = emb.time_embedder(jnp.asarray(time_features, F32))             # [B, D]
        e6 = rearrange(emb.time_proj(jax.nn.silu(temb)), "b (six d) -> b six d", six=6)  # [B, 6, D]
        if context.shape[1] < cfg.text_len:
            context = jnp.pad(context, ((0, 0), (0, cfg.text_len - context.shape[1]), (0, 0)))
        ctx = emb.text_embedder(context.astype(self.dtype))                     # [B, 512, D]
        ctx_img = None
        if image_context is not None:
            assert emb.image_embedder is not None  # _check_inputs: image_context only with image_dim
            ctx_img = emb.image_embedder(image_context)

        # Patchify -> blocks -> head.
        patches = self.patch_embedding(x.astype(self.dtype))                   # [B, F/pt, h/ph, w/pw, D]
        tokens = rearrange(patches, "b f h w d -> b (f h w) d").astype(F32)   # (f, h, w) row-major
        cos, sin = rope_tables_in_graph(cfg.attention_head_dim, grid, cfg.rope_max_seq_len)
        tokens = self._run_blocks(tokens, e6, ctx, ctx_img, cos, sin)
        mod = self.scale_shift_table[...].astype(F32) + temb[:, None, :]       # [B, 2, D]
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        out = self.proj_out(self.norm_out(tokens) * (1.0 + scale) + shift)     # [B, L, 4*Co] fp32

        # Unpatchify: per-token outputs ordered (pt, ph, pw, c).
        out = rearrange(out, "b (f h w) (pt ph pw c) -> b (f pt) (h ph) (w pw) c",
                        f=grid[0], h=grid[1], w=grid[2], pt=pt, ph=ph, pw=pw)
        return out.astype(F32)


# --------------------------------------------------------------------------------------------
# diffusers key <-> NNX path
# --------------------------------------------------------------------------------------------
_RENAMES = (
    (re.compile(r"^(blocks\.\d+\.attn[12])\.to_out\.0\."), r"\1.to_out."),
    (re.compile(r"^(blocks\.\d+\.ffn)\.net\.0\.proj\."), r"\1.proj_in."),
    (re.compile(r"^(blocks\.\d+\.ffn)\.net\.2\."), r"\1.proj_out."),
    (re.compile(r"^(condition_embedder\.image_embedder\.ff)\.net\.0\.proj\."), r"\1.proj_in."),
    (re.compile(r"^(condition_embedder\.image_embedder\.ff)\.net\.2\."), r"\1.proj_out."),
)


def diffusers_key_to_path(key: str, *, scan_layers: bool = False) -> tuple:
    """NNX path of a diffusers WanTransformer3DModel key.

    e.g. 'blocks.3.attn1.to_q.weight' -> ('blocks', 3, 'attn1', 'to_q', 'kernel');
    'blocks.0.norm2.weight' -> ('blocks', 0, 'norm2', 'scale'). With scan_layers the block index
    is dropped (the leaf is the [N, ...] stack): ('blocks', 'attn1', 'to_q', 'kernel').
    """
    k = key
    for pat, rep in _RENAMES:
        k = pat.sub(rep, k)
    *mods, leaf = k.split(".")
    if leaf == "weight":
        leaf = "scale" if mods and mods[-1].startswith("norm") else "kernel"
    path = tuple(int(p) if p.isdigit() else p for p in mods) + (leaf,)
    if scan_layers and path[0] == "blocks":
        path = ("blocks",) + path[2:]
    return path
