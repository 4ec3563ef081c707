"""Model configurations: dataclasses for the Wan2.1 DiT and VAE, and named presets.

Field names follow the diffusers ``config.json`` keys so that converting a config is a
plain dictionary copy (see ``DiTConfig.from_diffusers`` / ``VAEConfig.from_diffusers``).
Presets cover the published Wan2.1 checkpoints and ``tiny-*`` sizes for tests.

Every field is checked when a config is built (``__post_init__``): its type (an integer field
refuses bools and floats such as JSON's ``1e6``) and a range (``DIT_LIMITS``, ``VAE_LIMITS``) that
admits every Wan2.1 release (1.3B and 14B T2V / I2V / FLF2V) with about 4x headroom, so a config
read from a file cannot ask for an unbounded model. A bad field raises ``ValueError`` naming it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Tuple

# Wan2.1 VAE per-channel latent statistics (hard-coded in the reference WanVAE wrapper,
# ``latents_mean`` / ``latents_std`` in the diffusers config).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

VARIANTS = ("t2v", "i2v", "flf2v")
DTYPES = ("float32", "bfloat16", "float16")  # parameter / compute dtypes a config may name
ATTENTION_IMPLEMENTATIONS = ("auto", "chunked", "xla", "cudnn", "splash")  # = models.attention.IMPLEMENTATIONS

# Inclusive [low, high] of each integer field. Wan2.1 14B: dim 5120 (40 heads x 128), 40 layers,
# ffn 13824, text 512 x 4096, CLIP width 1280, I2V in_channels 36, FLF2V pos_embed_seq_len 514;
# the VAE: base_dim 96, dim_mult (1, 2, 4, 4), z_dim 16.
DIT_LIMITS = dict(
    patch_size=(1, 8), num_attention_heads=(1, 256), attention_head_dim=(2, 512), in_channels=(1, 256),
    out_channels=(1, 256), text_dim=(1, 16384), freq_dim=(2, 2048), ffn_dim=(1, 65536), num_layers=(1, 160),
    image_dim=(1, 8192), added_kv_proj_dim=(1, 20480), rope_max_seq_len=(1, 8192), pos_embed_seq_len=(1, 4096),
    text_len=(1, 2048),
)
MAX_DIT_DIM = 20480  # num_attention_heads * attention_head_dim
VAE_LIMITS = dict(base_dim=(1, 512), z_dim=(1, 64), dim_mult=(1, 16), num_res_blocks=(1, 8))
MAX_VAE_STAGES = 6       # len(dim_mult)
MAX_VAE_WIDTH = 2048     # base_dim * max(dim_mult)
MAX_ATTN_SCALES = 8
MAX_NAME_CHARS = 256
MAX_SHIFT = 100.0


def _show(v) -> str:
    r = repr(v)
    r = r if len(r) <= 60 else r[:57] + "..."
    return f"{r} ({type(v).__name__})" if not isinstance(v, (str, type(None))) else r


def check_int(owner: str, name: str, v, low: int, high: int) -> int:
    """``v`` as an int in [low, high]; ValueError naming ``owner.name`` for a bool, float, str... or
    a value out of range."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{owner}.{name} must be an integer in [{low}, {high}], got {_show(v)}")
    n = int(v)
    if not low <= n <= high:
        raise ValueError(f"{owner}.{name} must be in [{low}, {high}], got {n}")
    return n


def check_real(owner: str, name: str, v, low: float, high: float, *, open_low: bool = False) -> float:
    """``v`` as a finite float in [low, high] (``open_low``: (low, high]); ints accepted, bools not."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{owner}.{name} must be a finite number, got {_show(v)}")
    v = float(v)
    if v < low or v > high or (open_low and v == low):
        raise ValueError(f"{owner}.{name} must be in {'(' if open_low else '['}{low:g}, {high:g}], got {v!r}")
    return v


def check_bool(owner: str, name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {_show(v)}")
    return v


def check_choice(owner: str, name: str, v, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{owner}.{name} must be one of {', '.join(choices)}, got {_show(v)}")
    return v


def check_str(owner: str, name: str, v, max_chars: int = MAX_NAME_CHARS) -> str:
    if not isinstance(v, str) or len(v) > max_chars:
        raise ValueError(f"{owner}.{name} must be a string of at most {max_chars} characters, got {_show(v)}")
    return v


def check_seq(owner: str, name: str, v, min_len: int, max_len: int) -> tuple:
    """``v`` (a list or tuple) as a tuple of min_len..max_len items."""
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{owner}.{name} must be a list, got {_show(v)}")
    if not min_len <= len(v) <= max_len:
        n = f"{min_len}" if min_len == max_len else f"{min_len} to {max_len}"
        raise ValueError(f"{owner}.{name} must have {n} entries, got {len(v)}")
    return tuple(v)


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclass: normalise a checked field in place


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1 video DiT. ``dim = num_attention_heads * attention_head_dim``."""

    patch_size: Tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: Optional[int] = None          # CLIP width (1280) for I2V / FLF2V
    added_kv_proj_dim: Optional[int] = None  # = dim for I2V / FLF2V
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: Optional[int] = None  # 2 * 257 for FLF2V
    text_len: int = 512                      # context rows (zero-padded before projection)
    # JAX execution options (not part of the checkpoint).
    param_dtype: str = "float32"
    dtype: str = "float32"                   # matmul compute dtype; norms/modulation stay fp32
    scan_layers: bool = False
    remat: bool = False
    attention: str = "auto"                  # models.attention implementation

    def __post_init__(self):
        own = "DiTConfig"
        lo, hi = DIT_LIMITS["patch_size"]
        patch = check_seq(own, "patch_size", self.patch_size, 3, 3)
        _set(self, "patch_size", tuple(check_int(own, f"patch_size[{i}]", p, lo, hi) for i, p in enumerate(patch)))
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                     "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len", "text_len"):
            _set(self, name, check_int(own, name, getattr(self, name), *DIT_LIMITS[name]))
        for name in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if getattr(self, name) is not None:
                _set(self, name, check_int(own, name, getattr(self, name), *DIT_LIMITS[name]))
        if self.attention_head_dim % 2:
            raise ValueError(f"{own}.attention_head_dim must be even (rotary pairs), got {self.attention_head_dim}")
        if self.freq_dim % 2:
            raise ValueError(f"{own}.freq_dim must be even (cos | sin), got {self.freq_dim}")
        if self.dim > MAX_DIT_DIM:
            raise ValueError(f"{own}: num_attention_heads * attention_head_dim must be at most {MAX_DIT_DIM}, "
                             f"got {self.num_attention_heads} * {self.attention_head_dim} = {self.dim}")
        check_bool(own, "cross_attn_norm", self.cross_attn_norm)
        check_str(own, "qk_norm", self.qk_norm, 64)
        _set(self, "eps", check_real(own, "eps", self.eps, 0.0, 0.1, open_low=True))
        check_choice(own, "param_dtype", self.param_dtype, DTYPES)
        check_choice(own, "dtype", self.dtype, DTYPES)
        check_bool(own, "scan_layers", self.scan_layers)
        check_bool(own, "remat", self.remat)
        check_choice(own, "attention", self.attention, ATTENTION_IMPLEMENTATIONS)

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def variant(self) -> str:
        """The Wan release this layout belongs to (checkpoint metadata), not what the codec may run."""
        if self.image_dim is None:
            return "t2v"
        return "flf2v" if self.pos_embed_seq_len else "i2v"

    @property
    def conditioning(self) -> frozenset:
        """Inputs the DiT accepts besides the noisy latent: ``text`` always; ``latent`` (a 4-channel
        frame mask + a conditioning latent concatenated on channels) when
        ``in_channels == 2 * out_channels + 4``; ``image`` (CLIP tokens through a second
        cross-attention) when it has an image branch. Codec variants check against this."""
        kinds = {"text"}
        if self.in_channels == 2 * self.out_channels + 4:
            kinds.add("latent")
        if self.image_dim is not None:
            kinds.add("image")
        return frozenset(kinds)

    def replace(self, **kw) -> "DiTConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_diffusers(cls, cfg: dict, **overrides) -> "DiTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in cfg.items() if k in names}
        if "patch_size" in kw:
            kw["patch_size"] = tuple(kw["patch_size"])
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.1 causal 3D VAE (strides 4 x 8 x 8 for the default sizes)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: Tuple[float, ...] = ()
    temperal_downsample: Tuple[bool, ...] = (False, True, True)
    latents_mean: Tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: Tuple[float, ...] = WAN21_LATENTS_STD
    param_dtype: str = "float32"

    def __post_init__(self):
        own = "VAEConfig"
        for name in ("base_dim", "z_dim", "num_res_blocks"):
            _set(self, name, check_int(own, name, getattr(self, name), *VAE_LIMITS[name]))
        mult = check_seq(own, "dim_mult", self.dim_mult, 1, MAX_VAE_STAGES)
        _set(self, "dim_mult", tuple(check_int(own, f"dim_mult[{i}]", m, *VAE_LIMITS["dim_mult"])
                                     for i, m in enumerate(mult)))
        if self.base_dim * max(self.dim_mult) > MAX_VAE_WIDTH:
            raise ValueError(f"{own}: base_dim * max(dim_mult) must be at most {MAX_VAE_WIDTH}, "
                             f"got {self.base_dim} * {max(self.dim_mult)}")
        scales = check_seq(own, "attn_scales", self.attn_scales, 0, MAX_ATTN_SCALES)
        _set(self, "attn_scales", tuple(check_real(own, f"attn_scales[{i}]", a, 0.0, 1e6)
                                        for i, a in enumerate(scales)))
        n = len(self.dim_mult) - 1
        down = check_seq(own, "temperal_downsample", self.temperal_downsample, n, n)
        _set(self, "temperal_downsample", tuple(check_bool(own, f"temperal_downsample[{i}]", t)
                                                for i, t in enumerate(down)))
        for name, low in (("latents_mean", -1e6), ("latents_std", 0.0)):
            vals = check_seq(own, name, getattr(self, name), self.z_dim, self.z_dim)
            _set(self, name, tuple(check_real(own, f"{name}[{i}]", v, low, 1e6, open_low=low == 0.0)
                                   for i, v in enumerate(vals)))
        check_choice(own, "param_dtype", self.param_dtype, DTYPES)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    def replace(self, **kw) -> "VAEConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_diffusers(cls, cfg: dict, **overrides) -> "VAEConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class ModelConfig:
    """A codec model: one DiT and one VAE that agree on the latent channel count."""

    name: str
    dit: DiTConfig
    vae: VAEConfig
    default_shift: Optional[float] = None  # None: 5.0 above 480p, else 3.0 (docs/method_notes.md §Time grid)
    # (width, height) the DiT was trained at: the floor of ``--mr auto`` (None: Wan2.1's 832x480 bucket)
    native_size: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        check_str("ModelConfig", "name", self.name)
        if not isinstance(self.dit, DiTConfig) or not isinstance(self.vae, VAEConfig):
            raise ValueError(f"{self.name}: dit / vae must be a DiTConfig and a VAEConfig")
        if self.default_shift is not None:
            _set(self, "default_shift", check_real("ModelConfig", "default_shift", self.default_shift, 0.0,
                                                   MAX_SHIFT, open_low=True))
        if self.native_size is not None:
            size = check_seq("ModelConfig", "native_size", self.native_size, 2, 2)
            _set(self, "native_size", tuple(check_int("ModelConfig", f"native_size[{i}]", v, 16, 16384)
                                            for i, v in enumerate(size)))
            if any(v % 16 for v in self.native_size):
                raise ValueError(f"{self.name}: native_size {self.native_size} must be multiples of 16")
        if self.dit.out_channels != self.vae.z_dim:
            raise ValueError(f"{self.name}: DiT out_channels {self.dit.out_channels} != VAE z_dim {self.vae.z_dim}")

    @property
    def variant(self) -> str:
        return self.dit.variant


_DIT_1_3B = DiTConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30)
_DIT_14B = DiTConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40)
_I2V = dict(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)

TINY_DIT = DiTConfig(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32,
    freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32,
)
TINY_VAE = VAEConfig(
    base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, attn_scales=(),
    temperal_downsample=(False, True, True), latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4,
)
WAN_VAE = VAEConfig()

DIT_PRESETS = {
    "wan2.1-t2v-1.3b": _DIT_1_3B,
    "wan2.1-t2v-14b": _DIT_14B,
    "wan2.1-i2v-14b-480p": _DIT_14B.replace(**_I2V),
    "wan2.1-i2v-14b-720p": _DIT_14B.replace(**_I2V),
    "wan2.1-flf2v-14b-720p": _DIT_14B.replace(**_I2V, pos_embed_seq_len=2 * 257),
    "tiny-t2v": TINY_DIT,
    "tiny-i2v": TINY_DIT.replace(in_channels=12, image_dim=24, added_kv_proj_dim=32),
    "tiny-flf2v": TINY_DIT.replace(in_channels=12, image_dim=24, added_kv_proj_dim=32, pos_embed_seq_len=34),
    "tiny-anchored": TINY_DIT.replace(in_channels=12),  # latent conditioning, no image branch (like the default model)
}

VAE_PRESETS = {"wan2.1-vae": WAN_VAE, "tiny-vae": TINY_VAE}

PRESETS = {
    **{name: ModelConfig(name, dit, WAN_VAE) for name, dit in DIT_PRESETS.items() if name.startswith("wan")},
    **{name: ModelConfig(name, dit, TINY_VAE) for name, dit in DIT_PRESETS.items() if name.startswith("tiny")},
}
PRESETS["tiny"] = ModelConfig("tiny", TINY_DIT, TINY_VAE)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
