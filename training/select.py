"""Pick a pool's default router from the evaluation protocol, not from in-sample CV.

``poolgate train-offline --router auto`` runs each candidate router through the grouped k-fold (or
leave-one-task-out) protocol of :mod:`training.evaluate` on the training data, and keeps the candidate whose
quality-first paired difference to best-single has the highest *lower* 95 % bound -- only if that bound is above
zero. Failing that, a router can still earn its place by saving money: the candidate whose ``balanced`` choices cost
least relative to best-single, among those that save at least :data:`MIN_SAVING` of its cost and keep the lower
bound of their paired quality difference within :data:`MAX_QUALITY_LOSS` of best-single's quality (the 97 % of the
``balanced`` preset). Otherwise no learned router has shown it helps on queries it did not see, and the pool gets
``best-single`` (which the objective still trades against price under ``balanced`` / ``cost-first``).
Every figure the choice rests on is kept, so the artifact says why it holds the router it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from routers.base import RouterError
from routers.dataset import RoutingDataset
from training.evaluate import EvaluationResult, evaluate_routers
from training.features import Featurizer
from training.report import BASELINE_NAMES

#: what ``--router auto`` tries by default: the learned routers that are quick to fit on CPU
DEFAULT_CANDIDATES: tuple[str, ...] = ("knn", "category", "complexity", "tryage")
FALLBACK = "best-single"
DIFF_KEY = "quality_first_diff_vs_best_single"
#: the balanced rule: save at least this share of best-single's cost ...
MIN_SAVING = 0.10
#: ... losing at most this share of its quality (lower 95 % bound of the paired difference)
MAX_QUALITY_LOSS = 0.03


@dataclass
class Selection:
    """The chosen router and, per candidate, the paired difference to best-single it was chosen by."""

    router: str
    protocol: str
    reason: str
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"router": self.router, "protocol": self.protocol, "reason": self.reason,
                "candidates": self.candidates}


def _candidate_rows(result: EvaluationResult) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for r in result.routers:
        if r.name in BASELINE_NAMES:
            continue
        if r.error:
            rows[r.name] = {"error": r.error}
            continue
        diff, lo, hi = r.intervals[DIFF_KEY]
        bal_diff, bal_lo, _ = r.intervals["balanced_diff_vs_best_single"]
        rows[r.name] = {"diff": round(diff, 4), "ci": [round(lo, 4), round(hi, 4)],
                        "balanced_cost_ratio": round(r.metrics["balanced_cost_ratio"], 4),
                        "balanced_diff": round(bal_diff, 4), "balanced_diff_lower": round(bal_lo, 4)}
    return rows


def choose(result: EvaluationResult) -> Selection:
    """The selection rule of the module docstring, applied to one evaluation's figures."""
    rows = _candidate_rows(result)
    scored = {name: row for name, row in rows.items() if "ci" in row}
    if not scored:
        return Selection(FALLBACK, result.protocol, "no candidate could be evaluated", rows)
    best = max(scored, key=lambda name: scored[name]["ci"][0])
    lo = scored[best]["ci"][0]
    if lo > 0:
        return Selection(best, result.protocol,
                         f"{best}: paired difference to best-single {scored[best]['diff']:+.3f}, "
                         f"95% interval lower bound {lo:+.3f} > 0 ({result.protocol})", rows)
    floor = -MAX_QUALITY_LOSS * float(result.reference["best_single"]["quality"])
    savers = {name: row for name, row in scored.items()
              if row["balanced_cost_ratio"] <= 1 - MIN_SAVING and row["balanced_diff_lower"] >= floor}
    if savers:
        cheap = min(savers, key=lambda name: savers[name]["balanced_cost_ratio"])
        row = savers[cheap]
        return Selection(cheap, result.protocol,
                         f"{cheap}: no candidate beats best-single on quality, but under balanced {cheap} costs "
                         f"{row['balanced_cost_ratio']:.0%} of it with a paired quality difference of "
                         f"{row['balanced_diff']:+.3f} (lower bound {row['balanced_diff_lower']:+.3f} >= {floor:+.3f}; "
                         f"{result.protocol})", rows)
    return Selection(FALLBACK, result.protocol,
                     f"no candidate beats best-single with its paired interval above 0, nor saves "
                     f"{MIN_SAVING:.0%} of its cost under balanced within {MAX_QUALITY_LOSS:.0%} of its quality "
                     f"({result.protocol}; best quality-first lower bound: {best} {lo:+.3f})", rows)


def select_router(
    dataset: RoutingDataset,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    protocol: str = "kfold",
    folds: int = 3,
    seed: int = 0,
    calibration: str = "mixed",
    featurizer: Featurizer | None = None,
) -> Selection:
    """Evaluate ``candidates`` on ``dataset`` under ``protocol`` and choose (see the module docstring)."""
    names = [c for c in dict.fromkeys(candidates) if c not in BASELINE_NAMES]
    if not names:
        raise RouterError("--router auto needs at least one learned candidate router")
    if protocol == "loto" and len(set(dataset.tasks or [])) < 2:
        raise RouterError("leave-one-task-out selection needs a data set with at least two tasks")
    result = evaluate_routers(dataset, names, seed=seed, protocol=protocol, folds=folds,
                              featurizer=featurizer, calibration=calibration, bootstrap=500)
    return choose(result)
