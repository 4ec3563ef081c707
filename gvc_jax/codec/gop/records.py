"""Conversions between the trajectory's dense picks and the stream's GOP records, and the
final-latent hash that lets the decoder detect drift.

The trajectory works with dense arrays ``Picks`` [T, F, S] (all steps, S atom slots, unused slots
have coefficient 0); a ``bitstream.GopRecord`` holds, for the stochastic steps and then the stage transitions
(``SamplerConfig.coded_rows``), each latent frame's M_f sorted indices and their signs.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.codec.sampling.trajectory import Picks

LATENT_HASH_BYTES = 8


def latent_hash(latent) -> bytes:
    """8-byte digest of a final latent's float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(latent, np.float32)).tobytes()).digest()[:LATENT_HASH_BYTES]


def picks_to_record(picks: Picks, sampler: SamplerConfig, atoms_per_frame: Sequence[int]) -> tuple:
    """[T + transitions, F, S] canonical picks -> ``GopRecord.picks``: the rows a record carries
    (``sampler.coded_rows()``: the stochastic steps, then the stage transitions), used slots only."""
    idx, coef = np.asarray(picks.indices), np.asarray(picks.coeffs)
    out = []
    for s in sampler.coded_rows():
        row = []
        for f, m in enumerate(atoms_per_frame):
            if not np.all(coef[s, f, :m] != 0) or np.any(coef[s, f, m:] != 0):
                raise AssertionError(f"row {s} frame {f}: expected exactly {m} used atoms")
            row.append((idx[s, f, :m].astype(np.int32), np.sign(coef[s, f, :m]).astype(np.int8)))
        out.append(tuple(row))
    return tuple(out)


def record_to_picks(record_picks, sampler: SamplerConfig, frames: int, slots: int) -> Picks:
    """Inverse of ``picks_to_record``: dense [T + transitions, frames, slots] picks."""
    picks = Picks.empty(sampler.dense_rows, frames, slots)
    for s, row in zip(sampler.coded_rows(), record_picks, strict=True):
        for f, (idx, signs) in enumerate(row):
            picks.indices[s, f, :len(idx)] = idx
            picks.coeffs[s, f, :len(idx)] = signs
    return picks
