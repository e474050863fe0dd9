"""``poolgate train``'s pipeline: logs (+ offline data) -> time split -> fit -> off-policy comparison -> version.

1. Labelled requests of the pool in the window (:mod:`training.from_logs`), oldest first, plus offline data sets.
2. Split by time, fixed for the run (:func:`training.log_holdout.time_split`): the newest ``test_size`` of the
   log rows are the holdout, the older ones (and every offline row) the fitting side. The cut is recorded in the
   version's metrics (``split``).
3. Fit the candidate on the fitting side (its unobserved cells imputed with that side's per-backend means: a
   fitting device only, never used to judge). The saved artifact is exactly this fit.
4. Judge the candidate, the version now serving the pool (its live artifact, else the pool file's router) and the
   always-cheapest / always-strongest references on the holdout *events* off-policy
   (:func:`training.log_holdout.evaluate_choices`): doubly-robust utility with its bootstrap 95% interval, from
   the logged outcomes and their propensities only.
5. Register the candidate; with ``promote`` make it live only when the lower bound of the paired DR estimate of
   (candidate - serving) utility on the same events is above 0 (or ``force``). ``reason`` says which numbers
   decided.
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

from gateway.pools import BackendConfig, PoolConfig, PoolFile
from gateway.routing.artifacts import ArtifactError, ArtifactStore, VersionRecord, load_version
from gateway.routing.service import load_router, member_cards
from gateway.store.repository import LogRepository
from routers.base import Router
from routers.baselines import CheapestRouter, StrongestRouter
from routers.dataset import RoutingDataset
from routers.objective import Calibration, Flags, choose_batch, preset
from routers.registry import build_router
from training.calibrate import fit_calibrated, preset_summary
from training.features import DEFAULT_ENCODER
from training.from_logs import (
    LabelledData,
    LabelledRow,
    TrainingDataError,
    column_means,
    concat,
    impute,
    log_rows_to_data,
    offline_rows,
)
from training.loaders import load_dataset
from training.log_holdout import (
    HoldoutEvents,
    TimeSplit,
    compare_choices,
    evaluate_choices,
    holdout_events,
    time_split,
)
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


def policy_choice(router: Router, events: HoldoutEvents, flags: Flags,
                  backends: Sequence[BackendConfig] | None = None) -> np.ndarray:
    """The backend index ``router`` picks for each holdout event under ``flags`` (features attached).

    With ``backends`` (the pool's members, in the holdout's order) it decides on the cards the gateway would give
    it (:func:`gateway.routing.service.member_cards`: the router's learned member quality and output lengths), so
    the gate judges the policy that would serve. Without them an unknown output length is the objective's default
    (256 tokens), which for a verbose-priced backend is not the call the gateway would price."""
    data = events.dataset
    assert data.features is not None
    cards = data.cards
    if backends is not None:
        cards = member_cards(list(backends), router)
        if [c.name for c in cards] != [c.name for c in data.cards]:
            raise ValueError("policy_choice: backends must be the holdout's members, in its order")
    prompt = np.asarray(data.prompt_tokens, dtype=np.float64)
    return choose_batch(router.predict(data.features, cards), cards, flags, prompt, Calibration.of(router))


def evaluate_policy(router: Router, events: HoldoutEvents, flags: Flags, seed: int = 0,
                    backends: Sequence[BackendConfig] | None = None) -> dict[str, Any]:
    """Off-policy holdout metrics of ``router`` deciding with ``flags`` (``events.dataset`` has features attached):
    see :func:`training.log_holdout.evaluate_choices`."""
    return evaluate_choices(policy_choice(router, events, flags, backends), events, flags, seed=seed)


def _features(data: RoutingDataset, embeddings: bool, cache_dir: Path | None, encoder: str) -> RoutingDataset:
    return attach_features(data, embeddings, cache_dir, encoder)


def _load_serving(live: VersionRecord | None, config: PoolConfig, base_dir: Path | None) -> tuple[Router, str]:
    if live is not None:
        return load_version(live), f"{live.router} {live.version} (live)"
    router, version = load_router(config, base_dir)
    return router, f"{router.name} {version} (pool file)"


@dataclass
class GatheredData:
    """The labelled log rows (oldest first) and the offline data sets' rows of one train run."""

    rows: list[LabelledRow]
    offline: list[LabelledData]
    backends: list[Any]


async def gather_data(
    engine: AsyncEngine, pool_file: PoolFile, req: TrainRequest, default_output_tokens: int
) -> GatheredData:
    """Log rows (and offline rows) of the request; refuses too few rows."""
    config = pool_file.pool(req.pool)
    if config is None:
        known = ", ".join(p.name for p in pool_file.pools) or "(none)"
        raise TrainingDataError(f"no pool {req.pool!r} in the pool file; pools: {known}")
    backends = [pool_file.backend(m) for m in config.members]
    rows, no_text = await LogRepository(engine).labelled(req.pool, req.since, req.until)
    offline = [offline_rows(load_dataset(name, limit=limit), backends) for name, limit in req.datasets]
    total = len(rows) + sum(len(p.dataset) for p in offline)
    if total < req.min_rows:
        hint = (f"; {no_text} labelled requests have no prompt text (run the gateway with "
                "POOLGATE_STORE_PROMPTS=true)") if no_text else ""
        raise TrainingDataError(
            f"pool {req.pool!r}: {total} labelled rows in the window, training needs at least {req.min_rows} "
            f"({req.min_rows - total} more): post feedback (POST /v1/feedback, poolgate feedback), widen --since, "
            f"or mix in --dataset{hint}"
        )
    if len({r.text for r in rows} | {q for p in offline for q in p.dataset.queries}) < 2:
        raise TrainingDataError(f"pool {req.pool!r}: all labelled rows share one prompt; need 2 distinct prompts")
    return GatheredData(rows, offline, backends)


@dataclass
class Comparison:
    """What :func:`fit_and_compare` found: the fitted candidate and every policy's holdout metrics."""

    candidate: Router
    metrics: dict[str, Any]
    serving: dict[str, Any] | None
    serving_label: str
    references: dict[str, dict[str, Any]]
    split: TimeSplit
    n_fit: int
    fit_observed_fraction: float
    #: paired DR estimate of candidate - serving utility on the same events (None: serving not evaluated)
    vs_serving: dict[str, Any] | None = None


def _fit_side(gathered: GatheredData, split: TimeSplit, default_output_tokens: int, pool: str) -> LabelledData:
    parts = [log_rows_to_data(split.fit, gathered.backends, default_output_tokens, pool)] if split.fit else []
    parts += gathered.offline
    if not parts:
        raise TrainingDataError(f"pool {pool!r}: no rows older than the holdout to fit on; widen --since")
    return concat(parts)


def fit_and_compare(
    gathered: GatheredData, req: TrainRequest, config: PoolConfig, live: VersionRecord | None,
    base_dir: Path | None, cache_dir: Path | None, default_output_tokens: int = 256,
) -> Comparison:
    """Split by time, fit the candidate on the older side and judge every policy off-policy on the newer one."""
    candidate = build_router(req.router, req.params, req.seed)
    try:
        serving, label = _load_serving(live, config, base_dir)
        serving_error = None
    except Exception as exc:  # a broken serving artifact must not stop training a replacement
        serving, label, serving_error = None, "serving version", f"{type(exc).__name__}: {exc}"
    serving_encoder = serving.encoder_ if serving is not None and serving.requires_embeddings else None
    encoder = req.encoder or serving_encoder or req.default_encoder
    embeddings = candidate.requires_embeddings or serving_encoder is not None
    split = time_split(gathered.rows, req.test_size)
    fit = _fit_side(gathered, split, default_output_tokens, req.pool)
    fit_ds = impute(fit, column_means(fit))
    candidate = fit_calibrated(req.router, _features(fit_ds, embeddings, cache_dir, encoder), req.params, req.seed)
    events = holdout_events(split, fit_ds.cards, default_output_tokens, req.pool)
    if len(events) == 0:
        empty = {"utility": None, "n": 0}
        return Comparison(candidate, empty, None, f"{label} (no holdout events with a known propensity)", {},
                          split, len(fit.dataset), float(fit.observed.mean()))
    events.dataset = _features(events.dataset, embeddings, cache_dir, encoder)
    flags = pool_flags(config)
    members = gathered.backends
    cand_choice = policy_choice(candidate, events, flags, members)
    cand = evaluate_choices(cand_choice, events, flags, seed=req.seed)
    refs = {"always-cheapest": evaluate_policy(CheapestRouter(), events, flags, req.seed, members),
            "always-strongest": evaluate_policy(StrongestRouter(), events, flags, req.seed, members)}
    serve_metrics: dict[str, Any] | None = None
    vs_serving: dict[str, Any] | None = None
    if serving is not None:
        try:
            if serving_encoder not in (None, encoder):  # the serving version sees its own encoder's embeddings
                events.dataset = _features(replace(events.dataset, features=None), True, cache_dir, serving_encoder)
            serve_choice = policy_choice(serving, events, flags, members)
            serve_metrics = evaluate_choices(serve_choice, events, flags, seed=req.seed)
            vs_serving = compare_choices(cand_choice, serve_choice, events, flags, seed=req.seed)
        except Exception as exc:
            serving_error = f"{type(exc).__name__}: {exc}"
    if serve_metrics is None:
        label = f"{label} (could not be evaluated: {serving_error})"
    return Comparison(candidate, cand, serve_metrics, label, refs, split, len(fit.dataset),
                      float(fit.observed.mean()), vs_serving)


def promotion_verdict(cand: dict[str, Any], serving: dict[str, Any] | None, label: str,
                      diff: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(beats, why): the lower bound of the paired DR estimate of (candidate - serving) utility, on the same
    holdout events, must be above 0. Paired because the two policies share most of their noise: on an event where
    both choose the same backend the difference is exactly 0, so the interval rests on where they disagree."""
    if cand.get("n", 0) == 0:
        return False, "no holdout events with a known propensity (log rows before migration 0005, or fallbacks)"
    if serving is None or diff is None:
        return False, f"the serving version could not be compared ({label})"
    low = diff["utility_diff_low"]
    numbers = (f"candidate - serving DR utility {diff['utility_diff']:+.4f} [95% {low:+.4f}, "
               f"{diff['utility_diff_high']:+.4f}] (they disagree on {100 * diff['disagreement']:.0f}% of "
               f"{diff['n']} events); candidate {cand['utility']:.4f} [95% {cand['utility_low']:.4f}, "
               f"{cand['utility_high']:.4f}], ESS {cand['ess']:.1f}; serving {serving['utility']:.4f} ({label})")
    if low > 1e-12:
        return True, f"the difference's lower bound is above 0: {numbers}"
    half, value = (diff["utility_diff_high"] - low) / 2, diff["utility_diff"]
    if value > 0 and half > 0:  # the interval narrows as 1/sqrt(n): about how many events would resolve this gap
        needed = diff["n"] * (half / value) ** 2
        numbers += f"; to resolve a gap of {value:.4f} the holdout needs about {needed:.0f} events"
    return False, f"the difference's lower bound is not above 0: {numbers}"


async def train_from_logs(
    engine: AsyncEngine, store: ArtifactStore, pool_file: PoolFile, req: TrainRequest, *,
    default_output_tokens: int = 256, base_dir: Path | None = None, cache_dir: Path | None = None,
) -> TrainOutcome:
    """Run the whole pipeline (module docstring); raises TrainingDataError / RouterError / ArtifactError."""
    started = time.perf_counter()
    config = pool_file.pool(req.pool)
    gathered = await gather_data(engine, pool_file, req, default_output_tokens)
    assert config is not None
    live = (await store.live()).get(req.pool)
    cmp = fit_and_compare(gathered, req, config, live, base_dir, cache_dir, default_output_tokens)
    router, cand, serving, label = cmp.candidate, cmp.metrics, cmp.serving, cmp.serving_label
    not_worse, why = promotion_verdict(cand, serving, label, cmp.vs_serving)
    metrics = {
        "heldout": cand, "serving": serving, "serving_label": label, "references": cmp.references,
        "vs_serving": cmp.vs_serving,
        "split": cmp.split.as_dict(), "estimator": "doubly robust (reward model: per-backend mean of older rows)",
        "n_train": cmp.n_fit, "n_test": cand.get("n", 0), "log_rows": len(gathered.rows),
        "observed_fraction": cmp.fit_observed_fraction, "flags": pool_flags(config).as_dict(),
        "test_size": req.test_size, "seed": req.seed,
        "encoder": router.encoder_ if router.requires_embeddings else None,
        "presets": preset_summary(router),
    }
    n_rows = len(gathered.rows) + sum(len(p.dataset) for p in gathered.offline)
    record = await store.register(
        req.pool, router, metrics=metrics, n_rows=n_rows, params=dict(req.params) or None,
        datasets=[n for n, _ in req.datasets] or None, data_since=req.since,
        data_until=req.until or datetime.now(UTC), note=req.note,
    )
    promoted, reason = False, f"not asked to promote (use --promote); {why}"
    if req.promote:
        if not_worse or req.force:
            record = await store.promote(req.pool, record.version)
            promoted = True
            reason = why if not_worse else f"forced (--force); {why}"
        else:
            reason = f"not promoted: {why}; use --force to promote anyway"
    log.info("trained %s for pool %s as %s: %s", req.router, req.pool, record.version, reason)
    return TrainOutcome(record, cand, serving, label, cmp.references, not_worse, promoted, reason, cmp.n_fit,
                        cand.get("n", 0), len(gathered.rows), time.perf_counter() - started)


__all__ = ["ArtifactError", "TrainOutcome", "TrainRequest", "TrainingDataError", "evaluate_policy",
           "promotion_verdict", "train_from_logs"]
