"""CLIP image tower (gvc_jax.models.clip) and its converter (weights_convert.clip).

Oracles: a tiny transformers ``CLIPVisionModel`` on CPU torch (``hidden_states[-2]``), torch's
``F.interpolate(bicubic)`` and transformers' ``CLIPImageProcessor`` (PIL backend). The original
Wan layout is produced here from the transformers state dict with Wan's open-clip names
(``wan/modules/clip.py``), written independently of ``weights_convert.clip``.
"""
import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402

from gvc_jax.models.checkpoint import CheckpointError, abstract_model  # noqa: E402
from gvc_jax.models.clip import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    VIT_H_14,
    CLIPVisionConfig,
    CLIPVisionTower,
    hf_key_to_path,
    image_tokens,
    preprocess,
    tower_factory,
)
from weights_convert.clip import (  # noqa: E402
    convert_clip,
    load_clip_hf,
    load_clip_original,
    read_clip_hf,
    read_clip_original,
)

TINY = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=32,
            patch_size=8)


def _hf_model(act: str, seed: int):
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, hidden_act=act)).eval()
    with torch.no_grad():  # non-trivial norms and biases (the default init leaves them at 1 / 0)
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=["gelu", "quick_gelu"])
def hf_dir(request, tmp_path_factory):
    """(directory, torch model) of a saved tiny transformers CLIPVisionModel."""
    model = _hf_model(request.param, seed=1 if request.param == "gelu" else 2)
    path = tmp_path_factory.mktemp(f"clip_{request.param}")
    model.save_pretrained(path, safe_serialization=True)
    return str(path), model


def _reference(model, pixels_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2).contiguous(),
                    output_hidden_states=True)
    return out.hidden_states[-2].numpy()


def _tower(cfg, state):
    graphdef, _, rest = abstract_model(tower_factory(cfg))
    return nnx.merge(graphdef, state, rest)


def _pixels(n=2, seed=0):
    return np.random.RandomState(seed).randn(n, 32, 32, 3).astype(np.float32)


def _to_original(model) -> dict:
    """transformers state dict -> Wan's open-clip key names (fused q/k/v), plus the text-tower,
    log_scale, post_norm and head keys that the converter has to skip."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = TINY["hidden_size"]
    out = {
        "visual.patch_embedding.weight": sd.pop("embeddings.patch_embedding.weight"),
        "visual.cls_embedding": sd.pop("embeddings.class_embedding").reshape(1, 1, d),
        "visual.pos_embedding": sd.pop("embeddings.position_embedding.weight")[None],
        "visual.pre_norm.weight": sd.pop("pre_layrnorm.weight"),
        "visual.pre_norm.bias": sd.pop("pre_layrnorm.bias"),
        "visual.post_norm.weight": sd.pop("post_layernorm.weight"),
        "visual.post_norm.bias": sd.pop("post_layernorm.bias"),
        "visual.head": torch.randn(d, 16),
        "log_scale": torch.tensor(2.6592),
        "textual.token_embedding.weight": torch.randn(10, 8),
        "textual.blocks.0.attn.q.weight": torch.randn(8, 8),
        "textual.head.0.weight": torch.randn(12, 8),
    }
    for i in range(TINY["num_hidden_layers"]):
        p, q = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for leaf in ("weight", "bias"):
            out[q + "attn.to_qkv." + leaf] = torch.cat([sd.pop(f"{p}self_attn.{x}_proj.{leaf}") for x in "qkv"], 0)
            for src, dst in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                             ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
                out[q + dst + "." + leaf] = sd.pop(f"{p}{src}.{leaf}")
    assert not sd, sorted(sd)
    return out


# ----------------------------------------------------------------------------- parity

def test_hf_parity(hf_dir):
    path, model = hf_dir
    cfg, source = read_clip_hf(path)
    assert cfg.hidden_act == model.config.hidden_act and cfg.num_hidden_layers == 3
    tower = _tower(cfg, convert_clip(source, cfg, layout="hf"))
    assert len(tower.encoder.layers) == 2  # the last layer is not built
    x = _pixels()
    got = np.asarray(tower(jnp.asarray(x)))
    want = _reference(model, x)
    assert got.shape == want.shape == (2, 17, 24)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_hf_with_projection_prefix(tmp_path):
    """A CLIPVisionModelWithProjection file (``vision_model.`` prefix, ``visual_projection``)."""
    model = _hf_model("gelu", seed=3)
    torch.manual_seed(3)
    wp = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY, hidden_act="gelu",
                                                                                  projection_dim=8))
    wp.vision_model.load_state_dict(model.state_dict())
    wp.save_pretrained(tmp_path, safe_serialization=True)
    cfg, source = read_clip_hf(str(tmp_path), preprocess="center_crop")
    assert "visual_projection.weight" in source and cfg.preprocess == "center_crop"
    tower = load_clip_hf(str(tmp_path), preprocess="center_crop")
    assert tower.cfg == cfg
    x = _pixels(seed=4)
    np.testing.assert_allclose(np.asarray(tower(jnp.asarray(x))), _reference(model, x), rtol=0, atol=1e-5)


def test_original_layout_parity(hf_dir, tmp_path):
    path, model = hf_dir
    cfg, _ = read_clip_hf(path)
    pth = tmp_path / "models_clip.pth"
    torch.save(_to_original(model), pth)
    tower = _tower(cfg, convert_clip(read_clip_original(str(pth), cfg), cfg, layout="original"))
    x = _pixels(seed=5)
    want = _reference(model, x)
    np.testing.assert_allclose(np.asarray(tower(jnp.asarray(x))), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(load_clip_original(str(pth), cfg)(jnp.asarray(x))), want, rtol=0, atol=1e-5)


def test_image_tokens_end_to_end(hf_dir):
    """uint8 frames -> Wan preprocessing (torch) -> transformers tower == image_tokens."""
    path, model = hf_dir
    cfg, source = read_clip_hf(path)
    tower = _tower(cfg, convert_clip(source, cfg, layout="hf"))
    frames = np.random.RandomState(6).randint(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    got = image_tokens(tower, frames)
    want = _reference(model, _torch_wan(frames, 32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_bf16_tower_close_to_fp32(hf_dir):
    path, model = hf_dir
    cfg, source = read_clip_hf(path)
    x = jnp.asarray(_pixels(seed=7))
    ref = np.asarray(_tower(cfg, convert_clip(source, cfg))(x))
    cfg16 = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    state = convert_clip(source, cfg16)
    assert state["encoder"]["layers"][0]["mlp"]["fc1"]["kernel"][...].dtype == jnp.bfloat16
    assert state["encoder"]["layers"][0]["layer_norm1"]["scale"][...].dtype == jnp.float32
    out = np.asarray(_tower(cfg16, state)(x))
    assert out.dtype == np.float32
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert 0 < err < 3e-2, err


# ----------------------------------------------------------------------------- strictness

@pytest.fixture(scope="module")
def gelu_source(tmp_path_factory):
    model = _hf_model("gelu", seed=8)
    path = tmp_path_factory.mktemp("clip_strict")
    model.save_pretrained(path, safe_serialization=True)
    cfg, source = read_clip_hf(str(path))
    return cfg, source, model


def _raises(source, cfg, layout, *needles):
    with pytest.raises(CheckpointError) as e:
        convert_clip(source, cfg, layout=layout)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_hf_strict(gelu_source):
    cfg, source, _ = gelu_source
    key = "encoder.layers.0.mlp.fc1.weight"
    _raises({k: v for k, v in source.items() if k != key}, cfg, "hf", "missing", repr(key))
    _raises({**source, "encoder.layers.0.mlp.fc3.weight": source[key]}, cfg, "hf",
            "unused", "'encoder.layers.0.mlp.fc3.weight'")
    _raises({**source, "encoder.layers.3.mlp.fc1.weight": source[key]}, cfg, "hf",
            "unused", "'encoder.layers.3.mlp.fc1.weight'")
    bad = dict(source)
    bad[key] = type(source[key])((48, 25), "float32", lambda: np.zeros((48, 25), np.float32), origin="x")
    _raises(bad, cfg, "hf", "shape mismatch", repr(key))
    # The skipped keys really exist in the file, and only they are skipped.
    assert {"post_layernorm.weight", "encoder.layers.2.mlp.fc1.weight"} <= set(source)
    _raises({**source, "post_layernorm.extra": source["post_layernorm.weight"]}, cfg, "hf", "'post_layernorm.extra'")


def test_original_strict(gelu_source, tmp_path):
    cfg, _, model = gelu_source
    sd = _to_original(model)
    pth = tmp_path / "clip.pth"

    def conv(d):
        torch.save(d, pth)
        return convert_clip(read_clip_original(str(pth), cfg), cfg, layout="original")

    conv(sd)  # the unmodified file converts
    key = "visual.transformer.1.norm2.bias"
    with pytest.raises(CheckpointError, match=r"missing.*'visual\.transformer\.1\.norm2\.bias'"):
        conv({k: v for k, v in sd.items() if k != key})
    with pytest.raises(CheckpointError, match=r"unused.*'visual\.transformer\.0\.attn\.out\.weight'"):
        conv({**sd, "visual.transformer.0.attn.out.weight": sd["visual.transformer.0.attn.proj.weight"]})
    with pytest.raises(CheckpointError, match=r"unused.*'visual\.transformer\.5\.mlp\.0\.bias'"):
        conv({**sd, "visual.transformer.5.mlp.0.bias": sd["visual.transformer.0.mlp.0.bias"]})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'visual\.transformer\.0\.mlp\.2\.weight'"):
        conv({**sd, "visual.transformer.0.mlp.2.weight": torch.zeros(24, 47)})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'visual\.transformer\.1\.attn\.to_qkv\.weight'"):
        conv({**sd, "visual.transformer.1.attn.to_qkv.weight": torch.zeros(70, 24)})


def test_hf_key_to_path():
    assert hf_key_to_path("vision_model.encoder.layers.3.self_attn.q_proj.weight") == (
        "encoder", "layers", 3, "self_attn", "q_proj", "kernel")
    assert hf_key_to_path("encoder.layers.0.layer_norm2.weight") == ("encoder", "layers", 0, "layer_norm2", "scale")
    assert hf_key_to_path("pre_layrnorm.bias") == ("pre_layrnorm", "bias")
    assert hf_key_to_path("embeddings.position_embedding.weight") == ("embeddings", "position_embedding")
    for bad in ("post_layernorm.weight", "visual_projection.weight", "encoder.layers.0.mlp.fc3.weight",
                "text_model.embeddings.class_embedding"):
        with pytest.raises(KeyError):
            hf_key_to_path(bad)


def test_config():
    d = json.loads(transformers.CLIPVisionConfig(**TINY, hidden_act="quick_gelu").to_json_string())
    cfg = CLIPVisionConfig.from_hf(d, dtype="bfloat16")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.hidden_act, cfg.dtype, cfg.num_tokens) == (
        24, 3, "quick_gelu", "bfloat16", 17)
    assert CLIPVisionConfig(**cfg.to_dict()) == cfg
    assert CLIPVisionConfig.from_hf({}).hidden_act == "quick_gelu"  # transformers' defaults fill gaps
    assert VIT_H_14.num_tokens == 257 and VIT_H_14.num_built_layers == 31 and VIT_H_14.hidden_act == "gelu"
    with pytest.raises(ValueError):
        CLIPVisionConfig(**TINY, hidden_act="relu")
    with pytest.raises(ValueError):
        CLIPVisionConfig.from_hf({"model_type": "clip"})


# ----------------------------------------------------------------------------- preprocessing

def _torch_wan(frames: np.ndarray, size: int) -> np.ndarray:
    """Wan's CLIPModel.visual preprocessing in torch (TF.to_tensor, [-1, 1], bicubic, Normalize)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).sub_(0.5).div_(0.5)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).mul_(0.5).add_(0.5)
    x = x.sub_(torch.tensor(CLIP_MEAN)[:, None, None]).div_(torch.tensor(CLIP_STD)[:, None, None])
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("hw", [(48, 80), (80, 48), (20, 12), (32, 32), (7, 33)])
def test_preprocess_wan_matches_torch(hw):
    frames = np.random.RandomState(hw[0] * 100 + hw[1]).randint(0, 256, (2, *hw, 3), dtype=np.uint8)
    got = preprocess(frames, 32, "wan")
    assert got.shape == (2, 32, 32, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_wan(frames, 32), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(48, 80), (80, 48), (20, 30), (32, 32), (45, 33)])
def test_preprocess_center_crop_matches_clip_image_processor(hw):
    frames = np.random.RandomState(hw[0] * 7 + hw[1]).randint(0, 256, (2, *hw, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    want = proc(images=list(frames), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    got = preprocess(frames, 32, "center_crop")
    assert got.shape == want.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(got, want)  # same PIL resize, same float64 -> float32 casts: bit-exact


def test_preprocess_modes_differ_and_reject_bad_input():
    frames = np.random.RandomState(9).randint(0, 256, (1, 48, 80, 3), dtype=np.uint8)
    assert np.abs(preprocess(frames, 32, "wan") - preprocess(frames, 32, "center_crop")).max() > 0.1
    with pytest.raises(ValueError):
        preprocess(frames.astype(np.float32), 32, "wan")
    with pytest.raises(ValueError):
        preprocess(frames, 32, "bilinear")
    with pytest.raises(ValueError):
        nnx.eval_shape(lambda: CLIPVisionTower(CLIPVisionConfig(**TINY), rngs=nnx.Rngs(0)))(jnp.zeros((1, 16, 16, 3)))
