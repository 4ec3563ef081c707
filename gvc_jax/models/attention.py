"""Unmasked softmax attention for the DiT, one implementation per backend, chosen automatically.

``attend(q, k, v, impl)``: q [B, Lq, n, hd], k / v [B, Lk, n, hd] -> [B, Lq, n*hd] in q's dtype,
scale 1/sqrt(hd). Implementations (``IMPLEMENTATIONS``):

- ``chunked``: queries in chunks (``lax.map``) so that one chunk's fp32 logits stay within a
  backend-sized block; fp32 logits, softmax and normaliser. The reference, and the CPU path.
- ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``, one fused softmax.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``: cuDNN flash attention on
  NVIDIA GPUs, for bf16 / fp16 inputs.
- ``splash``: the Pallas TPU splash-attention kernel; sequences are padded to the kernel's block
  multiple and the padded keys masked out with segment ids. ``interpret=True`` runs the kernel in
  Pallas' interpreter (any backend: how the tests check it on CPU).
- ``auto``: ``splash`` on TPU; ``cudnn`` on GPU when the dtype is bf16 / fp16 and the head dim is
  a multiple of 8 up to 128, else ``xla``; ``chunked`` on CPU.
"""
from __future__ import annotations

import functools
import math
from typing import Literal, Optional, cast

import jax
import jax.numpy as jnp
from einops import rearrange

F32 = jnp.float32
IMPLEMENTATIONS = ("auto", "chunked", "xla", "cudnn", "splash")

# Max logits elements (B * heads * query_chunk * keys) per chunk of the chunked path, per backend.
_CHUNK_ELEMS = {"cpu": 1 << 22}
_CHUNK_ELEMS_DEFAULT = 1 << 28
SPLASH_BLOCK = 128  # splash block sizes (q, kv): sequences are padded to a multiple of this


class AttentionError(ValueError):
    """An attention implementation that does not exist or cannot run here."""


def check_implementation(impl: str) -> str:
    if impl not in IMPLEMENTATIONS:
        raise AttentionError(f"attention must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    return impl


def resolve(impl: str, dtype, head_dim: int, backend: Optional[str] = None) -> str:
    """The concrete implementation ``impl`` stands for on ``backend`` (default: JAX's)."""
    check_implementation(impl)
    backend = backend or jax.default_backend()
    if impl != "auto":
        return impl
    if backend == "tpu":
        return "splash"
    if backend in ("gpu", "cuda", "rocm"):
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if half and head_dim % 8 == 0 and head_dim <= 128 and backend != "rocm" else "xla"
    return "chunked"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "auto", *, interpret: bool = False,
           block_elems: Optional[int] = None) -> jax.Array:
    """See the module docstring."""
    b, lq, n, hd = q.shape
    concrete = resolve(impl, q.dtype, hd)
    if concrete == "chunked":
        out = _chunked(q, k, v, block_elems)
    elif concrete in ("xla", "cudnn"):
        out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(hd),
                                           implementation=cast(Literal["xla", "cudnn"], concrete))
    else:
        out = _splash(q, k, v, interpret=interpret)
    return rearrange(out.astype(q.dtype), "b q n h -> b q (n h)")


def _chunked(q, k, v, block_elems):
    b, lq, n, hd = q.shape
    lk = k.shape[1]
    if block_elems is None:
        block_elems = _CHUNK_ELEMS.get(jax.default_backend(), _CHUNK_ELEMS_DEFAULT)
    n_chunks = -(-b * n * lq * lk // block_elems)
    cs = -(-lq // n_chunks)
    kt = rearrange(k, "b k n h -> b n k h")
    vt = rearrange(v, "b k n h -> b n k h")
    qs = (q.astype(F32) * (1.0 / math.sqrt(hd))).astype(q.dtype)

    def one(qc):  # [B, n, cs, hd] -> [B, n, cs, hd]
        logits = jnp.einsum("bnqh,bnkh->bnqk", qc, kt, preferred_element_type=F32)
        p = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
        o = jnp.einsum("bnqk,bnkh->bnqh", p.astype(v.dtype), vt, preferred_element_type=F32)
        return (o / p.sum(axis=-1, keepdims=True)).astype(q.dtype)

    if n_chunks == 1:
        return rearrange(one(rearrange(qs, "b q n h -> b n q h")), "b n q h -> b q n h")
    qs = jnp.pad(qs, ((0, 0), (0, n_chunks * cs - lq), (0, 0), (0, 0)))
    qc = rearrange(qs, "b (c q) n h -> c b n q h", c=n_chunks)
    return rearrange(jax.lax.map(one, qc), "c b n q h -> b (c q) n h")[:, :lq]


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, lq: int, lk: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.FullMask((lq, lk)) for _ in range(heads)])
    blocks = sk.BlockSizes(block_q=SPLASH_BLOCK, block_kv=SPLASH_BLOCK, block_kv_compute=SPLASH_BLOCK)
    return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=blocks, interpret=interpret)


def _splash(q, k, v, *, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, lq, n, hd = q.shape
    lk = k.shape[1]
    pq, pk = -(-lq // SPLASH_BLOCK) * SPLASH_BLOCK, -(-lk // SPLASH_BLOCK) * SPLASH_BLOCK
    pad = lambda x, to: jnp.pad(x, ((0, 0), (0, to - x.shape[1]), (0, 0), (0, 0)))  # noqa: E731
    qs = (q.astype(F32) * (1.0 / math.sqrt(hd))).astype(q.dtype)
    qh = rearrange(pad(qs, pq), "b q n h -> b n q h")
    kh = rearrange(pad(k, pk), "b k n h -> b n k h")
    vh = rearrange(pad(v, pk), "b k n h -> b n k h")
    # real tokens are segment 0, padding segment 1: no real query attends to a padded key
    seg = sk.SegmentIds(q=(jnp.arange(pq) >= lq).astype(jnp.int32), kv=(jnp.arange(pk) >= lk).astype(jnp.int32))
    kernel = _splash_kernel(n, pq, pk, interpret)
    out = jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=seg))(qh, kh, vh)
    return rearrange(out, "b n q h -> b q n h")[:, :lq]
