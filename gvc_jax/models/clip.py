"""CLIP ViT image encoder (Wan2.1 I2V / FLF2V image conditioning) in Flax NNX, channels-last.

Wan feeds the DiT the output of block ``num_hidden_layers - 1`` of the open-clip ViT-H/14 visual
tower, before any final norm (``use_31_block=True``): [N, 257, 1280] per image. That is
``hidden_states[-2]`` of a transformers ``CLIPVisionModel``, so only the embeddings, the pre-norm
and the first ``num_hidden_layers - 1`` encoder layers are built; the last layer, the post norm
and any projection are never created (the converter skips their keys by an explicit pattern).

Attribute names mirror the transformers ``CLIPVisionModel`` keys (``hf_key_to_path``). Precision:
every LayerNorm, the activation, the embeddings and the residual stream are fp32; the linear
layers, the patch conv and attention run in ``cfg.dtype``.

Preprocessing (``preprocess``): ``"wan"`` is what the Wan reference does (``F.interpolate``
bicubic to size x size, no crop, no antialias, on the [-1, 1] frame, then CLIP mean/std);
``"center_crop"`` is transformers' ``CLIPImageProcessor`` (diffusers pipelines): PIL bicubic
shortest-edge resize, centre crop, 1/255, mean/std.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.models.attention import attend, check_implementation
from gvc_jax.models.dit import _dtype, _layer_norm

F32 = jnp.float32
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new")
PREPROCESS_MODES = ("wan", "center_crop")
# transformers CLIPVisionConfig defaults, for keys a config.json leaves out.
_HF_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=32, layer_norm_eps=1e-5, hidden_act="quick_gelu", num_channels=3)


@dataclass(frozen=True)
class CLIPVisionConfig:
    """ViT image tower. ``hidden_act``: "gelu" (exact erf; open-clip ViT-H-14 / Wan), "quick_gelu"
    (x * sigmoid(1.702 x); transformers' default) or "gelu_new" (tanh approximation).
    ``preprocess``: "wan" | "center_crop" (module docstring). ``dtype``: matmul compute dtype."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    preprocess: str = "wan"
    param_dtype: str = "float32"
    dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {self.preprocess!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        _dtype(self.param_dtype), _dtype(self.dtype)

    @property
    def num_tokens(self) -> int:
        """1 + (image_size / patch_size)^2 (CLS first)."""
        return 1 + (self.image_size // self.patch_size) ** 2

    @property
    def num_built_layers(self) -> int:
        """Encoder layers that exist here: all but the last."""
        return self.num_hidden_layers - 1

    def replace(self, **kw) -> "CLIPVisionConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, d: Mapping, **over) -> "CLIPVisionConfig":
        """From a transformers ``CLIPVisionConfig`` config.json dict (``CLIPVisionModel`` or
        ``CLIPVisionModelWithProjection``); missing keys take transformers' defaults; ``over``
        sets the remaining fields (preprocess, dtype, param_dtype) or overrides any."""
        model_type = d.get("model_type", "clip_vision_model")
        if model_type != "clip_vision_model":
            raise ValueError(f"not a CLIP vision config: model_type {model_type!r} (expected 'clip_vision_model')")
        g = {**_HF_DEFAULTS, **{k: v for k, v in d.items() if k in _HF_DEFAULTS}}
        if int(g.pop("num_channels")) != 3:
            raise ValueError(f"num_channels must be 3, got {d.get('num_channels')}")
        kw: dict[str, Any] = {k: (float(v) if k == "layer_norm_eps" else v if k == "hidden_act" else int(v))
                              for k, v in g.items()}
        kw.update(over)
        return cls(**kw)


# Wan2.1's image encoder: open-clip xlm-roberta-large-vit-huge-14, visual tower (PORTING.md §3, §8).
VIT_H_14 = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=16, image_size=224, patch_size=14, layer_norm_eps=1e-5,
                            hidden_act="gelu", preprocess="wan")


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_new":
        return jax.nn.gelu(x, approximate=True)
    return x * jax.nn.sigmoid(1.702 * x)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
class CLIPEmbeddings(nnx.Module):
    """Patch conv (no bias) -> [CLS ‖ patches] + learned positions. [B,S,S,3] -> [B,1+P,D] fp32."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.dtype = _dtype(cfg.dtype)
        self.patch_embedding = nnx.Conv(3, d, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=False,
                                        dtype=self.dtype, param_dtype=_dtype(cfg.param_dtype), rngs=rngs)
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,), F32) * d**-0.5)
        self.position_embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.num_tokens, d), F32) * 0.02)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixels.astype(self.dtype)).astype(F32)     # [B, g, g, D]
        b, gh, gw, d = patches.shape
        patches = patches.reshape(b, gh * gw, d)                                   # row-major (h, w)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(F32), (b, 1, d))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(F32)[None]


class CLIPAttention(nnx.Module):
    """MHA with q/k/v/out biases, scale head_dim**-0.5. [B,L,D] (compute dtype) -> [B,L,D]."""

    def __init__(self, d: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs, attention: str = "auto"):
        lin = partial(nnx.Linear, d, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.attention = attention
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = lin(), lin(), lin(), lin()

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        split = lambda t: t.reshape(b, n, self.heads, d // self.heads)  # noqa: E731
        out = attend(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), self.attention)
        return self.out_proj(out)


class CLIPMLP(nnx.Module):
    """fc1 -> activation (fp32) -> fc2."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        lin = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = lin(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = lin(cfg.intermediate_size, cfg.hidden_size)
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        return self.fc2(_activation(self.act, h.astype(F32)).astype(h.dtype))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm block: x + attn(LN1(x)); x + mlp(LN2(x)). x [B,L,D] fp32 -> fp32."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, attention: str = "auto"):
        d = cfg.hidden_size
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        self.dtype = dtype
        self.layer_norm1 = _layer_norm(d, cfg.layer_norm_eps, True, rngs)
        self.self_attn = CLIPAttention(d, cfg.num_attention_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                       attention=attention)
        self.layer_norm2 = _layer_norm(d, cfg.layer_norm_eps, True, rngs)
        self.mlp = CLIPMLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x).astype(self.dtype)).astype(F32)
        return x + self.mlp(self.layer_norm2(x).astype(self.dtype)).astype(F32)


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, attention: str = "auto"):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs, attention=attention)
                                for _ in range(cfg.num_built_layers)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVisionTower(nnx.Module):
    """Embeddings -> pre-LayerNorm -> encoder layers 0 .. num_hidden_layers-2 (no last layer, no
    post norm). ``attention``: a ``models.attention`` implementation (default "auto")."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, attention: str = "auto"):
        check_implementation(attention)
        self.cfg = cfg
        self.embeddings = CLIPEmbeddings(cfg, rngs=rngs)
        self.pre_layrnorm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, True, rngs)
        self.encoder = CLIPEncoder(cfg, rngs=rngs, attention=attention)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels [B, S, S, 3] float, already normalised (``preprocess``), S = image_size ->
        [B, 1 + (S/p)^2, hidden] fp32 (= transformers ``hidden_states[-2]``)."""
        s = self.cfg.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (s, s, 3):
            raise ValueError(f"pixels must be [B, {s}, {s}, 3], got {tuple(pixels.shape)}")
        x = self.pre_layrnorm(self.embeddings(pixels))
        return self.encoder(x)


@nnx.jit
def _forward(tower: CLIPVisionTower, pixels: jax.Array) -> jax.Array:
    return tower(pixels)


def image_tokens(tower: CLIPVisionTower, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [N, H, W, 3] -> image tokens [N, 1 + P, hidden] float32 (preprocessing mode
    ``tower.cfg.preprocess`` at ``tower.cfg.image_size``)."""
    pixels = preprocess(frames, tower.cfg.image_size, tower.cfg.preprocess)
    return np.asarray(_forward(tower, jnp.asarray(pixels)), np.float32)


# --------------------------------------------------------------------------------------------
# Preprocessing (NumPy)
# --------------------------------------------------------------------------------------------
def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] float64 weights of torch's bicubic interpolation with align_corners=False
    (half-pixel centres, cubic convolution ``a``, taps clamped to the border, no antialias)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    idx = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - idx, 0.0, 1.0)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    taps = np.clip(idx[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.repeat(np.arange(n_out), 4), taps.reshape(-1)), weights.reshape(-1))
    return m


def _normalise(x: np.ndarray) -> np.ndarray:
    """[..., 3] in [0, 1] -> (x - mean) / std, float32 (as torchvision Normalize / transformers)."""
    x = x.astype(np.float32)
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def _preprocess_wan(frames: np.ndarray, size: int) -> np.ndarray:
    # TF.to_tensor (u8 / 255 in fp32) -> [-1, 1] -> bicubic -> *0.5+0.5 -> Normalize.
    x = (frames.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    mh = _cubic_matrix(frames.shape[1], size)
    mw = _cubic_matrix(frames.shape[2], size)
    y = np.einsum("oh,nhwc,pw->nopc", mh, x.astype(np.float64), mw, optimize=True)
    return _normalise(y.astype(np.float32) * np.float32(0.5) + np.float32(0.5))


def _preprocess_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    # transformers CLIPImageProcessor (PIL backend): shortest edge -> size with int() truncation of
    # the long edge, PIL bicubic on uint8, crop at ((H'-size)//2, (W'-size)//2), u8 * (1/255) in
    # float64 cast to float32, then (x - mean) / std in float32.
    from PIL import Image

    _, h, w, _ = frames.shape
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nh, nw = size, int(size * w / h)
    top, left = (nh - size) // 2, (nw - size) // 2
    out = []
    for f in frames:
        r = np.asarray(Image.fromarray(f).resize((nw, nh), resample=Image.Resampling.BICUBIC))
        r = r[top:top + size, left:left + size]
        out.append(_normalise((r.astype(np.float64) * (1 / 255)).astype(np.float32)))
    return np.stack(out)


def preprocess(frames: np.ndarray, size: int, mode: str) -> np.ndarray:
    """uint8 frames [N, H, W, 3] -> normalised pixels [N, size, size, 3] float32.

    mode "wan": torch ``F.interpolate(x, (size, size), mode="bicubic", align_corners=False)`` of
    the frame in [-1, 1] (aspect ratio not kept), then ``x * 0.5 + 0.5`` and CLIP mean/std.
    mode "center_crop": transformers ``CLIPImageProcessor(size={"shortest_edge": size},
    crop_size={"height": size, "width": size})`` (needs Pillow).
    """
    frames = _check_frames(frames)
    if mode == "wan":
        return _preprocess_wan(frames, int(size))
    if mode == "center_crop":
        return _preprocess_center_crop(frames, int(size))
    raise ValueError(f"preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")


# --------------------------------------------------------------------------------------------
# transformers key <-> NNX path
# --------------------------------------------------------------------------------------------
_HF_KEY = re.compile(
    r"^(?:vision_model\.)?(?:"
    r"embeddings\.(?P<emb>class_embedding|patch_embedding\.weight|position_embedding\.weight)"
    r"|pre_layrnorm\.(?P<pre>weight|bias)"
    r"|encoder\.layers\.(?P<i>0|[1-9]\d*)\."
    r"(?P<mod>self_attn\.(?:q|k|v|out)_proj|layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(?P<leaf>weight|bias)"
    r")$")
_EMB_PATHS = {"class_embedding": ("embeddings", "class_embedding"),
              "patch_embedding.weight": ("embeddings", "patch_embedding", "kernel"),
              "position_embedding.weight": ("embeddings", "position_embedding")}


def hf_key_to_path(key: str) -> tuple:
    """NNX path of a transformers ``CLIPVisionModel`` key (with or without the ``vision_model.``
    prefix of ``CLIPVisionModelWithProjection`` / transformers 4.x files). KeyError for any other key.

    e.g. 'vision_model.encoder.layers.3.self_attn.q_proj.weight' -> ('encoder', 'layers', 3,
    'self_attn', 'q_proj', 'kernel'); 'pre_layrnorm.weight' -> ('pre_layrnorm', 'scale').
    """
    m = _HF_KEY.match(key)
    if m is None:
        raise KeyError(key)
    if m["emb"]:
        return _EMB_PATHS[m["emb"]]
    if m["pre"]:
        return ("pre_layrnorm", "scale" if m["pre"] == "weight" else "bias")
    mods = tuple(m["mod"].split("."))
    leaf = m["leaf"]
    if leaf == "weight":
        leaf = "scale" if mods[-1].startswith("layer_norm") else "kernel"
    return ("encoder", "layers", int(m["i"])) + mods + (leaf,)


def hf_keys(cfg: CLIPVisionConfig) -> list:
    """The transformers keys (no prefix) that the tower needs, in order."""
    keys = ["embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
            "pre_layrnorm.weight", "pre_layrnorm.bias"]
    for i in range(cfg.num_built_layers):
        for mod in ("layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                    "layer_norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"encoder.layers.{i}.{mod}.weight", f"encoder.layers.{i}.{mod}.bias"]
    return keys


def tower_factory(cfg: CLIPVisionConfig, attention: str = "auto"):
    """For ``checkpoint.abstract_model``."""
    return lambda: CLIPVisionTower(cfg, rngs=nnx.Rngs(0), attention=attention)


__all__ = ["CLIPVisionConfig", "VIT_H_14", "CLIPVisionTower", "preprocess", "image_tokens", "hf_key_to_path",
           "hf_keys", "tower_factory", "CLIP_MEAN", "CLIP_STD"]
