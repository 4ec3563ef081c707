"""Model configurations: dataclasses for the Wan2.1 DiT and VAE, and named presets.

Field names follow the diffusers ``config.json`` keys so that converting a config is a
plain dictionary copy (see ``DiTConfig.from_diffusers`` / ``VAEConfig.from_diffusers``).
Presets cover the published Wan2.1 checkpoints and ``tiny-*`` sizes for tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

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
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class ModelConfig:
    """A codec model: one DiT and one VAE that agree on the latent channel count."""

    name: str
    dit: DiTConfig
    vae: VAEConfig
    default_shift: Optional[float] = None  # None: 5.0 above 480p, else 3.0 (docs/method_notes.md §Time grid)

    def __post_init__(self):
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
