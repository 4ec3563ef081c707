"""Rectified-flow estimates and the Euler-Maruyama step of the reverse SDE
(docs/method_notes.md §Rectified-flow conventions, §Stochastic step).

Interpolant ``x_t = (1 - t) x0 + t eps``; the model predicts ``u ~ eps - x0``.
All arithmetic is float32.
"""
from __future__ import annotations

import jax.numpy as jnp


def x0_estimate(x_t, u, t):
    """Clean-latent estimate ``x0_hat = x_t - t u``."""
    return x_t - t * u


def eps_estimate(x_t, u, t):
    """Noise estimate ``eps_hat = x_t + (1 - t) u``."""
    return x_t + (1.0 - t) * u


def sde_step(x_t, u, t, t_next, g, z):
    """One step from t to t_next < t with diffusion ``g`` and unit noise ``z``.

    ``x_next = x_t - u dt - (g^2 dt / (2 t)) eps_hat + g sqrt(dt) z``, dt = t - t_next.
    With g = 0 this is the Euler ODE step ``x_t - u dt``.
    """
    dt = t - t_next
    drift = u * dt + (g * g * dt / (2.0 * t)) * eps_estimate(x_t, u, t)
    return x_t - drift + g * jnp.sqrt(dt) * z
