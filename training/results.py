"""What the harness measures for one router: operating points, metrics with bootstrap intervals, the paired
difference to best-single, per-task rows and the calibration of the chosen model's predicted quality.

Intervals are percentile bootstrap 95 % intervals over the evaluated queries (``bootstrap`` resamples, fixed
seed); the paired difference resamples the router's and best-single's per-query outcomes together, so its
interval is that of the difference itself, not of two separate means. Formulas of the curve metrics are in
:mod:`training.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routers.dataset import RoutingDataset
from training import metrics

OPERATING_POINTS: tuple[str, ...] = ("quality-first", "balanced", "cost-first")


@dataclass
class SweepPoint:
    """One operating point: its label, the mean lambda it resolved to and the true outcome of its choices."""

    label: str
    lam: float
    quality: float
    cost_usd: float
    tokens: float
    shares: dict[str, float]

    @classmethod
    def of(cls, label: str, lam: float, ds: RoutingDataset, rows: np.ndarray, choice: np.ndarray) -> SweepPoint:
        sel = np.arange(len(rows)), choice
        shares = {m: float((choice == j).mean()) for j, m in enumerate(ds.models)}
        return cls(label, lam, float(ds.quality[rows][sel].mean()), float(ds.cost_usd[rows][sel].mean()),
                   float(ds.total_tokens[rows][sel].mean()), shares)


@dataclass
class RouterResult:
    """Everything measured for one router. ``error`` is set (and the rest empty) when it failed."""

    name: str
    points: list[SweepPoint] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_curve: dict[str, list[float]] | None = None
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    calibrations: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: ``--sweep`` operating points (flag combinations; see training/sweep.py), kept apart from ``points``
    sweep: list[SweepPoint] = field(default_factory=list)

    def point(self, label: str) -> SweepPoint | None:
        return next((p for p in self.points if p.label == label), None)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` row indices drawn with replacement (fixed seed: every router gets the same draws)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), int)


def interval(values: np.ndarray, idx: np.ndarray) -> list[float]:
    """[mean, 2.5 % quantile, 97.5 % quantile] of the mean of ``values`` over the bootstrap draws ``idx``."""
    if len(values) == 0:
        return [float("nan")] * 3
    means = values[idx].mean(axis=1)
    return [float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def expected_calibration_error(pred: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE: sum over 10 equal-width bins of predicted quality of (share of queries in the bin) x |mean predicted -
    mean realized| (Naeini et al., 2015), here of the *chosen* model's predicted vs realized quality."""
    if len(pred) == 0:
        return float("nan")
    which = np.minimum((np.clip(pred, 0.0, 1.0) * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(float(pred[inside].mean()) - float(truth[inside].mean()))
    return float(total)


def router_metrics(res: RouterResult, ds: RoutingDataset, rows: np.ndarray, choices: dict[str, np.ndarray],
                   predicted: np.ndarray, ref: dict[str, Any], resamples: int, seed: int) -> None:
    """Fill ``res.metrics``, ``res.intervals``, ``res.per_task`` and the two-model threshold curve."""
    n = len(rows)
    q, cost, tok = ds.quality[rows], ds.cost_usd[rows], ds.total_tokens[rows]
    best = np.asarray(ref["best_single"]["choice"], dtype=np.int64)
    sel_best = np.arange(n), best
    idx = bootstrap_indices(n, resamples, seed)
    m: dict[str, float] = {}
    for label in OPERATING_POINTS:
        ch = choices[label]
        sel = np.arange(n), ch
        key = label.replace("-", "_")
        res.intervals[f"{key}_quality"] = interval(q[sel], idx)
        res.intervals[f"{key}_diff_vs_best_single"] = interval(q[sel] - q[sel_best], idx)
        m[f"{key}_quality_ratio"] = float(q[sel].mean() / q[sel_best].mean()) if q[sel_best].mean() else np.nan
        m[f"{key}_cost_ratio"] = float(cost[sel].mean() / cost[sel_best].mean()) if cost[sel_best].mean() else np.nan
        m[f"{key}_token_ratio"] = float(tok[sel].mean() / tok[sel_best].mean()) if tok[sel_best].mean() else np.nan
    op = choices["quality-first"]
    sel = np.arange(n), op
    m |= {"quality": float(q[sel].mean()), "cost_usd": float(cost[sel].mean()), "tokens": float(tok[sel].mean()),
          "best_choice_rate": metrics.best_choice_rate(q, op),
          "ece_chosen": expected_calibration_error(predicted[sel], q[sel]),
          "predicted_chosen": float(predicted[sel].mean()), "realized_chosen": float(q[sel].mean())}
    _curve_metrics(m, res, ref)
    res.metrics = m
    if ds.tasks is not None:
        tasks = np.asarray(ds.tasks, dtype=object)[rows]
        bal = choices["balanced"]
        for t in sorted(set(tasks.tolist())):
            r = np.flatnonzero(tasks == t)
            res.per_task[t] = {"n": float(len(r)), "quality": float(q[r, op[r]].mean()),
                               "best_single": float(q[r, best[r]].mean()),
                               "balanced_quality": float(q[r, bal[r]].mean()),
                               "balanced_cost_ratio": float(cost[r, bal[r]].mean() / cost[r, best[r]].mean())
                               if cost[r, best[r]].mean() else float("nan")}
    if "pair" in ref:
        s, w = ds.models.index(ref["pair"]["strong"]), ds.models.index(ref["pair"]["weak"])
        frac, qual = metrics.threshold_curve(predicted[:, s] - predicted[:, w], q[:, s], q[:, w])
        res.threshold_curve = {"strong_fraction": frac.tolist(), "quality": qual.tolist()}
        args = (frac, qual, float(q[:, w].mean()), float(q[:, s].mean()))
        res.metrics |= {"apgr": metrics.apgr(*args), "cpt50": metrics.cpt(*args, pct=0.5),
                        "cpt80": metrics.cpt(*args, pct=0.8)}
        res.intervals["apgr"] = _apgr_interval(predicted[:, s] - predicted[:, w], q[:, s], q[:, w], idx[:200])


def _apgr_interval(score: np.ndarray, q_s: np.ndarray, q_w: np.ndarray, idx: np.ndarray) -> list[float]:
    values = []
    for draw in idx:
        frac, qual = metrics.threshold_curve(score[draw], q_s[draw], q_w[draw])
        values.append(metrics.apgr(frac, qual, float(q_w[draw].mean()), float(q_s[draw].mean())))
    frac, qual = metrics.threshold_curve(score, q_s, q_w)
    v = np.asarray([x for x in values if np.isfinite(x)])
    point = metrics.apgr(frac, qual, float(q_w.mean()), float(q_s.mean()))
    return [point, float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] if len(v) else [point] * 3


def _curve_metrics(m: dict[str, float], res: RouterResult, ref: dict[str, Any]) -> None:
    xs = np.asarray([p.cost_usd for p in res.points])
    ys = np.asarray([p.quality for p in res.points])
    lo, hi = ref["aiq_cost_range"]
    best, cheap = ref["best_single"], ref["cheapest"]
    bal = res.point("balanced")
    within = [p for p in res.points if p.quality >= best["quality"] - 0.01]
    m |= {
        # EllieSQL's question: how many tokens does routing save while losing at most one point of quality?
        # (the best operating point of the router's own sweep and presets, not an interpolation between two)
        "tokens_saved_within_1pt": max((1.0 - p.tokens / best["tokens"] for p in within), default=np.nan)
        if best["tokens"] else np.nan,
        "aiq": metrics.aiq(xs, ys, lo, hi),
        "quality_at_ref_cost": metrics.quality_at_cost(xs, ys, best["cost_usd"]),
        "cost_at_ref_quality": metrics.cost_at_quality(xs, ys, best["quality"]),
        "savings_vs_best_single": metrics.savings(xs, ys, best["cost_usd"], best["quality"]),
        # EllieSQL's TEP of the balanced choices against the stated reference, always-cheapest
        "tep_tokens": metrics.tep(bal.quality, bal.tokens, cheap["quality"], cheap["tokens"]) if bal else np.nan,
        "tep_usd": metrics.tep(bal.quality, bal.cost_usd, cheap["quality"], cheap["cost_usd"]) if bal else np.nan,
    }
