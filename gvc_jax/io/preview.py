"""Previews: one PNG grid of original frames above the decoded frames of one or more clips."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gvc_jax import pixels
from gvc_jax.io.atomic import atomic_path
from gvc_jax.io.video_writer import write_png
from gvc_jax.pixels import VideoError


def save_side_by_side(path, original: np.ndarray, decoded, frame_indices=None) -> None:
    """Save a PNG grid: top row original frames, then one row per decoded clip (atomically).

    ``decoded``: one clip or a list of clips (e.g. one per variant). ``frame_indices`` defaults to
    up to 4 frames spread evenly over the clip. A decoded clip larger than the original (padded)
    is cropped to the original size.
    """
    orig = pixels.as_video(original, "original")
    h, w = orig.shape[1:3]
    rows = [orig]
    for d in (decoded if isinstance(decoded, (list, tuple)) else [decoded]):
        d = pixels.as_video(d, "decoded")
        if d.shape[1] < h or d.shape[2] < w:
            raise VideoError(f"decoded frames {d.shape[1]}x{d.shape[2]} are smaller than the original {h}x{w}")
        rows.append(d[:, :h, :w])
    n = min(r.shape[0] for r in rows)
    if frame_indices is None:
        frame_indices = sorted(set(np.linspace(0, n - 1, num=min(4, n)).round().astype(int).tolist()))
    idx = [int(i) for i in frame_indices]
    if not idx or any(not 0 <= i < n for i in idx):
        raise VideoError(f"frame indices {idx} out of range for {n} frames")
    gap = 4
    grid = np.full((len(rows) * h + (len(rows) - 1) * gap, len(idx) * w + (len(idx) - 1) * gap, 3), 255, np.uint8)
    for r, clip in enumerate(rows):
        y = r * (h + gap)
        for col, i in enumerate(idx):
            x = col * (w + gap)
            grid[y:y + h, x:x + w] = clip[i]
    target = os.fspath(path)
    if Path(target).suffix.lower() != ".png":
        raise VideoError(f"side-by-side preview must be a .png, got {target}")
    with atomic_path(target) as tmp:
        write_png(tmp, grid)
