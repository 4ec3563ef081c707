"""Conditioning variants: how a GOP is planned, conditioned and completed.

A ``Variant`` is a small object the GOP loop (``codec.coder``) consults; it holds no loop of its
own. For each GOP it

- plans the video (``plan``): which frames each GOP codes, which anchor it and what it waits for;
- builds the GOP's conditioning (``condition``) from *decoded* context only (closed loop: the
  encoder conditions on exactly what the decoder will have);
- makes (encoder) and applies (both sides) the GOP's side payloads, e.g. a coded anchor image or
  a tail-latent residual; ``check_side`` rejects payloads the variant does not define.

``VARIANT_NAMES`` is the stream's variant code table; ``VARIANTS`` holds the implemented ones.
"""
from __future__ import annotations

from typing import ClassVar, Dict, FrozenSet, Tuple

from gvc_jax.codec.ranks import BitstreamError

VARIANT_NAMES = ("t2v", "i2v", "flf2v")  # stream order: the header's variant byte indexes this


class VariantError(ValueError):
    """A variant cannot run with this model or these settings."""


class Variant:
    """Base: independent GOPs, no anchors, no side payloads."""

    name: ClassVar[str] = ""
    requires: ClassVar[FrozenSet[str]] = frozenset({"text"})  # of DiTConfig.conditioning
    provides: ClassVar[FrozenSet[str]] = frozenset({"text", "latent"})  # what it can feed the DiT
    side_tags: ClassVar[FrozenSet[int]] = frozenset()

    def check_model(self, model_config) -> None:
        accepts = model_config.dit.conditioning
        missing = self.requires - accepts
        if missing:
            raise VariantError(f"variant {self.name} needs a model that accepts {sorted(missing)} conditioning; "
                               f"{model_config.name} accepts {sorted(accepts)}")
        # An image branch cannot be fed zeros meaningfully: such a model needs real CLIP tokens.
        if "image" in accepts and "image" not in self.provides:
            raise VariantError(f"model {model_config.name} needs CLIP image tokens, which variant {self.name} "
                               f"does not provide")

    def plan(self, num_frames: int, gop_frames: int, temporal_stride: int = 4):
        from gvc_jax.codec.plan import GopPlan

        return GopPlan.split(num_frames, gop_frames, temporal_stride=temporal_stride)

    def condition(self, span, context, engine) -> dict:
        """The GOP's ``cond`` pytree. ``context`` holds the decoded frames of its dependencies."""
        return engine.unconditioned()

    def make_side(self, span, latent, target) -> Tuple[Tuple[int, bytes], ...]:
        """Encoder: side payloads for the GOP, given its trajectory's final latent and the target."""
        return ()

    def apply_side(self, span, latent, side):
        """Both sides: the latent to decode, given the trajectory's final latent and the payloads."""
        return latent

    def check_side(self, gop: int, side) -> None:
        for tag, _ in side:
            if tag not in self.side_tags:
                raise BitstreamError(f"GOP {gop}: side payload tag {tag} is not used by variant {self.name}")


class T2V(Variant):
    """Text-to-video: GOPs are independent; the only payload is the codebook picks."""

    name = "t2v"


VARIANTS: Dict[str, type] = {"t2v": T2V}


def get_variant(name: str) -> Variant:
    if name not in VARIANT_NAMES:
        raise VariantError(f"unknown variant {name!r}; expected one of {VARIANT_NAMES}")
    if name not in VARIANTS:
        raise VariantError(f"variant {name!r} is not implemented yet (available: {', '.join(VARIANTS)})")
    return VARIANTS[name]()
