"""umT5 text encoder (Wan2.1's ``umt5-xxl`` encoder) in Flax NNX, and Wan's text context.

Attribute names mirror the transformers ``UMT5EncoderModel`` state-dict keys, so a key maps to an
NNX path mechanically (``hf_key_to_path``): ``encoder.block.3.layer.0.SelfAttention.q.weight`` ->
``('encoder', 'block', 3, 'layer', 0, 'SelfAttention', 'q', 'kernel')``; norm weights become
``scale`` and embedding tables ``embedding``. ``shared.weight`` and ``encoder.embed_tokens.weight``
are the same table (tied in transformers): both map to ``('shared', 'embedding')``.

umT5 (unlike T5) has its own relative-position bias table in every layer (bidirectional buckets,
``relative_position_bucket``, fp32 like transformers). Attention has no 1/sqrt(d) scaling, there
are no biases, the FFN is gated GELU (tanh approximation: ``gelu(wi_0 x) * wi_1 x -> wo``) and the
norms are T5 RMS norms (no mean subtraction). Precision: parameters are stored in
``cfg.param_dtype``; matmuls run in ``cfg.dtype``; norms, attention logits / softmax, the GELU and the
residual stream are fp32; the output is fp32.

``text_context`` reproduces Wan's prompt embedding: encode the real tokens, keep their rows and
zero-pad to ``text_len`` (512) rows.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.models.dit import _dtype

F32 = jnp.float32
_ACTS = ("gelu_new",)                      # gelu, tanh approximation
_FF_PROJ = ("gated-gelu", "gated-gelu_new")  # both mean gated gelu_new in transformers


@dataclass(frozen=True)
class UMT5Config:
    """umT5 encoder. Field names follow the transformers ``UMT5Config`` keys (``from_hf``)."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"
    text_len: int = 512                    # context rows of Wan's DiT (zero-padded past the prompt)
    # JAX execution options (not part of the checkpoint).
    param_dtype: str = "float32"
    dtype: str = "float32"                 # matmul compute dtype; norms / softmax stay fp32

    def __post_init__(self):
        for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                  "relative_attention_num_buckets", "relative_attention_max_distance", "text_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"UMT5Config.{f} must be a positive integer, got {v!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError("UMT5Config.relative_attention_num_buckets must be >= 4 (bidirectional buckets)")
        if self.dense_act_fn not in _ACTS:
            raise ValueError(f"UMT5Config.dense_act_fn must be one of {_ACTS}, got {self.dense_act_fn!r}")
        _dtype(self.param_dtype)
        _dtype(self.dtype)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def replace(self, **kw) -> "UMT5Config":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, d: dict, **over) -> "UMT5Config":
        """From a transformers ``UMT5Config`` ``config.json`` dict; ``over`` sets/overrides fields
        (e.g. ``param_dtype``, ``dtype``, ``text_len``). Raises ValueError for a model this encoder
        does not implement (not umT5, not gated GELU)."""
        if not isinstance(d, dict):
            raise ValueError(f"umT5 config must be a dict, got {type(d).__name__}")
        mt = d.get("model_type", "umt5")
        if mt != "umt5":
            raise ValueError(f"model_type must be 'umt5' (relative bias in every layer), got {mt!r}")
        ff = d.get("feed_forward_proj", "gated-gelu")
        if ff not in _FF_PROJ:
            raise ValueError(f"feed_forward_proj must be one of {_FF_PROJ} (gated GELU, tanh approximation), "
                             f"got {ff!r}")
        if not d.get("is_gated_act", True):
            raise ValueError("is_gated_act must be true (gated GELU feed-forward)")
        act = d.get("dense_act_fn", "gelu_new")
        if act not in _ACTS:
            raise ValueError(f"dense_act_fn must be one of {_ACTS}, got {act!r}")
        if d.get("is_decoder", False):
            raise ValueError("is_decoder must be false (this is the bidirectional encoder)")
        kw = {}
        for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                  "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon"):
            if f in d:
                kw[f] = d[f]
        missing = [f for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads") if f not in kw]
        if missing:
            raise ValueError(f"umT5 config is missing {missing}")
        kw["dense_act_fn"] = act
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(over) - names)
        if unknown:
            raise ValueError(f"unknown UMT5Config fields {unknown}")
        kw.update(over)
        return cls(**kw)


# Wan2.1's umt5-xxl encoder (``text_encoder/config.json`` of the releases, PORTING.md §8).
UMT5_XXL = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      layer_norm_epsilon=1e-6, dense_act_fn="gelu_new", text_len=512)


def umt5_xxl(**over) -> UMT5Config:
    """``UMT5_XXL`` with execution options (``param_dtype``, ``dtype``) overridden."""
    return UMT5_XXL.replace(**over)


# --------------------------------------------------------------------------------------------
# Relative position buckets (host side, exactly transformers' fp32 computation)
# --------------------------------------------------------------------------------------------
def relative_position_bucket(relative_position, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """Bidirectional T5 bucket of ``memory_position - query_position`` (int array -> int32 array).

    Half the buckets per direction; within a direction, |d| < num_buckets/4 exactly, larger
    distances log-spaced up to ``max_distance`` (the log in float32, truncated, as in
    transformers' ``_relative_position_bucket`` and Wan's ``T5RelativeEmbedding``).
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    nb = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * nb
    rel = np.abs(rel)
    max_exact = nb // 2
    is_small = rel < max_exact
    r = np.where(is_small, max_exact, rel).astype(np.float32)  # no log(0): those are small anyway
    log_ratio = np.log(r / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    log_ratio = log_ratio * np.float32(nb - max_exact)
    large = np.minimum(max_exact + log_ratio.astype(np.int64), nb - 1)
    return (buckets + np.where(is_small, rel, large)).astype(np.int32)


def _bucket_matrix(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    pos = np.arange(length, dtype=np.int64)
    return relative_position_bucket(pos[None, :] - pos[:, None], num_buckets, max_distance)  # [Lq, Lk]


# --------------------------------------------------------------------------------------------
# Modules (transformers names)
# --------------------------------------------------------------------------------------------
def _t5_norm(dim: int, eps: float, param_dtype, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """T5 LayerNorm: x * rsqrt(mean(x^2) + eps) * scale, in fp32 (leaf ``scale`` [dim])."""
    return nnx.RMSNorm(dim, epsilon=eps, dtype=F32, param_dtype=param_dtype, rngs=rngs)


class UMT5Attention(nnx.Module):
    """Unscaled multi-head self-attention with this layer's relative-position bias table."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        lin = partial(nnx.Linear, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.dtype = dtype
        self.q = lin(cfg.d_model, cfg.inner_dim)
        self.k = lin(cfg.d_model, cfg.inner_dim)
        self.v = lin(cfg.d_model, cfg.inner_dim)
        self.o = lin(cfg.inner_dim, cfg.d_model)
        self.relative_attention_bias = nnx.Embed(self.num_buckets, cfg.num_heads, dtype=F32,
                                                 param_dtype=param_dtype, rngs=rngs)

    def position_bias(self, length: int) -> jax.Array:
        """[heads, L, L] fp32 bias (buckets computed on the host for the static length)."""
        buckets = _bucket_matrix(length, self.num_buckets, self.max_distance)
        table = self.relative_attention_bias.embedding[...].astype(F32)       # [buckets, heads]
        return jnp.transpose(table[jnp.asarray(buckets)], (2, 0, 1))

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """x [B, L, D] (compute dtype), key_mask [B, L] bool -> [B, L, D] (compute dtype)."""
        b, length, _ = x.shape
        split = lambda t: t.reshape(b, length, self.num_heads, self.d_kv)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=F32)
        logits = logits + self.position_bias(length)[None]
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(F32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v, preferred_element_type=F32).astype(self.dtype)
        return self.o(out.reshape(b, length, self.num_heads * self.d_kv))


class UMT5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.dtype = _dtype(cfg.dtype)
        self.SelfAttention = UMT5Attention(cfg, rngs=rngs)
        self.layer_norm = _t5_norm(cfg.d_model, cfg.layer_norm_epsilon, _dtype(cfg.param_dtype), rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """x [B, L, D] fp32 residual stream -> fp32."""
        h = self.layer_norm(x).astype(self.dtype)
        return x + self.SelfAttention(h, key_mask).astype(F32)


class UMT5DenseGatedActDense(nnx.Module):
    """gelu_tanh(wi_0 x) * wi_1 x -> wo."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        lin = partial(nnx.Linear, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.wi_0 = lin(cfg.d_model, cfg.d_ff)
        self.wi_1 = lin(cfg.d_model, cfg.d_ff)
        self.wo = lin(cfg.d_ff, cfg.d_model)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jax.nn.gelu(self.wi_0(x).astype(F32), approximate=True)
        return self.wo((gate * self.wi_1(x).astype(F32)).astype(self.dtype))


class UMT5LayerFF(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.dtype = _dtype(cfg.dtype)
        self.DenseReluDense = UMT5DenseGatedActDense(cfg, rngs=rngs)
        self.layer_norm = _t5_norm(cfg.d_model, cfg.layer_norm_epsilon, _dtype(cfg.param_dtype), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.DenseReluDense(self.layer_norm(x).astype(self.dtype)).astype(F32)


class UMT5Block(nnx.Module):
    """``layer.0``: self-attention, ``layer.1``: feed-forward (both pre-norm, residual)."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.layer = nnx.List([UMT5LayerSelfAttention(cfg, rngs=rngs), UMT5LayerFF(cfg, rngs=rngs)])

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        return self.layer[1](self.layer[0](x, key_mask))


class UMT5Stack(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.block = nnx.List([UMT5Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_layer_norm = _t5_norm(cfg.d_model, cfg.layer_norm_epsilon, _dtype(cfg.param_dtype), rngs)


class UMT5Encoder(nnx.Module):
    """umT5 encoder: ``__call__(ids [B, L] int, mask [B, L] (1 valid / 0 pad)) -> [B, L, d_model] fp32``.

    Padded keys are masked out of every attention (their own rows are computed but meaningless);
    the rows of valid tokens do not depend on how much padding follows them.
    """

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=F32, param_dtype=_dtype(cfg.param_dtype),
                                rngs=rngs)
        self.encoder = UMT5Stack(cfg, rngs=rngs)

    def __call__(self, ids: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        ids = jnp.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be [B, L], got shape {tuple(ids.shape)}")
        if mask is None:
            mask = jnp.ones(ids.shape, jnp.int32)
        mask = jnp.asarray(mask)
        if mask.shape != ids.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != ids shape {tuple(ids.shape)}")
        key_mask = mask > 0
        x = self.shared(ids.astype(jnp.int32)).astype(F32)
        for block in self.encoder.block:
            x = block(x, key_mask)
        return self.encoder.final_layer_norm(x).astype(F32)


# --------------------------------------------------------------------------------------------
# transformers key <-> NNX path
# --------------------------------------------------------------------------------------------
_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
_KEY = re.compile(
    r"^encoder\.block\.(\d+)\.layer\.(?:"
    r"(?P<attn>0\.SelfAttention\.(?:[qkvo]|relative_attention_bias))"
    r"|(?P<ff>1\.DenseReluDense\.(?:wi_0|wi_1|wo))"
    r"|(?P<norm>[01]\.layer_norm))\.weight$"
)


def hf_key_to_path(key: str) -> tuple:
    """NNX path of a transformers ``UMT5EncoderModel`` state-dict key (KeyError if it is not one).

    'encoder.block.1.layer.1.DenseReluDense.wi_0.weight' -> ('encoder', 'block', 1, 'layer', 1,
    'DenseReluDense', 'wi_0', 'kernel'); 'encoder.final_layer_norm.weight' -> ('encoder',
    'final_layer_norm', 'scale'); 'shared.weight' / 'encoder.embed_tokens.weight' -> ('shared', 'embedding').
    """
    if key in _EMBED_KEYS:
        return ("shared", "embedding")
    if key == "encoder.final_layer_norm.weight":
        return ("encoder", "final_layer_norm", "scale")
    m = _KEY.match(key)
    if not m:
        raise KeyError(f"{key!r} is not a umT5 encoder parameter")
    *mods, _ = key.split(".")
    path = tuple(int(p) if p.isdigit() else p for p in mods)
    if m["norm"]:
        leaf = "scale"
    elif mods[-1] == "relative_attention_bias":
        leaf = "embedding"
    else:
        leaf = "kernel"
    return path + (leaf,)


def is_embedding_key(key: str) -> bool:
    """Keys whose torch layout is already the Flax layout (embedding tables: not transposed)."""
    return key in _EMBED_KEYS or key.endswith("relative_attention_bias.weight")


# --------------------------------------------------------------------------------------------
# Wan's text context
# --------------------------------------------------------------------------------------------
@nnx.jit
def _encode(encoder: UMT5Encoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return encoder(ids, mask)


def text_context(encoder: UMT5Encoder, tokenizer, prompt: str) -> np.ndarray:
    """Wan's prompt embedding: [text_len, d_model] float32.

    ``tokenizer.encode(prompt)`` (cleaned, EOS appended, at most text_len tokens; e.g.
    ``models.tokenizer.TextTokenizer``) -> the encoder on those n tokens only -> rows 0..n-1 are its
    output, rows n.. are exactly zero (Wan: ``u[:seq_len]`` then zero-padded to 512 rows).
    """
    text_len = encoder.cfg.text_len
    ids = list(tokenizer.encode(prompt))
    n = len(ids)
    if n == 0:
        raise ValueError("the tokenizer returned no tokens (expected at least the EOS token)")
    if n > text_len:
        raise ValueError(f"the tokenizer returned {n} tokens, more than text_len {text_len}")
    ids_a = jnp.asarray(np.asarray(ids, np.int32)[None])
    out = np.asarray(_encode(encoder, ids_a, jnp.ones_like(ids_a)))[0]
    ctx = np.zeros((text_len, encoder.cfg.d_model), np.float32)
    ctx[:n] = out
    return ctx
