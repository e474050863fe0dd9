"""The evaluation harness: fit routers on the outer folds of a protocol, route the held-out queries, score choices.

For every router and outer fold (:mod:`training.protocol`): fit on the fold's training rows -- with its
out-of-fold calibration for the objective (:func:`training.calibrate.fit_calibrated`), made on inner folds of
those rows only -- then predict the held-out rows from **serving features only** (:func:`serving_features`:
exactly what the gateway builds per request: text, text statistics, prompt tokens, the router's embedding; no
task label, no answer), and let the shared objective choose at each operating point: the presets
(``quality-first``, ``balanced``, ``cost-first``) and a lambda sweep scaled to the data's prices. Every number
comes from the data set's *true* quality, tokens and cost of the chosen cells, pooled over the outer folds.
Evaluation-only routers (the oracle) are fitted on the rows they score. Routers are built from the registry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import yaml

from routers.base import QueryFeatures
from routers.dataset import RoutingDataset
from routers.objective import PRESETS, Calibration, Flags, choose_batch, score
from routers.progress import report
from routers.registry import build_router, get_router_class
from training.calibrate import cards_for, fit_calibrated, needs_training
from training.features import Featurizer
from training.protocol import OuterFold, outer_folds
from training.results import RouterResult, SweepPoint, router_metrics

#: lambda sweep in units of 1 / (expected cost of the training rows' best single member per query)
SWEEP_SCALES: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
                                   3.0, 5.0, 10.0, 30.0, 100.0, 1000.0)
#: the operating point a report's main columns describe
OPERATING_POINT = "quality-first"
#: the fields a router may receive at prediction time: what the gateway's routing service fills in
SERVING_FIELDS: frozenset[str] = frozenset({"texts", "stats", "prompt_tokens", "embeddings", "encoder"})


@dataclass
class EvaluationResult:
    """A whole evaluation: the data set, the protocol, the references, and one result per router."""

    dataset: str
    n_queries: int
    n_evaluated: int
    models: list[str]
    seed: int
    protocol: str
    split: str
    assumptions: dict[str, Any]
    reference: dict[str, Any]
    routers: list[RouterResult]
    featurize_seconds: float = 0.0
    embedding: dict[str, Any] = field(default_factory=dict)
    calibration: str = "mixed"
    folds: list[str] = field(default_factory=list)

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


def serving_features(features: QueryFeatures, rows: np.ndarray) -> QueryFeatures:
    """The held-out rows' features as the gateway would give them; ValueError if the batch carries anything else
    (a field the gateway does not have, such as task labels or answers, must never reach ``predict``)."""
    extra = {f.name for f in fields(features)} - SERVING_FIELDS
    if extra or set(vars(features)) - SERVING_FIELDS:
        raise ValueError(f"features carry fields the gateway does not have at serving time: {sorted(extra)}")
    return features.subset(rows)


def sweep_flags(c_ref: float) -> list[tuple[str, Flags]]:
    """(label, flags) of the lambda sweep for a best-member cost ``c_ref`` (USD per query), then the presets."""
    out = [(f"lambda={s:g}/c", Flags(cost=s / c_ref if c_ref > 0 else 0.0)) for s in SWEEP_SCALES]
    return out + list(PRESETS.items())


@dataclass
class _FoldRun:
    choices: list[np.ndarray]  # per operating point, [n_test] chosen column
    predicted: np.ndarray  # [n_test, m] predicted quality
    lam: list[float]  # per operating point, mean lambda used


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``knn`` or ``complexity[mode=expected;cv_folds=5]`` -> (registry name, constructor params; values as YAML)."""
    name, sep, rest = spec.partition("[")
    if not sep:
        return spec.strip(), {}
    if not rest.endswith("]"):
        raise ValueError(f"router spec {spec!r}: expected NAME[key=value;...]")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest[:-1].split(";"))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"router spec {spec!r}: {item!r} is not key=value")
        params[key.strip()] = yaml.safe_load(value)
    return name.strip(), params


def _fit(spec: str, ds: RoutingDataset, fold: OuterFold, seed: int, calibration: str):  # type: ignore[no-untyped-def]
    name, params = parse_spec(spec)
    probe = build_router(name, params, seed=seed)
    if probe.evaluation_only:
        return probe.fit(ds.subset(fold.test))
    if not needs_training(probe):
        return probe.fit(ds.subset(fold.train))
    return fit_calibrated(name, ds.subset(fold.train), params, seed=seed, mode=calibration)


def _run_fold(name: str, ds: RoutingDataset, fold: OuterFold, flags: list[tuple[str, Flags]], seed: int,
              calibration: str, res: RouterResult) -> _FoldRun:
    start = time.perf_counter()
    router = _fit(name, ds, fold, seed, calibration)
    res.fit_seconds += time.perf_counter() - start
    assert ds.features is not None
    feats = serving_features(ds.features, fold.test)
    cards = cards_for(ds, fold.train)
    start = time.perf_counter()
    pred = router.predict(feats, cards)
    res.predict_seconds += time.perf_counter() - start
    if pred.quality.shape != (len(fold.test), len(ds.models)):
        raise ValueError(f"router {name!r} predicted shape {pred.quality.shape}, "
                         f"expected {(len(fold.test), len(ds.models))}")
    calib = Calibration.of(router)
    choices, lams = [], []
    for _, fl in flags:
        choices.append(choose_batch(pred, cards, fl, feats.prompt_tokens, calib))
        lams.append(float(score(pred, cards, fl, feats.prompt_tokens, calib).lam.mean()))
    # constructor parameters, and the scalars fit chose (k_, C_, confidence_, ...): the choices made on inner folds
    chosen = {k: v for k, v in vars(router).items()
              if k.endswith("_") and not k.startswith("_") and isinstance(v, int | float | str)}
    res.params = _clean(router.get_params() | chosen)
    res.calibrations.append(_clean(getattr(router, "calibration_", {})))
    return _FoldRun(choices, np.clip(np.asarray(pred.quality, dtype=np.float64), 0.0, 1.0), lams)


def _single_policy(ds: RoutingDataset, folds: list[OuterFold], pick: str) -> np.ndarray:
    """Per test row, the column of a fixed model picked per fold on its training rows ('best' or 'cheapest')."""
    out = []
    for f in folds:
        col = ds.quality[f.train].mean(axis=0) if pick == "best" else -ds.cost_usd[f.train].mean(axis=0)
        out.append(np.full(len(f.test), int(np.argmax(col))))
    return np.concatenate(out)


def _references(ds: RoutingDataset, rows: np.ndarray, folds: list[OuterFold]) -> dict[str, Any]:
    ref: dict[str, Any] = {}
    for key, pick in (("best_single", "best"), ("cheapest", "cheapest")):
        choice = _single_policy(ds, folds, pick)
        sel = np.arange(len(rows)), choice
        ref[key] = {"models": sorted({ds.models[int(j)] for j in np.unique(choice)}), "choice": choice.tolist(),
                    "quality": float(ds.quality[rows][sel].mean()), "cost_usd": float(ds.cost_usd[rows][sel].mean()),
                    "tokens": float(ds.total_tokens[rows][sel].mean())}
    cost = ds.cost_usd[rows]
    ref["aiq_cost_range"] = [float(cost.min(axis=1).mean()), float(cost.max(axis=1).mean())]
    ref["per_model"] = {m: {"quality": float(ds.quality[rows, j].mean()), "cost_usd": float(cost[:, j].mean())}
                        for j, m in enumerate(ds.models)}
    ref["oracle_quality"] = float(ds.quality[rows].max(axis=1).mean())
    if len(ds.models) == 2:
        strong = int(np.argmax(ds.cost_usd[folds[0].train].mean(axis=0)))
        ref["pair"] = {"strong": ds.models[strong], "weak": ds.models[1 - strong]}
    return ref


def evaluate_routers(
    dataset: RoutingDataset,
    router_names: Sequence[str],
    seed: int = 0,
    protocol: str = "kfold",
    folds: int = 5,
    featurizer: Featurizer | None = None,
    calibration: str = "mixed",
    n_train: int | None = None,
    extra_flags: Sequence[tuple[str, Flags]] = (),
    bootstrap: int = 1000,
) -> EvaluationResult:
    """Evaluate each named router on ``dataset`` under ``protocol`` (see the module docstring and
    :mod:`training.protocol`; ``n_train``: the number of training rows for ``cross``). Unknown names raise
    RouterError; a router that raises while fitting or predicting is recorded with ``error`` set."""
    classes = [get_router_class(parse_spec(n)[0]) for n in router_names]  # fail fast on unknown names
    featurizer = featurizer or Featurizer()
    start = time.perf_counter()
    feats = featurizer.featurize_dataset(dataset, embeddings=any(c.requires_embeddings for c in classes))
    featurize_seconds = time.perf_counter() - start
    ds = dataset.with_features(feats)
    fold_list, split = outer_folds(ds, protocol, folds, seed, n_train)
    fold_list = [f for f in fold_list if len(f.test) and len(f.train)]
    rows = np.concatenate([f.test for f in fold_list])
    ref = _references(ds, rows, fold_list)
    results = []
    total = len(router_names) * len(fold_list)
    report("folds", 0, total)
    for k, name in enumerate(router_names):
        res = RouterResult(name=name)
        try:
            runs = []
            for i, f in enumerate(fold_list):
                runs.append(_run_fold(name, ds, f, _fold_flags(ds, f, extra_flags), seed, calibration, res))
                report("folds", k * len(fold_list) + i + 1, total)
        except Exception as exc:  # one broken router must not hide the others' numbers
            report("folds", (k + 1) * len(fold_list), total)
            results.append(RouterResult(name=name, error=f"{type(exc).__name__}: {exc}"))
            continue
        labels = [label for label, _ in _fold_flags(ds, fold_list[0], extra_flags)]
        n_main = len(labels) - len(extra_flags)
        choice = [np.concatenate([r.choices[i] for r in runs]) for i in range(len(labels))]
        lams = [float(np.mean([r.lam[i] for r in runs])) for i in range(len(labels))]
        predicted = np.vstack([r.predicted for r in runs])
        for i, (label, ch) in enumerate(zip(labels, choice, strict=True)):
            point = SweepPoint.of(label, lams[i], ds, rows, ch)
            (res.points if i < n_main else res.sweep).append(point)
        router_metrics(res, ds, rows, dict(zip(labels, choice, strict=True)), predicted, ref, bootstrap, seed)
        results.append(res)
    ref["best_single"].pop("choice")
    ref["cheapest"].pop("choice")
    return EvaluationResult(
        dataset=ds.name, n_queries=len(ds), n_evaluated=len(rows), models=list(ds.models), seed=seed,
        protocol=protocol, split=split, assumptions=dict(ds.assumptions), reference=ref, routers=results,
        featurize_seconds=featurize_seconds, calibration=calibration, folds=[f.label for f in fold_list],
        embedding={"encoder": featurizer.encoder, "hits": featurizer.stats.hits, "encoded": featurizer.stats.encoded,
                   "encode_seconds": featurizer.stats.encode_seconds},
    )


def _fold_flags(ds: RoutingDataset, fold: OuterFold, extra: Sequence[tuple[str, Flags]]) -> list[tuple[str, Flags]]:
    """The fold's operating points: the lambda sweep scaled to its training rows' best member, the presets, extras."""
    best = int(np.argmax(ds.quality[fold.train].mean(axis=0)))
    c_ref = float(ds.cost_usd[fold.train, best].mean())
    return [*sweep_flags(c_ref), *extra]
