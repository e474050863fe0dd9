"""Calibrate a router for the shared objective on its own out-of-fold predictions (inner folds of its training data).

A router's raw quality estimates say little about how much money a preset should save, or how far to trust a
departure from the best single model. Both are measured here, on the training rows only:

1. **Out-of-fold predictions.** The training rows are split into ``folds`` inner folds, grouped by near-duplicate
   groups (``mode="query"``: the fold's queries are new, its tasks are not), by task (``mode="task"``: whole
   tasks are held out, the shift a gateway meets), or both (``mode="mixed"``, the default: every row is
   predicted once as a new query of a known task and once as a query of an unseen task, so the margin learned
   below weighs both kinds of traffic; a router that reports its uncertainty -- the category router's entropy
   -- gets a margin that is small where it is sure and large where it is not). A fresh router is fitted on each
   inner training part and predicts the held-out part, so every row's prediction comes from a router that never
   saw it. Measured on LLMRouter (category router, gain in quality over best-single): grouped 5-fold +0.040
   (query) / +0.021 (task) / +0.036 (mixed); leave-one-task-out -0.024 / -0.003 / -0.007.
2. **Operating curve with caution**: for each lambda of a grid scaled to the data's prices (``s / c_ref``,
   ``c_ref`` = mean expected cost of the best member per query), the caution margin of :data:`CAUTION_GRID`
   whose choices (see :func:`routers.objective.cautious`: depart from the best single choice at that lambda only
   for a predicted utility gain larger than the margin) give the highest realized utility ``q - lambda * cost``
   on those rows (ties go to the larger, safer margin), and the realized quality and cost of those choices
   relative to the best single member's. ``quality_target`` and the presets resolve to lambda on this curve; the
   gateway applies the margin of the resolved lambda.
3. **Member quality**: each training model's mean true quality (the caution anchor, and what ``strongest`` ranks by).

The router finally fitted on all training rows carries the result as ``calibration_`` (stored in its artifact).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from routers.base import ModelCard, Prediction, Router, RouterError
from routers.dataset import RoutingDataset
from routers.objective import PRESET_TARGETS, Calibration, Flags, OperatingCurve, choose_batch, score
from routers.progress import report
from routers.registry import build_router
from training.splits import _groups, grouped_kfold

CALIBRATION_MODES: tuple[str, ...] = ("mixed", "query", "task", "none")
#: lambda grid in units of 1 / (expected cost of the best member per query)
LAMBDA_SCALES: tuple[float, ...] = (0.0, *np.round(np.geomspace(1e-3, 1e3, 73), 6).tolist())
CAUTION_GRID: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 1.0)


def needs_training(router: Router) -> bool:
    """Routers whose ``fit`` learns something (baselines such as cheapest or random do not)."""
    return type(router).fit is not Router.fit and not router.evaluation_only


def cards_for(ds: RoutingDataset, rows: np.ndarray) -> list[ModelCard]:
    """The data set's cards, each unknown ``output_tokens`` set to the model's mean completion tokens on ``rows``
    (so the objective's cost estimate never peeks at the rows it is scored on)."""
    out = []
    for j, card in enumerate(ds.cards):
        if card.output_tokens is None and len(rows):
            card = replace(card, output_tokens=float(ds.completion_tokens[rows, j].mean()))
        out.append(card)
    return out


def inner_folds(ds: RoutingDataset, mode: str, folds: int, seed: int, groups: np.ndarray | None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner (train, held-out) pairs of ``ds``'s rows for ``mode`` (see the module docstring); [] if too few."""
    if mode == "mixed":
        return inner_folds(ds, "query", folds, seed, groups) + (
            inner_folds(ds, "task", folds, seed, groups) if ds.tasks is not None and len(set(ds.tasks)) >= folds
            else [])
    if mode == "task" and ds.tasks is not None and len(set(ds.tasks)) >= folds:
        by = np.unique(np.asarray(ds.tasks, dtype=object), return_inverse=True)[1]
        return grouped_kfold(by, None, folds, seed)
    g = groups if groups is not None else _groups(ds.queries)[0]
    if len(np.unique(g)) < max(folds, 2) * 2:
        return []
    return grouped_kfold(np.unique(g, return_inverse=True)[1], ds.tasks, folds, seed)


def oof_predictions(name: str, params: Mapping[str, Any] | None, ds: RoutingDataset,
                    pairs: list[tuple[np.ndarray, np.ndarray]], seed: int) -> tuple[Prediction, np.ndarray]:
    """Out-of-fold predictions for the rows the pairs hold out: (prediction over those rows, their indices)."""
    if ds.features is None:
        raise RouterError("calibration needs the training data's features")
    rows, preds = [], []
    for i, (train, held) in enumerate(pairs):
        report(f"inner fits {name}", i, len(pairs))
        router = build_router(name, params, seed)
        router.fit(ds.subset(train))
        preds.append(router.predict(ds.features.subset(held), cards_for(ds, train)))
        rows.append(held)

    def stacked(field: str) -> np.ndarray | None:
        parts = [getattr(p, field) for p in preds]
        return None if any(x is None for x in parts) else np.vstack([np.asarray(x, dtype=np.float64) for x in parts])

    report(f"inner fits {name}", len(pairs), len(pairs))
    quality = stacked("quality")
    assert quality is not None
    return Prediction(quality=quality, cost_usd=stacked("cost_usd"), uncertainty=stacked("uncertainty")), \
        np.concatenate(rows)


def calibrate_on(pred: Prediction, ds: RoutingDataset, rows: np.ndarray, member_quality: np.ndarray) -> Calibration:
    """Caution margin and operating curve from out-of-fold predictions ``pred`` of ``ds``'s ``rows``."""
    cards = cards_for(ds, rows)
    truth, true_cost = ds.quality[rows], ds.cost_usd[rows]
    tokens = ds.prompt_tokens[rows]
    anchor = np.asarray(member_quality, dtype=np.float64)
    best = int(np.argmax(anchor))
    q_best, c_best = float(truth[:, best].mean()), float(true_cost[:, best].mean())
    expected_best = float(score(pred, cards, Flags(cost=0.0), tokens).expected_cost_usd[:, best].mean())
    lambdas, q_frac, c_frac, margins = [], [], [], []
    rows_ix = np.arange(len(rows))
    for s in LAMBDA_SCALES:
        lam = s / expected_best if expected_best > 0 else 0.0
        best_utility, pick = -np.inf, (0.0, 0.0, 0.0)
        for margin in CAUTION_GRID:
            choice = choose_batch(pred, cards, Flags(cost=lam), tokens, Calibration(caution=margin), anchor)
            q, c = truth[rows_ix, choice], true_cost[rows_ix, choice]
            utility = float((q - lam * c).mean())
            if utility >= best_utility - 1e-12:  # ties go to the larger, safer margin
                best_utility, pick = utility, (margin, float(q.mean()), float(c.mean()))
        lambdas.append(lam)
        margins.append(pick[0])
        q_frac.append(pick[1] / q_best if q_best > 0 else 1.0)
        c_frac.append(pick[2] / c_best if c_best > 0 else 1.0)
    curve = OperatingCurve(tuple(lambdas), tuple(q_frac), tuple(c_frac), tuple(margins))
    caution = margins[0]
    names = [c.name for c in ds.cards]
    return Calibration(curve=curve, caution=caution, member_quality=dict(zip(names, anchor.tolist(), strict=True)),
                       member_output_tokens=output_tokens(ds))


def output_tokens(ds: RoutingDataset) -> dict[str, float]:
    """Each model's expected output tokens as the calibration's costs assumed (its card's, else the mean)."""
    return {c.name: float(c.output_tokens if c.output_tokens is not None else ds.completion_tokens[:, j].mean())
            for j, c in enumerate(ds.cards)} if len(ds) else {}


def fit_calibrated(name: str, ds: RoutingDataset, params: Mapping[str, Any] | None = None, seed: int = 0,
                   mode: str = "mixed", folds: int = 3, groups: np.ndarray | None = None) -> Router:
    """Router ``name`` fitted on all of ``ds``, carrying its out-of-fold :class:`Calibration` as ``calibration_``.

    ``mode="none"`` (or a router that learns nothing) records only the member quality, so presets use the
    objective's price-ratio rule and caution is off."""
    if mode not in CALIBRATION_MODES:
        raise RouterError(f"calibration mode must be one of {', '.join(CALIBRATION_MODES)}, got {mode!r}")
    router = build_router(name, params, seed)
    router.fit(ds)
    member = np.asarray(ds.quality, dtype=np.float64).mean(axis=0)
    calibration = Calibration(member_quality=dict(zip(ds.models, member.tolist(), strict=True)),
                              member_output_tokens=output_tokens(ds))
    if mode != "none" and needs_training(router):
        pairs = inner_folds(ds, mode, folds, seed, groups)
        if pairs:
            pred, rows = oof_predictions(name, params, ds, pairs, seed)
            calibration = calibrate_on(pred, ds, rows, member)
    router.calibration_ = calibration.as_dict()
    return router


def preset_summary(router: Router) -> dict[str, Any]:
    """Per preset: the lambda it resolves to on the router's curve and the out-of-fold quality and cost it kept
    there (fractions of the best single member's); plus the caution margin. ``{}`` without a curve."""
    calibration = Calibration.of(router)
    curve = calibration.curve
    if curve is None:
        return {}
    out: dict[str, Any] = {"caution": calibration.caution}
    for name, target in PRESET_TARGETS.items():
        lam = 0.0 if target is None else curve.lambda_for(target)
        i = curve.lambdas.index(lam)
        out[name] = {"lambda": lam, "quality_target": target, "oof_quality_fraction": curve.quality_fraction[i],
                     "oof_cost_fraction": curve.cost_fraction[i]}
    return out
