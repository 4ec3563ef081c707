"""3D rotary position embedding of the Wan2.1 DiT (tables in numpy float64, rotation in fp32).

The head dim d is split into three real sub-dims (time, height, width):
t = d - 4*(d//6), h = w = 2*(d//6)  (44/42/42 for d = 128, i.e. 22/21/21 complex pairs).
Each axis uses its own frequencies theta_j = theta^(-2j/d_axis) at integer post-patch
positions. Pairs are adjacent channels (2j, 2j+1) of a head (docs/method_notes.md §Wan numerics).
"""
from __future__ import annotations

from typing import Tuple

import jax.numpy as jnp
import numpy as np
from einops import rearrange


class RopeGridError(ValueError):
    """The post-patch grid does not fit the RoPE table (an axis exceeds max_seq_len)."""


def rope_axis_dims(head_dim: int) -> Tuple[int, int, int]:
    """Real sub-dims (t, h, w) of one head: (44, 42, 42) for head_dim 128."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(d_axis: int, positions: np.ndarray, theta: float) -> np.ndarray:
    """float64 angles [len(positions), d_axis // 2] = pos * theta^(-2j/d_axis)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, d_axis, 2, dtype=np.float64) / d_axis))
    return np.outer(positions.astype(np.float64), inv_freq)


def rope_axis_tables(
    head_dim: int,
    grid: tuple[int, int, int],
    max_seq_len: int = 1024,
    theta: float = 10000.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-axis (cos, sin) float32 tables [(n_axis, d_axis/2)] for axes (f, h, w), built in float64."""
    sizes = tuple(int(g) for g in grid)
    if len(sizes) != 3 or min(sizes) < 1:
        raise RopeGridError(f"RoPE grid must be 3 positive sizes, got {sizes}")
    if max(sizes) > max_seq_len:
        raise RopeGridError(f"RoPE grid {sizes} exceeds max_seq_len {max_seq_len}")
    tables = []
    for d_axis, n in zip(rope_axis_dims(head_dim), sizes, strict=True):
        ang = _axis_angles(d_axis, np.arange(n), theta)
        tables.append((np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)))
    return tables


def _broadcast_concat(xp, parts: list, grid: tuple[int, ...]):
    """[(n_f, a), (n_h, b), (n_w, c)] -> [L, a+b+c], tokens in (f, h, w) row-major order."""
    f, hh, ww = grid
    full = []
    for axis, tab in enumerate(parts):
        shape = [1, 1, 1, tab.shape[1]]
        shape[axis] = tab.shape[0]
        full.append(xp.broadcast_to(xp.reshape(tab, shape), (f, hh, ww, tab.shape[1])))
    return rearrange(xp.concatenate(full, axis=-1), "f h w c -> (f h w) c")


def rope_tables(
    head_dim: int,
    grid: tuple[int, int, int],
    max_seq_len: int = 1024,
    theta: float = 10000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) float32 [L, head_dim // 2] for the post-patch grid (F_lat, h/2, w/2).

    L = F_lat * h/2 * w/2 with tokens in (f, h, w) row-major order. Column j holds the angle of
    complex pair j (channels 2j, 2j+1): first the time pairs, then height, then width.
    """
    tabs = rope_axis_tables(head_dim, grid, max_seq_len, theta)
    sizes = tuple(int(g) for g in grid)
    return (_broadcast_concat(np, [c for c, _ in tabs], sizes),
            _broadcast_concat(np, [s for _, s in tabs], sizes))


def rope_tables_in_graph(
    head_dim: int,
    grid: tuple[int, int, int],
    max_seq_len: int = 1024,
    theta: float = 10000.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Same values as ``rope_tables``, broadcast in-graph from the small per-axis tables.

    Keeps a [L, head_dim/2] constant out of compiled programs (16 MB at 32760 tokens).
    """
    tabs = rope_axis_tables(head_dim, grid, max_seq_len, theta)
    sizes = tuple(int(g) for g in grid)
    return (_broadcast_concat(jnp, [jnp.asarray(c) for c, _ in tabs], sizes),
            _broadcast_concat(jnp, [jnp.asarray(s) for _, s in tabs], sizes))


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate adjacent channel pairs of x [B, L, n_heads, head_dim] by tables [L, head_dim/2].

    Computed in fp32; returns fp32 [B, L, n_heads, head_dim].
    """
    xp = rearrange(x.astype(jnp.float32), "b l n (p two) -> b l n p two", two=2)
    x1, x2 = xp[..., 0], xp[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    return rearrange(out, "b l n p two -> b l n (p two)")
