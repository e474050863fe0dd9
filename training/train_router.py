"""Fit a registered router on a named data set and save it as one artifact file (offline training).

The generic path behind ``poolgate train-offline``: load the data set, featurize its queries once (embeddings only
when the router asks for them, from the shared on-disk cache), ``fit``, ``save``. Every failure is a
:class:`~routers.base.RouterError` (or :class:`~training.loaders.DatasetError`) with a one-line message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routers.base import Router, RouterError
from routers.dataset import RoutingDataset
from routers.registry import build_router
from training.calibrate import fit_calibrated, preset_summary
from training.features import DEFAULT_ENCODER, Featurizer
from training.load_file import load_named_or_file
from training.loaders import load_dataset
from training.protocol import split_groups

log = logging.getLogger("poolgate.training")


@dataclass
class TrainResult:
    """A fitted router and what it was fitted on. ``summary`` is the router's ``describe()`` when it has one."""

    router: Router
    dataset: str
    rows: int
    models: list[str]
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def attach_features(
    dataset: RoutingDataset, embeddings: bool, cache_dir: Path | None = None, encoder: str = DEFAULT_ENCODER,
    static_model_dir: Path | None = None,
) -> RoutingDataset:
    """``dataset`` with its featurized queries attached (embeddings by ``encoder``, from the cache where it has them).

    Features already attached are kept when they fit: no embeddings needed, or embeddings by ``encoder``."""
    feats = dataset.features
    if feats is not None and (not embeddings or (feats.embeddings is not None and feats.encoder in (encoder, None))):
        return dataset
    featurizer = Featurizer(cache_dir=cache_dir, encoder=encoder, static_model_dir=static_model_dir)
    return dataset.with_features(featurizer.featurize_dataset(dataset, embeddings=embeddings))


def load_training_data(dataset: str, limit: int | None = None) -> RoutingDataset:
    """A data set by name (``limit``: the loader's fixed random sample of that many rows) or from a file in one of
    the loaders' formats."""
    return load_dataset(dataset, limit=limit) if limit is not None else load_named_or_file(dataset)


def train_router(
    router: str,
    dataset: str | RoutingDataset,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    limit: int | None = None,
    cache_dir: Path | None = None,
    encoder: str = DEFAULT_ENCODER,
    calibration: str = "mixed",
) -> TrainResult:
    """Fit router ``router`` on all rows of ``dataset`` (a name for :func:`training.loaders.load_dataset`, or data),
    with its out-of-fold calibration for the objective (:func:`training.calibrate.fit_calibrated`, ``calibration``
    is its inner-fold mode).

    ``limit`` keeps the loader's fixed random sample of that many rows (names only). ``encoder``: the sentence
    encoder of the embeddings (``minilm`` or ``minilm-static``; the artifact remembers it).
    """
    model = build_router(router, params, seed)
    if model.evaluation_only:
        raise RouterError(f"router {router!r} is for evaluation only; it cannot be trained for serving")
    data = load_training_data(dataset, limit) if isinstance(dataset, str) else dataset
    data = attach_features(data, model.requires_embeddings, cache_dir, encoder)
    start = time.perf_counter()
    groups = split_groups(data) if calibration != "none" else None
    model = fit_calibrated(router, data, params, seed if seed is not None else 0, calibration, groups=groups)
    seconds = time.perf_counter() - start
    describe = getattr(model, "describe", None)
    summary = describe() if callable(describe) else {}
    summary["presets"] = preset_summary(model)
    log.info("trained %s on %s (%d rows) in %.2fs", router, data.name, len(data), seconds)
    return TrainResult(model, data.name, len(data), list(data.models), seconds, summary)


def default_artifact_path(router: str, dataset: str) -> Path:
    """``.poolgate/artifacts/<router>-<dataset>.router`` under the working directory."""
    return Path(".poolgate") / "artifacts" / f"{router}-{dataset}.router"


def save_result(result: TrainResult, path: Path) -> TrainResult:
    """Write the artifact (atomically, via :meth:`Router.save`) and record where."""
    try:
        result.path = result.router.save(path).resolve()
    except OSError as exc:
        raise RouterError(f"{path}: cannot write artifact ({exc.strerror or exc})") from None
    return result
