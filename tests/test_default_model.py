"""The shipped default model (gvc_jax/assets/default_model): manifest, fingerprint, sizes, and
that its VAE and DiT actually work on real frames (bigbuckbunny, never used in training)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from gvc_jax.models.registry import ASSET_DIR

MANIFEST = os.path.join(ASSET_DIR, "gvc_model.json")
# Measured at export time (docs/default_model.md): VAE PSNR on bigbuckbunny frames 0-4 at
# 256x144; the test allows 1 dB less.
VAE_PSNR_FIRST5 = 23.7
MAX_BYTES = 20 * 1024 * 1024

pytestmark = pytest.mark.skipif(not os.path.isfile(MANIFEST), reason="default model not shipped")


@pytest.fixture(scope="module")
def loaded():
    from gvc_jax.models.checkpoint import load_model

    return load_model(ASSET_DIR)


@pytest.fixture(scope="module")
def bbb5():
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    video, _ = read_video(sample_clip_path("bigbuckbunny"), max_frames=5, resize=(256, 144))
    return video


def test_fingerprint_matches_manifest(loaded):
    with open(MANIFEST) as f:
        manifest = json.load(f)
    assert loaded.fingerprint == manifest["fingerprint"]
    assert manifest["name"] == loaded.config.name == "gvc-default-v2"


def test_directory_size_limit():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ASSET_DIR) for f in fs)
    assert 0 < total <= MAX_BYTES


def test_configs_as_documented(loaded):
    dit, vae = loaded.config.dit, loaded.config.vae
    assert (vae.z_dim, vae.spatial_stride, vae.temporal_stride, vae.base_dim) == (16, 4, 4, 16)
    assert dit.in_channels == 2 * vae.z_dim + 4 and dit.out_channels == vae.z_dim
    assert (dit.dim, dit.num_layers, dit.text_dim, dit.image_dim) == (128, 4, 16, None)
    std = np.asarray(vae.latents_std)
    assert std.shape == (16,) and np.all(std > 0)


def test_resolve_default_model_is_the_shipped_one(loaded):
    from gvc_jax.models.registry import resolve_model

    m = resolve_model(None)
    assert m.fingerprint == loaded.fingerprint
    assert m.text_context.shape == (512, 16)


def test_vae_round_trip_psnr(loaded, bbb5):
    from gvc_jax.metrics import psnr
    from gvc_jax.pixels import from_model_range, to_model_range

    mu = loaded.vae.encode(jnp.asarray(to_model_range(bbb5))[None])
    assert mu.shape == (1, 2, 36, 64, 16)
    rec = from_model_range(np.asarray(loaded.vae.decode(mu))[0])
    assert rec.shape == bbb5.shape
    assert psnr(bbb5, rec) > VAE_PSNR_FIRST5 - 1.0


def test_dit_denoises_real_latents(loaded, bbb5):
    """x0_hat = x_t - t u from the trained DiT beats the trivial estimate (0 = the latent mean)."""
    from gvc_jax.models.vae import normalize_latent
    from gvc_jax.pixels import to_model_range

    cfg = loaded.config
    x0 = normalize_latent(loaded.vae.encode(jnp.asarray(to_model_range(bbb5))[None]), cfg.vae)
    x0 = x0[:, :, :16, :32]  # a 16x32 latent crop keeps the test fast
    y = jnp.zeros(x0.shape[:-1] + (4 + cfg.vae.z_dim,))  # T2V: mask 0, conditioning latent 0
    eps = jnp.asarray(np.random.default_rng(0).standard_normal(x0.shape), jnp.float32)
    ctx = jnp.zeros((1, cfg.dit.text_len, cfg.dit.text_dim))
    for t in (0.3, 0.7):
        xt = (1 - t) * x0 + t * eps
        u = loaded.dit(jnp.concatenate([xt, y], -1), jnp.array([1000.0 * t]), ctx)
        assert u.shape == x0.shape and bool(jnp.all(jnp.isfinite(u)))
        x0_hat = xt - t * u
        assert float(jnp.mean((x0_hat - x0) ** 2)) < 0.5 * float(jnp.mean(x0 ** 2))
