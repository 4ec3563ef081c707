"""Conditioning variants: how a GOP is planned, conditioned and completed.

A ``Variant`` is a small object the GOP loop (``codec.gop.loop``) consults; it holds no loop of its
own. For each GOP it

- plans the video (``plan``): which frames each GOP codes, which anchor it and what it waits for;
- builds the GOP's conditioning (``condition``) from *decoded* context only (closed loop: the
  encoder conditions on exactly what the decoder will have);
- makes (encoder) and applies (both sides) the GOP's side payloads, e.g. a coded anchor image or
  a tail-latent residual; ``check_side`` rejects payloads the variant does not define.

``VARIANT_NAMES`` is the stream's variant code table; ``VARIANTS`` holds the implemented ones.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, FrozenSet, Optional, Tuple

import numpy as np

from gvc_jax.codec.format.bits import BitstreamError
from gvc_jax.codec.format.bitstream import VARIANTS as VARIANT_NAMES  # the format's code table
from gvc_jax.codec.gop.plan import GopPlan, gop_count
from gvc_jax.codec.payloads import anchors, residual


class VariantError(ValueError):
    """A variant cannot run with this model or these settings."""


ANCHOR_TAG = 1    # side payload: a coded anchor image (codec.payloads.anchors.pack_anchor)
RESIDUAL_TAG = 2  # side payload: the tail latent residual (codec.payloads.residual)


@dataclasses.dataclass
class Variant:
    """Base: independent GOPs, no anchors, no side payloads.

    Encoder-only settings (the decoder reads what it needs from the payloads):
    ``anchor_codec`` / ``anchor_quality`` for coded anchor frames, ``residual_step`` for the
    tail latent residual (``None``: no residual).
    """
    anchor_codec: Optional[str] = None
    anchor_quality: Optional[int] = None
    residual_step: Optional[float] = None

    name: ClassVar[str] = ""
    requires: ClassVar[FrozenSet[str]] = frozenset({"text"})  # of DiTConfig.conditioning
    provides: ClassVar[FrozenSet[str]] = frozenset({"text", "latent"})  # what it can feed the DiT
    side_tags: ClassVar[FrozenSet[int]] = frozenset()
    ANCHOR_TAG: ClassVar[int] = ANCHOR_TAG

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

    def hop(self, gop_frames: int) -> int:
        """Frames from one GOP's start to the next's."""
        return gop_frames

    def gop_count(self, num_frames: int, gop_frames: int) -> int:
        """The GOPs ``plan`` makes, without building the plan."""
        return gop_count(num_frames, gop_frames, self.hop(gop_frames))

    def plan(self, num_frames: int, gop_frames: int, temporal_stride: int = 4):
        return GopPlan.split(num_frames, gop_frames, hop=self.hop(gop_frames), temporal_stride=temporal_stride)

    def condition(self, span, context, engine) -> tuple:
        """The GOP's ``cond`` pytree per stage. ``context`` holds the decoded frames of its dependencies."""
        return engine.unconditioned()

    def coded_anchors(self, span) -> Tuple[int, ...]:
        """The source frames whose anchor images this GOP's record carries (in payload order)."""
        return ()

    def make_anchors(self, span, frames) -> Tuple[Tuple[int, bytes], ...]:
        """Encoder: code this GOP's new anchors from its source ``frames`` (uint8 [G, H, W, 3])."""
        if not self.coded_anchors(span):
            return ()

        codec = self.anchor_codec or anchors.DEFAULT_ANCHOR_CODEC
        quality = anchors.DEFAULT_ANCHOR_QUALITY if self.anchor_quality is None else self.anchor_quality
        return tuple((ANCHOR_TAG, anchors.pack_anchor(codec, quality, frames[f - span.start]))
                     for f in self.coded_anchors(span))

    def read_anchors(self, span, side, engine) -> dict:
        """Both sides: source frame -> decoded anchor image, from this GOP's anchor payloads."""
        wanted = self.coded_anchors(span)
        if len(side) != len(wanted):
            raise BitstreamError(f"GOP {span.index}: {len(side)} anchor payloads, variant {self.name} "
                                 f"needs {len(wanted)}")
        if not wanted:
            return {}

        return {f: anchors.unpack_anchor(data, engine.height, engine.width)
                for f, (_, data) in zip(wanted, side, strict=True)}

    def anchored_condition(self, span, context, engine, positions) -> tuple:
        """Conditioning on decoded anchor pixels at GOP ``positions`` (source frames
        ``span.anchors``): the frame mask, the latent of [anchors, zeros elsewhere] and, for a DiT
        with an image branch, the CLIP tokens of the anchors (first ‖ last for FLF2V)."""
        images = [context.pixels(frame) for frame in span.anchors]
        tokens = engine.image_tokens(images) if "image" in engine.model.config.dit.conditioning else None
        return engine.condition(dict(zip(positions, images, strict=True)), image_tokens=tokens)

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


class AnchoredVariant(Variant):
    """GOPs of ``G`` frames every ``G - 1``: each GOP's first frame is the previous GOP's last."""
    requires = frozenset({"text", "latent"})
    provides = frozenset({"text", "latent", "image"})
    chain: ClassVar[bool] = False

    def hop(self, gop_frames: int) -> int:
        return gop_frames - 1

    def anchor_frames(self, span) -> Tuple[int, ...]:
        """The source frames whose decoded pixels condition GOP ``span`` (each variant says which)."""
        raise NotImplementedError

    def plan(self, num_frames: int, gop_frames: int, temporal_stride: int = 4):
        if gop_frames < 2:
            raise VariantError(f"variant {self.name} needs GOPs of at least 5 frames")
        plan = GopPlan.split(num_frames, gop_frames, hop=self.hop(gop_frames), chain=self.chain,
                             temporal_stride=temporal_stride)
        spans = tuple(dataclasses.replace(s, anchors=self.anchor_frames(s)) for s in plan.spans)
        return dataclasses.replace(plan, spans=spans)


class T2V(Variant):
    """Text-to-video: GOPs are independent; the only payload is the codebook picks."""
    name = "t2v"


class FLF2V(AnchoredVariant):
    """First-last-frame-to-video: GOP n covers frames [n(G-1), n(G-1) + G) and is conditioned on
    its two decoded boundary frames. Each boundary is coded once, in the record of the first GOP
    that touches it (GOP 0 carries two); the GOPs do not depend on each other's output."""
    name = "flf2v"
    side_tags = frozenset({ANCHOR_TAG})

    def anchor_frames(self, span) -> Tuple[int, ...]:
        return (span.start, span.stop - 1)  # a padded last GOP: its last real frame, repeated to the end

    def coded_anchors(self, span) -> Tuple[int, ...]:
        return tuple(dict.fromkeys(span.anchors)) if span.in_stream == 0 else span.anchors[1:]

    def condition(self, span, context, engine) -> tuple:
        return self.anchored_condition(span, context, engine, (0, engine.gop_frames - 1))


class I2V(AnchoredVariant):
    """Image-to-video chain: GOP 0 is conditioned on the coded first frame, GOP k on the decoded
    last frame of GOP k-1 (closed loop). The tail residual corrects the last latent frame, which
    carries that frame, before decoding."""
    name = "i2v"
    chain = True
    side_tags = frozenset({ANCHOR_TAG, RESIDUAL_TAG})

    def anchor_frames(self, span) -> Tuple[int, ...]:
        return (span.start,)

    def coded_anchors(self, span) -> Tuple[int, ...]:
        return span.anchors if span.in_stream == 0 else ()

    def condition(self, span, context, engine) -> tuple:
        return self.anchored_condition(span, context, engine, (0,))

    def make_side(self, span, latent, target):
        if self.residual_step is None:
            return ()

        r = np.asarray(target[-1], np.float32) - np.asarray(latent[-1], np.float32)
        return ((RESIDUAL_TAG, residual.encode_residual(r, self.residual_step)),)

    def apply_side(self, span, latent, side):
        payloads = [data for tag, data in side if tag == RESIDUAL_TAG]
        if not payloads:
            return latent
        if len(payloads) > 1:
            raise BitstreamError(f"GOP {span.index}: {len(payloads)} residual payloads, at most 1 allowed")

        r = residual.decode_residual(payloads[0], tuple(latent.shape[1:]))
        return latent.at[-1].add(r.astype(latent.dtype))


VARIANTS: Dict[str, type] = {"t2v": T2V, "i2v": I2V, "flf2v": FLF2V}


def get_variant(name: str, **settings) -> Variant:
    if name not in VARIANT_NAMES:
        raise VariantError(f"unknown variant {name!r}; expected one of {VARIANT_NAMES}")
    if name not in VARIANTS:
        raise VariantError(f"variant {name!r} is not implemented yet (available: {', '.join(VARIANTS)})")
    return VARIANTS[name](**settings)
