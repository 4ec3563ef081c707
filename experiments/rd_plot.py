"""Plots for the evaluation harness (matplotlib, Agg backend, PNG, written atomically).

- ``plot_rd``: rate-distortion curves, bpp (log x) against one metric, one line per curve.
- ``plot_sweep``: an ablation sweep, parameter value on x, one panel per quantity (quality
  metrics and bpp); string values (codebook kinds) are placed as categories.
"""
from __future__ import annotations

import io
import os
from typing import Dict, Sequence, Tuple

import numpy as np

LABELS = {"psnr": "PSNR (dB, RGB)", "ms_ssim": "MS-SSIM (RGB)", "lpips": "LPIPS (alex, lower is better)",
          "lpips_vgg": "LPIPS (vgg, lower is better)", "dists": "DISTS (lower is better)",
          "tlp": "tLP (temporal LPIPS, lower is better)", "warp": "warping error (DIS flow, lower is better)",
          "vmaf": "VMAF", "bpp": "bits per pixel"}
MARKERS = "os^Dv<>pP*hX"


def _figure(nrows: int = 1, ncols: int = 1, size=(6.4, 4.6)):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(nrows, ncols, figsize=size, squeeze=False)


def _save(plt, fig, path: str) -> None:
    from gvc_jax.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (no overlapping minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_rd(curves: Dict[str, Tuple[Sequence[float], Sequence[float]]], metric: str, path: str,
            title: str = "") -> None:
    """Write a PNG of ``{label: (bpp [n], value [n])}`` with a log bpp axis.

    Points of each curve are joined in order of increasing bpp; non-finite values are skipped.
    """
    plt, fig, axes = _figure()
    ax = axes[0][0]
    for i, (label, (rate, value)) in enumerate(curves.items()):
        r, v = np.asarray(rate, np.float64), np.asarray(value, np.float64)
        ok = np.isfinite(r) & np.isfinite(v) & (r > 0)
        order = np.argsort(r[ok])
        ax.plot(r[ok][order], v[ok][order], marker=MARKERS[i % len(MARKERS)], linewidth=1.5, markersize=5,
                label=label)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis)
    ax.set_xlabel("bits per pixel (log scale)")
    ax.set_ylabel(LABELS.get(metric, metric))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_sweep(values: Sequence, series: Dict[str, Sequence[float]], param: str, path: str, title: str = "") -> None:
    """Write a PNG with one panel per ``{quantity: [len(values)]}`` against the swept ``param``."""
    plt, fig, axes = _figure(1, max(1, len(series)), size=(3.6 * max(1, len(series)), 3.6))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = np.asarray(values, np.float64) if numeric else np.arange(len(values))
    order = np.argsort(xs) if numeric else np.arange(len(values))
    for ax, (name, ys) in zip(axes[0], series.items(), strict=True):
        y = np.asarray(ys, np.float64)
        ax.plot(xs[order], y[order], marker="o")
        ax.set_xlabel(param)
        ax.set_ylabel(LABELS.get(name, name))
        if name == "bpp":
            ax.set_yscale("log")
            _log_ticks(ax.yaxis)
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in values])
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(plt, fig, path)


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
