"""The coded generative trajectory: one jit-compiled ``lax.scan`` shared by encoder and decoder.

Each step: velocity ``u`` -> clean estimate ``x0_hat`` -> noise atoms -> SDE update.
The atoms' indices come either from the codebook search against the target latent (encoder)
or from the bitstream (decoder). The source is *data* (``use_search``), not a Python branch,
so both sides execute the very same compiled program and the decoder's final latent equals
the encoder's bit for bit on the same machine (SPEC §10, PORTING §6.8).

Shapes: a GOP latent ``x`` is [F, h, w, C] (normalised); one latent frame flattens (h, w, C)
to D = h*w*C. Picks are [T, F, M] with M = max atoms per frame; a slot is unused when its
coefficient is 0 (then its index is 0). Rows of deterministic steps are all zero.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gvc_jax.codec.codebooks import Codebook, frame_key
from gvc_jax.codec.schedule import INITIAL_NOISE_STREAM, SamplerConfig, StepTables
from gvc_jax.codec.sde import sde_step, x0_estimate


class Picks(NamedTuple):
    """Atom choices of one GOP: ``indices`` int32 and ``coeffs`` float32 in {-1, 0, +1}, [T, F, M]."""

    indices: Any
    coeffs: Any

    @classmethod
    def empty(cls, steps: int, frames: int, max_atoms: int) -> "Picks":
        return cls(np.zeros((steps, frames, max_atoms), np.int32), np.zeros((steps, frames, max_atoms), np.float32))


def canonical_picks(indices, coeffs):
    """Sort the used slots of each frame by index; unused slots (coeff 0) go last as (0, 0).

    [F, M] -> [F, M]. The canonical form is what the bitstream stores, so applying it on both
    sides makes the atom sum's order identical.
    """
    used = coeffs != 0
    order_key = jnp.where(used, indices, jnp.iinfo(jnp.int32).max)
    order = jnp.argsort(order_key, axis=-1, stable=True)
    indices = jnp.take_along_axis(indices, order, axis=-1)
    coeffs = jnp.take_along_axis(coeffs, order, axis=-1)
    return jnp.where(coeffs != 0, indices, 0), coeffs


def initial_noise(seed, gop, shape):
    """The seeded starting point x_T of a GOP (costs no bits)."""
    key = frame_key(seed, gop, INITIAL_NOISE_STREAM, 0)
    return jax.random.normal(key, shape, jnp.float32)


_STEP_HOOK = [None]


def set_step_hook(fn: Callable[[int], None] | None) -> None:
    """Call ``fn(step)`` (host side) as each trajectory step finishes: for progress displays."""
    _STEP_HOOK[0] = fn


def _on_step(step) -> None:
    hook = _STEP_HOOK[0]
    if hook is not None:
        hook(int(step))


# velocity(params, x_t [F,h,w,C], t scalar, t_features [..], cond pytree) -> u [F,h,w,C]
Velocity = Callable[..., jax.Array]


def _trajectory(velocity: Velocity, codebook: Codebook, atoms_per_frame: Tuple[int, ...],
                params, cond, target, use_search, given: Picks, gop, seed, tables):
    frames = len(atoms_per_frame)
    max_atoms = max(atoms_per_frame)
    slot_used = jnp.arange(max_atoms)[None, :] < jnp.asarray(atoms_per_frame)[:, None]  # [F, M]
    frame_ids = jnp.arange(frames)

    def coded_noise(x0_hat, step, given_idx, given_coef):
        keys = jax.vmap(lambda f: frame_key(seed, gop, step, f))(frame_ids)

        def search(_):
            residual = (target - x0_hat).reshape(frames, -1)
            idx, signs = jax.vmap(lambda k, r: codebook.search(k, r, max_atoms))(keys, residual)
            return idx, jnp.where(slot_used, signs, 0.0)

        idx, coef = jax.lax.cond(use_search, search, lambda _: (given_idx, given_coef), None)
        idx, coef = canonical_picks(idx, coef)
        z = jax.vmap(codebook.combine)(keys, idx, coef)
        return z.reshape(x0_hat.shape), idx, coef

    def no_noise(x0_hat, step, given_idx, given_coef):
        return jnp.zeros_like(x0_hat), jnp.zeros_like(given_idx), jnp.zeros_like(given_coef)

    def step_fn(x, xs):
        t, t_next, g, stochastic, t_feat, step, given_idx, given_coef = xs
        u = velocity(params, x, t, t_feat, cond)
        x0_hat = x0_estimate(x, u, t)
        z, idx, coef = jax.lax.cond(stochastic, coded_noise, no_noise, x0_hat, step, given_idx, given_coef)
        x_next = sde_step(x, u, t, t_next, g, z)
        jax.debug.callback(_on_step, step)  # progress only; identical in both directions
        return x_next, (idx, coef)

    x_start = initial_noise(seed, gop, target.shape)
    steps = tables["t"].shape[0]
    xs = (tables["t"], tables["t_next"], tables["g"], tables["stochastic"], tables["t_feat"],
          jnp.arange(steps), given.indices, given.coeffs)
    x_final, (idx, coef) = jax.lax.scan(step_fn, x_start, xs)
    return x_final, Picks(idx, coef)


# Compiled once per (velocity, codebook, atoms per frame) and input shapes, shared by all callers.
_trajectory_jit = jax.jit(_trajectory, static_argnums=(0, 1, 2))


class Trajectory:
    """A compiled GOP trajectory for one (velocity model, sampler config, latent shape).

    ``run(params, cond, gop, target=None, picks=None)``: with a target the atoms are searched
    (encoder); with picks they are read (decoder). Both call the same jitted program.
    """

    def __init__(self, velocity: Velocity, sampler: SamplerConfig, latent_shape: Tuple[int, ...],
                 time_features: Callable[[np.ndarray], np.ndarray] | None = None):
        frames, h, w, c = latent_shape
        if len(sampler.atoms_per_frame) != frames:
            raise ValueError(f"atoms_per_frame has {len(sampler.atoms_per_frame)} entries for {frames} latent frames")
        from gvc_jax.codec.codebooks import get_codebook

        self.sampler = sampler
        self.latent_shape = tuple(latent_shape)
        self.codebook = get_codebook(sampler.codebook, sampler.K, h * w * c)
        tables = StepTables.build(sampler)
        feats = time_features(tables.t) if time_features is not None else tables.t[:, None]
        self.tables = {"t": tables.t, "t_next": tables.t_next, "g": tables.g,
                       "stochastic": tables.stochastic, "t_feat": np.asarray(feats, np.float32)}
        self._fn = functools.partial(_trajectory_jit, velocity, self.codebook, tuple(sampler.atoms_per_frame))

    def run(self, params, cond, gop: int, *, target=None, picks: Picks | None = None):
        """-> (final latent [F,h,w,C] float32, Picks [T, F, M] canonical)."""
        if (target is None) == (picks is None):
            raise ValueError("give exactly one of target (encode) or picks (decode)")
        s = self.sampler
        if picks is None:
            picks = Picks.empty(s.steps, self.latent_shape[0], s.max_atoms)
            use_search = True
        else:
            target = np.zeros(self.latent_shape, np.float32)
            use_search = False
        x, out = self._fn(params, cond, jnp.asarray(target, jnp.float32), jnp.asarray(use_search), picks,
                          jnp.asarray(gop, jnp.uint32), jnp.asarray(s.seed, jnp.uint32), self.tables)
        return x, out
