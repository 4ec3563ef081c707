"""Sampler settings and the shifted rectified-flow time grid (SPEC.md §3-4).

Everything here is static, host-side numpy (float64) so that the encoder and the decoder
derive bit-identical per-step tables from the header alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

DEFAULT_STEPS = 20
DEFAULT_TAIL = 3
DEFAULT_G_SCALE = 3.0
DEFAULT_K = 16384
DEFAULT_M = 64
DEFAULT_CODEBOOK = "hadamard"
# Index of the initial-noise stream in the key chain; larger than any step index.
INITIAL_NOISE_STREAM = 1_000_000


def default_shift(height: int, width: int) -> float:
    """SPEC §3: shift 5.0 above 480p (more pixels than 480x832), 3.0 at or below."""
    return 5.0 if height * width > 480 * 832 else 3.0


def f32(x: float) -> float:
    """Round a Python float to the nearest float32, the precision the header stores."""
    return float(np.float32(x))


@dataclass(frozen=True)
class SamplerConfig:
    """How a GOP's trajectory is sampled and coded. All fields travel in the header."""

    steps: int = DEFAULT_STEPS
    tail: int = DEFAULT_TAIL
    g_scale: float = DEFAULT_G_SCALE
    shift: float = 3.0
    K: int = DEFAULT_K
    atoms_per_frame: Tuple[int, ...] = (DEFAULT_M,)
    codebook: str = DEFAULT_CODEBOOK
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 1 <= self.tail <= self.steps:
            raise ValueError(f"tail must be in [1, steps={self.steps}] (the step that ends at t = 0 is "
                             f"always deterministic), got {self.tail}")
        if self.g_scale < 0:
            raise ValueError(f"g_scale must be >= 0, got {self.g_scale}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.K < 1:
            raise ValueError(f"codebook size K must be >= 1, got {self.K}")
        if not self.atoms_per_frame or any(not 1 <= m <= self.K for m in self.atoms_per_frame):
            raise ValueError(f"atoms per frame must be in [1, K={self.K}], got {self.atoms_per_frame}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")

    def replace(self, **kw) -> "SamplerConfig":
        return dataclasses.replace(self, **kw)

    @property
    def stochastic_steps(self) -> int:
        """Steps that carry bits: the first ``steps - tail`` (tail >= 1: never the one ending at t = 0)."""
        return self.steps - self.tail

    @property
    def max_atoms(self) -> int:
        return max(self.atoms_per_frame)


def time_grid(steps: int, shift: float) -> np.ndarray:
    """[steps + 1] float64: ``s = linspace(1, 0, T+1)``, ``t = shift*s / (1 + (shift-1)*s)``."""
    s = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)
    return shift * s / (1.0 + (shift - 1.0) * s)


@dataclass(frozen=True)
class StepTables:
    """Per-step arrays fed to the trajectory scan (leading axis = step)."""

    t: np.ndarray           # [T] float32 current time
    t_next: np.ndarray      # [T] float32 next time
    g: np.ndarray           # [T] float32 diffusion coefficient (0 on deterministic steps)
    stochastic: np.ndarray  # [T] bool, True where the step draws coded noise

    @classmethod
    def build(cls, cfg: SamplerConfig) -> "StepTables":
        grid = time_grid(cfg.steps, cfg.shift)
        t, t_next = grid[:-1], grid[1:]
        stochastic = np.arange(cfg.steps) < cfg.stochastic_steps
        g = np.where(stochastic, cfg.g_scale * t**2, 0.0)
        return cls(t.astype(np.float32), t_next.astype(np.float32), g.astype(np.float32), stochastic)
