"""The evaluation harness: fit routers on a split, route the held-out queries, and score the choices.

For every router: fit on the training rows (evaluation-only routers such as the oracle: on the test rows),
predict on the test rows, and let the shared objective (:func:`routers.objective.choose_batch`) choose across
a sweep of cost weights (quality weight 1) plus the objective's presets. Every number comes from the
dataset's *true* quality, tokens and cost of the chosen cells. With ``folds`` the test rows of all folds are
pooled (each query is tested exactly once). Routers are built by name from the registry, with no special cases.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from routers.base import ModelCard
from routers.objective import PRESETS, Flags, choose_batch
from routers.registry import get_router_class
from training import metrics
from training.dataset import RoutingDataset
from training.features import Featurizer
from training.splits import kfold_by_query, split_by_query
from training.train_router import build_router

#: cost weights of the sweep (quality weight 1). Predicted quality and min-max normalized cost both span [0, 1],
#: so most decisions flip between 0 and 1: the grid is dense there to give the curve (and AIQ) resolution.
DEFAULT_COST_WEIGHTS: tuple[float, ...] = (
    0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0,
)
#: the operating point a report's main columns describe
OPERATING_POINT = "quality-first"


@dataclass
class SweepPoint:
    """One operating point: the flags used and the true outcome of the choices they produced."""

    label: str
    quality_weight: float
    cost_weight: float
    quality: float
    cost_usd: float
    tokens: float
    shares: dict[str, float]


@dataclass
class RouterResult:
    """Everything measured for one router. ``error`` is set (and the rest empty) when it failed."""

    name: str
    points: list[SweepPoint] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    threshold_curve: dict[str, list[float]] | None = None
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: ``--sweep`` operating points (flag combinations; see training/sweep.py), kept apart from ``points``
    sweep: list[SweepPoint] = field(default_factory=list)

    def point(self, label: str) -> SweepPoint | None:
        return next((p for p in self.points if p.label == label), None)


@dataclass
class EvaluationResult:
    """A whole evaluation: the data set, how it was split, the references, and one result per router."""

    dataset: str
    n_queries: int
    n_evaluated: int
    models: list[str]
    seed: int
    folds: int | None
    split: str
    assumptions: dict[str, Any]
    reference: dict[str, Any]
    routers: list[RouterResult]
    featurize_seconds: float = 0.0
    embedding: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``nan`` becomes ``None``)."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def sweep_flags(cost_weights: Sequence[float]) -> list[tuple[str, Flags]]:
    """(label, flags) per operating point: ``cost=w`` for each weight (quality 1), then every preset."""
    out = [(f"cost={w:g}", Flags(quality=1.0, cost=float(w))) for w in cost_weights]
    return out + list(PRESETS.items())


def eval_cards(ds: RoutingDataset, train_idx: np.ndarray) -> list[ModelCard]:
    """The dataset's cards, with each unknown ``output_tokens`` set to the model's mean completion tokens on
    the *training* rows (so the objective's cost estimate never peeks at the test answers)."""
    cards = []
    for j, card in enumerate(ds.cards):
        if card.output_tokens is None and len(train_idx):
            card = replace(card, output_tokens=float(ds.completion_tokens[train_idx, j].mean()))
        cards.append(card)
    return cards


@dataclass
class _Fold:
    train: np.ndarray
    test: np.ndarray
    cards: list[ModelCard]


def _run_router(name: str, ds: RoutingDataset, folds: list[_Fold], flags: list[tuple[str, Flags]], seed: int
                ) -> tuple[np.ndarray, np.ndarray, RouterResult]:
    """Fit/predict per fold; returns (choices [n_points, n_eval], predicted quality [n_eval, m], result)."""
    result = RouterResult(name=name)
    choices, qualities = [], []
    for fold in folds:
        router = build_router(name, seed=seed)
        fit_rows = fold.test if router.evaluation_only else fold.train
        start = time.perf_counter()
        router.fit(ds.subset(fit_rows))
        result.fit_seconds += time.perf_counter() - start
        assert ds.features is not None
        feats = ds.features.subset(fold.test)
        start = time.perf_counter()
        pred = router.predict(feats, fold.cards)
        result.predict_seconds += time.perf_counter() - start
        if pred.quality.shape != (len(fold.test), len(ds.models)):
            raise ValueError(f"router {name!r} predicted shape {pred.quality.shape}, "
                             f"expected {(len(fold.test), len(ds.models))}")
        choices.append(np.stack([choose_batch(pred, fold.cards, f, feats.prompt_tokens) for _, f in flags]))
        qualities.append(np.clip(pred.quality, 0.0, 1.0))
        result.params = _clean(router.get_params()) | {
            k: _clean(getattr(router, k)) for k in ("k_",) if hasattr(router, k)}
    return np.concatenate(choices, axis=1), np.concatenate(qualities), result


def _outcome(ds: RoutingDataset, rows: np.ndarray, choice: np.ndarray) -> tuple[float, float, float]:
    return (metrics.mean_quality(ds.quality[rows], choice), metrics.mean_cost(ds.cost_usd[rows], choice),
            metrics.mean_cost(ds.total_tokens[rows], choice))


def _single_policy(ds: RoutingDataset, folds: list[_Fold], pick: str) -> np.ndarray:
    """Per-query choice of a fixed model picked per fold on the training rows ('best' quality or 'cheapest')."""
    out = []
    for f in folds:
        if pick == "best":
            j = int(np.argmax(ds.quality[f.train].mean(axis=0)))
        else:
            j = int(np.argmin(ds.cost_usd[f.train].mean(axis=0)))
        out.append(np.full(len(f.test), j))
    return np.concatenate(out)


def _references(ds: RoutingDataset, rows: np.ndarray, folds: list[_Fold]) -> dict[str, Any]:
    best = _single_policy(ds, folds, "best")
    cheap = _single_policy(ds, folds, "cheapest")
    ref: dict[str, Any] = {}
    for key, choice in (("best_single", best), ("cheapest", cheap)):
        q, c, t = _outcome(ds, rows, choice)
        names = sorted({ds.models[int(j)] for j in np.unique(choice)})
        ref[key] = {"models": names, "quality": q, "cost_usd": c, "tokens": t}
    cost = ds.cost_usd[rows]
    ref["aiq_cost_range"] = [float(cost.min(axis=1).mean()), float(cost.max(axis=1).mean())]
    ref["per_model"] = {m: {"quality": float(ds.quality[rows, j].mean()), "cost_usd": float(cost[:, j].mean())}
                        for j, m in enumerate(ds.models)}
    if len(ds.models) == 2:
        strong = int(np.argmax(ds.cost_usd[folds[0].train].mean(axis=0)))
        ref["pair"] = {"strong": ds.models[strong], "weak": ds.models[1 - strong]}
    return ref


def _curve_metrics(ds: RoutingDataset, rows: np.ndarray, res: RouterResult, pred_q: np.ndarray,
                   ref: dict[str, Any]) -> None:
    sweep = [p for p in res.points if p.label.startswith("cost=")] or res.points
    xs = np.asarray([p.cost_usd for p in res.points])
    ys = np.asarray([p.quality for p in res.points])
    lo, hi = ref["aiq_cost_range"]
    best, cheap = ref["best_single"], ref["cheapest"]
    op = res.point(OPERATING_POINT) or sweep[0]
    res.metrics = {
        "quality": op.quality, "cost_usd": op.cost_usd, "tokens": op.tokens,
        "aiq": metrics.aiq(xs, ys, lo, hi),
        "quality_at_ref_cost": metrics.quality_at_cost(xs, ys, best["cost_usd"]),
        "cost_at_ref_quality": metrics.cost_at_quality(xs, ys, best["quality"]),
        "savings_vs_best_single": metrics.savings(xs, ys, best["cost_usd"], best["quality"]),
        "tep_tokens": metrics.tep(op.quality, op.tokens, cheap["quality"], cheap["tokens"]),
        "tep_usd": metrics.tep(op.quality, op.cost_usd, cheap["quality"], cheap["cost_usd"]),
    }
    if "pair" in ref:
        s, w = ds.models.index(ref["pair"]["strong"]), ds.models.index(ref["pair"]["weak"])
        q_s, q_w = ds.quality[rows, s], ds.quality[rows, w]
        frac, qual = metrics.threshold_curve(pred_q[:, s] - pred_q[:, w], q_s, q_w)
        res.threshold_curve = {"strong_fraction": frac.tolist(), "quality": qual.tolist()}
        args = (frac, qual, float(q_w.mean()), float(q_s.mean()))
        res.metrics |= {"apgr": metrics.apgr(*args), "cpt50": metrics.cpt(*args, pct=0.5),
                        "cpt80": metrics.cpt(*args, pct=0.8)}


def evaluate_routers(
    dataset: RoutingDataset,
    router_names: Sequence[str],
    seed: int = 0,
    folds: int | None = None,
    featurizer: Featurizer | None = None,
    cost_weights: Sequence[float] | None = None,
    test_size: float = 0.2,
    extra_flags: Sequence[tuple[str, Flags]] = (),
) -> EvaluationResult:
    """Evaluate each named router on ``dataset`` (see the module docstring); unknown names raise RouterError.

    A router that raises while fitting or predicting is recorded with ``error`` set; the others still run.
    ``extra_flags``: more (label, flags) operating points, recorded in ``RouterResult.sweep`` only.
    """
    classes = [get_router_class(n) for n in router_names]  # fail fast on unknown names
    featurizer = featurizer or Featurizer()
    start = time.perf_counter()
    feats = featurizer.featurize_dataset(dataset, embeddings=any(c.requires_embeddings for c in classes))
    featurize_seconds = time.perf_counter() - start
    ds = dataset.with_features(feats)
    if folds:
        pairs = kfold_by_query(ds, folds, seed)
        split = f"{folds}-fold cross-validation by unique query text (seed {seed}); metrics on pooled test folds"
    else:
        pairs = [split_by_query(ds, test_size, seed)]
        split = f"{1 - test_size:.0%}/{test_size:.0%} train/test by unique query text (seed {seed})"
    fold_list = [_Fold(tr, te, eval_cards(ds, tr)) for tr, te in pairs]
    rows = np.concatenate([f.test for f in fold_list])
    flags = sweep_flags(DEFAULT_COST_WEIGHTS if cost_weights is None else cost_weights)
    ref = _references(ds, rows, fold_list)
    results = []
    for name in router_names:
        try:
            choice, pred_q, res = _run_router(name, ds, fold_list, [*flags, *extra_flags], seed)
        except Exception as exc:  # one broken router must not hide the others' numbers
            results.append(RouterResult(name=name, error=f"{type(exc).__name__}: {exc}"))
            continue
        for i, ((label, fl), ch) in enumerate(zip([*flags, *extra_flags], choice, strict=True)):
            q, c, t = _outcome(ds, rows, ch)
            shares = {m: float((ch == j).mean()) for j, m in enumerate(ds.models)}
            point = SweepPoint(label, fl.quality, fl.cost, q, c, t, shares)
            (res.points if i < len(flags) else res.sweep).append(point)
        _curve_metrics(ds, rows, res, pred_q, ref)
        op = next((i for i, (label, _) in enumerate(flags) if label == OPERATING_POINT), 0)
        res.metrics["best_choice_rate"] = metrics.best_choice_rate(ds.quality[rows], choice[op])
        results.append(res)
    return EvaluationResult(
        dataset=ds.name, n_queries=len(ds), n_evaluated=len(rows), models=list(ds.models), seed=seed,
        folds=folds, split=split, assumptions=dict(ds.assumptions), reference=ref, routers=results,
        featurize_seconds=featurize_seconds,
        embedding={"encoder": featurizer.encoder, "hits": featurizer.stats.hits, "encoded": featurizer.stats.encoded,
                   "encode_seconds": featurizer.stats.encode_seconds},
    )

