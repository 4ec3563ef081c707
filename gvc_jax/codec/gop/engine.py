"""The compiled programs for one (model, sampler, GOP geometry): VAE encode, the coded
trajectory, VAE decode. Stateless between GOPs: conditioning and atom counts are arguments.

Programs are cached on the model structure, the sampler and the shapes (``jax.jit`` with static
graph definitions), so every GOP of a video, and every engine with equal settings, shares one
compilation.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.codec.gop.conditioning import build_condition
from gvc_jax.codec.gop.variants import VariantError
from gvc_jax.codec.sampling.schedule import SamplerConfig, latent_frames
from gvc_jax.codec.sampling.trajectory import Trajectory
from gvc_jax.codec.sampling.velocity import WanVelocity
from gvc_jax.models.clip import image_tokens
from gvc_jax.models.vae import denormalize_latent, normalize_latent
from gvc_jax.parallel import GopMesh
from gvc_jax.pixels import from_model_range, resize_frames, to_model_range


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_encode(graph, cfg, params, frames):
    """[B, F, H, W, 3] in [-1, 1] -> normalised latent [B, F_lat, h, w, C]."""
    return normalize_latent(nnx.merge(graph, params).encode(frames), cfg)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_decode(graph, cfg, params, latent):
    """Normalised latent -> frames in [-1, 1]."""
    return nnx.merge(graph, params).decode(denormalize_latent(latent, cfg))


def _vae_encode_one(graph, cfg, params, frames):
    """One GOP, as each device of a mesh runs it: the body of ``_vae_encode`` with a batch of one."""
    return normalize_latent(nnx.merge(graph, params).encode(frames[None]), cfg)[0]


def _vae_decode_one(graph, cfg, params, latent):
    return nnx.merge(graph, params).decode(denormalize_latent(latent[None], cfg))[0]


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
    dev = jax.local_devices()[0]
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


def check_memory(model, height: int, width: int, gop_frames: int, devices: int = 1) -> None:
    """Refuse, before any model work, a GOP that cannot fit in this machine's memory.

    With ``devices`` GOPs side by side on CPU devices they share the host's memory; accelerators
    each hold their own GOP, so the per-device limit applies to one."""
    need, have = estimate_gop_bytes(model, height, width, gop_frames), available_bytes()
    side_by_side = devices if jax.devices()[0].platform == "cpu" else 1
    if have is not None and need * side_by_side > have:
        what = f"{side_by_side} GOPs side by side need" if side_by_side > 1 else "needs"
        raise MemoryLimitError(f"a {width}x{height} GOP of {gop_frames} frames {what} about "
                               f"{need * side_by_side / 2**30:.1f} GiB, "
                               f"this machine has {have / 2**30:.1f} GiB available"
                               + (" (use fewer --devices)" if side_by_side > 1 else ""))


class GopEngine:
    """Everything needed to code GOPs of one geometry with one model and sampler.

    ``mesh`` (``parallel.GopMesh``, default one device): the ``*_many`` methods code a chunk of up
    to ``mesh.size`` GOPs, one per device, each with the single-GOP program.
    """
    def __init__(self, model, sampler: SamplerConfig, height: int, width: int, gop_frames: int,
                 mesh: Optional[GopMesh] = None):
        vae_cfg, dit_cfg = model.config.vae, model.config.dit
        check_geometry(model, height, width, gop_frames)
        s = vae_cfg.spatial_stride
        # the stages' pixel sizes (a multi-resolution plan), the coded size last
        self.stage_sizes = ((width, height),) if sampler.stages is None else sampler.stages.sizes
        for w, h in self.stage_sizes[:-1]:  # (the Trajectory checks that the last stage is the coded grid)
            check_geometry(model, h, w, gop_frames)
        self.model = model
        self.sampler = sampler
        self.mesh = mesh or GopMesh(1)
        self.gop_frames = gop_frames
        self.height, self.width = height, width
        self.latent_shape = (latent_frames(gop_frames, vae_cfg.temporal_stride), height // s, width // s,
                             vae_cfg.z_dim)
        vae_graph, vae_params = nnx.split(model.vae)
        dit_graph, dit_params = nnx.split(model.dit)
        # Weights on every device of the mesh (once); device 0's copy for single-device work.
        self._vae_params_all = self.mesh.replicate(vae_params)
        self._dit_params_all = self.mesh.shard_weights(dit_params)  # split over `model` with --weight-shards
        self.vae_params, self.dit_params = self.mesh.local(self._vae_params_all), self.mesh.local(self._dit_params_all)
        self._home = next(iter(jax.tree.leaves(self.vae_params)[0].devices()))  # where single-device work runs
        self._encode = functools.partial(_vae_encode, vae_graph, vae_cfg)
        self._decode = functools.partial(_vae_decode, vae_graph, vae_cfg)
        velocity = WanVelocity(dit_graph, dit_cfg)
        self.stage_grids = tuple((h // s, w // s) for w, h in self.stage_sizes)  # latent (h, w) per stage
        self.trajectory = Trajectory(velocity, sampler, self.latent_shape, velocity.time_features,
                                     stage_grids=self.stage_grids)
        self._encode_many = self.mesh.map(
            ("vae_encode", vae_graph, vae_cfg), functools.partial(_vae_encode_one, vae_graph, vae_cfg),
            plain=lambda params, frames: self._encode(params, frames[None])[0])
        self._decode_many = self.mesh.map(
            ("vae_decode", vae_graph, vae_cfg), functools.partial(_vae_decode_one, vae_graph, vae_cfg),
            plain=lambda params, latent: self._decode(params, latent[None])[0])
        self._unconditioned: Optional[tuple] = None

    def condition(self, anchors: Optional[Dict[int, np.ndarray]] = None, image_tokens=None) -> tuple:
        """The conditioning of every stage (``conditioning.build_condition``, as device arrays), built
        from the same decoded anchors: ``anchors`` maps a GOP position to a decoded image (uint8
        [H, W, 3] at the coded size), resized for a lower stage (bicubic, ``pixels.resize_frames``)
        and encoded with the VAE at that stage's size."""
        conds = []
        f_lat, _, _, channels = self.latent_shape
        for (w, h), grid in zip(self.stage_sizes, self.stage_grids, strict=True):
            kw: dict = {}
            if anchors:
                video = np.zeros((self.gop_frames, h, w, 3), np.float32)
                for pos, image in anchors.items():
                    video[pos] = to_model_range(resize_frames(np.asarray(image)[None], (w, h))[0])
                kw = dict(cond_latent=self.latent_of(video), visible=tuple(anchors))
            cond = build_condition(self.model.config.dit, self.model.text_context, (f_lat, *grid, channels),
                                   pixel_frames=self.gop_frames,
                                   temporal_stride=self.model.config.vae.temporal_stride, image_tokens=image_tokens,
                                   **kw)
            conds.append(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), cond))
        return tuple(conds)

    def image_tokens(self, images: Sequence[np.ndarray]) -> jax.Array:
        """CLIP tokens of decoded anchor images (uint8 [H, W, 3] each), concatenated: [N * tokens, width]."""
        if self.model.image_encoder is None:
            raise VariantError(f"model {self.model.name} has an image branch but no CLIP image encoder "
                               "(convert its release with python -m weights_convert release ...)")

        tokens = image_tokens(self.model.image_encoder, np.stack([np.asarray(i) for i in images]))
        return jnp.asarray(tokens, jnp.float32).reshape(-1, tokens.shape[-1])

    def unconditioned(self) -> tuple:
        """The conditioning of a GOP without anchors (computed once)."""
        if self._unconditioned is None:
            self._unconditioned = self.condition()
        return self._unconditioned

    def target_latents(self, gop_frames: Sequence[np.ndarray]) -> list:
        """The target latents of a chunk of GOPs (uint8 [G, H, W, 3] each), one GOP per device."""
        return self._encode_many(self._vae_params_all, [jnp.asarray(to_model_range(f), jnp.float32)
                                                        for f in gop_frames])  # None: another process's GOP

    def latent_of(self, video) -> jax.Array:
        """float [G, H, W, 3] in [-1, 1] (e.g. anchors with zeros between) -> normalised latent.
        The frames are committed to the device of the weights, as a GOP's are on one device
        (``GopMesh.map``): at the coded size the anchors' encode is then the targets' compiled program."""
        frames = jax.device_put(jnp.asarray(video, jnp.float32)[None], self._home)
        return self._encode(self.vae_params, frames)[0]

    def run_many(self, gops: Sequence[int], conds: Sequence[dict], atoms: Sequence, *, targets: Sequence,
                 picks: Sequence, on_step: Optional[Callable[[int, int], None]] = None) -> list:
        """The shared trajectory of a chunk of GOPs, one per device: -> [(final latent, picks)] in order.
        Per GOP one of ``targets[g]`` (encode) and ``picks[g]`` (decode) is given."""
        return self.trajectory.run_many(self.mesh, self._dit_params_all, conds, gops, atoms, targets=targets,
                                        picks=picks, on_step=on_step)

    def frames_many(self, latents: Sequence) -> list:
        """The decoded frames (uint8 [G, H, W, 3]) of a chunk of GOP latents, one GOP per device."""
        zeros = np.zeros(self.latent_shape, np.float32)  # another process's GOP: a placeholder
        out = self._decode_many(self._vae_params_all, [jnp.asarray(zeros if x is None else x) for x in latents])
        return [None if x is None else from_model_range(np.asarray(x)) for x in out]
