"""CPU parity of the JAX Wan2.1 DiT (gvc_jax.models.dit / rope) against diffusers' WanTransformer3DModel.

Tiny models of docs/method_notes.md §Parity test models (torch fp32, fixed seeds, all parameters
perturbed so that norm weights and pos_embed are not trivially ones/zeros). Weights go through
diffusers_key_to_path.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from gvc_jax.models.attention import attend
from gvc_jax.models.checkpoint import CheckpointError
from gvc_jax.models.configs import DIT_PRESETS
from gvc_jax.models.dit import (
    DiTInputError,
    WanDiT,
    diffusers_key_to_path,
    timestep_features,
)
from gvc_jax.models.rope import RopeGridError, rope_tables, rope_tables_in_graph
from weights_convert.to_flax import load_diffusers_dit, torch_to_flax

diffusers = pytest.importorskip("diffusers")
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed  # noqa: E402

COMMON = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, out_channels=4, text_dim=32,
    freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=32,
)
EXTRA = {
    "t2v": dict(in_channels=4),
    "i2v": dict(in_channels=12, image_dim=24, added_kv_proj_dim=32),
    "flf2v": dict(in_channels=12, image_dim=24, added_kv_proj_dim=32, pos_embed_seq_len=34),
}
KEY_COUNTS = {"t2v": 69, "i2v": 87, "flf2v": 88}
TOL = 2e-5


@functools.lru_cache(maxsize=None)
def torch_model(variant: str):
    torch.manual_seed(0)
    m = diffusers.WanTransformer3DModel(**COMMON, **EXTRA[variant]).eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m


def state_dict(variant: str) -> dict:
    return {k: v.detach().numpy() for k, v in torch_model(variant).state_dict().items()}


def jax_model(variant: str, **overrides) -> WanDiT:
    cfg = DIT_PRESETS[f"tiny-{variant}"].replace(**overrides)
    model = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
    load_diffusers_dit(model, state_dict(variant))
    return model


def jitted(module):
    """Call a module under jit with its state as an argument (not a closure)."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def run(st, args, kwargs):
        return nnx.merge(graphdef, st)(*args, **kwargs)

    return lambda *args, **kwargs: run(state, args, kwargs)


@functools.lru_cache(maxsize=None)
def inputs(variant: str):
    """Torch inputs: x [1,C,3,8,8], t [1], text [1,512,32], image tokens ([1,17,24] / [2,17,24])."""
    g = torch.Generator().manual_seed(7)
    c = EXTRA[variant]["in_channels"]
    x = torch.randn(1, c, 3, 8, 8, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 512, 32, generator=g)
    img = None
    if variant != "t2v":
        img = torch.randn(2 if variant == "flf2v" else 1, 17, 24, generator=g)
    return x, t, ctx, img


def jax_inputs(variant: str):
    x, t, ctx, img = inputs(variant)
    jimg = None if img is None else jnp.asarray(img.numpy().reshape(1, -1, 24))
    return (jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1)), jnp.asarray(t.numpy()),
            jnp.asarray(ctx.numpy()), jimg)


@functools.lru_cache(maxsize=None)
def torch_output(variant: str) -> np.ndarray:
    x, t, ctx, img = inputs(variant)
    with torch.inference_mode():
        out = torch_model(variant)(x, t, ctx, encoder_hidden_states_image=img, return_dict=False)[0]
    return out.numpy().transpose(0, 2, 3, 4, 1)


@functools.lru_cache(maxsize=None)
def jax_output(variant: str) -> np.ndarray:
    with jax.default_matmul_precision("highest"):
        return np.asarray(jitted(jax_model(variant))(*jax_inputs(variant)))


# ------------------------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("head_dim,latent", [(128, (3, 8, 8)), (128, (5, 30, 52)), (16, (3, 8, 8))])
def test_rope_tables_exact(head_dim, latent):
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024)
    ref_cos, ref_sin = rope(torch.zeros(1, 1, *latent))
    ref_cos = ref_cos[0, :, 0].numpy()
    ref_sin = ref_sin[0, :, 0].numpy()
    grid = (latent[0], latent[1] // 2, latent[2] // 2)
    cos, sin = rope_tables(head_dim, grid)
    assert cos.dtype == np.float32 and cos.shape == (np.prod(grid), head_dim // 2)
    for ours, ref in ((cos, ref_cos), (sin, ref_sin)):
        np.testing.assert_array_equal(ours, ref[:, 0::2])
        np.testing.assert_array_equal(ours, ref[:, 1::2])
    for ours, in_graph in zip((cos, sin), rope_tables_in_graph(head_dim, grid), strict=False):
        np.testing.assert_array_equal(np.asarray(in_graph), ours)


def test_rope_grid_too_large():
    with pytest.raises(RopeGridError):
        rope_tables(16, (3, 40, 4), max_seq_len=32)


# --------------------------------------------------------------------------------------- mapping
@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("variant", ["t2v", "i2v", "flf2v"])
def test_mapping_coverage(variant, scan):
    sd = state_dict(variant)
    assert len(sd) == KEY_COUNTS[variant]
    cfg = DIT_PRESETS[f"tiny-{variant}"].replace(scan_layers=scan)
    abstract = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
    leaves = {p: v.shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert set(p for p, _ in nnx.to_flat_state(nnx.state(abstract))) == set(leaves)  # only Params
    hits = {p: [] for p in leaves}
    for key, arr in sd.items():
        path = diffusers_key_to_path(key, scan_layers=scan)
        assert path in leaves, f"{key} -> {path} not in the NNX tree"
        target = leaves[path][1:] if scan and path[0] == "blocks" else leaves[path]
        assert torch_to_flax(key, arr, target).shape == tuple(target), key
        hits[path].append(key)
    expected = cfg.num_layers if scan else 1
    bad = {p: k for p, k in hits.items() if len(k) != (expected if scan and p[0] == "blocks" else 1)}
    assert not bad, bad


def test_mapping_examples_and_errors():
    assert diffusers_key_to_path("blocks.3.attn1.to_q.weight") == ("blocks", 3, "attn1", "to_q", "kernel")
    assert diffusers_key_to_path("blocks.0.norm2.weight") == ("blocks", 0, "norm2", "scale")
    assert diffusers_key_to_path("blocks.1.attn2.to_out.0.bias") == ("blocks", 1, "attn2", "to_out", "bias")
    assert diffusers_key_to_path("blocks.1.ffn.net.2.weight") == ("blocks", 1, "ffn", "proj_out", "kernel")
    assert diffusers_key_to_path("condition_embedder.image_embedder.ff.net.0.proj.weight") == (
        "condition_embedder", "image_embedder", "ff", "proj_in", "kernel")
    assert diffusers_key_to_path("blocks.2.attn1.norm_k.weight", scan_layers=True) == (
        "blocks", "attn1", "norm_k", "scale")
    sd = state_dict("t2v")
    model = nnx.eval_shape(lambda: WanDiT(DIT_PRESETS["tiny-t2v"], rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointError, match="missing parameter blocks/1/attn1/to_k/bias"):
        load_diffusers_dit(model, {k: v for k, v in sd.items() if k != "blocks.1.attn1.to_k.bias"})
    with pytest.raises(CheckpointError, match="unused source key 'blocks.0.bogus.weight'"):
        load_diffusers_dit(model, {**sd, "blocks.0.bogus.weight": np.zeros(3)})
    with pytest.raises(CheckpointError, match="shape mismatch for 'proj_out.weight'"):
        load_diffusers_dit(model, {**sd, "proj_out.weight": np.zeros((16, 31))})
    load_diffusers_dit(model, {**sd, "blocks.0.attn2.norm_added_q.weight": np.zeros(32)})  # whitelisted


# -------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("block_elems", [None, 1000])
def test_attention_chunked(block_elems):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, n, 3, 16), dtype=np.float32)) for n in (37, 29, 29))
    with jax.default_matmul_precision("highest"):
        ref = jax.nn.dot_product_attention(q, k, v).reshape(2, 37, 48)
        out = attend(q, k, v, "chunked", block_elems=block_elems)  # 1000: 7 chunks of 6 queries, padded
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_attention_implementations_agree(impl):
    """xla (one fused softmax) and the TPU splash kernel (Pallas interpreter on CPU, sequences
    padded to its 128 block and the padding masked) against the chunked path, fp32 and bf16."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, n, 2, 16), dtype=np.float32)) for n in (150, 133, 133))
    with jax.default_matmul_precision("highest"):
        ref = attend(q, k, v, "chunked")
        out = attend(q, k, v, impl, interpret=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=2e-6)
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out_b = attend(qb, kb, vb, impl, interpret=True).astype(jnp.float32)
    assert out_b.dtype == jnp.float32 and float(jnp.max(jnp.abs(out_b - ref))) < 0.05


def test_auto_attention_per_backend_and_errors():
    from gvc_jax.models.attention import AttentionError, resolve

    assert resolve("auto", jnp.float32, 128, "cpu") == "chunked"
    assert resolve("auto", jnp.float32, 128, "tpu") == "splash"
    assert resolve("auto", jnp.bfloat16, 128, "gpu") == "cudnn"
    assert resolve("auto", jnp.float32, 128, "gpu") == "xla"  # cuDNN flash attention needs bf16 / fp16
    assert resolve("auto", jnp.bfloat16, 256, "gpu") == "xla"
    assert resolve("xla", jnp.float32, 128, "tpu") == "xla"
    with pytest.raises(AttentionError):
        resolve("flash3", jnp.float32, 128, "cpu")


def test_dit_forward_is_the_same_with_every_cpu_attention_path():
    from gvc_jax.models.dit import set_attention

    cfg = DIT_PRESETS["tiny-t2v"]
    model = WanDiT(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 3, 8, 8, cfg.in_channels), dtype=np.float32))
    ctx = jnp.asarray(rng.standard_normal((1, cfg.text_len, cfg.text_dim), dtype=np.float32))
    t = jnp.asarray([500.0], jnp.float32)
    with jax.default_matmul_precision("highest"):
        ref = model(x, t, ctx)
        set_attention(model, "xla")
        out = model(x, t, ctx)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_block_parity(variant):
    tm = torch_model(variant)
    g = torch.Generator().manual_seed(3)
    n_img = 17 if variant == "i2v" else 0
    hidden = torch.randn(1, 48, 32, generator=g)
    enc = torch.randn(1, n_img + 512, 32, generator=g)
    temb = torch.randn(1, 6, 32, generator=g)
    rope = tm.rope(torch.zeros(1, 1, 3, 8, 8))
    with torch.inference_mode():
        ref = tm.blocks[1](hidden, enc, temb, rope).numpy()
    model = jax_model(variant)
    cos, sin = (jnp.asarray(a) for a in rope_tables(16, (3, 4, 4)))
    enc_j = jnp.asarray(enc.numpy())
    ctx_img = enc_j[:, :n_img] if n_img else None
    with jax.default_matmul_precision("highest"):
        out = jitted(model.blocks[1])(jnp.asarray(hidden.numpy()), jnp.asarray(temb.numpy()),
                                      enc_j[:, n_img:], ctx_img, cos, sin)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("variant", ["t2v", "i2v", "flf2v"])
def test_model_parity(variant):
    ref = torch_output(variant)
    out = jax_output(variant)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


def test_scan_equals_unrolled_and_remat():
    args = jax_inputs("i2v")
    unrolled = jax_output("i2v")
    with jax.default_matmul_precision("highest"):
        scanned_model = jax_model("i2v", scan_layers=True, remat=True)
        kernel = nnx.state(scanned_model, nnx.Param)["blocks"]["attn1"]["to_q"]["kernel"]
        assert kernel.shape == (2, 32, 32)
        scanned = np.asarray(jitted(scanned_model)(*args))
    np.testing.assert_allclose(scanned, unrolled, rtol=0, atol=1e-6)


def test_bf16_close_to_fp32():
    args = jax_inputs("i2v")
    ref = jax_output("i2v")
    model = jax_model("i2v", param_dtype="bfloat16", dtype="bfloat16", scan_layers=True)
    state = nnx.state(model, nnx.Param)
    assert state["blocks"]["attn1"]["to_q"]["kernel"].dtype == jnp.bfloat16
    assert state["blocks"]["scale_shift_table"].dtype == jnp.float32
    out = np.asarray(jitted(model)(*args))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    err = np.abs(out - ref).max()
    assert err < 0.02 * np.abs(ref).max(), err


def test_time_features_and_short_context():
    x, t, ctx, img = jax_inputs("t2v")
    ref = torch_output("t2v")
    feats = timestep_features(np.asarray(t), 32)
    assert feats.dtype == np.float32 and feats.shape == (1, 32)
    half = np.exp(-np.log(10000.0) * np.arange(16) / 16) * 500.0
    np.testing.assert_allclose(feats[0, :16], np.cos(half), atol=1e-7)
    np.testing.assert_allclose(feats[0, 16:], np.sin(half), atol=1e-7)
    model = jitted(jax_model("t2v"))
    with jax.default_matmul_precision("highest"):
        out = np.asarray(model(x, t, ctx, None, time_features=jnp.asarray(feats)))
        short = np.asarray(model(x, t, ctx[:, :100]))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)  # float64 vs fp32 sinusoid
    # A 100-row context is zero-padded to 512 rows before the projection (pads attended).
    xt, tt, ctxt, _ = inputs("t2v")
    ctxt = ctxt.clone()
    ctxt[:, 100:] = 0.0
    with torch.inference_mode():
        ref_short = torch_model("t2v")(xt, tt, ctxt, return_dict=False)[0].numpy().transpose(0, 2, 3, 4, 1)
    np.testing.assert_allclose(short, ref_short, rtol=0, atol=TOL)


def test_input_errors():
    x, t, ctx, _ = jax_inputs("i2v")
    model = jax_model("i2v")
    with pytest.raises(DiTInputError, match="image_context"):
        model(x, t, ctx)
    with pytest.raises(DiTInputError, match="x must be"):
        model(x[..., :4], t, ctx, jnp.zeros((1, 17, 24)))
    with pytest.raises(DiTInputError, match="text_len"):
        model(x, t, jnp.zeros((1, 513, 32)), jnp.zeros((1, 17, 24)))
