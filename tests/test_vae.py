"""Parity of gvc_jax.models.vae.WanVAE with diffusers AutoencoderKLWan (CPU, fp32, tiny sizes).

Weights go torch -> Flax through ``diffusers_key_to_path`` / ``weights_convert.to_flax.torch_to_flax`` only, so
these tests also check the key mapping. Tiny config of docs/method_notes.md §Parity test models
(it has the mid-block attention and non-trivial ``conv_shortcut``s: encoder 8->16, decoder
8->16), plus a second layout with 2 resnets per stage and temporal stride 2 (Down3d/Up3d at other
depths).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from gvc_jax.models.checkpoint import CheckpointError
from gvc_jax.models.configs import TINY_VAE, VAEConfig
from gvc_jax.models.vae import (
    Conv3d,
    WanVAE,
    denormalize_latent,
    diffusers_key_to_path,
    latent_frames,
    normalize_latent,
)
from weights_convert.to_flax import load_diffusers_vae, torch_to_flax

diffusers = pytest.importorskip("diffusers")

ATOL = 1e-4
# A second layout: two resnets per stage, one stage that is temporal (stride 2 in time, 2 in space).
ALT_VAE = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2), num_res_blocks=2, attn_scales=(),
                    temperal_downsample=(True,), latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)


def _torch_vae(cfg: VAEConfig, seed: int = 0):
    torch.manual_seed(seed)
    tv = diffusers.AutoencoderKLWan(
        base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
        attn_scales=list(cfg.attn_scales), temperal_downsample=list(cfg.temperal_downsample),
        latents_mean=list(cfg.latents_mean), latents_std=list(cfg.latents_std)).eval()
    with torch.no_grad():  # non-trivial RMS gammas, so their reshape is tested too
        for name, p in tv.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    return tv


def _pair(cfg: VAEConfig):
    tv = _torch_vae(cfg)
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
    return tv, load_diffusers_vae(WanVAE(cfg, rngs=nnx.Rngs(1)), sd)


@pytest.fixture(scope="module")
def tiny():
    return _pair(TINY_VAE)


def _to_jax(x: torch.Tensor) -> jax.Array:  # [B, C, F, H, W] -> [B, F, H, W, C]
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))


def _to_np(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("cfg", [TINY_VAE, ALT_VAE], ids=["tiny", "alt"])
def test_key_mapping_covers_every_param_once(cfg):
    tv = _torch_vae(cfg)
    abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
    shapes = {path: v.shape for path, v in nnx.state(abstract, nnx.Param).flat_state()}
    covered = []
    for key, t in tv.state_dict().items():
        path = diffusers_key_to_path(key)
        assert path in shapes, f"{key} -> {path} is not a param"
        assert torch_to_flax(key, t.numpy(), shapes[path]).shape == shapes[path]
        covered.append(path)
    assert len(covered) == len(set(covered)), "two keys map to the same param"
    assert set(covered) == set(shapes)
    if cfg is TINY_VAE:
        assert len(covered) == 146
        assert ("encoder", "down_blocks", 1, "resample", "kernel") in shapes  # Down2d
        assert ("encoder", "down_blocks", 3, "time_conv", "kernel") in shapes  # Down3d
        assert ("encoder", "mid_block", "attentions", 0, "to_qkv", "kernel") in shapes
        assert ("decoder", "up_blocks", 1, "resnets", 0, "conv_shortcut", "kernel") in shapes
    assert diffusers_key_to_path("decoder.up_blocks.0.upsamplers.0.resample.1.weight") == (
        "decoder", "up_blocks", 0, "upsamplers", 0, "resample", "kernel")


def test_key_mapping_full_wan_size():
    """The real Wan2.1 VAE (194 keys, 126.9 M params), shapes only (torch meta device, eval_shape)."""
    with torch.device("meta"):
        tv = diffusers.AutoencoderKLWan()
    abstract = nnx.eval_shape(lambda: WanVAE(VAEConfig(), rngs=nnx.Rngs(0)))
    shapes = {path: v.shape for path, v in nnx.state(abstract, nnx.Param).flat_state()}
    sd = tv.state_dict()
    covered = set()
    for key, t in sd.items():  # zero-stride stand-ins: the real layout transform, ~no memory
        fake = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), tuple(t.shape), (0,) * t.ndim)
        path = diffusers_key_to_path(key)
        assert torch_to_flax(key, fake, shapes[path]).shape == shapes[path]
        covered.add(path)
    assert len(sd) == 194 and covered == set(shapes)
    assert sum(int(np.prod(s)) for s in shapes.values()) == sum(t.numel() for t in sd.values()) == 126_892_531


def test_torch_to_flax_layouts_and_errors():
    w = np.arange(2 * 3 * 3 * 1 * 1, dtype=np.float32).reshape(2, 3, 3, 1, 1)  # Conv3d [O,I,t,h,w]
    k = torch_to_flax("x.time_conv.weight", w, (3, 1, 1, 3, 2))
    assert k[1, 0, 0, 2, 1] == w[1, 2, 1, 0, 0]
    lin = torch_to_flax("a.to_qkv.weight", np.arange(6.0).reshape(3, 2, 1, 1), (2, 3))
    np.testing.assert_array_equal(lin, np.arange(6.0).reshape(3, 2).T)
    np.testing.assert_array_equal(torch_to_flax("n.gamma", np.ones((4, 1, 1, 1)), (4,)), np.ones(4))
    # a layout transform never reshapes a kernel to fit a wrong target: the loader reports the mismatch
    assert torch_to_flax("c.weight", np.zeros((2, 3, 3, 3)), (3, 3, 2, 3)).shape == (3, 3, 3, 2)
    with pytest.raises(KeyError):
        diffusers_key_to_path("encoder.conv_in.running_mean")


def test_load_raises_on_missing_and_unused():
    tv = _torch_vae(TINY_VAE)
    sd = {k: v.numpy() for k, v in tv.state_dict().items()}
    sd.pop("encoder.conv_in.bias")
    sd["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError,
                       match="(?s)unused source key 'encoder.extra.weight'.*missing parameter encoder/conv_in/bias"):
        load_diffusers_vae(WanVAE(TINY_VAE, rngs=nnx.Rngs(0)), sd)


def test_load_raises_on_shape_mismatch():
    sd = {k: v.numpy() for k, v in _torch_vae(TINY_VAE).state_dict().items()}
    sd["decoder.conv_out.weight"] = np.zeros((3, 8, 3, 3), np.float32)  # a 2D kernel for a 3D conv
    with pytest.raises(CheckpointError, match="shape mismatch for 'decoder.conv_out.weight'"):
        load_diffusers_vae(WanVAE(TINY_VAE, rngs=nnx.Rngs(0)), sd)


def test_encode_matches_diffusers(tiny):
    tv, vae = tiny
    torch.manual_seed(1)
    x = torch.rand(1, 3, 13, 32, 32) * 2 - 1  # chunks [0], [1-4], [5-8], [9-12] -> 4 latent frames
    with torch.no_grad():
        ref = _to_np(tv.encode(x).latent_dist.mode())
    with jax.default_matmul_precision("highest"):
        mu = np.asarray(vae.encode(_to_jax(x)))
    assert mu.shape == (1, 4, 4, 4, 4) == ref.shape
    assert np.abs(ref).max() > 0.05
    np.testing.assert_allclose(mu, ref, rtol=0, atol=ATOL)


def test_decode_matches_diffusers(tiny):
    tv, vae = tiny
    torch.manual_seed(2)
    z = torch.randn(1, 4, 4, 4, 4)  # 4 latent frames -> 13 frames
    with torch.no_grad():
        ref = _to_np(tv.decode(z).sample)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(vae.decode(_to_jax(z)))
    assert out.shape == (1, 13, 32, 32, 3) == ref.shape
    assert np.abs(ref).max() > 0.05 and np.abs(ref).max() <= 1.0
    np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


def test_alt_layout_encode_decode_matches_diffusers_jitted():
    """2 resnets/stage, temporal stride 2, batch 2, through a jit of (state, x)."""
    cfg = ALT_VAE
    tv, vae = _pair(cfg)
    graphdef, state = nnx.split(vae)
    enc = jax.jit(lambda st, x: nnx.merge(graphdef, st).encode(x))
    dec = jax.jit(lambda st, z: nnx.merge(graphdef, st).decode(z))
    torch.manual_seed(3)
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1  # stride 2: we run [0], [1,2], .., [7,8]; diffusers [0], [1-4], [5-8]
    with torch.no_grad():
        mu_ref = _to_np(tv.encode(x).latent_dist.mode())
        d_ref = _to_np(tv.decode(torch.from_numpy(mu_ref.transpose(0, 4, 1, 2, 3)).contiguous()).sample)
    with jax.default_matmul_precision("highest"):
        mu = np.asarray(enc(state, _to_jax(x)))
        out = np.asarray(dec(state, jnp.asarray(mu_ref)))
    assert mu.shape == (2, 5, 8, 8, 4) == mu_ref.shape
    np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=ATOL)
    assert out.shape == (2, 9, 16, 16, 3) == d_ref.shape
    np.testing.assert_allclose(out, d_ref, rtol=0, atol=ATOL)


def test_fast_convs_match_exact_path():
    """``fast_convs`` (Conv3d as 2D convs / per-tap matmuls, for training) == the exact 3D convs to
    fp32 summation order; the option is per model (in the graphdef), off by default."""
    exact = WanVAE(TINY_VAE, rngs=nnx.Rngs(2))
    fast = WanVAE(TINY_VAE, rngs=nnx.Rngs(2), fast_convs=True)
    convs = [m for _, m in nnx.iter_modules(fast) if isinstance(m, Conv3d)]
    assert all(c.fast for c in convs) and not any(c.fast for _, c in nnx.iter_modules(exact)
                                                  if isinstance(c, Conv3d))
    kinds = {(c.kernel.shape[:3], c.stride) for c in convs}  # all three code paths are exercised
    assert {((3, 3, 3), (1, 1, 1)), ((1, 1, 1), (1, 1, 1)),  # 2D-conv path, matmul path
            ((3, 1, 1), (1, 1, 1)), ((3, 1, 1), (2, 1, 1))} <= kinds  # matmul path, strided fallback
    assert nnx.graphdef(fast) != nnx.graphdef(exact)
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (1, 9, 16, 16, 3)).astype(np.float32))
    with jax.default_matmul_precision("highest"):
        mu, mu_fast = exact.encode(x), fast.encode(x)
        out, out_fast = exact.decode(mu), fast.decode(mu)
    assert np.abs(np.asarray(mu)).max() > 0.05 and np.abs(np.asarray(out)).max() > 0.05
    np.testing.assert_allclose(np.asarray(mu_fast), np.asarray(mu), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_fast), np.asarray(out), rtol=0, atol=1e-5)
    fast.set_fast_convs(False)
    with jax.default_matmul_precision("highest"):  # as ``mu`` was computed: the exact path's program is reused
        np.testing.assert_array_equal(np.asarray(fast.encode(x)), np.asarray(mu))


def test_normalize_round_trip():
    cfg = VAEConfig()  # real Wan2.1 statistics
    mu = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 3, 3, 16), np.float32) * 2)
    z = normalize_latent(mu, cfg)
    np.testing.assert_allclose(np.asarray(z[..., 0]), (np.asarray(mu[..., 0]) + 0.7571) / 2.8184, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(denormalize_latent(z, cfg)), np.asarray(mu), atol=1e-5)


def test_latent_frames_and_bad_shapes(tiny):
    assert [latent_frames(f) for f in (1, 5, 33, 81)] == [1, 2, 9, 21]
    assert latent_frames(5, temporal_stride=2) == 3
    for bad in (0, 2, 6, 32, 34):
        with pytest.raises(ValueError, match="4k\\+1"):
            latent_frames(bad)
    _, vae = tiny
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(jnp.zeros((1, 6, 32, 32, 3)))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(jnp.zeros((1, 5, 36, 32, 3)))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(jnp.zeros((1, 2, 4, 4, 16)))
    with pytest.raises(ValueError, match="attn_scales"):
        WanVAE(TINY_VAE.replace(attn_scales=(1.0,)), rngs=nnx.Rngs(0))
