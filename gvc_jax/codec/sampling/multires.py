"""Building blocks of the multi-resolution (MR) trajectory (issue 24; facts: shared/TURBO.md).

An MR trajectory runs its early, high-noise stochastic steps on smaller latent grids. Stage s
runs the stochastic steps ``[tau_{s-1}, tau_s)`` (``tau_{-1} = 0``); the last stage is the coded
size and also runs the deterministic tail. At the start of step ``tau_s`` (before its DiT call,
at that step's unchanged time t) the state is carried to the next size by :func:`transition`
and the newly opened spectral band receives coded *transition atoms*. A low stage's target is the
orthonormal DCT-II low-pass of the one full-resolution VAE latent (:func:`lowpass_target`).

This module holds pure, tested pieces that the trajectory / GOP loop / stream header can call:

- :class:`StagePlan` (stage pixel sizes + switch steps), :func:`parse_stage_plan` (``--mr``),
  :func:`check_stage_plan` (model grid and step range), :func:`auto_stage_plan` (``--mr auto``,
  our own rule) and a versioned byte form (``to_bytes`` / ``from_bytes`` / ``read``). Pure Python.
- The orthonormal DCT-II over (h, w) of latents ``[F, h, w, C]`` (the codebase's layout) in JAX:
  :func:`dct2`, :func:`idct2`, :func:`lowpass_target`, :func:`highpass`, :func:`transition`.
- Transition atoms (TURBO §5): :func:`transition_atom_step`, :func:`transition_atom_keys`,
  :func:`search_transition_atoms`, :func:`inject_transition_atoms`.
- The refresh (x0-cache) schedule with stages (TURBO §6): :func:`mr_refresh_schedule`.
- Bit accounting: :func:`published_gop_bits` (the published ``M (ceil(log2 K) + 1)`` count, for
  comparison with TURBO §7) and :func:`rank_coded_gop_bits` (our format's exact count).

Key streams (``codebooks.frame_key(seed, gop, step, frame)``; every index here is distinct):

- regular atoms: ``step`` in ``[0, T_sde)`` (the global stochastic step, continuing across stages);
- transition atoms into stage s + 1: ``step = T_sde + s`` (:func:`transition_atom_step`). Since
  switch steps are strictly inside ``(0, T_sde)`` and strictly increasing, a plan has at most
  ``T_sde`` stages, so these indices lie in ``[T_sde, 2 T_sde - 1)``: never a regular stochastic
  step, and below ``schedule.INITIAL_NOISE_STREAM`` (1,000,000) because ``T_sde < MAX_STEPS``.
  Deterministic tail steps have indices in ``[T_sde, T)`` too but draw no atoms, so derive no key;
- the initial noise: ``INITIAL_NOISE_STREAM`` (``trajectory.initial_noise``);
- the transition's band noise: ``fold_in(frame_key(seed, gop, TRANSITION_NOISE_STREAM, stage),
  step)``, then ``fold_in(frame)`` per latent frame (:func:`transition_noise_key`).

What is ours rather than published (TURBO marks it): :func:`auto_stage_plan`'s rule, the key
derivation of the band noise (the published code used a float-derived integer seed), the byte
layout. Everything else follows TURBO §3-§7 as stated there.
"""
from __future__ import annotations

import functools
import math
import re
import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from gvc_jax.codec.format.ranks import subset_rank_bits
from gvc_jax.codec.sampling.codebooks import Codebook, frame_key, standard_normal
from gvc_jax.codec.sampling.schedule import INITIAL_NOISE_STREAM, MAX_STEPS, check_x0_cache

Size = Tuple[int, int]  # (width, height) in pixels, as on the command line ("832x480")
HW = Tuple[int, int]    # (h, w) of a latent grid

# ------------------------------------------------------------------------------------ limits

MAX_STAGES = 8            # stages of one plan, the coded size included (TURBO uses 2 and 3)
MAX_SIZE = 16384          # largest pixel width / height (equal to the stream header's coded-size limit)
SIZE_UNIT = 16            # every stage size is a multiple of 16 pixels (the byte form stores size / 16)
PLAN_FORMAT_VERSION = 1
# Wan 1.3B / 14B native bucket (TURBO §1: the lowest stage must not go below it).
WAN_NATIVE_SIZE: Size = (832, 480)
# Index of the transition band-noise stream in the key chain; distinct from INITIAL_NOISE_STREAM and
# far above any step or transition-atom index (< 2 * MAX_STEPS).
TRANSITION_NOISE_STREAM = INITIAL_NOISE_STREAM + 1


class StagePlanError(ValueError):
    """An invalid multi-resolution stage plan (``--mr``), or bytes that are not one."""


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _fmt(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


# ------------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class StagePlan:
    """Stage pixel sizes, smallest first (``sizes[-1]`` is the coded size), and the stochastic
    step at which each lower stage ends (``switches[s]`` = tau_s, the first step of stage s + 1).

    Construction checks what holds whatever the model and sampler: 2 to ``MAX_STAGES`` stages,
    sizes multiples of 16 in ``[16, MAX_SIZE]``, strictly increasing in both dimensions, switch
    steps ints in ``[1, MAX_STEPS)``, strictly increasing, one per lower stage.
    :func:`check_stage_plan` adds the model's grid, the coded size and the step range.
    """

    sizes: Tuple[Size, ...]
    switches: Tuple[int, ...]

    def __post_init__(self):
        try:
            sizes = tuple(tuple(s) for s in self.sizes)
            switches = tuple(self.switches)
        except TypeError:
            raise StagePlanError("stage plan needs a sequence of (width, height) sizes and a sequence of "
                                 "switch steps") from None
        if not 2 <= len(sizes) <= MAX_STAGES:
            raise StagePlanError(f"a stage plan has 2 to {MAX_STAGES} stages (coded size included), got {len(sizes)}")
        if len(switches) != len(sizes) - 1:
            raise StagePlanError(f"{len(sizes)} stages need {len(sizes) - 1} switch steps, got {len(switches)}")
        for s in sizes:
            if len(s) != 2 or not all(_is_int(v) for v in s):
                raise StagePlanError(f"stage size must be two ints (width, height), got {s!r}")
            if not all(SIZE_UNIT <= v <= MAX_SIZE and v % SIZE_UNIT == 0 for v in s):
                raise StagePlanError(f"stage size {_fmt(s)} must have both sides multiples of {SIZE_UNIT} "
                                     f"in [{SIZE_UNIT}, {MAX_SIZE}]")
        sizes = tuple((int(w), int(h)) for w, h in sizes)
        for a, b in zip(sizes, sizes[1:], strict=False):
            if not (a[0] < b[0] and a[1] < b[1]):
                raise StagePlanError(f"stage sizes must increase strictly in both width and height: "
                                     f"{_fmt(a)} then {_fmt(b)}")
        if not all(_is_int(v) for v in switches):
            raise StagePlanError(f"switch steps must be ints, got {switches!r}")
        switches = tuple(int(v) for v in switches)
        if any(not 1 <= v < MAX_STEPS for v in switches):
            raise StagePlanError(f"switch steps must be in [1, {MAX_STEPS}), got {switches}")
        if any(b <= a for a, b in zip(switches, switches[1:], strict=False)):
            raise StagePlanError(f"switch steps must increase strictly, got {switches}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "switches", switches)

    # ------------------------------------------------------------------ geometry
    @property
    def stages(self) -> int:
        return len(self.sizes)

    @property
    def coded(self) -> Size:
        return self.sizes[-1]

    def stage_starts(self) -> Tuple[int, ...]:
        """First step of each stage: ``(0, tau_0, tau_1, ...)``."""
        return (0,) + self.switches

    def stage_of_step(self, step: int) -> int:
        """The stage that runs ``step`` (tail steps run in the last stage)."""
        return sum(1 for tau in self.switches if step >= tau)

    def step_stages(self, steps: int) -> np.ndarray:
        """[steps] int32: the stage of every step of a ``steps``-step trajectory."""
        return np.searchsorted(np.asarray(self.switches), np.arange(steps), side="right").astype(np.int32)

    def latent_sizes(self, spatial_stride: int) -> Tuple[HW, ...]:
        """(h, w) latent grid of each stage for a VAE of this spatial stride."""
        for w, h in self.sizes:
            if w % spatial_stride or h % spatial_stride:
                raise StagePlanError(f"stage size {w}x{h} is not a multiple of the VAE stride {spatial_stride}")
        return tuple((h // spatial_stride, w // spatial_stride) for w, h in self.sizes)

    def spec(self) -> str:
        """The ``--mr`` text of this plan (lower stages only): ``832x480@8``."""
        return ",".join(f"{_fmt(s)}@{tau}" for s, tau in zip(self.sizes[:-1], self.switches, strict=True))

    # ------------------------------------------------------------------ byte form
    def to_bytes(self) -> bytes:
        """Version 1: u8 version, u8 S, S x (u16 width/16, u16 height/16), (S-1) x u16 switch step,
        big-endian; ``6 S`` bytes in all (12 for two stages)."""
        out = bytearray((PLAN_FORMAT_VERSION, self.stages))
        for w, h in self.sizes:
            out += struct.pack(">HH", w // SIZE_UNIT, h // SIZE_UNIT)
        for tau in self.switches:
            out += struct.pack(">H", tau)
        return bytes(out)

    @staticmethod
    def encoded_length(stages: int) -> int:
        return 2 + 4 * stages + 2 * (stages - 1)

    @classmethod
    def read(cls, data: bytes, offset: int = 0) -> Tuple["StagePlan", int]:
        """Parse a plan starting at ``offset`` -> (plan, offset just past it). Raises StagePlanError on
        truncated bytes, an unknown version, a bad stage count or values that fail the plan's checks."""
        buf = bytes(data)
        if not 0 <= offset <= len(buf):
            raise StagePlanError(f"stage plan offset {offset} outside {len(buf)} bytes")
        if len(buf) - offset < 2:
            raise StagePlanError(f"stage plan truncated: {len(buf) - offset} bytes, need at least 2")
        version, stages = buf[offset], buf[offset + 1]
        if version != PLAN_FORMAT_VERSION:
            raise StagePlanError(f"stage plan format version {version} unknown (reads {PLAN_FORMAT_VERSION})")
        if not 2 <= stages <= MAX_STAGES:
            raise StagePlanError(f"stage plan has {stages} stages, must be 2 to {MAX_STAGES}")
        end = offset + cls.encoded_length(stages)
        if end > len(buf):
            raise StagePlanError(f"stage plan truncated: {len(buf) - offset} bytes, {stages} stages need "
                                 f"{end - offset}")
        pos = offset + 2
        sizes = []
        for _ in range(stages):
            w, h = struct.unpack_from(">HH", buf, pos)
            sizes.append((w * SIZE_UNIT, h * SIZE_UNIT))
            pos += 4
        switches = struct.unpack_from(f">{stages - 1}H", buf, pos)
        return cls(tuple(sizes), tuple(switches)), end

    @classmethod
    def from_bytes(cls, data: bytes) -> "StagePlan":
        """Exactly one plan's bytes (trailing bytes are refused)."""
        plan, end = cls.read(data)
        if end != len(data):
            raise StagePlanError(f"stage plan has {len(data) - end} trailing bytes")
        return plan


def _grid_multiple(spatial_stride: int, patch: Union[int, Sequence[int]]) -> Size:
    """(width, height) pixel multiple a stage size needs: lcm(16, stride * patch) per axis."""
    if isinstance(patch, (int, np.integer)):
        ph, pw = int(patch), int(patch)
    else:
        hw = tuple(patch)[-2:]
        if len(hw) != 2:
            raise StagePlanError(f"DiT patch must be an int or (h, w) / (t, h, w), got {patch!r}")
        ph, pw = hw
    if not (_is_int(spatial_stride) and spatial_stride >= 1 and _is_int(ph) and ph >= 1 and _is_int(pw) and pw >= 1):
        raise StagePlanError(f"model grid needs positive ints, got stride {spatial_stride!r}, patch {patch!r}")
    return math.lcm(SIZE_UNIT, int(spatial_stride) * int(pw)), math.lcm(SIZE_UNIT, int(spatial_stride) * int(ph))


def check_stage_plan(plan: StagePlan, coded: Size, steps: int, tail: int, *, spatial_stride: int = 8,
                     patch: Union[int, Sequence[int]] = (2, 2)) -> StagePlan:
    """Refuse a plan that this model and sampler cannot run: the last stage must be the coded size,
    every size a multiple of ``lcm(16, spatial_stride * patch)`` per axis (the DiT's patch grid;
    ``patch`` is the DiT's (h, w) patch or its (t, h, w) ``patch_size``), switch steps strictly
    inside the stochastic steps ``(0, steps - tail)``. Returns the plan."""
    if not isinstance(plan, StagePlan):
        raise StagePlanError(f"expected a StagePlan, got {type(plan).__name__}")
    coded = (int(coded[0]), int(coded[1]))
    if plan.coded != coded:
        raise StagePlanError(f"the last stage must be the coded size {_fmt(coded)}, got {_fmt(plan.coded)}")
    mw, mh = _grid_multiple(spatial_stride, patch)
    for w, h in plan.sizes:
        if w % mw or h % mh:
            raise StagePlanError(f"stage size {w}x{h} must be a multiple of {mw}x{mh} for this model "
                                 f"(VAE stride {spatial_stride}, DiT patch grid)")
    sde = int(steps) - int(tail)
    if sde < 2:
        raise StagePlanError(f"a stage plan needs at least 2 stochastic steps, the sampler has {sde}")
    if plan.switches[-1] >= sde or plan.switches[0] < 1:
        raise StagePlanError(f"switch steps must be strictly inside the stochastic steps (1 to {sde - 1}), "
                             f"got {plan.switches}")
    return plan


_STAGE_RE = re.compile(r"^\s*(\d{1,6})\s*x\s*(\d{1,6})\s*@\s*(\d{1,6})\s*$")
MR_OFF = ("off", "none", "")


def parse_stage_plan(spec: str, *, coded: Size, steps: int, tail: int, spatial_stride: int = 8,
                     patch: Union[int, Sequence[int]] = (2, 2),
                     native: Size = WAN_NATIVE_SIZE) -> Optional[StagePlan]:
    """``--mr`` text -> a checked plan, or None for a plain trajectory.

    ``WxH@STEP[,WxH@STEP...]`` lists the *lower* stages, smallest first, each with the stochastic
    step at which it ends; the coded size ``coded`` (width, height) is the last stage. ``off`` /
    ``none`` / empty: None. ``auto``: :func:`auto_stage_plan` with ``native`` as the floor.
    """
    if not isinstance(spec, str):
        raise StagePlanError(f"--mr must be a string, got {type(spec).__name__}")
    text = spec.strip().lower()
    if text in MR_OFF:
        return None
    if text == "auto":
        return auto_stage_plan(coded, steps, tail, native=native, spatial_stride=spatial_stride, patch=patch)
    sizes, switches = [], []
    for part in text.split(","):
        m = _STAGE_RE.match(part)
        if m is None:
            raise StagePlanError(f"--mr stage {part.strip()!r} is not WIDTHxHEIGHT@STEP (e.g. 832x480@8)")
        sizes.append((int(m.group(1)), int(m.group(2))))
        switches.append(int(m.group(3)))
    plan = StagePlan(tuple(sizes) + ((int(coded[0]), int(coded[1])),), tuple(switches))
    return check_stage_plan(plan, coded, steps, tail, spatial_stride=spatial_stride, patch=patch)


# Our own rule for --mr auto (TURBO §8: no published mapping). Anchored at the two published plans:
# 720p -> 832x480@8 and 1080p -> 832x480@6,1280x720@12 at T = 20, tail 3 (T_sde = 17).
AUTO_STAGE_RATIO = 1.5                 # linear size ratio between neighbouring stages (480p -> 720p -> 1080p)
AUTO_SWITCH_ONE = 8 / 17               # S = 2: the lower stage ends at this fraction of T_sde
AUTO_SWITCH_LAST = 12 / 17             # S >= 3: the last lower stage ends here, earlier ones evenly below
AUTO_NATIVE_ASPECT_TOL = math.log(1.1)  # use the native bucket as is if its aspect is within 10 % of the video's


def _round_to(v: float, m: int, up: bool = False) -> int:
    q = math.ceil(v / m - 1e-9) if up else math.floor(v / m + 0.5)
    return max(1, q) * m


def auto_stage_plan(coded: Size, steps: int, tail: int, *, native: Size = WAN_NATIVE_SIZE, spatial_stride: int = 8,
                    patch: Union[int, Sequence[int]] = (2, 2)) -> Optional[StagePlan]:
    """``--mr auto``: a plan for the coded size (width, height), or None (plain) when the coded area is
    at or below the model's native bucket ``native`` (the floor, TURBO §1) or no valid plan fits.

    Our own rule, not the published method's (which fixes the plan by configuration):
    - lower stages: ``n = max(1, round(log(sqrt(coded_area / native_area)) / log 1.5))``;
    - the lowest stage is the native bucket (turned to the video's orientation) when its aspect is
      within 10 % of the video's and it fits strictly inside; otherwise the video's aspect at the
      native area, rounded *up* to the model grid (never below the floor);
    - stage i between is ``coded / 1.5^(n - i)`` rounded to the grid;
    - switch steps: ``round(T_sde * 8/17)`` for one lower stage, ``round(T_sde * 12/17 * i / n)``
      for n >= 2 (the published 720p / 1080p settings at T_sde = 17); stages that would not get a
      step of their own are dropped.
    For 1280x720 at T = 20, tail 3 this gives ``832x480@8``; for 1920x1088, ``832x480@6,1280x720@12``.
    """
    cw, ch = int(coded[0]), int(coded[1])
    nw, nh = int(native[0]), int(native[1])
    if (nw > nh) != (cw > ch) and nw != nh and cw != ch:
        nw, nh = nh, nw  # portrait video: portrait bucket
    sde = int(steps) - int(tail)
    native_area, area = nw * nh, cw * ch
    if area <= native_area or sde < 2:
        return None
    mw, mh = _grid_multiple(spatial_stride, patch)
    aspect_ok = abs(math.log((nw / nh) / (cw / ch))) <= AUTO_NATIVE_ASPECT_TOL
    if aspect_ok and nw < cw and nh < ch and nw % mw == 0 and nh % mh == 0:
        floor = (nw, nh)
    else:
        scale = math.sqrt(native_area / area)
        floor = (_round_to(cw * scale, mw, up=True), _round_to(ch * scale, mh, up=True))
    if not (floor[0] < cw and floor[1] < ch):
        return None
    ratio = math.sqrt(area / native_area)
    n = max(1, int(math.floor(math.log(ratio) / math.log(AUTO_STAGE_RATIO) + 0.5)))
    n = min(n, MAX_STAGES - 1, sde - 1)
    while n >= 1:
        sizes = [floor]
        for i in range(1, n):
            f = AUTO_STAGE_RATIO ** (n - i)
            s = (_round_to(cw / f, mw), _round_to(ch / f, mh))
            if sizes[-1][0] < s[0] < cw and sizes[-1][1] < s[1] < ch:
                sizes.append(s)
        k = len(sizes)
        if k == 1:
            taus = [int(math.floor(sde * AUTO_SWITCH_ONE + 0.5))]
        else:
            taus = [int(math.floor(sde * AUTO_SWITCH_LAST * i / k + 0.5)) for i in range(1, k + 1)]
        if taus[0] >= 1 and taus[-1] < sde and all(b > a for a, b in zip(taus, taus[1:], strict=False)):
            plan = StagePlan(tuple(sizes) + ((cw, ch),), tuple(taus))
            return check_stage_plan(plan, (cw, ch), steps, tail, spatial_stride=spatial_stride, patch=patch)
        n = k - 1
    return None


# ------------------------------------------------------------------------------------ DCT-II

@functools.lru_cache(maxsize=64)
def dct_matrix(n: int) -> np.ndarray:
    """[n, n] float64 orthonormal DCT-II matrix (read-only, cached): ``C @ x`` = scipy
    ``dct(x, type=2, norm='ortho')``, ``C.T @ X`` its inverse."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    c.setflags(write=False)
    return c


_HI = jax.lax.Precision.HIGHEST


def _mat(n: int, rows: Optional[int] = None) -> jax.Array:
    return jnp.asarray(dct_matrix(n)[: n if rows is None else rows], jnp.float32)


def dct2(x: jax.Array) -> jax.Array:
    """Orthonormal 2-D DCT-II over (h, w) of ``x`` [F, h, w, C] (per frame and channel)."""
    _, h, w, _ = x.shape
    return jnp.einsum("kh,fhwc,lw->fklc", _mat(h), x.astype(jnp.float32), _mat(w), precision=_HI)


def idct2(X: jax.Array) -> jax.Array:
    """Inverse of :func:`dct2` (orthonormal DCT-III) over (h, w) of [F, h, w, C]."""
    _, h, w, _ = X.shape
    return jnp.einsum("kh,fklc,lw->fhwc", _mat(h), X.astype(jnp.float32), _mat(w), precision=_HI)


def _check_block(shape: Tuple[int, ...], small_hw: HW) -> Tuple[int, int]:
    if len(shape) != 4:
        raise ValueError(f"latents are [F, h, w, C], got shape {shape}")
    hs, ws = int(small_hw[0]), int(small_hw[1])
    if not (1 <= hs <= shape[1] and 1 <= ws <= shape[2]):
        raise ValueError(f"block {hs}x{ws} (h x w) does not fit a {shape[1]}x{shape[2]} latent grid")
    return hs, ws


def lowpass_target(latent_full: jax.Array, small_hw: HW) -> jax.Array:
    """A low stage's target (TURBO §3): DCT-II of the full latent [F, H, W, C], keep the top-left
    ``h_s x w_s`` block, inverse DCT at the small size -> [F, h_s, w_s, C]. No rescaling (the result
    is ~sqrt(HW / (h_s w_s)) louder than a native small latent, on purpose)."""
    hs, ws = _check_block(latent_full.shape, small_hw)
    _, h, w, _ = latent_full.shape
    block = jnp.einsum("kh,fhwc,lw->fklc", _mat(h, hs), latent_full.astype(jnp.float32), _mat(w, ws), precision=_HI)
    return idct2(block)


def low_block_mask(full_hw: HW, small_hw: HW) -> jax.Array:
    """[H, W, 1] bool, True on the top-left ``h_s x w_s`` DCT block (broadcasts over [F, H, W, C])."""
    H, W = int(full_hw[0]), int(full_hw[1])
    hs, ws = int(small_hw[0]), int(small_hw[1])
    return ((jnp.arange(H) < hs)[:, None] & (jnp.arange(W) < ws)[None, :])[:, :, None]


def highpass(z: jax.Array, small_hw: HW) -> jax.Array:
    """``z`` [F, H, W, C] with its low ``h_s x w_s`` DCT block zeroed (same shape)."""
    _check_block(z.shape, small_hw)
    mask = low_block_mask((z.shape[1], z.shape[2]), small_hw)
    return idct2(jnp.where(mask, 0.0, dct2(z)))


def transition_noise_key(seed, gop, stage, step) -> jax.Array:
    """Key of the band noise of the transition out of ``stage`` at ``step``; both sides derive it
    (ints or traced scalars). Per latent frame f the noise is ``normal(fold_in(key, f))``."""
    return jax.random.fold_in(frame_key(seed, gop, TRANSITION_NOISE_STREAM, stage), step)


def transition_noise(key: jax.Array, shape: Tuple[int, ...]) -> jax.Array:
    """[F, H, W, C] standard normal ``eps`` in the DCT domain; frame f from ``fold_in(key, f)``
    (a frame's values do not depend on F)."""
    frames = shape[0]
    return jax.vmap(lambda f: standard_normal(jax.random.fold_in(key, f), tuple(shape[1:])))(
        jnp.arange(frames, dtype=jnp.uint32))


def transition_std(t) -> jax.Array:
    """``sqrt(1 - 2t + 2t^2)``: the std of ``(1 - t) x0 + t eps`` for unit-variance x0 and eps."""
    t = jnp.asarray(t, jnp.float32)
    return jnp.sqrt(1.0 - 2.0 * t + 2.0 * t * t)


def transition_unaligned(state_small: jax.Array, t, key: jax.Array, full_hw: HW) -> jax.Array:
    """TURBO §4 steps 1-3, per latent frame: DCT-II of ``state_small`` [F, h_s, w_s, C], the block
    copied into the top-left of a zero [H, W] spectrum (same bins, no scaling), the newly opened
    band filled with ``t * eps`` (:func:`transition_noise` of ``key``), inverse DCT -> [F, H, W, C]."""
    F, hs, ws, C = state_small.shape
    H, W = int(full_hw[0]), int(full_hw[1])
    if not (hs <= H and ws <= W):
        raise ValueError(f"transition from {hs}x{ws} to {H}x{W}: the target grid must be at least as large")
    spec = jnp.pad(dct2(state_small), ((0, 0), (0, H - hs), (0, W - ws), (0, 0)))
    eps = transition_noise(key, (F, H, W, C))
    band = ~low_block_mask((H, W), (hs, ws))
    spec = jnp.where(band, jnp.asarray(t, jnp.float32) * eps, spec)
    return idct2(spec)


def align_std(x: jax.Array, t) -> jax.Array:
    """``x`` rescaled (no centring) so its global population std over the whole tensor is
    ``sqrt(1 - 2t + 2t^2)`` (TURBO §4; this scales the low band too, as the published code does).
    A constant (std 0) tensor is returned unchanged."""
    std = jnp.std(x)
    safe = jnp.where(std > 0, std, 1.0)
    return jnp.where(std > 0, x * (transition_std(t) / safe), x)


def transition(state_small: jax.Array, t, key: jax.Array, full_hw: HW) -> jax.Array:
    """The transition operator (TURBO §4) at time ``t`` (not re-indexed): :func:`transition_unaligned`
    then :func:`align_std`. The caller adds the transition atoms (:func:`inject_transition_atoms`),
    clears the x0-cache and runs step tau_s as a normal step of the next stage."""
    return align_std(transition_unaligned(state_small, t, key, full_hw), t)


# ------------------------------------------------------------------------------------ transition atoms

def transition_atom_step(stochastic_steps: int, stage: int) -> int:
    """Reserved key step of the transition atoms from ``stage`` into ``stage + 1``: ``T_sde + stage``
    (never a regular stochastic step's index, never the initial noise's; see the module doc)."""
    sde, s = int(stochastic_steps), int(stage)
    if not (1 <= sde < MAX_STEPS and 0 <= s < sde - 1):
        raise ValueError(f"transition out of stage {s} with {sde} stochastic steps: need 0 <= stage < {sde - 1}")
    return sde + s


def transition_atom_keys(seed, gop, stochastic_steps: int, stage: int, frames: int) -> jax.Array:
    """[F] keys ``frame_key(seed, gop, T_sde + stage, f)`` of the transition atoms (target stage's codebook)."""
    step = transition_atom_step(stochastic_steps, stage)
    return jax.vmap(lambda f: frame_key(seed, gop, step, f))(jnp.arange(frames))


def search_transition_atoms(codebook: Codebook, keys: jax.Array, target_next: jax.Array, small_hw: HW,
                            slots: int, atoms_per_frame: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Encoder: the top-M atoms per latent frame by ``|<atom, x0_H>|`` with ``x0_H`` the next stage's
    target [F, H, W, C] with its low ``h_s x w_s`` DCT block zeroed (TURBO §5).

    ``codebook`` is the target stage's (D = H W C), ``slots`` the trajectory's atom capacity,
    ``atoms_per_frame`` [F] int M_f. -> (indices [F, slots] int32, coeffs [F, slots] in {-1, 0, +1}),
    slots past M_f zeroed, in search order: put them through ``trajectory.canonical_picks`` before
    :func:`inject_transition_atoms`, as the regular steps do."""
    frames = target_next.shape[0]
    residual = highpass(target_next, small_hw).reshape(frames, -1)
    idx, signs = jax.vmap(lambda k, r: codebook.search(k, r, slots))(keys, residual)
    used = jnp.arange(slots)[None, :] < jnp.asarray(atoms_per_frame)[:, None]
    return idx, jnp.where(used, signs, 0.0)


def inject_transition_atoms(codebook: Codebook, keys: jax.Array, indices: jax.Array, coeffs: jax.Array, t,
                            full_shape: Tuple[int, ...], small_hw: HW) -> jax.Array:
    """Both sides: ``(1 - t) * highpass(z)`` [F, H, W, C], z the unit-variance signed sum of each
    frame's atoms (``codebook.combine``), no gain matching (TURBO §5). Add it to the aligned state."""
    z = jax.vmap(codebook.combine)(keys, indices, coeffs).reshape(full_shape)
    return (1.0 - jnp.asarray(t, jnp.float32)) * highpass(z, small_hw)


# ------------------------------------------------------------------------------------ refresh schedule

@dataclass(frozen=True)
class RefreshSchedule:
    """Which steps call the DiT (TURBO §6). ``calls`` and ``skips`` partition ``range(steps)``;
    ``stage`` is each step's stage. ``skips`` is an x0-cache schedule (``SamplerConfig.x0_cache``)."""

    steps: int
    calls: Tuple[int, ...]
    skips: Tuple[int, ...]
    stage: Tuple[int, ...]

    def calls_per_stage(self) -> Tuple[int, ...]:
        n = max(self.stage) + 1 if self.stage else 1
        return tuple(sum(1 for i in self.calls if self.stage[i] == s) for s in range(n))

    def as_x0_cache(self) -> Tuple[int, ...]:
        """``skips`` through ``schedule.check_x0_cache`` (raises SamplerError for two skips in a row,
        which periods >= 3 produce and the existing sampler refuses)."""
        return check_x0_cache(self.skips, self.steps)


def mr_refresh_schedule(steps: int, tail: int, period: int, switches: Sequence[int] = (),
                        warmup: bool = False) -> RefreshSchedule:
    """The refresh rule of TURBO §6. Step i skips its DiT call (``u = (x_t - x0_hat) / t`` from the
    cache) only if it is stochastic (``i < steps - tail``), not a transition step (in ``switches``),
    the cache exists at the current shape (not the first step of a stage), and
    ``(i - stage_start) % period != 0``; with ``warmup``, ``stage_start`` after a transition at tau
    is ``tau + 1`` (one extra refresh right after the switch). ``period`` 1: no skips.

    Relation to ``schedule.x0_cache_schedule``: with no switches this never skips in the tail, where
    ``alternate`` skips every odd step (T = 20, tail 3: 12 calls here, 10 with ``alternate``); on
    the stochastic steps the two agree for period 2 (tested).
    """
    T, sde, p = int(steps), int(steps) - int(tail), int(period)
    taus = tuple(int(v) for v in switches)
    if not (1 <= int(tail) <= T <= MAX_STEPS):
        raise ValueError(f"need 1 <= tail <= steps <= {MAX_STEPS}, got steps {steps}, tail {tail}")
    if p < 1:
        raise ValueError(f"refresh period must be >= 1, got {period}")
    if any(not 0 < v < sde for v in taus) or any(b <= a for a, b in zip(taus, taus[1:], strict=False)):
        raise ValueError(f"switch steps must increase strictly inside (0, {sde}), got {taus}")
    calls: list[int] = []
    skips: list[int] = []
    stage: list[int] = []
    for i in range(T):
        s = sum(1 for v in taus if i >= v)
        start = 0 if s == 0 else taus[s - 1] + (1 if warmup else 0)
        skip = i < sde and i not in taus and i != 0 and (i - start) % p != 0
        (skips if skip else calls).append(i)
        stage.append(s)
    return RefreshSchedule(T, tuple(calls), tuple(skips), tuple(stage))


# ------------------------------------------------------------------------------------ bits

@dataclass(frozen=True)
class GopBits:
    """Bits of one GOP's atoms: ``stages[s]`` for stage s's regular steps, ``transitions[s]`` for the
    atom set of the transition into stage s + 1."""

    stages: Tuple[int, ...]
    transitions: Tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.stages) + sum(self.transitions)


def _per_stage_k(K: Union[int, Sequence[int]], stages: int) -> Tuple[int, ...]:
    ks = (int(K),) * stages if isinstance(K, (int, np.integer)) else tuple(int(k) for k in K)
    if len(ks) != stages or any(k < 1 for k in ks):
        raise ValueError(f"need one codebook size K >= 1 per stage ({stages}), got {K!r}")
    return ks


def _gop_bits(stochastic_steps: int, atoms_per_frame: Sequence[int], K: Union[int, Sequence[int]],
              switches: Sequence[int], frame_bits) -> GopBits:
    sde = int(stochastic_steps)
    taus = tuple(int(v) for v in switches)
    if any(not 0 < v < sde for v in taus) or any(b <= a for a, b in zip(taus, taus[1:], strict=False)):
        raise ValueError(f"switch steps must increase strictly inside (0, {sde}), got {taus}")
    apf = tuple(int(m) for m in atoms_per_frame)
    ks = _per_stage_k(K, len(taus) + 1)
    bounds = (0,) + taus + (sde,)
    per_step = [sum(frame_bits(k, m) for m in apf) for k in ks]
    stages = tuple((bounds[s + 1] - bounds[s]) * per_step[s] for s in range(len(ks)))
    return GopBits(stages, tuple(per_step[s + 1] for s in range(len(taus))))


def published_gop_bits(stochastic_steps: int, atoms_per_frame: Sequence[int], K: Union[int, Sequence[int]],
                       switches: Sequence[int] = ()) -> GopBits:
    """The published accounting (TURBO §7): ``M (ceil(log2 K_s) + 1)`` per latent frame and
    stochastic step of stage s, plus one atom set per latent frame at ``K_{s+1}`` per transition.
    ``K``: one size, or one per stage. Not our stream's size (see :func:`rank_coded_gop_bits`)."""
    return _gop_bits(stochastic_steps, atoms_per_frame, K, switches, lambda k, m: m * ((k - 1).bit_length() + 1))


def rank_coded_gop_bits(stochastic_steps: int, atoms_per_frame: Sequence[int], K: Union[int, Sequence[int]],
                        switches: Sequence[int] = ()) -> GopBits:
    """Our format (TURBO §7): ``ceil(log2 C(K_s, M_f)) + M_f`` per latent frame f and stochastic step of
    stage s (``ranks.subset_rank_bits`` plus signs), plus the same per latent frame at ``K_{s+1}`` per
    transition. Without switches this equals ``bitstream.payload_bits``."""
    return _gop_bits(stochastic_steps, atoms_per_frame, K, switches, lambda k, m: subset_rank_bits(k, m) + m)
