"""``poolgate train``'s pipeline: logs (+ offline data) -> split -> fit -> held-out comparison -> versioned artifact.

1. Labelled requests of the pool in the window (:mod:`training.from_logs`), plus any offline data sets.
2. Split by unique query text (``test_size`` of the texts held out, fixed ``seed``); unobserved cells of both sides
   are imputed with the *training* side's per-backend means.
3. Fit the candidate on the training side. The saved artifact is exactly this fit, so its metrics are honest.
4. Evaluate the candidate and the version now serving the pool (its live artifact, else the pool file's router) on
   the held-out side with :func:`evaluate_policy`. "Not worse" means a held-out utility at least the serving one's.
5. Register the candidate in the artifact store; with ``promote`` make it live when not worse (or ``force``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.pools import PoolConfig, PoolFile
from gateway.routing.artifacts import ArtifactError, ArtifactStore, VersionRecord, load_version
from gateway.routing.service import load_router
from gateway.store.repository import LogRepository
from routers.base import Prediction, Router
from routers.baselines import CheapestRouter, StrongestRouter
from routers.dataset import RoutingDataset
from routers.objective import Calibration, Flags, choose_batch, preset, score
from routers.registry import build_router
from training.calibrate import fit_calibrated, preset_summary
from training.features import DEFAULT_ENCODER
from training.from_logs import (
    LabelledData,
    TrainingDataError,
    column_means,
    concat,
    impute,
    log_rows_to_data,
    offline_rows,
)
from training.loaders import load_dataset
from training.metrics import chosen, mean_cost, mean_quality, tep
from training.splits import split_by_query
from training.train_router import attach_features

log = logging.getLogger("poolgate.training")

#: fewer labelled rows (log requests + offline rows) than this and ``train`` refuses, naming the count
DEFAULT_MIN_ROWS = 20


@dataclass
class TrainRequest:
    """What ``poolgate train`` was asked to do."""

    router: str
    pool: str
    since: datetime | None = None
    until: datetime | None = None
    datasets: Sequence[tuple[str, int | None]] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    test_size: float = 0.25
    min_rows: int = DEFAULT_MIN_ROWS
    promote: bool = False
    force: bool = False
    note: str | None = None
    #: sentence encoder to fit on; None: the serving router's if it uses one, else ``default_encoder``
    encoder: str | None = None
    default_encoder: str = DEFAULT_ENCODER


@dataclass
class TrainOutcome:
    """The registered version, both policies' held-out metrics, and whether it went live (and why not)."""

    record: VersionRecord
    candidate: dict[str, Any]
    serving: dict[str, Any] | None
    serving_label: str
    references: dict[str, dict[str, Any]]
    not_worse: bool
    promoted: bool
    reason: str
    n_train: int
    n_test: int
    log_rows: int
    seconds: float


def pool_flags(config: PoolConfig) -> Flags:
    """The pool's default flags, exactly as the gateway builds them."""
    base = preset(config.objective)
    return Flags.from_mapping(config.flags, base) if config.flags else base


def evaluate_policy(router: Router, data: RoutingDataset, observed: np.ndarray, flags: Flags) -> dict[str, Any]:
    """Held-out metrics of ``router`` deciding with ``flags``; ``data`` has imputed quality and features attached.

    utility: the shared objective's utility at the *true* (imputed) quality and cost of the chosen cell, averaged;
    quality, cost_usd, tokens: means of the chosen cells; tep_tokens / tep_usd: TEP against always-cheapest
    on the same queries; observed_fraction: share of choices whose cell a request actually labelled.
    """
    assert data.features is not None
    cards, prompt = data.cards, np.asarray(data.prompt_tokens, dtype=np.float64)
    choice = choose_batch(router.predict(data.features, cards), cards, flags, prompt, Calibration.of(router))
    truth = score(Prediction(quality=data.quality, cost_usd=data.cost_usd), cards, flags, prompt)
    cheap = choose_batch(CheapestRouter().predict(data.features, cards), cards, flags, prompt)
    q, c, t = mean_quality(data.quality, choice), mean_cost(data.cost_usd, choice), mean_cost(data.total_tokens, choice)
    qc, cc = mean_quality(data.quality, cheap), mean_cost(data.cost_usd, cheap)
    tc = mean_cost(data.total_tokens, cheap)
    counts = np.bincount(choice, minlength=len(cards))
    return {
        "utility": float(chosen(truth.utility, choice).mean()),
        "quality": q,
        "cost_usd": c,
        "tokens": t,
        "tep_tokens": tep(q, t, qc, tc),
        "tep_usd": tep(q, c, qc, cc),
        "observed_fraction": float(chosen(observed, choice).mean()),
        "mix": {card.name: float(counts[j] / len(choice)) for j, card in enumerate(cards)},
        "n": len(choice),
    }


def _features(data: RoutingDataset, embeddings: bool, cache_dir: Path | None, encoder: str) -> RoutingDataset:
    return attach_features(data, embeddings, cache_dir, encoder)


def _load_serving(live: VersionRecord | None, config: PoolConfig, base_dir: Path | None) -> tuple[Router, str]:
    if live is not None:
        return load_version(live), f"{live.router} {live.version} (live)"
    router, version = load_router(config, base_dir)
    return router, f"{router.name} {version} (pool file)"


async def gather_data(
    engine: AsyncEngine, pool_file: PoolFile, req: TrainRequest, default_output_tokens: int
) -> tuple[LabelledData, int]:
    """Log rows (and offline rows) of the request as one :class:`LabelledData`; refuses too few rows."""
    config = pool_file.pool(req.pool)
    if config is None:
        known = ", ".join(p.name for p in pool_file.pools) or "(none)"
        raise TrainingDataError(f"no pool {req.pool!r} in the pool file; pools: {known}")
    backends = [pool_file.backend(m) for m in config.members]
    rows, no_text = await LogRepository(engine).labelled(req.pool, req.since, req.until)
    parts = [log_rows_to_data(rows, backends, default_output_tokens, req.pool)] if rows else []
    for name, limit in req.datasets:
        parts.append(offline_rows(load_dataset(name, limit=limit), backends))
    total = len(rows) + sum(len(p.dataset) for p in parts[1 if rows else 0 :])
    if total < req.min_rows:
        hint = (f"; {no_text} labelled requests have no prompt text (run the gateway with "
                "POOLGATE_STORE_PROMPTS=true)") if no_text else ""
        raise TrainingDataError(
            f"pool {req.pool!r}: {total} labelled rows in the window, training needs at least {req.min_rows} "
            f"({req.min_rows - total} more): post feedback (POST /v1/feedback, poolgate feedback), widen --since, "
            f"or mix in --dataset{hint}"
        )
    data = concat(parts)
    if len(set(data.dataset.queries)) < 2:
        raise TrainingDataError(f"pool {req.pool!r}: all labelled rows share one prompt; need 2 distinct prompts")
    return data, len(rows)


def fit_and_compare(
    data: LabelledData, req: TrainRequest, config: PoolConfig, live: VersionRecord | None,
    base_dir: Path | None, cache_dir: Path | None,
) -> tuple[Router, dict[str, Any], dict[str, Any] | None, str, dict[str, dict[str, Any]], int, int]:
    """Split, impute, fit the candidate and evaluate it beside the serving version (see the module doc)."""
    candidate = build_router(req.router, req.params, req.seed)
    try:
        serving, label = _load_serving(live, config, base_dir)
        serving_error = None
    except Exception as exc:  # a broken serving artifact must not stop training a replacement
        serving, label, serving_error = None, "serving version", f"{type(exc).__name__}: {exc}"
    serving_encoder = serving.encoder_ if serving is not None and serving.requires_embeddings else None
    encoder = req.encoder or serving_encoder or req.default_encoder
    featurized = _features(data.dataset, candidate.requires_embeddings or serving_encoder is not None, cache_dir,
                           encoder)
    data = LabelledData(featurized, data.observed, data.sources)
    train_idx, test_idx = split_by_query(featurized, test_size=req.test_size, seed=req.seed)
    train, test = data.subset(train_idx), data.subset(test_idx)
    means = column_means(train)
    train_ds, test_ds = impute(train, means), impute(test, means)
    candidate = fit_calibrated(req.router, train_ds, req.params, req.seed)
    flags = pool_flags(config)
    cand = evaluate_policy(candidate, test_ds, test.observed, flags)
    refs = {
        "always-cheapest": evaluate_policy(CheapestRouter(), test_ds, test.observed, flags),
        "always-strongest": evaluate_policy(StrongestRouter(), test_ds, test.observed, flags),
    }
    serve_metrics: dict[str, Any] | None = None
    if serving is not None:
        try:
            if serving_encoder not in (None, encoder):  # the serving version sees its own encoder's embeddings
                test_ds = _features(replace(test_ds, features=None), True, cache_dir, serving_encoder)
            serve_metrics = evaluate_policy(serving, test_ds, test.observed, flags)
        except Exception as exc:
            serving_error = f"{type(exc).__name__}: {exc}"
    if serve_metrics is None:
        label = f"{label} (could not be evaluated: {serving_error})"
    return candidate, cand, serve_metrics, label, refs, len(train_idx), len(test_idx)


async def train_from_logs(
    engine: AsyncEngine, store: ArtifactStore, pool_file: PoolFile, req: TrainRequest, *,
    default_output_tokens: int = 256, base_dir: Path | None = None, cache_dir: Path | None = None,
) -> TrainOutcome:
    """Run the whole pipeline (module docstring); raises TrainingDataError / RouterError / ArtifactError."""
    started = time.perf_counter()
    config = pool_file.pool(req.pool)
    data, log_rows = await gather_data(engine, pool_file, req, default_output_tokens)
    assert config is not None
    live = (await store.live()).get(req.pool)
    router, cand, serving, label, refs, n_train, n_test = fit_and_compare(
        data, req, config, live, base_dir, cache_dir
    )
    not_worse = serving is not None and cand["utility"] >= serving["utility"] - 1e-12
    metrics = {
        "heldout": cand, "serving": serving, "serving_label": label, "references": refs,
        "n_train": n_train, "n_test": n_test, "log_rows": log_rows,
        "observed_fraction": float(data.observed.mean()), "flags": pool_flags(config).as_dict(),
        "test_size": req.test_size, "seed": req.seed,
        "encoder": router.encoder_ if router.requires_embeddings else None,
        "presets": preset_summary(router),
    }
    record = await store.register(
        req.pool, router, metrics=metrics, n_rows=len(data.dataset), params=dict(req.params) or None,
        datasets=[n for n, _ in req.datasets] or None, data_since=req.since,
        data_until=req.until or datetime.now(UTC), note=req.note,
    )
    promoted, reason = False, "not asked to promote (use --promote)"
    if req.promote:
        if not_worse or req.force:
            record = await store.promote(req.pool, record.version)
            promoted = True
            reason = "not worse than the serving version on the held-out slice" if not_worse else "forced (--force)"
        elif serving is None:
            reason = f"not promoted: the serving version could not be compared ({label}); use --force"
        else:
            reason = (f"not promoted: held-out utility {cand['utility']:.4f} < serving {serving['utility']:.4f} "
                      f"({label}); use --force to promote anyway")
    log.info("trained %s for pool %s as %s: %s", req.router, req.pool, record.version, reason)
    return TrainOutcome(record, cand, serving, label, refs, not_worse, promoted, reason, n_train, n_test, log_rows,
                        time.perf_counter() - started)


__all__ = ["ArtifactError", "TrainOutcome", "TrainRequest", "TrainingDataError", "evaluate_policy",
           "train_from_logs"]
