"""The compiled programs for one (model, sampler, GOP geometry): VAE encode, the coded
trajectory, VAE decode. Stateless between GOPs: conditioning and atom counts are arguments.

Programs are cached on the model structure, the sampler and the shapes (``jax.jit`` with static
graph definitions), so every GOP of a video, and every engine with equal settings, shares one
compilation.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.codec.conditioning import build_condition
from gvc_jax.codec.schedule import SamplerConfig, latent_frames
from gvc_jax.codec.trajectory import Picks, Trajectory
from gvc_jax.codec.velocity import WanVelocity
from gvc_jax.models.vae import denormalize_latent, normalize_latent
from gvc_jax.pixels import from_model_range, to_model_range


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_encode(graph, cfg, params, frames):
    """[B, F, H, W, 3] in [-1, 1] -> normalised latent [B, F_lat, h, w, C]."""
    return normalize_latent(nnx.merge(graph, params).encode(frames), cfg)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_decode(graph, cfg, params, latent):
    """Normalised latent -> frames in [-1, 1]."""
    return nnx.merge(graph, params).decode(denormalize_latent(latent, cfg))


class GeometryError(ValueError):
    """A GOP geometry the model cannot code (strides, patch size, RoPE range)."""


def check_geometry(model, height: int, width: int, gop_frames: int) -> None:
    """Refuse, before any model work, a coded size or GOP length the model cannot run."""
    vae_cfg, dit_cfg = model.config.vae, model.config.dit
    s, ts = vae_cfg.spatial_stride, vae_cfg.temporal_stride
    pt, ph, pw = dit_cfg.patch_size
    if height % (s * ph) or width % (s * pw):
        raise GeometryError(f"coded size {width}x{height} must be a multiple of {s * pw}x{s * ph} for this model")
    if gop_frames < 1 or (gop_frames - 1) % ts:
        raise GeometryError(f"GOP length must be {ts}k+1 frames for this model, got {gop_frames}")
    grid = (latent_frames(gop_frames, ts) // pt, height // (s * ph), width // (s * pw))
    if max(grid) > dit_cfg.rope_max_seq_len:
        raise GeometryError(f"a {width}x{height} GOP of {gop_frames} frames is a {grid} token grid (frames, rows, "
                            f"columns); model {model.name} supports at most {dit_cfg.rope_max_seq_len} per axis")


class MemoryLimitError(ValueError):
    """One GOP of this geometry needs more memory than the machine has."""


def estimate_gop_bytes(model, height: int, width: int, gop_frames: int) -> int:
    """A rough upper estimate of the working memory one GOP needs (bytes).

    Terms: the GOP's frames in float32 (a few copies); the VAE at full resolution (a 4-frame chunk
    plus its 2-frame cache at ``base_dim`` channels, a few live tensors); the DiT's token
    activations at FFN width, times ``ESTIMATE_MARGIN``. Calibrated on the default model at two
    sizes (33 frames, peak RSS of the real CLI, ``experiments/bench_memory.py``): the working set
    (peak minus the ~0.47 GB process baseline) is 0.24 GB at 256x144 and 0.95 GB at 512x288; the
    estimate is 0.26 GB and 1.02 GB (docs/benchmarks.md).
    """
    vae, dit = model.config.vae, model.config.dit
    s = vae.spatial_stride
    pt, ph, pw = dit.patch_size
    pixels = gop_frames * height * width * 3 * 4 * 4
    vae_act = 6 * height * width * vae.base_dim * 4 * 4
    tokens = (latent_frames(gop_frames, vae.temporal_stride) // pt) * (height // (s * ph)) * (width // (s * pw))
    dit_act = tokens * max(dit.ffn_dim, dit.dim) * 4 * 4
    return int(ESTIMATE_MARGIN * (pixels + vae_act + dit_act))


ESTIMATE_MARGIN = 1.7  # measured working set / raw terms, rounded up (see estimate_gop_bytes)


def available_bytes() -> int | None:
    """Memory the arrays can use: the accelerator's limit, or the host's available RAM (None: unknown)."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        import os

        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None


def check_memory(model, height: int, width: int, gop_frames: int) -> None:
    """Refuse, before any model work, a GOP that cannot fit in this machine's memory."""
    need, have = estimate_gop_bytes(model, height, width, gop_frames), available_bytes()
    if have is not None and need > have:
        raise MemoryLimitError(f"a {width}x{height} GOP of {gop_frames} frames needs about {need / 2**30:.1f} GiB, "
                               f"this machine has {have / 2**30:.1f} GiB available")


class GopEngine:
    """Everything needed to code GOPs of one geometry with one model and sampler."""

    def __init__(self, model, sampler: SamplerConfig, height: int, width: int, gop_frames: int):
        vae_cfg, dit_cfg = model.config.vae, model.config.dit
        check_geometry(model, height, width, gop_frames)
        s = vae_cfg.spatial_stride
        self.model = model
        self.sampler = sampler
        self.gop_frames = gop_frames
        self.height, self.width = height, width
        self.latent_shape = (latent_frames(gop_frames, vae_cfg.temporal_stride), height // s, width // s,
                             vae_cfg.z_dim)
        vae_graph, self.vae_params = nnx.split(model.vae)
        dit_graph, self.dit_params = nnx.split(model.dit)
        self._encode = functools.partial(_vae_encode, vae_graph, vae_cfg)
        self._decode = functools.partial(_vae_decode, vae_graph, vae_cfg)
        velocity = WanVelocity(dit_graph, dit_cfg)
        self.trajectory = Trajectory(velocity, sampler, self.latent_shape, velocity.time_features)
        self._unconditioned = None

    def condition(self, **kw) -> dict:
        """``conditioning.build_condition`` for this model and geometry, as device arrays."""
        cond = build_condition(self.model.config.dit, self.model.text_context, self.latent_shape,
                               pixel_frames=self.gop_frames, temporal_stride=self.model.config.vae.temporal_stride,
                               **kw)
        return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), cond)

    def unconditioned(self) -> dict:
        """The conditioning of a GOP without anchors (computed once)."""
        if self._unconditioned is None:
            self._unconditioned = self.condition()
        return self._unconditioned

    def target_latent(self, frames: np.ndarray) -> jax.Array:
        """uint8 [G, H, W, 3] -> normalised latent [F, h, w, C]."""
        return self.latent_of(to_model_range(frames))

    def latent_of(self, video) -> jax.Array:
        """float [G, H, W, 3] in [-1, 1] (e.g. anchors with zeros between) -> normalised latent."""
        return self._encode(self.vae_params, jnp.asarray(video, jnp.float32)[None])[0]

    def run(self, gop: int, cond: dict, atoms_per_frame=None, *, target=None, picks: Optional[Picks] = None,
            on_step: Optional[Callable[[int, int], None]] = None):
        """The shared trajectory: -> (final latent, canonical picks)."""
        return self.trajectory.run(self.dit_params, cond, gop, atoms_per_frame, target=target, picks=picks,
                                   on_step=on_step)

    def frames(self, latent) -> np.ndarray:
        """Normalised latent -> uint8 [G, H, W, 3]."""
        return from_model_range(np.asarray(self._decode(self.vae_params, jnp.asarray(latent)[None])[0]))
