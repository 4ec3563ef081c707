"""Sampler settings and the shifted rectified-flow time grid (docs/method_notes.md).

``SamplerConfig`` is the one place where the sampler's fields, their defaults and their valid
ranges are defined: the command line, the Python API and the stream header all build one, so a
value that passes here is one the trajectory can run, and a header that passes the reader's
validation always yields a valid ``SamplerConfig``.

Everything here is static, host-side numpy (float64) so that the encoder and the decoder
derive bit-identical per-step tables from the header alone.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, TypeGuard, cast

import numpy as np

from gvc_jax.codec.sampling.codebooks import KINDS as CODEBOOK_KINDS  # the stream's codebook byte indexes these
from gvc_jax.temporal import latent_frames  # noqa: F401  (re-exported for the sampler's users)

if TYPE_CHECKING:  # the plan's module builds on this one (codebooks, step limits)
    from gvc_jax.codec.sampling.multires import StagePlan

DEFAULT_STEPS = 20
DEFAULT_TAIL = 3
DEFAULT_G_SCALE = 3.0
DEFAULT_K = 16384
DEFAULT_M = 64
DEFAULT_CODEBOOK = "hadamard"
# Index of the initial-noise stream in the key chain; larger than any step index.
INITIAL_NOISE_STREAM = 1_000_000

# Valid ranges (also the stream format's limits; docs/bitstream.md explains each).
MAX_STEPS = 1000
MAX_K = 1 << 24
# Atoms per latent frame: 4x the largest M the method uses (M_tail = 128). Unranking a subset costs
# about M^2 log K bit operations, so this cap is what bounds a decoder's parse time by the size of
# the stream (measured: at most ~0.12 ms per byte of picks, M = 512, K = 2^16 .. 2^24).
MAX_ATOMS = 512
SHIFT_RANGE = (0.05, 20.0)      # Wan uses 3-5; outside this the grid collapses onto t = 0 or t = 1
G_SCALE_RANGE = (0.0, 10.0)     # the published sweet spot is 2-3; far above it the SDE diverges
MIN_ATOM_CAPACITY = 16


class SamplerError(ValueError):
    """A sampler setting outside its valid range."""


def default_shift(height: int, width: int) -> float:
    """Shift 5.0 above 480p (more pixels than 480x832), 3.0 at or below."""
    return 5.0 if height * width > 480 * 832 else 3.0


def f32(x: float) -> float:
    """Round a Python float to the nearest float32, the precision the header stores."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def atom_capacity(max_atoms: int, K: int) -> int:
    """Atom slots of the compiled trajectory for a largest M: the next power of two >= M, at least
    16, at most K. Every M up to the capacity runs in the same compiled program."""
    cap = max(MIN_ATOM_CAPACITY, 1 << max(0, int(max_atoms) - 1).bit_length())
    return max(1, min(int(K), cap))


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class SamplerConfig:
    """How a GOP's trajectory is sampled and coded. All fields travel in the stream header.

    ``shift`` and ``g_scale`` are stored rounded to float32 (the header's precision), so a config
    survives a header round trip unchanged. ``atoms_per_frame`` is M for each latent frame of a
    GOP: the largest M a GOP may use (a v2 stream may lower it per GOP).
    """

    steps: int = DEFAULT_STEPS
    tail: int = DEFAULT_TAIL
    g_scale: float = DEFAULT_G_SCALE
    shift: float = 3.0
    K: int = DEFAULT_K
    atoms_per_frame: Tuple[int, ...] = (DEFAULT_M,)
    codebook: str = DEFAULT_CODEBOOK
    seed: int = 0
    x0_cache: Tuple[int, ...] = ()
    stages: Optional["StagePlan"] = None  # multi-resolution stage plan (``multires.StagePlan``); None: one size

    def __post_init__(self):
        try:
            apf = tuple(self.atoms_per_frame)
        except TypeError:
            raise SamplerError(f"atoms_per_frame must be a sequence of ints, got {self.atoms_per_frame!r}") from None
        object.__setattr__(self, "atoms_per_frame", apf)
        for name in ("steps", "tail", "K", "seed"):
            if not _is_int(getattr(self, name)):
                raise SamplerError(f"{name} must be an int, got {getattr(self, name)!r}")
        for name in ("shift", "g_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise SamplerError(f"{name} must be a number, got {v!r}")
            object.__setattr__(self, name, f32(float(v)))
        if not 1 <= self.steps <= MAX_STEPS:
            raise SamplerError(f"steps must be in [1, {MAX_STEPS}], got {self.steps}")
        if not 1 <= self.tail <= self.steps:
            raise SamplerError(f"tail must be in [1, steps={self.steps}] (the step that ends at t = 0 is "
                               f"always deterministic), got {self.tail}")
        lo, hi = G_SCALE_RANGE
        if not (math.isfinite(self.g_scale) and lo <= self.g_scale <= hi):
            raise SamplerError(f"g_scale must be in [{lo}, {hi}], got {self.g_scale}")
        lo, hi = SHIFT_RANGE
        if not (math.isfinite(self.shift) and lo <= self.shift <= hi):
            raise SamplerError(f"shift must be in [{lo}, {hi}], got {self.shift}")
        if not 1 <= self.K <= MAX_K:
            raise SamplerError(f"codebook size K must be in [1, {MAX_K}], got {self.K}")
        if not apf or any(not _is_int(m) or not 1 <= m <= min(self.K, MAX_ATOMS) for m in apf):
            raise SamplerError(f"atoms per frame must be ints in [1, min(K={self.K}, {MAX_ATOMS})], got {apf}")
        object.__setattr__(self, "atoms_per_frame", tuple(int(m) for m in apf))
        if self.codebook not in CODEBOOK_KINDS:
            raise SamplerError(f"codebook must be one of {CODEBOOK_KINDS}, got {self.codebook!r}")
        if not 0 <= self.seed < 2**32:
            raise SamplerError(f"seed must be in [0, 2**32), got {self.seed}")
        object.__setattr__(self, "x0_cache", check_x0_cache(self.x0_cache, self.steps))
        self._check_stages()

    def _check_stages(self) -> None:
        """A stage plan's switch steps lie strictly inside the stochastic steps, and the x0-cache never
        skips a switch step (the cached clean estimate has the previous stage's shape)."""
        if self.stages is None:
            return
        switches = getattr(self.stages, "switches", None)
        if not isinstance(switches, tuple) or not switches or not all(_is_int(v) for v in switches):
            raise SamplerError(f"stages must be a multires.StagePlan, got {self.stages!r}")
        if not (0 < switches[0] and switches[-1] < self.stochastic_steps):
            raise SamplerError(f"stage switch steps must be strictly inside the stochastic steps (1 to "
                               f"{self.stochastic_steps - 1}), got {switches}")
        clash = sorted(set(switches) & set(self.x0_cache))
        if clash:
            raise SamplerError(f"the x0-cache must not skip a stage's first step, got {clash}")

    @classmethod
    def for_gop(cls, gop_frames: int, M: int | Sequence[int] = DEFAULT_M, *, temporal_stride: int = 4,
                **fields) -> "SamplerConfig":
        """The config for GOPs of ``gop_frames`` frames with ``M`` atoms on every latent frame
        (or one M per latent frame)."""
        n = latent_frames(gop_frames, temporal_stride)
        apf = (int(M),) * n if _is_int(M) else tuple(cast(Sequence[int], M))
        if len(apf) != n:
            raise SamplerError(f"{len(apf)} atom counts for {n} latent frames")
        return cls(atoms_per_frame=apf, **fields)

    def replace(self, **kw) -> "SamplerConfig":
        return dataclasses.replace(self, **kw)

    @property
    def stochastic_steps(self) -> int:
        """Steps that carry bits: the first ``steps - tail`` (tail >= 1: never the one ending at t = 0)."""
        return self.steps - self.tail

    @property
    def transitions(self) -> int:
        """Stage transitions (0 without a stage plan): each carries one coded atom set per latent frame."""
        return 0 if self.stages is None else len(self.stages.switches)

    @property
    def pick_rows(self) -> int:
        """Atom sets per latent frame a GOP's record carries: the stochastic steps, then the transitions."""
        return self.stochastic_steps + self.transitions

    @property
    def dense_rows(self) -> int:
        """Rows of the trajectory's dense picks: every step (deterministic ones all zero), then the transitions."""
        return self.steps + self.transitions

    def coded_rows(self) -> Tuple[int, ...]:
        """The dense rows a record carries, in stream order (the stochastic steps, then the transitions)."""
        return tuple(range(self.stochastic_steps)) + tuple(range(self.steps, self.dense_rows))

    @property
    def max_atoms(self) -> int:
        return max(self.atoms_per_frame)

    @property
    def capacity(self) -> int:
        """Atom slots of the compiled trajectory (see ``atom_capacity``)."""
        return atom_capacity(self.max_atoms, self.K)


def check_x0_cache(skips, steps: int) -> Tuple[int, ...]:
    """Validated x0-cache schedule: the steps whose DiT call is replaced by the velocity rebuilt
    from the previous step's clean estimate, ``u = (x_t - x0_hat) / t``. Strictly increasing step
    indices in [1, steps); never two in a row (reported to collapse quality), never step 0
    (nothing is cached yet)."""
    try:
        out = tuple(skips)
    except TypeError:
        raise SamplerError(f"x0_cache must be a sequence of step indices, got {skips!r}") from None
    if any(not _is_int(s) for s in out):
        raise SamplerError(f"x0_cache must hold ints, got {out}")
    out = tuple(int(s) for s in out)
    if any(not 1 <= s < steps for s in out):
        raise SamplerError(f"x0_cache steps must be in [1, steps={steps}), got {out}")
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise SamplerError(f"x0_cache steps must be strictly increasing, got {out}")
    if any(b == a + 1 for a, b in zip(out, out[1:], strict=False)):
        raise SamplerError(f"x0_cache must not skip two steps in a row, got {out}")
    return out


X0_CACHE_MODES = ("off", "alternate")


def x0_cache_schedule(spec, steps: int) -> Tuple[int, ...]:
    """``--x0-cache`` value -> schedule: ``off``, ``alternate`` (every odd step: the DiT runs on
    half the steps, rounded up), or explicit comma-separated step indices ("3,5,9")."""
    if isinstance(spec, (tuple, list)):
        return check_x0_cache(spec, steps)
    text = str(spec).strip()
    if text == "off" or text == "":
        return ()
    if text == "alternate":
        return tuple(range(1, steps, 2))
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SamplerError(f"x0-cache must be one of {X0_CACHE_MODES} or comma-separated step indices, "
                           f"got {spec!r}") from None
    return check_x0_cache(values, steps)


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
    reuse: np.ndarray       # [T] bool, True where the velocity comes from the cached clean estimate

    @classmethod
    def build(cls, cfg: SamplerConfig) -> "StepTables":
        grid = time_grid(cfg.steps, cfg.shift)
        t, t_next = grid[:-1], grid[1:]
        stochastic = np.arange(cfg.steps) < cfg.stochastic_steps
        g = np.where(stochastic, cfg.g_scale * t**2, 0.0)
        reuse = np.isin(np.arange(cfg.steps), cfg.x0_cache)
        return cls(t.astype(np.float32), t_next.astype(np.float32), g.astype(np.float32), stochastic, reuse)
