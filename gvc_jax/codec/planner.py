"""Rate-compute planner: ``--target-bpp B`` with ``--max-dit-calls N`` or ``--speed`` -> a schedule.

**Our own design.** The published rate-compute scheduler (TURBO.md section 8) maps a target bpp to
a trajectory length and a refresh period after a one-time calibration, but its mapping and its
calibration procedure are not public. What follows is ours, and is only as good as its table.

What it chooses: the sampling steps T, the multi-resolution plan (``off``, or the model's
``--mr auto`` plan for the video's size and that T), the x0-cache skips (``off``, ``alternate`` or
a prefix of ``alternate``'s list -- with stages, TURBO's refresh rule, never in the tail or at a
switch -- so never two skips in a row: ``schedule.check_x0_cache``) and M (M_tail in proportion
when ``tail_atoms`` is set), so that

- the stream fits the byte budget of ``target_bpp`` exactly (M from ``rate.fit_atoms`` for the
  candidate's T and stages, transition atoms included: the machinery the encoder then runs), and
- the DiT work per GOP stays within the budget. The budget is counted in **full-size DiT calls**:
  a call at a lower stage counts its share of the coded size's tokens (``Schedule.cost``; tokens
  are proportional to pixel area). Without stages this is the plain call count
  (``steps - len(x0_cache)``, ``Trajectory.dit_calls``). Attention grows faster than the token
  count, so the token share overstates a low stage's cost: the budget errs on the safe side.

minimising the predicted LPIPS (then the predicted PSNR, then the DiT cost).

Predictions come from a **calibration table** (``calibration.json`` in the model directory,
written by ``experiments/calibrate.py``): measured LPIPS and PSNR of coded sample clips at a few
(T, x0-cache off / alternate, M) points, each with its *payload* bpp (the rank-coded picks only:
for one model, picks bits per pixel is bits per latent value up to a constant, so it carries over
between frame sizes, unlike header and anchor bytes). The model of distortion, deliberately
simple: for each measured (T, mode) a curve monotone in payload bpp (pool-adjacent-violators,
then piecewise linear in log2 bpp, clamped -- and flagged -- outside the measured range);
between measured T linear in T; a partial skip list linear in its share of ``alternate``'s skips.
No extrapolation in T: candidates stay inside the table's measured steps.

The MR axis (table format 2): every point says ``mr`` -- ``off`` or ``auto`` (coded with the
model's ``--mr auto`` plan for the calibration size: ``measured.width`` x ``measured.height`` must
be above the model's native size for such points to exist). Curves are per (T, x0-cache, mr); an
``auto`` candidate is predicted by the ``auto`` curves, whatever the video's own auto plan is (its
stage sizes and switch step follow the same rule at another size). Format 1 tables (no ``mr``
field) read as all ``off``: the planner then never proposes stages.

The plan space is a product of independent dimensions (``Schedule``: steps, stages, skips; M
follows from the rate).

The table is read as hostile input: size cap, strict JSON (no NaN / Infinity), schema, types and
ranges, and the model fingerprint. Any problem is one line naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop import rate
from gvc_jax.codec.sampling.multires import StagePlan, mr_refresh_schedule
from gvc_jax.codec.sampling.schedule import MAX_ATOMS, MAX_STEPS

TABLE_NAME = "calibration.json"
TABLE_FORMAT = "gvc-jax-calibration"
TABLE_VERSION = 2
READ_VERSIONS = (1, 2)      # format 1: no ``mr`` field (every point is ``off``)
MAX_TABLE_BYTES = 1 << 20
MAX_POINTS = 4096
MODES = ("off", "alternate")
MR_AXIS = ("off", "auto")   # the table's multi-resolution axis (``auto``: the model's --mr auto plan)
# --speed: the DiT-call budget per GOP as a share of --steps (our choice; "balanced" at T = 20
# gives 12 calls, like TURBO.md's published turbo schedule; "fast" gives 8).
SPEEDS = {"quality": 1.0, "balanced": 0.6, "fast": 0.4}
_POINT_FIELDS = {"steps": int, "x0_cache": str, "mr": str, "atoms": int, "payload_bpp": float, "bpp": float,
                 "psnr": float, "lpips": float, "dit_calls": int}
_V1_FIELDS = {k: v for k, v in _POINT_FIELDS.items() if k != "mr"}


class CalibrationError(ValueError):
    """A calibration table that is missing, malformed or for another model."""


class PlanError(ValueError):
    """No schedule meets both the rate and the compute budget."""


# ------------------------------------------------------------------------------ the table

def table_path(model) -> Optional[str]:
    """The calibration table of a model directory (None: a model without a directory)."""
    path = getattr(model, "path", None)
    return os.path.join(path, TABLE_NAME) if path else None


def make_table(points: Sequence[dict], fingerprint: str, model_name: str, measured: dict) -> dict:
    """A table (validated like a read one) from measured ``points`` (dicts of ``_POINT_FIELDS``)."""
    table = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "model_fingerprint": fingerprint,
             "model_name": model_name, "design": "gvc-jax's own (the published mapping is not public)",
             "measured": measured, "points": [dict(p) for p in points]}
    CalibrationTable.from_dict(table, "<new table>", fingerprint)
    return table


def write_table(table: dict, path: str) -> None:
    from gvc_jax.io.atomic import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _no_constants(name: str):
    raise ValueError(f"non-finite number {name}")


def read_table(path: str, fingerprint: Optional[str]) -> "CalibrationTable":
    """The validated table at ``path`` for the model of ``fingerprint`` (None: any model)."""
    try:
        size = os.path.getsize(path)
        if size > MAX_TABLE_BYTES:
            raise CalibrationError(f"calibration table {path}: {size} bytes, over the {MAX_TABLE_BYTES} limit")
        with open(path, "rb") as f:
            raw = f.read(MAX_TABLE_BYTES + 1)
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except FileNotFoundError:
        raise CalibrationError(f"calibration table {path} not found (measure one: python experiments/calibrate.py "
                               f"--model DIR)") from None
    except CalibrationError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CalibrationError(f"calibration table {path}: unreadable ({str(err)[:200]})") from None
    return CalibrationTable.from_dict(data, path, fingerprint)


def _number(v: Any, kind: type) -> bool:
    if isinstance(v, bool):
        return False
    if kind is int:
        return isinstance(v, int)
    return isinstance(v, (int, float)) and math.isfinite(v)


def _check_point(p: Any, i: int, version: int) -> dict:
    fields = _POINT_FIELDS if version >= 2 else _V1_FIELDS
    if not isinstance(p, dict) or set(p) != set(fields):
        raise ValueError(f"point {i} must have exactly the fields {sorted(fields)}")
    for name, kind in fields.items():
        ok = isinstance(p[name], str) if kind is str else _number(p[name], kind)
        if not ok:
            raise ValueError(f"point {i}: {name} must be {'a string' if kind is str else 'a finite ' + kind.__name__}")
    limits = {"steps": (2, MAX_STEPS), "atoms": (1, MAX_ATOMS), "payload_bpp": (1e-9, 24.0), "bpp": (1e-9, 24.0),
              "psnr": (0.0, 100.0), "lpips": (0.0, 2.0), "dit_calls": (1, MAX_STEPS)}
    for name, (lo, hi) in limits.items():
        if not lo <= p[name] <= hi:
            raise ValueError(f"point {i}: {name} = {p[name]} outside [{lo}, {hi}]")
    if p["x0_cache"] not in MODES:
        raise ValueError(f"point {i}: x0_cache must be one of {MODES}, got {p['x0_cache'][:40]!r}")
    p = {**p, "mr": p.get("mr", "off")}
    if p["mr"] not in MR_AXIS:
        raise ValueError(f"point {i}: mr must be one of {MR_AXIS}, got {p['mr'][:40]!r}")
    steps, calls = p["steps"], p["dit_calls"]
    if p["x0_cache"] == "off":
        ok, want = calls == steps, f"{steps}"
    elif p["mr"] == "off":
        ok, want = calls == steps - steps // 2, f"{steps - steps // 2}"
    else:  # TURBO's refresh rule skips fewer steps (never in the tail or at a switch)
        ok, want = steps - steps // 2 <= calls <= steps, f"{steps - steps // 2} to {steps}"
    if not ok:
        raise ValueError(f"point {i}: dit_calls {calls} is not {want} for {steps} steps, x0-cache {p['x0_cache']}, "
                         f"mr {p['mr']}")
    return p


@dataclass(frozen=True)
class Curve:
    """Measured distortion of one (steps, mode, mr): monotone in payload bpp (log2 axis)."""

    log_bpp: np.ndarray   # increasing, distinct
    lpips: np.ndarray     # non-increasing
    psnr: np.ndarray      # non-decreasing

    @classmethod
    def fit(cls, points: List[dict]) -> "Curve":
        by_rate: Dict[float, List[dict]] = {}
        for p in points:  # points at one rate (several clips, or a repeat) are averaged
            by_rate.setdefault(round(math.log2(p["payload_bpp"]), 9), []).append(p)
        xs = np.array(sorted(by_rate))
        lp = np.array([np.mean([p["lpips"] for p in by_rate[x]]) for x in xs])
        ps = np.array([np.mean([p["psnr"] for p in by_rate[x]]) for x in xs])
        return cls(xs, -_isotonic(-lp), _isotonic(ps))

    def at(self, payload_bpp: float) -> Tuple[float, float, bool]:
        """(lpips, psnr, outside the measured range) at ``payload_bpp``."""
        x = math.log2(payload_bpp)
        outside = not self.log_bpp[0] - 1e-9 <= x <= self.log_bpp[-1] + 1e-9
        return (float(np.interp(x, self.log_bpp, self.lpips)), float(np.interp(x, self.log_bpp, self.psnr)), outside)


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators, equal weights)."""
    blocks: List[List[float]] = []  # [mean, count]
    for v in map(float, y):
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return np.array([m for m, n in blocks for _ in range(int(n))])


CurveKey = Tuple[int, str, str]  # (steps, x0-cache mode, mr)


@dataclass(frozen=True)
class CalibrationTable:
    """A validated table: one ``Curve`` per (steps, mode, mr); every measured (steps, mr) has both modes."""

    path: str
    curves: Dict[CurveKey, Curve]
    data: dict

    def steps_of(self, mr: str = "off") -> Tuple[int, ...]:
        """The measured steps of the ``mr`` axis value (empty: none measured)."""
        return tuple(sorted({t for t, _, m in self.curves if m == mr}))

    @property
    def steps(self) -> Tuple[int, ...]:
        """The measured steps of single-resolution points."""
        return self.steps_of("off")

    @property
    def mr_values(self) -> Tuple[str, ...]:
        return tuple(m for m in MR_AXIS if self.steps_of(m))

    @classmethod
    def from_dict(cls, data: Any, path: str, fingerprint: Optional[str]) -> "CalibrationTable":
        try:
            curves = cls._curves(data, fingerprint)
        except ValueError as err:
            raise CalibrationError(f"calibration table {path}: {err}") from None
        return cls(path, curves, data)

    @staticmethod
    def _curves(data: Any, fingerprint: Optional[str]) -> Dict[CurveKey, Curve]:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"format must be {TABLE_FORMAT!r}")
        version = data.get("version")
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise ValueError(f"unsupported version {str(version)[:20]} (this reader: {READ_VERSIONS})")
        fp = data.get("model_fingerprint")
        if not isinstance(fp, str) or len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise ValueError("model_fingerprint must be 64 lowercase hex digits")
        if fingerprint is not None and fp != fingerprint:
            raise ValueError(f"measured for another model (fingerprint {fp[:12]}..., this one {fingerprint[:12]}...): "
                             f"recalibrate with experiments/calibrate.py")
        points = data.get("points")
        if not isinstance(points, list) or not 2 <= len(points) <= MAX_POINTS:
            raise ValueError(f"points must be a list of 2 to {MAX_POINTS} points")
        groups: Dict[CurveKey, List[dict]] = {}
        for i, p in enumerate(points):
            p = _check_point(p, i, int(version))
            groups.setdefault((p["steps"], p["x0_cache"], p["mr"]), []).append(p)
        if not any(m == "off" for _, _, m in groups):
            raise ValueError("no mr 'off' points (the single-resolution curves are needed)")
        for t, mr in sorted({(t, m) for t, _, m in groups}):
            missing = [mode for mode in MODES if (t, mode, mr) not in groups]
            if missing:
                raise ValueError(f"steps {t} (mr {mr}) has no x0-cache {missing[0]!r} points (every measured steps "
                                 f"needs both)")
        return {key: Curve.fit(group) for key, group in groups.items()}

    def predict(self, steps: int, skip_share: float, payload_bpp: float,
                mr: str = "off") -> Tuple[float, float, bool]:
        """(lpips, psnr, extrapolated) for ``steps`` (inside the measured range of ``mr``) with
        ``skip_share`` of ``alternate``'s skips, at ``payload_bpp``: linear in T between measured
        steps and in the skip share between ``off`` and ``alternate``."""
        ts = self.steps_of(mr)
        if not ts or not ts[0] <= steps <= ts[-1]:
            raise PlanError(f"steps {steps} outside the calibrated steps of mr {mr}: {ts}")
        hi = next(t for t in ts if t >= steps)
        lo = max(t for t in ts if t <= steps)
        w_t = 0.0 if hi == lo else (steps - lo) / (hi - lo)
        out = np.zeros(2)
        outside = False
        for t, wt in ((lo, 1 - w_t), (hi, w_t)):
            for mode, wm in (("off", 1 - skip_share), ("alternate", skip_share)):
                if wt * wm == 0:
                    continue
                lp, ps, far = self.curves[(t, mode, mr)].at(payload_bpp)
                out += wt * wm * np.array([lp, ps])
                outside |= far
        return float(out[0]), float(out[1]), outside


# ------------------------------------------------------------------------------ planning

def alternate_skips(steps: int, tail: int, stages: Optional[StagePlan]) -> Tuple[int, ...]:
    """``--x0-cache alternate``'s skips: every odd step, or with stages TURBO's refresh rule (period
    2, never in the tail or at a switch: ``multires.mr_refresh_schedule``)."""
    if stages is None:
        return tuple(range(1, steps, 2))
    return mr_refresh_schedule(steps, tail, 2, stages.switches).as_x0_cache()


@dataclass(frozen=True)
class Schedule:
    """One point of the plan space. Each field is one independent dimension; ``candidates`` takes
    their product. M is not a dimension: the rate fixes it for each schedule. ``x0_cache`` is a
    prefix of ``alternate`` (``alternate_skips``: ``alternate_count`` skips in all)."""

    steps: int
    x0_cache: Tuple[int, ...] = ()
    stages: Optional[StagePlan] = None
    alternate_count: Optional[int] = None  # None: ``steps // 2`` (no stages)

    @property
    def mr(self) -> str:
        """The table's MR axis value of this schedule."""
        return "off" if self.stages is None else "auto"

    @property
    def dit_calls(self) -> int:
        """DiT evaluations per GOP (as ``Trajectory.dit_calls``), at any stage."""
        return self.steps - len(self.x0_cache)

    @property
    def cost(self) -> float:
        """DiT work per GOP in full-size calls: each call counts its stage's share of the coded
        size's tokens (pixel area); without stages, ``dit_calls``."""
        if self.stages is None:
            return float(self.dit_calls)
        area = [w * h for w, h in self.stages.sizes]
        skipped = set(self.x0_cache)
        return sum(area[self.stages.stage_of_step(i)] / area[-1] for i in range(self.steps) if i not in skipped)

    @property
    def skip_share(self) -> float:
        """The share of ``alternate``'s skips this schedule takes (the table's skip axis)."""
        full = self.steps // 2 if self.alternate_count is None else self.alternate_count
        return len(self.x0_cache) / full if full else 0.0


def compute_budget(max_dit_calls: Optional[int], speed: Optional[str], steps: int) -> int:
    """Full-size DiT calls per GOP allowed: ``max_dit_calls``, or ``SPEEDS[speed]`` of ``steps`` (at least 1)."""
    if max_dit_calls is not None:
        return int(max_dit_calls)
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {', '.join(SPEEDS)}, got {speed!r}")
    return max(1, round(SPEEDS[speed] * steps))


StagePlanFor = Callable[[int], Optional[StagePlan]]  # steps T -> the video's --mr auto plan (None: none)


def candidates(table: CalibrationTable, tail: int, budget: float, mr: Sequence[str] = ("off",),
               stage_plan: Optional[StagePlanFor] = None) -> List[Schedule]:
    """Every schedule inside the table's steps (and above ``tail``) within ``budget`` full-size DiT
    calls: for each allowed ``mr`` value the table measured (``auto`` needs ``stage_plan`` and a
    plan for that T), T, and the first s of ``alternate``'s skips (never two in a row)."""
    out = []
    for axis in (m for m in table.mr_values if m in mr):
        ts = table.steps_of(axis)
        for steps in range(max(ts[0], tail + 1), ts[-1] + 1):
            stages = None if axis == "off" or stage_plan is None else stage_plan(steps)
            if axis == "auto" and stages is None:
                continue
            skips = alternate_skips(steps, tail, stages)
            for s in range(len(skips) + 1):
                sched = Schedule(steps, skips[:s], stages, len(skips))
                if sched.cost <= budget + 1e-9:
                    out.append(sched)
    return out


@dataclass(frozen=True)
class Video:
    """What the planner knows of one video: its stream header (any steps / atoms / stages: the
    planner replaces them), its rate target (``rate.RateTarget``) and its pixel count (frames x W x H)."""

    header: Any
    target: Any
    pixels: int


@dataclass(frozen=True)
class Plan:
    """The chosen schedule, its M (of the first video) and what the table predicts for it."""

    schedule: Schedule
    atoms_per_frame: Tuple[int, ...]
    budget: int
    bpp: float              # predicted total bpp (mean over the videos; exact up to the prompt's bytes)
    payload_bpp: float
    lpips: float            # predicted, from the table
    psnr: float
    extrapolated: bool      # the rate lies outside the table's measured payload bpp (clamped)
    table: str
    considered: int         # schedules that met both budgets

    def report(self) -> dict:
        """The plan's lines of the encoder's report (the realised numbers come from the stream)."""
        stages = self.schedule.stages
        return {"plan": "rate-compute planner (gvc-jax's own design; the published mapping is not public)",
                "plan_steps": self.schedule.steps, "plan_x0_cache": list(self.schedule.x0_cache),
                "plan_mr": "off" if stages is None else stages.spec(),
                "plan_atoms": int(self.atoms_per_frame[0]), "plan_dit_calls": self.schedule.dit_calls,
                "plan_dit_cost": round(self.schedule.cost, 4),
                "plan_max_dit_calls": self.budget, "plan_predicted_bpp": round(self.bpp, 6),
                "plan_predicted_lpips": round(self.lpips, 4), "plan_predicted_psnr": round(self.psnr, 3),
                "plan_extrapolated": self.extrapolated, "plan_table": self.table}


def _fit(video: Video, sched: Schedule):
    """-> (atoms per frame, stream bytes, payload bits) of ``video`` with ``sched`` at its byte budget,
    or None where even one atom does not fit."""
    h = video.header
    h = h.with_sampler(h.sampler.replace(steps=sched.steps, x0_cache=sched.x0_cache, stages=sched.stages))
    t = video.target
    try:
        apf = rate.fit_atoms(h, int(t.target_bytes), t.side_lengths, t.pattern)
    except rate.RateError:
        return None
    fitted = h.replace(sampler=h.sampler.replace(atoms_per_frame=apf))
    picks = h.num_gops * 8 * ((bitstream.payload_bits(fitted) + 7) // 8)
    return apf, rate.stream_bytes(fitted, t.side_lengths), picks


def _no_schedule(table: CalibrationTable, tail: int, budget: float, mr: Sequence[str],
                 stage_plan: Optional[StagePlanFor]) -> PlanError:
    axes = [m for m in table.mr_values if m in mr]
    if not axes:
        return PlanError(f"the table {table.path} has no points for mr {'/'.join(mr)} (it measured "
                         f"{'/'.join(table.mr_values)}): recalibrate with experiments/calibrate.py")
    ts = table.steps_of(axes[0])
    first = max(ts[0], tail + 1)
    if axes == ["auto"] and not any(stage_plan is not None and stage_plan(t) is not None
                                    for t in range(first, ts[-1] + 1)):
        return PlanError("no --mr auto plan exists for this size with this model (at or below its native size, "
                         "or too few steps): leave --mr out or give --mr off")
    costs = [sched.cost for sched in candidates(table, tail, math.inf, mr, stage_plan)]
    need = f"the cheapest costs {min(costs):.4g} full-size calls" if costs else "none runs more steps than the tail"
    return PlanError(f"no schedule within {budget} DiT calls per GOP: the table {table.path} covers steps "
                     f"{ts[0]}..{ts[-1]} (tail {tail}) and {need}")


def plan(table: CalibrationTable, videos: Sequence[Video], tail: int, budget: int, mr: Sequence[str] = ("off",),
         stage_plan: Optional[StagePlanFor] = None) -> Plan:
    """The schedule of least predicted LPIPS (then higher PSNR, then less DiT work) whose every
    video fits its byte budget with at least one atom, within ``budget`` full-size DiT calls per GOP.
    ``mr``: the MR axis values allowed; ``stage_plan``: the videos' ``--mr auto`` plan for T steps
    (the videos of one run share one coded size)."""
    scheds = candidates(table, tail, budget, mr, stage_plan)
    if not scheds:
        raise _no_schedule(table, tail, budget, mr, stage_plan)
    best: Optional[tuple] = None
    considered = 0
    for sched in scheds:
        fits = [_fit(v, sched) for v in videos]
        if any(f is None for f in fits):
            continue
        considered += 1
        preds = [table.predict(sched.steps, sched.skip_share, f[2] / v.pixels, sched.mr)
                 for v, f in zip(videos, fits, strict=True)]
        lp = float(np.mean([p[0] for p in preds]))
        ps = float(np.mean([p[1] for p in preds]))
        key = (round(lp, 9), -round(ps, 9), round(sched.cost, 9), sched.steps)
        if best is None or key < best[0]:
            bpp = float(np.mean([8.0 * f[1] / v.pixels for v, f in zip(videos, fits, strict=True)]))
            pay = float(np.mean([f[2] / v.pixels for v, f in zip(videos, fits, strict=True)]))
            best = (key, Plan(sched, tuple(fits[0][0]), budget, bpp, pay, lp, ps, any(p[2] for p in preds),
                              table.path, 0))
    if best is None:
        raise PlanError(f"the target rate is too low for every schedule within {budget} DiT calls per GOP "
                        f"(even one atom per latent frame is over the byte budget at the fewest calibrated steps)")
    return dataclasses.replace(best[1], considered=considered)
