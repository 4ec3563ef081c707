"""Bjontegaard deltas between two rate-distortion curves: BD-rate and BD-quality.

A curve is a few ``(rate, quality)`` points (rate > 0: bytes, bpp or kbps -- only ratios matter).

- **BD-rate** (percent): the average log-rate difference of the test curve against the anchor at
  equal quality, over the quality interval both curves cover:
  ``100 * (10 ** mean_q[log10 r_test(q) - log10 r_anchor(q)] - 1)``. Negative = the test codec
  needs less rate for the same quality. A test curve with exactly half the anchor's rate
  everywhere gives -50 %.
- **BD-quality** (metric units): the average quality difference ``test - anchor`` at equal
  log-rate, over the log-rate interval both curves cover (BD-PSNR for PSNR). It is reported in
  the metric's own units and direction: for LPIPS a negative value means the test is better.

Interpolation: ``method="pchip"`` (default) is the piecewise cubic Hermite interpolation used by
the current JVET / ITU-T common-test-condition spreadsheets (monotone, no overshoot, exact for
two or more points); ``method="cubic"`` is the original VCEG-M33 least-squares cubic polynomial
(needs >= 4 points). Integrals are exact integrals of the interpolants.

Metrics where lower is better (LPIPS, ...) are handled by negating them internally
(``higher_is_better=False``), so the curves are increasing as the standard method assumes.
Before fitting, each curve is reduced to its Pareto front (a point with more rate but no better
quality than another point is dropped): the interpolants need quality strictly increasing with
rate. Degenerate inputs (fewer than 2 usable points, no overlapping interval, non-positive or
non-finite values) raise ``BDError`` with a one-line message.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

METHODS = ("pchip", "cubic")
LOWER_IS_BETTER = frozenset({"lpips", "lpips_vgg", "dists", "tlp", "warp"})


class BDError(ValueError):
    """The two curves cannot be compared (too few points, no overlap, bad values)."""


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name from ``gvc_jax.metrics`` (LPIPS, DISTS, tLP, warping error: lower is better)."""
    return metric not in LOWER_IS_BETTER


def pareto_front(rate: Sequence[float], quality: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Points where quality strictly increases with rate: ``([n], [n])`` sorted by rate.

    Every point that needs at least as much rate as another one for no better quality is dropped.
    """
    r = np.asarray(rate, np.float64).ravel()
    q = np.asarray(quality, np.float64).ravel()
    if r.shape != q.shape:
        raise BDError(f"rate and quality have different lengths: {r.size} vs {q.size}")
    if r.size and (not np.all(np.isfinite(r)) or np.any(r <= 0)):
        raise BDError(f"rates must be finite and > 0, got {r.tolist()}")
    if r.size and not np.all(np.isfinite(q)):
        raise BDError(f"qualities must be finite, got {q.tolist()}")
    order = np.lexsort((-q, r))  # by rate, best quality first among equal rates
    keep_r, keep_q = [], []
    for i in order:
        if not keep_q or (q[i] > keep_q[-1] and r[i] > keep_r[-1]):
            keep_r.append(r[i])
            keep_q.append(q[i])
    return np.asarray(keep_r), np.asarray(keep_q)


def _curve(rate, quality, higher: bool, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """-> (log10 rate, oriented quality), Pareto front, sorted by rate."""
    q = np.asarray(quality, np.float64)
    r, q = pareto_front(rate, q if higher else -q)
    if r.size < 2:
        raise BDError(f"the {what} curve has {r.size} usable point(s) (need >= 2 with quality rising with rate)")
    return np.log10(r), q


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Exact integral over [lo, hi] of the interpolant of y(x) (x strictly increasing)."""
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi))
    if method == "cubic":
        if x.size < 4:
            raise BDError(f"method 'cubic' needs >= 4 points per curve, got {x.size}")
        poly = np.polynomial.Polynomial.fit(x, y, 3)
        anti = poly.integ()
        return float(anti(hi) - anti(lo))
    raise BDError(f"unknown method {method!r}; choose from {METHODS}")


def _overlap(a: np.ndarray, b: np.ndarray, what: str) -> Tuple[float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if not hi > lo:
        raise BDError(
            f"the curves do not overlap in {what} (anchor [{a.min():.4g}, {a.max():.4g}], "
            f"test [{b.min():.4g}, {b.max():.4g}])"
        )
    return float(lo), float(hi)


def bd_rate(anchor_rate, anchor_quality, test_rate, test_quality, *, higher_is_better: bool = True,
            method: str = "pchip") -> float:
    """BD-rate of the test curve against the anchor, in percent (negative = test saves rate).

    Interpolates log10(rate) as a function of quality and averages the difference over the
    common quality interval.
    """
    ra, qa = _curve(anchor_rate, anchor_quality, higher_is_better, "anchor")
    rt, qt = _curve(test_rate, test_quality, higher_is_better, "test")
    lo, hi = _overlap(qa, qt, "quality")
    diff = (_integral(qt, rt, lo, hi, method) - _integral(qa, ra, lo, hi, method)) / (hi - lo)
    return float((10.0**diff - 1.0) * 100.0)


def bd_quality(anchor_rate, anchor_quality, test_rate, test_quality, *, higher_is_better: bool = True,
               method: str = "pchip") -> float:
    """BD-quality: mean ``test - anchor`` quality at equal rate, in the metric's own units.

    Interpolates quality as a function of log10(rate) and averages the difference over the
    common log-rate interval. (For a lower-is-better metric a negative value favours the test.)
    """
    ra, qa = _curve(anchor_rate, anchor_quality, higher_is_better, "anchor")
    rt, qt = _curve(test_rate, test_quality, higher_is_better, "test")
    lo, hi = _overlap(ra, rt, "log-rate")
    diff = (_integral(rt, qt, lo, hi, method) - _integral(ra, qa, lo, hi, method)) / (hi - lo)
    return float(diff if higher_is_better else -diff)


def quality_at_rate(rate, quality, at_rate: float, *, higher_is_better: bool = True) -> float:
    """A curve's quality interpolated (pchip in log10 rate, Pareto front) at ``at_rate``.

    Raises ``BDError`` when ``at_rate`` is outside the curve's rate range (no extrapolation).
    """
    r, q = _curve(rate, quality, higher_is_better, "interpolated")
    x = np.log10(float(at_rate))
    if not r[0] <= x <= r[-1]:
        raise BDError(f"rate {at_rate:.4g} is outside the curve's range [{10 ** r[0]:.4g}, {10 ** r[-1]:.4g}]")
    from scipy.interpolate import PchipInterpolator

    value = float(PchipInterpolator(r, q)(x))
    return value if higher_is_better else -value


def rate_at_quality(rate, quality, at_quality: float, *, higher_is_better: bool = True) -> float:
    """The rate a curve needs for ``at_quality`` (pchip of log10 rate over quality, Pareto front).

    Raises ``BDError`` when ``at_quality`` is outside the curve's quality range.
    """
    r, q = _curve(rate, quality, higher_is_better, "interpolated")
    x = float(at_quality) if higher_is_better else -float(at_quality)
    if not q[0] <= x <= q[-1]:
        lo, hi = sorted((q[0], q[-1]) if higher_is_better else (-q[0], -q[-1]))
        raise BDError(f"quality {at_quality:.4g} is outside the curve's range [{lo:.4g}, {hi:.4g}]")
    from scipy.interpolate import PchipInterpolator

    return float(10.0 ** PchipInterpolator(q, r)(x))


def overlap(anchor_rate, anchor_quality, test_rate, test_quality, *, higher_is_better: bool = True,
            axis: str = "quality") -> Tuple[float, float]:
    """The interval a BD number is averaged over: quality (for BD-rate, in the metric's units,
    ``lo <= hi``) or rate (for BD-quality, in rate units). Raises ``BDError`` if empty."""
    ra, qa = _curve(anchor_rate, anchor_quality, higher_is_better, "anchor")
    rt, qt = _curve(test_rate, test_quality, higher_is_better, "test")
    if axis == "quality":
        lo, hi = _overlap(qa, qt, "quality")
        return (lo, hi) if higher_is_better else (-hi, -lo)
    if axis == "rate":
        lo, hi = _overlap(ra, rt, "log-rate")
        return 10.0**lo, 10.0**hi
    raise BDError(f"axis must be 'quality' or 'rate', got {axis!r}")
