"""The coded generative trajectory: one jit-compiled ``lax.scan`` shared by encoder and decoder.

Each step: velocity ``u`` -> clean estimate ``x0_hat`` -> noise atoms -> SDE update.
The atoms' indices come either from the codebook search against the target latent (encoder)
or from the bitstream (decoder). The source is *data* (``use_search``), not a Python branch,
so both sides execute the very same compiled program and the decoder's final latent equals
the encoder's bit for bit on the same machine (docs/method_notes.md, "Determinism").

M is data too: the atoms per latent frame arrive as an int32 array [F], and the program is
compiled for a fixed number of atom slots (``SamplerConfig.capacity``: the next power of two
>= the largest M, at least 16), so changing M between runs or between GOPs reuses one program.

Shapes: a GOP latent ``x`` is [F, h, w, C] (normalised); one latent frame flattens (h, w, C)
to D = h*w*C. Picks are [T, F, S] with S slots; a slot is unused when its coefficient is 0
(then its index is 0). Rows of deterministic steps are all zero.

Multi-resolution stages (``SamplerConfig.stages``, ``StageLayout``): the program runs one scan per
stage over its slice of the step tables, each on its own latent grid with its own codebook and
conditioning, aiming at the DCT low-pass of the one target; between two stages ``_transition``
carries the state up (``multires.transition``) and adds the coded transition atoms. Picks are
then [T + transitions, F, S]: the transition rows follow the step rows. One stage is the plain
program.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gvc_jax.codec.sampling import multires
from gvc_jax.codec.sampling.codebooks import Codebook, frame_key, get_codebook, standard_normal
from gvc_jax.codec.sampling.schedule import INITIAL_NOISE_STREAM, SamplerConfig, StepTables
from gvc_jax.codec.sampling.sde import sde_step, x0_estimate
from gvc_jax.parallel import GopMesh


class Picks(NamedTuple):
    """Atom choices of one GOP: ``indices`` int32 and ``coeffs`` float32 in {-1, 0, +1}, [T, F, M]."""

    indices: Any
    coeffs: Any

    @classmethod
    def empty(cls, steps: int, frames: int, max_atoms: int) -> "Picks":
        return cls(np.zeros((steps, frames, max_atoms), np.int32), np.zeros((steps, frames, max_atoms), np.float32))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GopSlot:
    """One GOP's trajectory inputs: what differs between the GOPs of a chunk (one per device)."""

    cond: Any                # per stage, the DiT conditioning pytree (``codec.gop.conditioning``)
    target: Any              # float32 [F, h, w, C] normalised target latent (decoder: zeros)
    use_search: Any          # bool: search the codebook (encoder) or read ``given`` (decoder)
    given: "Picks"           # the stream's picks, [T + transitions, F, S] (encoder: empty)
    atoms: Any               # int32 [F] atoms per latent frame
    gop: Any                 # uint32: the GOP's index in its stream (its keys)
    listener: Any            # int32: the progress listener (0: none)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Shared:
    """The trajectory inputs every GOP of a chunk shares."""

    params: Any              # the DiT's weights (replicated, or split over ``model``)
    seed: Any                # uint32 codebook / noise seed
    tables: Any              # the step tables (``schedule.StepTables`` as arrays)


def canonical_picks(indices, coeffs):
    """Sort the used slots of each frame by index; unused slots (coeff 0) go last as (0, 0).

    [F, M] -> [F, M]. The canonical form is what the bitstream stores, so applying it on both
    sides makes the atom sum's order identical.
    """
    order_key = jnp.where(coeffs != 0, indices, jnp.iinfo(jnp.int32).max)
    _, indices, coeffs = jax.lax.sort((order_key, indices, coeffs), dimension=-1, is_stable=True, num_keys=1)
    return jnp.where(coeffs != 0, indices, 0), coeffs


def initial_noise(seed, gop, shape):
    """The seeded starting point x_T of a GOP (costs no bits)."""
    key = frame_key(seed, gop, INITIAL_NOISE_STREAM, 0)
    return standard_normal(key, shape)


# Step progress: the compiled scan calls back the host with (listener id, gop, step). The
# listener id is a traced argument, so each ``Trajectory.run(..., on_step=fn)`` call gets its own
# callback without recompiling, and GOPs running side by side (one per device) report separately.
_LISTENERS: Dict[int, Callable[[int, int], None]] = {}
_NEXT_LISTENER = itertools.count(1)


def _on_step(listener, gop, step) -> None:
    fn = _LISTENERS.get(int(listener))
    if fn is not None:
        fn(int(gop), int(step))


# velocity(params, x_t [F,h,w,C], t scalar, t_features [..], cond pytree) -> u [F,h,w,C]
Velocity = Callable[..., jax.Array]


@dataclass(frozen=True)
class StageLayout:
    """The static shape of a trajectory: one latent grid and codebook per stage (one stage without
    a multi-resolution plan), the step at which each later stage starts, and the stochastic steps
    (the transition atoms' reserved key indices start there). Hashable: part of the program's key."""

    grids: Tuple[Tuple[int, int], ...]     # (h, w) latent grid per stage, the coded grid last
    codebooks: Tuple[Codebook, ...]        # per stage, over that stage's D = h * w * C
    switches: Tuple[int, ...]              # first step of stages 1.. (empty: one stage)
    stochastic_steps: int

    @property
    def stages(self) -> int:
        return len(self.grids)


def _stage_scan(velocity: Velocity, codebook: Codebook, slots: int, report_steps: bool, shared: Shared,
                slot: GopSlot, cond, target, x, rows: slice):
    """Steps ``rows`` of one stage, all at one latent grid: -> (final state, picks [steps, F, S])."""
    params, seed, tables = shared.params, shared.seed, shared.tables
    use_search, gop, listener = slot.use_search, slot.gop, slot.listener
    frames = target.shape[0]
    slot_used = jnp.arange(slots)[None, :] < slot.atoms[:, None]  # [F, S]
    frame_ids = jnp.arange(frames)

    def coded_noise(x0_hat, step, given_idx, given_coef):
        # what the search and the combine derive from each frame's key, derived once for both
        keys = jax.vmap(lambda f: codebook.prepare(frame_key(seed, gop, step, f)))(frame_ids)

        def search(_):
            # The search returns atoms by decreasing |inner product|: its first M_f are frame f's top M_f.
            residual = (target - x0_hat).reshape(frames, -1)
            idx, signs = jax.vmap(lambda k, r: codebook.search(k, r, slots))(keys, residual)
            return idx, jnp.where(slot_used, signs, 0.0)

        idx, coef = jax.lax.cond(use_search, search, lambda _: (given_idx, given_coef), None)
        idx, coef = canonical_picks(idx, coef)
        z = jax.vmap(codebook.combine)(keys, idx, coef)
        return z.reshape(x0_hat.shape), idx, coef

    def no_noise(x0_hat, step, given_idx, given_coef):
        return jnp.zeros_like(x0_hat), jnp.zeros_like(given_idx), jnp.zeros_like(given_coef)

    def step_fn(carry, xs):
        x, x0_cached = carry
        t, t_next, g, stochastic, reuse, t_feat, step, given_idx, given_coef = xs
        # x0-cache: on reuse steps the DiT is not called; u is rebuilt from the last clean estimate.
        u = jax.lax.cond(reuse, lambda: (x - x0_cached) / t, lambda: velocity(params, x, t, t_feat, cond))
        x0_hat = x0_estimate(x, u, t)
        z, idx, coef = jax.lax.cond(stochastic, coded_noise, no_noise, x0_hat, step, given_idx, given_coef)
        x_next = sde_step(x, u, t, t_next, g, z)
        if report_steps:  # progress only; a program with a host callback is never kept in JAX's compilation cache
            jax.debug.callback(_on_step, listener, gop, step)
        return (x_next, x0_hat), (idx, coef)

    xs = tuple(tables[k][rows] for k in ("t", "t_next", "g", "stochastic", "reuse", "t_feat")) + (
        jnp.arange(rows.start, rows.stop), slot.given.indices[rows], slot.given.coeffs[rows])
    # the cached clean estimate starts empty in every stage (TURBO §6: cleared at a switch)
    (x_final, _), (idx, coef) = jax.lax.scan(step_fn, (x, jnp.zeros_like(x)), xs)
    return x_final, idx, coef


def _transition(layout: StageLayout, slots: int, shared: Shared, slot: GopSlot, stage: int, x, target_next):
    """Carry the state out of ``stage`` into ``stage + 1`` at the start of its switch step (TURBO §4-5):
    spectral zero-pad with band noise and variance alignment, then the transition atoms of the next
    stage's codebook (searched against the high band of its target, or read). -> (state, picks [F, S])."""
    seed, gop, tables = shared.seed, slot.gop, shared.tables
    tau = layout.switches[stage]
    step_count = tables["t"].shape[0]
    t = tables["t"][tau]
    small, codebook = layout.grids[stage], layout.codebooks[stage + 1]
    x = multires.transition(x, t, multires.transition_noise_key(seed, gop, stage, tau), layout.grids[stage + 1])
    keys = multires.transition_atom_keys(seed, gop, layout.stochastic_steps, stage, x.shape[0])
    given = slot.given.indices[step_count + stage], slot.given.coeffs[step_count + stage]
    idx, coef = jax.lax.cond(
        slot.use_search,
        lambda: multires.search_transition_atoms(codebook, keys, target_next, small, slots, slot.atoms),
        lambda: given)
    idx, coef = canonical_picks(idx, coef)
    return x + multires.inject_transition_atoms(codebook, keys, idx, coef, t, x.shape, small), idx, coef


def _trajectory(velocity: Velocity, layout: StageLayout, slots: int, report_steps: bool, shared: Shared,
                slot: GopSlot):
    """One GOP's whole trajectory: a scan per stage, a transition between stages. -> (final latent at
    the coded grid, Picks [T + transitions, F, S]: one row per step, then one per transition)."""
    target = slot.target
    frames, channels = target.shape[0], target.shape[-1]
    # low stages aim at the DCT low-pass of the one full-resolution target (TURBO §3)
    targets = [multires.lowpass_target(target, grid) for grid in layout.grids[:-1]] + [target]
    steps = shared.tables["t"].shape[0]
    bounds = (0,) + layout.switches + (steps,)
    x = initial_noise(shared.seed, slot.gop, (frames, *layout.grids[0], channels))
    step_idx, step_coef, trans_idx, trans_coef = [], [], [], []
    for s in range(layout.stages):
        if s:
            x, idx, coef = _transition(layout, slots, shared, slot, s - 1, x, targets[s])
            trans_idx.append(idx[None])
            trans_coef.append(coef[None])
        x, idx, coef = _stage_scan(velocity, layout.codebooks[s], slots, report_steps, shared, slot, slot.cond[s],
                                   targets[s], x, slice(bounds[s], bounds[s + 1]))
        step_idx.append(idx)
        step_coef.append(coef)
    return x, Picks(jnp.concatenate(step_idx + trans_idx), jnp.concatenate(step_coef + trans_coef))


# Compiled once per (velocity, stage layout, atom slots) and input shapes, shared by all callers.
_trajectory_jit = jax.jit(_trajectory, static_argnums=(0, 1, 2, 3))


class Trajectory:
    """A compiled GOP trajectory for one (velocity model, sampler config, latent shape).

    ``run(params, cond, gop, atoms_per_frame, target=None, picks=None)``: with a target the atoms
    are searched (encoder); with picks they are read (decoder). Both call the same jitted program.
    """

    def __init__(self, velocity: Velocity, sampler: SamplerConfig, latent_shape: Tuple[int, ...],
                 time_features: Callable[[np.ndarray], np.ndarray] | None = None,
                 stage_grids: Sequence[Tuple[int, int]] | None = None):
        frames, h, w, c = latent_shape
        if len(sampler.atoms_per_frame) != frames:
            raise ValueError(f"atoms_per_frame has {len(sampler.atoms_per_frame)} entries for {frames} latent frames")
        grids = ((h, w),) if stage_grids is None else tuple((int(a), int(b)) for a, b in stage_grids)
        switches = () if sampler.stages is None else sampler.stages.switches
        if len(grids) != len(switches) + 1 or grids[-1] != (h, w):
            raise ValueError(f"stage grids {grids} do not fit {len(switches) + 1} stages ending at the coded grid "
                             f"{(h, w)}")
        self.sampler = sampler
        self.latent_shape = tuple(latent_shape)
        self.slots = sampler.capacity
        self.layout = StageLayout(grids, tuple(get_codebook(sampler.codebook, sampler.K, gh * gw * c)
                                               for gh, gw in grids), tuple(switches), sampler.stochastic_steps)
        self.codebook = self.layout.codebooks[-1]
        tables = StepTables.build(sampler)
        feats = time_features(tables.t) if time_features is not None else tables.t[:, None]
        self.tables = {"t": tables.t, "t_next": tables.t_next, "g": tables.g,
                       "stochastic": tables.stochastic, "reuse": tables.reuse, "t_feat": np.asarray(feats, np.float32)}
        self._velocity = velocity
        self._fns = {report: functools.partial(_trajectory_jit, velocity, self.layout, self.slots, report)
                     for report in (False, True)}

    @property
    def dit_calls(self) -> int:
        """DiT evaluations per GOP: every step but those the x0-cache skips."""
        return int(self.sampler.steps - np.count_nonzero(self.tables["reuse"]))

    def check_atoms(self, atoms_per_frame) -> np.ndarray:
        """Validated int32 [F] atoms per latent frame (each in [1, capacity])."""
        m = np.asarray(self.sampler.atoms_per_frame if atoms_per_frame is None else atoms_per_frame)
        if m.shape != (self.latent_shape[0],) or not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"atoms per frame must be {self.latent_shape[0]} ints, got {m.tolist()}")
        if m.min() < 1 or m.max() > self.slots:
            raise ValueError(f"atoms per frame must be in [1, {self.slots}], got {m.tolist()}")
        return m.astype(np.int32)

    def run_many(self, mesh, params, conds: Sequence, gops: Sequence[int], atoms: Sequence, *, targets: Sequence,
                 picks: Sequence, on_step: Callable[[int, int], None] | None = None) -> list:
        """A chunk of GOPs, one per device of ``mesh`` (``parallel.GopMesh``; None: a mesh of one
        device): -> [(final latent, Picks)] in order. Every device runs the single-GOP program.
        ``on_step(gop, step)`` (None: no progress) is called on the host as each step finishes.

        Per GOP exactly one of ``targets[g]`` (search: encoder) and ``picks[g]`` (read: decoder) is
        given, so a chunk can mix both directions (a resumed encode replays finished GOPs).
        """
        s = self.sampler
        count = len(gops)
        if not (len(conds) == len(atoms) == len(targets) == len(picks) == count):
            raise ValueError("conds, gops, atoms, targets and picks need one entry per GOP")
        # several processes: another process's GOPs have neither (placeholders of the right shape)
        distributed = mesh is not None and mesh.distributed
        if any((t is None) == (p is None) and not (distributed and t is None)
               for t, p in zip(targets, picks, strict=True)):
            raise ValueError("give exactly one of a target (encode) or picks (decode) per GOP")
        atoms = [jnp.asarray(self.check_atoms(a)) for a in atoms]
        use_search = [jnp.asarray(p is None) for p in picks]
        empty = Picks.empty(s.dense_rows, self.latent_shape[0], self.slots)
        conds = [self._stage_conds(c) for c in conds]
        picks = [empty if p is None else p for p in picks]
        zeros = np.zeros(self.latent_shape, np.float32)
        targets = [jnp.asarray(zeros if t is None else t, jnp.float32) for t in targets]
        listeners = [0] * count
        if on_step is not None:
            listeners = [next(_NEXT_LISTENER) % (1 << 31) for _ in range(count)]
            for listener in listeners:
                if listener:
                    _LISTENERS[listener] = on_step
        shared = Shared(params, jnp.asarray(s.seed, jnp.uint32), self.tables)
        per_gop = [GopSlot(c, t, u, p, a, jnp.asarray(g, jnp.uint32), jnp.asarray(lis, jnp.int32))
                   for c, t, u, p, a, g, lis in zip(conds, targets, use_search, picks, atoms, gops, listeners,
                                                    strict=True)]
        try:
            out = self._mapped(mesh or GopMesh(1), on_step is not None)(shared, per_gop)
            if on_step is not None:
                out = jax.block_until_ready(out)
                jax.effects_barrier()
        finally:
            for listener in listeners:
                _LISTENERS.pop(listener, None)
        return [None if o is None else tuple(o) for o in out]

    def _stage_conds(self, cond) -> tuple:
        """A GOP's conditioning, one pytree per stage (a single pytree serves a one-stage trajectory)."""
        conds = cond if isinstance(cond, tuple) else (cond,)
        if len(conds) != self.layout.stages:
            raise ValueError(f"{len(conds)} conditionings for a trajectory of {self.layout.stages} stages")
        return conds

    def _mapped(self, mesh, report: bool):
        """The chunk program on ``mesh``: ``_trajectory`` per device (compiled once per structure);
        ``report``: with the per-step progress callback."""
        return mesh.map(("trajectory", self._velocity, self.layout, self.slots, report),
                        functools.partial(_trajectory, self._velocity, self.layout, self.slots, report),
                        plain=self._fns[report])
