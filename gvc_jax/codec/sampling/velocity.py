"""Adapters that turn a network into the codec's velocity interface.

``velocity(params, x_t, t, t_features, cond) -> u``: ``x_t`` [F, h, w, C] (one GOP, no batch),
``t`` a float32 scalar in (0, 1], ``t_features`` the step's precomputed time features,
``cond`` a pytree. Any rectified-flow model fits; ``WanVelocity`` wraps the Flax Wan DiT.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.models.configs import DiTConfig
from gvc_jax.models.dit import timestep_features


class WanVelocity:
    """Velocity of a ``WanDiT`` given as (graphdef, params).

    ``cond`` keys: ``context`` [512, text_dim] (required); ``y`` [F, h, w, 4 + C] mask and
    conditioning latent (I2V / FLF2V, concatenated after the noisy latent); ``image_context``
    [N, image_dim] CLIP tokens (I2V / FLF2V).
    """

    def __init__(self, graphdef, cfg: DiTConfig):
        self.graphdef = graphdef
        self.cfg = cfg

    # Equal structure -> equal velocity: lets jit reuse compiled trajectories across instances.
    def __hash__(self):
        return hash((self.graphdef, self.cfg))

    def __eq__(self, other):
        return isinstance(other, WanVelocity) and (self.graphdef, self.cfg) == (other.graphdef, other.cfg)

    def time_features(self, t: np.ndarray) -> np.ndarray:
        """[T] times -> [T, freq_dim] float32 sinusoid of 1000 t, computed in float64."""
        return timestep_features(1000.0 * np.asarray(t, np.float64), self.cfg.freq_dim)

    def __call__(self, params, x_t, t, t_features, cond):
        model = nnx.merge(self.graphdef, params)
        x = x_t[None]
        if "y" in cond:
            x = jnp.concatenate([x, cond["y"][None].astype(x.dtype)], axis=-1)
        if x.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"DiT expects {self.cfg.in_channels} input channels, got {x.shape[-1]}")
        image = cond.get("image_context")
        u = model(x, (1000.0 * t)[None], cond["context"][None], None if image is None else image[None],
                  time_features=t_features[None])
        return u[0].astype(jnp.float32)
