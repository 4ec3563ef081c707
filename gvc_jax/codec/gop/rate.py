"""Rate targeting: the exact size of a stream before coding it, and the atoms that fill a budget.

A stream's size is known exactly from its header and the lengths of its side payloads: every
record is its framing (length varint, CRC), the latent hash, the rank-coded picks
(``bitstream.payload_bits``) and the side payloads with their tags and lengths. Anchor images can
be coded before the trajectories (their bytes do not depend on them); the I2V tail residual cannot,
so for I2V the budget is met up to the residual's size (the caller reports how close it got).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from gvc_jax.codec.format import bitstream
from gvc_jax.codec.sampling.schedule import MAX_ATOMS, SamplerConfig


class RateError(ValueError):
    """No setting of the atoms fits the requested rate."""


@dataclass(frozen=True)
class RateTarget:
    """A byte budget for one stream: the atoms are chosen (``fit_sampler``) so the stream, with
    side payloads of ``side_lengths[g]`` bytes in GOP g, fits ``target_bytes``; ``pattern``: M ->
    atoms per latent frame (``atoms_pattern``; None: M everywhere)."""

    target_bytes: int
    side_lengths: Tuple[Tuple[int, ...], ...] = ()
    pattern: Optional[Callable[[int], Tuple[int, ...]]] = None

    def sampler(self, header: bitstream.Header) -> SamplerConfig:
        return fit_sampler(header, int(self.target_bytes), self.side_lengths, self.pattern)


def stream_bytes(header: bitstream.Header, side_lengths: Sequence[Sequence[int]] = ()) -> int:
    """Exact size of a stream with this header (same atoms in every GOP) whose GOP ``g`` carries
    side payloads of lengths ``side_lengths[g]`` (missing entries: none)."""
    varint = lambda v: len(bitstream.encode_varint(v))  # noqa: E731
    picks = (bitstream.payload_bits(header) + 7) // 8
    total = bitstream.header_bytes(header)
    for g in range(header.num_gops):
        sides = side_lengths[g] if g < len(side_lengths) else ()
        body = bitstream.HASH_BYTES + picks + varint(len(sides)) + sum(1 + varint(n) + n for n in sides)
        total += varint(body) + 4 + body
    return total


def atoms_pattern(latent_frames: int, tail_frames: int = 0,
                  tail_ratio: float = 1.0) -> Callable[[int], Tuple[int, ...]]:
    """M -> atoms per latent frame: M everywhere, ``round(tail_ratio * M)`` on the last ``tail_frames``."""
    def pattern(m: int) -> Tuple[int, ...]:
        tail = max(1, round(tail_ratio * m))
        k = min(tail_frames, latent_frames)
        return (m,) * (latent_frames - k) + (tail,) * k
    return pattern


def fit_atoms(header: bitstream.Header, budget_bytes: int, side_lengths: Sequence[Sequence[int]] = (),
              pattern: Callable[[int], Tuple[int, ...]] | None = None) -> Tuple[int, ...]:
    """The largest atoms per latent frame whose stream fits ``budget_bytes``: the largest M of
    ``pattern`` that fits, then one more atom on single frames (last first) while it still fits,
    so the size lands within one atom's bits of the budget."""
    n = len(header.atoms_per_frame)
    pattern = pattern or atoms_pattern(n)
    cap = min(header.K, MAX_ATOMS)

    def size(apf) -> int:
        return stream_bytes(header.replace(sampler=header.sampler.replace(atoms_per_frame=tuple(apf))), side_lengths)

    def valid(m: int) -> bool:
        return max(pattern(m)) <= cap

    if size(pattern(1)) > budget_bytes:
        raise RateError(f"even one atom per latent frame needs {size(pattern(1))} bytes, over the budget of "
                        f"{budget_bytes} bytes "
                        f"(anchors and overhead: {size(pattern(1)) - _pick_bytes(header, pattern(1))})")
    lo, hi = 1, cap
    while lo < hi:  # largest valid M with size <= budget (size grows with M)
        mid = (lo + hi + 1) // 2
        if valid(mid) and size(pattern(mid)) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    apf = list(pattern(lo))
    for f in reversed(range(n)):
        if apf[f] + 1 > cap:
            continue
        apf[f] += 1
        if size(apf) > budget_bytes:
            apf[f] -= 1
            break
    return tuple(apf)


def _pick_bytes(header: bitstream.Header, apf) -> int:
    return header.num_gops * ((bitstream.payload_bits(header, apf) + 7) // 8)


def fit_sampler(header: bitstream.Header, budget_bytes: int, side_lengths=(), pattern=None) -> SamplerConfig:
    """``header``'s sampler with the atoms of ``fit_atoms``."""
    return header.sampler.replace(atoms_per_frame=fit_atoms(header, budget_bytes, side_lengths, pattern))
