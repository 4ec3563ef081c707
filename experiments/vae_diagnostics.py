"""Where a VAE's reconstruction error comes from, on the dev clip (bigbuckbunny, 256x144).

Prints one JSON object:

- ``pca_bound_db``: PSNR of a linear autoencoder (PCA of 4x4x4 RGB patches, fitted on training
  clips from ``--clips``, kept to 16 / 24 / 32 components) on frames 1-64: what a 16-channel
  latent at strides 4x4x4 allows without any learning beyond a linear map. Needs the clip cache
  of ``train_default.py`` (``--clips WORKDIR/clips.npy``); skipped without it.
- ``vae_db``: the model's VAE round trip of frames 0-32; ``lowpass_db``: the same after an 8x8 box
  blur of both videos (is the error low frequency?); ``colour_matrix_db``: after the best global
  3x3 colour matrix + offset fitted to the output (is it a colour cast?).
- ``linear_oracle_db``: a least-squares linear decoder from each latent pixel's 3x3 neighbourhood
  to its 4x4x4 pixels, fitted and tested on the same GOP (an optimistic bound on what any decoder
  gets from this encoder's latents).
- ``flat``: flat colours (5 x 32 x 32) in -> mean colour out and PSNR.

    python experiments/vae_diagnostics.py [--model DIR] [--clips /tmp/gvc_default/clips.npy]
"""
from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp
import numpy as np

import gvc_jax  # noqa: F401  (environment before jax)

FLAT = ((0.1, 0.6, 0.1), (0.45, 0.5, 0.33), (0.8, 0.2, 0.2), (0.2, 0.3, 0.8),
        (0.5, 0.5, 0.5), (0.9, 0.9, 0.9), (0.05, 0.05, 0.05), (0.6, 0.4, 0.2))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    return float(10 * np.log10(peak ** 2 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def patches(v: np.ndarray, t: int = 4, s: int = 4) -> np.ndarray:
    """[F, H, W, 3] -> [N, t*s*s*3]: frames 1.. grouped by t (the causal VAE's chunks), s x s tiles."""
    v = v[1:1 + ((v.shape[0] - 1) // t) * t]
    f, h, w, c = v.shape
    return v.reshape(f // t, t, h // s, s, w // s, s, c).transpose(0, 2, 4, 1, 3, 5, 6).reshape(-1, t * s * s * c)


def pca_bound(clips_path: str, video: np.ndarray, ks=(16, 24, 32)) -> dict:
    clips = np.load(clips_path, mmap_mode="r")
    pick = np.random.default_rng(0).choice(len(clips), min(30, len(clips)), replace=False)
    x = np.concatenate([patches(np.asarray(clips[i], np.float32) / 255) for i in pick])
    mu = x.mean(0)
    _, vecs = np.linalg.eigh(np.cov((x - mu)[::7].T))
    vecs = vecs[:, ::-1]
    p = patches(video.astype(np.float32) / 255)
    return {str(k): psnr(np.clip((p - mu) @ vecs[:, :k] @ vecs[:, :k].T + mu, 0, 1), p) for k in ks}


def linear_oracle(mu: np.ndarray, x: np.ndarray) -> float:
    """mu [9, h, w, z] latents of x [33, H, W, 3] in [-1, 1]."""
    f, h, w, _ = mu[1:].shape
    tgt = x[1:].reshape(f, 4, h, 4, w, 4, 3).transpose(0, 2, 4, 1, 3, 5, 6).reshape(f * h * w, -1)
    pad = np.pad(mu[1:], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    feats = np.concatenate([pad[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)
    a = np.concatenate([feats.reshape(f * h * w, -1), np.ones((f * h * w, 1))], 1)
    coef = np.linalg.lstsq(a, tgt, rcond=None)[0]
    return psnr(np.clip(a @ coef, -1, 1), tgt, peak=2.0)


def main(argv=None) -> int:
    from scipy.ndimage import uniform_filter

    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.models.registry import resolve_model
    from gvc_jax.pixels import from_model_range, to_model_range

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--clips", default=None, help="train_default.py clip cache, for the PCA bound")
    args = p.parse_args(argv)

    model = resolve_model(args.model)
    video, _ = read_video(sample_clip_path("bigbuckbunny"), max_frames=65, resize=(256, 144))
    out = {"model": model.name}
    if args.clips and os.path.isfile(args.clips):
        out["pca_bound_db"] = pca_bound(args.clips, video)

    x = to_model_range(video[:33])
    mu = np.asarray(model.vae.encode(jnp.asarray(x)[None]))[0]
    rec = from_model_range(np.asarray(model.vae.decode(jnp.asarray(mu)[None]))[0])
    a, b = video[:33].astype(np.float64) / 255, rec.astype(np.float64) / 255
    blur = lambda v: uniform_filter(v, size=(1, 8, 8, 1))  # noqa: E731
    design = np.concatenate([b.reshape(-1, 3), np.ones((b.size // 3, 1))], 1)
    fitted = design @ np.linalg.lstsq(design, a.reshape(-1, 3), rcond=None)[0]
    out.update(vae_db=psnr(a, b), lowpass_db=psnr(blur(a), blur(b)),
               colour_matrix_db=psnr(a.reshape(-1, 3), fitted),
               linear_oracle_db=linear_oracle(mu, x.astype(np.float64)))

    cols = np.array(FLAT, np.float32)
    flat = np.broadcast_to(cols[:, None, None, None, :] * 2 - 1, (len(cols), 5, 32, 32, 3))
    y = (np.asarray(model.vae.decode(model.vae.encode(jnp.asarray(flat)))) + 1) / 2
    out["flat"] = [{"in": list(map(float, c)), "out": np.round(yy[:, 8:24, 8:24].mean((0, 1, 2)), 3).tolist(),
                    "psnr_db": psnr(yy, np.broadcast_to(c, yy.shape))} for c, yy in zip(cols, y, strict=False)]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
