"""Wan2.1 causal 3D VAE in Flax NNX (channels-last), with a static-shape time scan.

Video is ``[B, F, H, W, 3]`` in [-1, 1]; latents are ``[B, F_lat, h, w, z_dim]``.
Encoding runs chunk 0 (1 frame) and then chunks of ``cfg.temporal_stride`` frames; decoding
runs one latent frame per step. Chunk 0 runs outside a ``jax.lax.scan`` over the remaining
chunks and produces the cache pytree, whose shapes are then fixed, so peak memory does not grow
with the number of frames (docs/method_notes.md §Wan numerics).

Caches (all zero-initialised, fixed size):
- a causal conv with temporal kernel 3 keeps its *input*: the last 2 frames of
  ``concat(cache, x)`` (exactly what the reference ``feat_cache`` computes);
- Down3d keeps the last spatially downsampled frame ``[B, 1, h, w, C]``; on chunk 0 its
  ``time_conv`` is skipped;
- Up3d keeps the last 2 inputs of its causal ``time_conv``; on chunk 0 the conv is skipped and
  the buffer stays zero (the reference "Rep" quirk).

Attribute names mirror the diffusers ``AutoencoderKLWan`` state-dict keys
(docs/method_notes.md §Checkpoint layouts):
the Flax path is the key split on ``.`` with digits as ints, leaf ``weight`` -> ``kernel``,
``gamma`` -> ``scale``, and the single exception ``...resample.1`` -> ``...resample``.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from gvc_jax.models.configs import VAEConfig
from gvc_jax.temporal import latent_frames  # noqa: F401  (re-exported: the VAE's frame rule)

CACHE_T = 2  # frames kept by every temporal-kernel-3 causal conv


# ----------------------------------------------------------------------------- layers

class Init:
    """Parameter initialiser for the whole VAE, seeded by one draw from ``rngs``.

    With a concrete key the kernels come from a numpy generator (no per-shape XLA compile, so a
    full-size model builds in seconds); under tracing (``nnx.eval_shape``, ``nnx.jit``) they come
    from ``jax.random``. Checkpoint weights replace them anyway.
    """

    def __init__(self, rngs: nnx.Rngs, dtype):
        self.dtype, self.key, self.gen = jnp.dtype(dtype), rngs.params(), None
        try:
            self.gen = np.random.default_rng(int(jax.random.bits(self.key, (), jnp.uint32)))
        except jax.errors.ConcretizationTypeError:
            pass

    def normal(self, shape, fan_in: int) -> jax.Array:
        scale = 1.0 / math.sqrt(max(fan_in, 1))
        if self.gen is not None:
            return jnp.asarray(self.gen.standard_normal(shape, np.float32) * scale, self.dtype)
        self.key, sub = jax.random.split(self.key)
        return jax.random.normal(sub, shape, self.dtype) * scale

    def const(self, shape, value: float) -> jax.Array:
        return jnp.asarray(np.full(shape, value, np.float32), self.dtype)


class Conv3d(nnx.Module):
    """Plain 3D conv, channels-last. kernel [t, h, w, I, O], bias [O].
    x [B, T, H, W, I] -> [B, T', H', W', O].

    ``fast`` (off by default; ``WanVAE(..., fast_convs=True)`` or ``WanVAE.set_fast_convs``) computes
    the same conv without XLA's generic 3D path, which is slow on CPU (forward and gradient, ~5x):
    a [kt, kh, kw] kernel with stride 1 becomes one 2D conv over the kt time-shifted copies of x
    stacked on channels, a [kt, 1, 1] kernel kt matmuls over strided time slices; other strides
    keep the 3D conv. Equal up to the fp32 summation order (~1e-6), not bit for bit: the codec and
    every shipped result use the exact path; training may use the fast one.
    """

    def __init__(self, cin: int, cout: int, kernel: Tuple[int, int, int], stride=(1, 1, 1), *,
                 init: Init):
        self.kernel = nnx.Param(init.normal((*kernel, cin, cout), cin * int(np.prod(kernel))))
        self.bias = nnx.Param(init.const((cout,), 0.0))
        self.stride = tuple(stride)
        self.spatial_pad = kernel[1] // 2
        self.fast = False

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fast and self.stride[1:] == (1, 1):
            if self.kernel.shape[1:3] == (1, 1):
                return self._time_matmuls(x)
            if self.stride[0] == 1:
                return self._as_2d(x)
        p = self.spatial_pad
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...], window_strides=self.stride, padding=((0, 0), (p, p), (p, p)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return y + self.bias[...]

    def _time_matmuls(self, x: jax.Array) -> jax.Array:
        """Fast path of a [kt, 1, 1] kernel (spatial stride 1): one matmul per temporal tap."""
        k = self.kernel[...]
        kt, st = k.shape[0], self.stride[0]
        to = (x.shape[1] - kt) // st + 1
        y = sum(jnp.einsum("bthwi,io->bthwo", x[:, d: d + st * (to - 1) + 1: st], k[d, 0, 0])
                for d in range(kt))
        return y + self.bias[...]

    def _as_2d(self, x: jax.Array) -> jax.Array:
        """Fast path of a stride-1 kernel: a 2D conv over the time-shifted copies stacked on channels."""
        k = self.kernel[...]
        kt = k.shape[0]
        to = x.shape[1] - kt + 1
        p = self.spatial_pad
        shifted = jnp.concatenate([x[:, d: d + to] for d in range(kt)], axis=-1)  # [B, T', H, W, kt*I]
        xs = rearrange(shifted, "b t h w c -> (b t) h w c")
        kk = rearrange(k, "t h w i o -> h w (t i) o")
        y = jax.lax.conv_general_dilated(xs, kk, (1, 1), ((p, p), (p, p)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return rearrange(y, "(b t) h w o -> b t h w o", b=x.shape[0]) + self.bias[...]


def causal_conv(conv: Conv3d, x: jax.Array, cache: Optional[jax.Array]):
    """Causal temporal-kernel-3 conv with a 2-frame input cache.

    x [B, T, H, W, I], cache [B, 2, H, W, I] or None (zeros) -> (y [B, T, H', W', O], new cache).
    """
    if cache is None:
        cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
    xin = jnp.concatenate([cache, x], axis=1)
    return conv(xin), xin[:, -CACHE_T:]


class Conv2d(nnx.Module):
    """Per-frame 2D conv. kernel [h, w, I, O]; x [B, T, H, W, I]; ``padding`` is explicit."""

    def __init__(self, cin: int, cout: int, stride: int, padding, *, init: Init):
        self.kernel = nnx.Param(init.normal((3, 3, cin, cout), 9 * cin))
        self.bias = nnx.Param(init.const((cout,), 0.0))
        self.stride = (stride, stride)
        self.padding = tuple(tuple(p) for p in padding)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            rearrange(x, "b t h w c -> (b t) h w c"), self.kernel[...], window_strides=self.stride,
            padding=self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y + self.bias[...]
        return rearrange(y, "(b t) h w c -> b t h w c", b=x.shape[0])


class Linear(nnx.Module):
    """1x1 conv kept as a matmul over the last axis. kernel [I, O], bias [O]."""

    def __init__(self, cin: int, cout: int, *, init: Init):
        self.kernel = nnx.Param(init.normal((cin, cout), cin))
        self.bias = nnx.Param(init.const((cout,), 0.0))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


class RMSNorm(nnx.Module):
    """Wan ``RMS_norm``: x / max(||x||_2 over C, 1e-12) * sqrt(C) * scale (no bias)."""

    def __init__(self, dim: int, *, init: Init):
        self.scale = nnx.Param(init.const((dim,), 1.0))

    def __call__(self, x: jax.Array) -> jax.Array:
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
        return x / jnp.maximum(norm, 1e-12) * math.sqrt(x.shape[-1]) * self.scale[...]


# ----------------------------------------------------------------------------- blocks

class ResidualBlock(nnx.Module):
    """shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); cache = (conv1 input, conv2 input)."""

    def __init__(self, cin: int, cout: int, *, init: Init):
        self.norm1 = RMSNorm(cin, init=init)
        self.conv1 = Conv3d(cin, cout, (3, 3, 3), init=init)
        self.norm2 = RMSNorm(cout, init=init)
        self.conv2 = Conv3d(cout, cout, (3, 3, 3), init=init)
        self.conv_shortcut = Conv3d(cin, cout, (1, 1, 1), init=init) if cin != cout else None

    def __call__(self, x, cache=None):
        c1, c2 = cache if cache is not None else (None, None)
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        y, c1 = causal_conv(self.conv1, jax.nn.silu(self.norm1(x)), c1)
        y, c2 = causal_conv(self.conv2, jax.nn.silu(self.norm2(y)), c2)
        return y + h, (c1, c2)


class AttentionBlock(nnx.Module):
    """Single-head self-attention within each frame over its H*W positions (no cache)."""

    def __init__(self, dim: int, *, init: Init):
        self.norm = RMSNorm(dim, init=init)
        self.to_qkv = Linear(dim, 3 * dim, init=init)
        self.proj = Linear(dim, dim, init=init)

    def __call__(self, x, cache=None):
        b, t, h, w, c = x.shape
        qkv = rearrange(self.to_qkv(self.norm(x)), "b t h w (three c) -> (b t) (h w) three c", three=3)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqc,nkc->nqk", q, k) / math.sqrt(c)
        y = jnp.einsum("nqk,nkc->nqc", jax.nn.softmax(logits, axis=-1), v)
        return x + rearrange(self.proj(y), "(b t) (h w) c -> b t h w c", b=b, h=h), None


class Resample(nnx.Module):
    """Down2d / Down3d / Up2d / Up3d. ``resample`` is the per-frame spatial conv (key ``resample.1``)."""

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str, *, init: Init):
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("down"):
            self.resample = Conv2d(dim, dim, 2, ((0, 1), (0, 1)), init=init)
        else:
            self.resample = Conv2d(dim, dim // 2, 1, ((1, 1), (1, 1)), init=init)
        self.time_conv: Optional[Conv3d]
        if mode == "downsample3d":
            self.time_conv = Conv3d(dim, dim, (3, 1, 1), (2, 1, 1), init=init)
        elif mode == "upsample3d":
            self.time_conv = Conv3d(dim, 2 * dim, (3, 1, 1), init=init)
        else:
            self.time_conv = None

    def __call__(self, x, cache=None):
        if self.mode == "upsample3d":
            if cache is None:  # chunk 0: skip time_conv, buffer stays zero ("Rep")
                cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
            else:
                x, cache = causal_conv(self.time_conv, x, cache)
                # channels -> time: the first C channels become frame 2k, the second C frame 2k+1
                x = rearrange(x, "b t h w (two c) -> b (t two) h w c", two=2)
        if self.mode.startswith("up"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest x2 per frame
        x = self.resample(x)
        if self.mode == "downsample3d":
            if cache is not None:  # chunk 0 only stores the frame
                x, cache = self.time_conv(jnp.concatenate([cache, x], axis=1)), x[:, -1:]
            else:
                cache = x[:, -1:]
        return x, cache


class MidBlock(nnx.Module):
    """resnets.0 -> attentions.0 -> resnets.1 at constant width."""

    def __init__(self, dim: int, *, init: Init):
        self.resnets = nnx.List([ResidualBlock(dim, dim, init=init) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, init=init)])

    def __call__(self, x, cache=None):
        c0, c1 = cache if cache is not None else (None, None)
        x, c0 = self.resnets[0](x, c0)
        x, _ = self.attentions[0](x)
        x, c1 = self.resnets[1](x, c1)
        return x, (c0, c1)


def _run_list(blocks, x, caches):
    caches = caches if caches is not None else (None,) * len(blocks)
    out = []
    for blk, c in zip(blocks, caches, strict=False):
        x, c = blk(x, c)
        out.append(c)
    return x, tuple(out)


class Encoder(nnx.Module):
    """conv_in -> flat down_blocks (resnets, resamplers) -> mid_block -> head (2*z_dim)."""

    def __init__(self, cfg: VAEConfig, *, init: Init):
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        self.conv_in = Conv3d(3, dims[0], (3, 3, 3), init=init)
        blocks: list[nnx.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, init=init))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(cout, mode, init=init))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], init=init)
        self.norm_out = RMSNorm(dims[-1], init=init)
        self.conv_out = Conv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), init=init)

    def __call__(self, x, cache=None):
        c_in, c_blocks, c_mid, c_out = cache if cache is not None else (None,) * 4
        x, c_in = causal_conv(self.conv_in, x, c_in)
        x, c_blocks = _run_list(self.down_blocks, x, c_blocks)
        x, c_mid = self.mid_block(x, c_mid)
        x, c_out = causal_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, c_blocks, c_mid, c_out)


class UpBlock(nnx.Module):
    """num_res_blocks + 1 resnets, then an optional upsampler (``upsamplers.0``)."""

    def __init__(self, cin: int, cout: int, num_res: int, mode: Optional[str], *, init: Init):
        self.resnets = nnx.List([ResidualBlock(cin if i == 0 else cout, cout, init=init)
                                 for i in range(num_res + 1)])
        self.upsamplers = nnx.List([Resample(cout, mode, init=init)] if mode else [])

    def __call__(self, x, cache=None):
        c_res, c_up = cache if cache is not None else (None, None)
        x, c_res = _run_list(self.resnets, x, c_res)
        x, c_up = _run_list(self.upsamplers, x, c_up)
        return x, (c_res, c_up)


class Decoder(nnx.Module):
    """conv_in -> mid_block -> up_blocks -> head (3 channels)."""

    def __init__(self, cfg: VAEConfig, *, init: Init):
        dims = [cfg.base_dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        t_up = tuple(cfg.temperal_downsample[::-1])
        self.conv_in = Conv3d(cfg.z_dim, dims[0], (3, 3, 3), init=init)
        self.mid_block = MidBlock(dims[0], init=init)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                cin //= 2  # the previous upsampler's spatial conv halved the channels
            mode = None
            if i != len(cfg.dim_mult) - 1:
                mode = "upsample3d" if t_up[i] else "upsample2d"
            blocks.append(UpBlock(cin, cout, cfg.num_res_blocks, mode, init=init))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], init=init)
        self.conv_out = Conv3d(dims[-1], 3, (3, 3, 3), init=init)

    def __call__(self, x, cache=None):
        c_in, c_mid, c_blocks, c_out = cache if cache is not None else (None,) * 4
        x, c_in = causal_conv(self.conv_in, x, c_in)
        x, c_mid = self.mid_block(x, c_mid)
        x, c_blocks = _run_list(self.up_blocks, x, c_blocks)
        x, c_out = causal_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, c_mid, c_blocks, c_out)


# ----------------------------------------------------------------------------- model

class WanVAE(nnx.Module):
    """Wan2.1 causal video VAE. ``encode`` -> posterior mode (not normalised); ``decode`` -> [-1, 1]."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, fast_convs: bool = False):
        if len(cfg.temperal_downsample) != len(cfg.dim_mult) - 1:
            raise ValueError(f"temperal_downsample needs {len(cfg.dim_mult) - 1} entries, "
                             f"got {len(cfg.temperal_downsample)}")
        if cfg.attn_scales:
            raise ValueError(f"attn_scales={cfg.attn_scales} is not supported (Wan2.1 uses none; "
                             "diffusers and the reference disagree on stage attention)")
        init = Init(rngs, cfg.param_dtype)
        self.cfg = cfg
        self.encoder = Encoder(cfg, init=init)
        self.quant_conv = Conv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), init=init)
        self.post_quant_conv = Conv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), init=init)
        self.decoder = Decoder(cfg, init=init)
        self.set_fast_convs(fast_convs)

    def set_fast_convs(self, enable: bool = True) -> "WanVAE":
        """Select the fast (``True``) or the exact (``False``, the default) ``Conv3d`` path in every
        conv of this model (see ``Conv3d``); the choice is part of the graphdef. Returns ``self``."""
        for _, module in nnx.iter_modules(self):
            if isinstance(module, Conv3d):
                module.fast = bool(enable)
        return self

    def encode(self, frames: jax.Array) -> jax.Array:
        """frames [B, F, H, W, 3] in [-1, 1], F = 1 + s*k -> mu [B, F_lat, H/8, W/8, z_dim]."""
        cfg = self.cfg
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"encode expects frames [B, F, H, W, 3], got shape {tuple(frames.shape)}")
        latent_frames(frames.shape[1], cfg.temporal_stride)
        s = cfg.spatial_stride
        if frames.shape[2] % s or frames.shape[3] % s:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[3]} is not a multiple of {s}")
        graphdef, state = nnx.split(self)
        return _encode(graphdef, state, frames)

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, F_lat, h, w, z_dim] (not normalised) -> frames [B, 1 + s*(F_lat-1), 8h, 8w, 3]."""
        if z.ndim != 5 or z.shape[-1] != self.cfg.z_dim or z.shape[1] < 1:
            raise ValueError(f"decode expects latents [B, F_lat, h, w, {self.cfg.z_dim}], got {tuple(z.shape)}")
        graphdef, state = nnx.split(self)
        return _decode(graphdef, state, z)


def _stream(step, x: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """Causal streaming over time with static shapes.

    ``step(cache, chunk) -> (cache, y)``. Chunk 0 is ``x[:, :1]`` (run outside the loop, it creates
    the cache pytree); then a ``lax.scan`` over ``(F - 1) // in_size`` chunks, each read from ``x``
    with a dynamic slice and producing ``out_size`` frames written in place into one preallocated
    output, so no O(F) temporaries besides the input and the output.
    x [B, F, ...] -> y [B, F0 + n * out_size, ...] where F0 = frames of chunk 0's output.
    """
    cache, y0 = step(None, x[:, :1])
    n = (x.shape[1] - 1) // in_size
    if n == 0:
        return y0
    f0 = y0.shape[1]
    out = jnp.zeros((y0.shape[0], f0 + n * out_size, *y0.shape[2:]), y0.dtype)
    out = jax.lax.dynamic_update_slice_in_dim(out, y0, 0, axis=1)

    def body(carry, i):
        cache, out = carry
        chunk = jax.lax.dynamic_slice_in_dim(x, 1 + i * in_size, in_size, axis=1)
        cache, y = step(cache, chunk)
        return (cache, jax.lax.dynamic_update_slice_in_dim(out, y, f0 + i * out_size, axis=1)), None

    (_, out), _ = jax.lax.scan(body, (cache, out), jnp.arange(n))
    return out


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, frames):
    cfg = nnx.merge(graphdef, state).cfg

    def step(cache, chunk):
        m = nnx.merge(graphdef, state)
        h, cache = m.encoder(chunk, cache)
        return cache, m.quant_conv(h)[..., : cfg.z_dim]

    return _stream(step, frames.astype(jnp.dtype(cfg.param_dtype)), cfg.temporal_stride, 1)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, z):
    model = nnx.merge(graphdef, state)
    z = model.post_quant_conv(z.astype(jnp.dtype(model.cfg.param_dtype)))

    def step(cache, chunk):
        m = nnx.merge(graphdef, state)
        y, cache = m.decoder(chunk, cache)
        return cache, jnp.clip(y, -1.0, 1.0)

    return _stream(step, z, 1, model.cfg.temporal_stride)


def normalize_latent(mu: jax.Array, cfg: VAEConfig) -> jax.Array:
    """(mu - mean) / std per channel (last axis)."""
    mean = jnp.asarray(cfg.latents_mean, mu.dtype)
    inv_std = 1.0 / jnp.asarray(cfg.latents_std, mu.dtype)
    return (mu - mean) * inv_std


def denormalize_latent(z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Inverse of ``normalize_latent``: z / (1/std) + mean."""
    mean = jnp.asarray(cfg.latents_mean, z.dtype)
    inv_std = 1.0 / jnp.asarray(cfg.latents_std, z.dtype)
    return z / inv_std + mean


# ----------------------------------------------------------------------------- key mapping

_RESAMPLE_CONV = re.compile(r"\.resample\.1\.")


def diffusers_key_to_path(key: str) -> tuple:
    """diffusers AutoencoderKLWan key -> NNX param path, e.g.
    ``encoder.down_blocks.2.resample.1.weight`` -> ``('encoder', 'down_blocks', 2, 'resample', 'kernel')``."""
    parts = _RESAMPLE_CONV.sub(".resample.", key).split(".")
    leaf = {"weight": "kernel", "gamma": "scale", "bias": "bias"}.get(parts[-1])
    if leaf is None:
        raise KeyError(f"unexpected VAE parameter key {key!r}")
    return tuple(int(p) if p.isdigit() else p for p in parts[:-1]) + (leaf,)
