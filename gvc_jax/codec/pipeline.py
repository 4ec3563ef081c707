"""Video <-> bitstream: GOP planning, VAE, the coded trajectory and the container (T2V).

``encode_video`` and ``decode_video`` share ``GopEngine.run``: the encoder gives the target
latent, the decoder the picks read from the stream; everything else is the same code.
"""
from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.codec import bitstream
from gvc_jax.codec.gops import GopSpan, assemble, gop_frames_of, plan_gops
from gvc_jax.codec.schedule import SamplerConfig, f32
from gvc_jax.codec.trajectory import Picks, Trajectory
from gvc_jax.codec.velocity import WanVelocity
from gvc_jax.io import crop, from_model_range, pad_to_multiple, to_model_range
from gvc_jax.models.vae import denormalize_latent, latent_frames, normalize_latent

SIZE_MULTIPLE = 16


class DriftError(RuntimeError):
    """The decoder's final latent differs from the encoder's (hash mismatch)."""


def latent_hash(latent) -> bytes:
    """8-byte digest of a final latent's float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(latent, np.float32)).tobytes()).digest()[:8]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_encode(graph, cfg, params, frames):
    """[B, F, H, W, 3] in [-1, 1] -> normalised latent [B, F_lat, h, w, C]."""
    return normalize_latent(nnx.merge(graph, params).encode(frames), cfg)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_decode(graph, cfg, params, latent):
    """Normalised latent -> frames in [-1, 1]."""
    return nnx.merge(graph, params).decode(denormalize_latent(latent, cfg))


class GopEngine:
    """Everything needed to code GOPs of one geometry with one model and sampler."""

    def __init__(self, model, sampler: SamplerConfig, height: int, width: int, gop_frames: int):
        vae_cfg, dit_cfg = model.config.vae, model.config.dit
        s = vae_cfg.spatial_stride
        if height % s or width % s or (height // s) % 2 or (width // s) % 2:
            raise ValueError(f"coded size {width}x{height} must be a multiple of {2 * s}")
        self.model = model
        self.sampler = sampler
        self.latent_shape = (latent_frames(gop_frames), height // s, width // s, vae_cfg.z_dim)
        vae_graph, self.vae_params = nnx.split(model.vae)
        dit_graph, self.dit_params = nnx.split(model.dit)
        self._encode = functools.partial(_vae_encode, vae_graph, vae_cfg)
        self._decode = functools.partial(_vae_decode, vae_graph, vae_cfg)
        velocity = WanVelocity(dit_graph, dit_cfg)
        self.trajectory = Trajectory(velocity, sampler, self.latent_shape, velocity.time_features)
        self.cond = {"context": jnp.asarray(model.text_context, jnp.float32)}
        extra = dit_cfg.in_channels - vae_cfg.z_dim
        if extra:  # a conditioned model (mask + conditioning latent) run unconditioned: zeros (T2V)
            self.cond["y"] = jnp.zeros(self.latent_shape[:3] + (extra,), jnp.float32)

    def target_latent(self, frames: np.ndarray) -> jax.Array:
        """uint8 [G, H, W, 3] -> normalised latent [F, h, w, C]."""
        return self._encode(self.vae_params, jnp.asarray(to_model_range(frames))[None])[0]

    def run(self, gop: int, *, target=None, picks: Optional[Picks] = None):
        """The shared trajectory: -> (final latent, canonical picks)."""
        return self.trajectory.run(self.dit_params, self.cond, gop, target=target, picks=picks)

    def frames(self, latent) -> np.ndarray:
        """Normalised latent -> uint8 [G, H, W, 3]."""
        return from_model_range(np.asarray(self._decode(self.vae_params, jnp.asarray(latent)[None])[0]))


def picks_to_record(picks: Picks, sampler: SamplerConfig) -> tuple:
    """[T, F, M] canonical picks -> ``GopRecord.picks`` (stochastic steps only, used slots only)."""
    idx, coef = np.asarray(picks.indices), np.asarray(picks.coeffs)
    out = []
    for s in range(sampler.stochastic_steps):
        row = []
        for f, m in enumerate(sampler.atoms_per_frame):
            if not np.all(coef[s, f, :m] != 0) or np.any(coef[s, f, m:] != 0):
                raise AssertionError(f"step {s} frame {f}: expected exactly {m} used atoms")
            row.append((idx[s, f, :m].astype(np.int32), np.sign(coef[s, f, :m]).astype(np.int8)))
        out.append(tuple(row))
    return tuple(out)


def record_to_picks(record_picks, sampler: SamplerConfig) -> Picks:
    """Inverse of ``picks_to_record``."""
    frames = len(sampler.atoms_per_frame)
    picks = Picks.empty(sampler.steps, frames, sampler.max_atoms)
    for s, row in enumerate(record_picks):
        for f, (idx, signs) in enumerate(row):
            picks.indices[s, f, :len(idx)] = idx
            picks.coeffs[s, f, :len(idx)] = signs
    return picks


def sampler_from_header(h: "bitstream.Header") -> SamplerConfig:
    return SamplerConfig(steps=h.steps, tail=h.tail, g_scale=h.g_scale, shift=h.shift, K=h.K,
                         atoms_per_frame=tuple(h.atoms_per_frame), codebook=h.codebook, seed=h.seed)


@dataclass
class GopReport:
    index: int
    seconds: float
    latent_mse: Optional[float] = None  # encoder: final latent vs target
    drift: bool = False                 # decoder: hash mismatch


@dataclass
class CodecResult:
    """What encode/decode produced: the reconstructed video (uint8) and per-GOP reports."""

    video: np.ndarray
    fps: float
    header: "bitstream.Header"
    gops: List[GopReport] = field(default_factory=list)
    stream: bytes = b""


def _fps_fraction(fps: float) -> tuple:
    from fractions import Fraction

    fr = Fraction(fps).limit_denominator(1001)
    return max(fr.numerator, 1), max(fr.denominator, 1)


def encode_video(video: np.ndarray, fps: float, model, sampler: SamplerConfig, *, gop_frames: int = 33,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> CodecResult:
    """uint8 [F, H, W, 3] -> a T2V ``.gvc`` stream (``result.stream``) and the decoder's video."""
    num_frames, orig_h, orig_w = video.shape[:3]
    padded = pad_to_multiple(video, SIZE_MULTIPLE)
    height, width = padded.shape[1:3]
    spans = plan_gops(num_frames, gop_frames, "t2v", model.config.vae.temporal_stride)
    sampler = sampler.replace(shift=f32(sampler.shift), g_scale=f32(sampler.g_scale))
    engine = GopEngine(model, sampler, height, width, gop_frames)
    fps_num, fps_den = _fps_fraction(fps)
    header = bitstream.Header(
        model_fingerprint=bytes.fromhex(model.fingerprint)[:8], preset=model.name, variant="t2v",
        width=width, height=height, orig_width=orig_w, orig_height=orig_h, num_frames=num_frames,
        fps_num=fps_num, fps_den=fps_den, gop_frames=gop_frames, num_gops=len(spans), steps=sampler.steps,
        tail=sampler.tail, shift=sampler.shift, g_scale=sampler.g_scale, K=sampler.K,
        atoms_per_frame=tuple(sampler.atoms_per_frame), seed=sampler.seed, codebook=sampler.codebook)
    records, clips, reports = [], [], []
    if progress:
        progress("encode", 0, len(spans))
    for span in spans:
        t0 = time.perf_counter()
        target = engine.target_latent(gop_frames_of(padded, span))
        latent, picks = engine.run(span.index, target=target)
        latent = jax.block_until_ready(latent)
        records.append(bitstream.GopRecord(picks=picks_to_record(picks, sampler), latent_hash=latent_hash(latent)))
        clips.append(engine.frames(latent))
        mse = float(jnp.mean((latent - target) ** 2))
        reports.append(GopReport(span.index, time.perf_counter() - t0, latent_mse=mse))
        if progress:
            progress("encode", span.index + 1, len(spans))
    stream = bitstream.write(header, records)
    out = crop(assemble(clips, spans, num_frames), orig_h, orig_w)
    return CodecResult(out, fps, header, reports, stream)


def decode_video(stream: bytes, model, *, check_fingerprint: bool = True, strict: bool = False,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> CodecResult:
    """A ``.gvc`` stream -> uint8 [F, H, W, 3]; raises ``bitstream.BitstreamError`` if malformed."""
    header, records = bitstream.read(stream)
    if header.variant != "t2v":
        raise bitstream.BitstreamError(f"variant {header.variant!r} is not supported by this decoder yet")
    if check_fingerprint and header.model_fingerprint != bytes.fromhex(model.fingerprint)[:8]:
        raise ModelMismatchError(
            f"the stream was made with model {header.preset!r} (fingerprint {header.model_fingerprint.hex()}), "
            f"but the loaded model {model.name!r} has fingerprint {model.fingerprint[:16]}")
    sampler = sampler_from_header(header)
    engine = GopEngine(model, sampler, header.height, header.width, header.gop_frames)
    spans = plan_gops(header.num_frames, header.gop_frames, "t2v", model.config.vae.temporal_stride)
    if len(spans) != header.num_gops:
        raise bitstream.BitstreamError(f"header says {header.num_gops} GOPs, the frame count implies {len(spans)}")
    clips, reports = [], []
    if progress:
        progress("decode", 0, len(spans))
    for span, record in zip(spans, records):
        t0 = time.perf_counter()
        latent, _ = engine.run(span.index, picks=record_to_picks(record.picks, sampler))
        drift = latent_hash(latent) != record.latent_hash
        if drift and strict:
            raise DriftError(f"GOP {span.index}: decoded latent differs from the encoder's (hash mismatch)")
        clips.append(engine.frames(latent))
        reports.append(GopReport(span.index, time.perf_counter() - t0, drift=drift))
        if progress:
            progress("decode", span.index + 1, len(spans))
    video = crop(assemble(clips, spans, header.num_frames), header.orig_height, header.orig_width)
    return CodecResult(video, header.fps_num / header.fps_den, header, reports, stream)


class ModelMismatchError(ValueError):
    """The loaded model is not the one the stream was encoded with."""
