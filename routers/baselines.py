"""Honest baselines: random, cheapest, strongest, best single model, and the oracle (evaluation only).

Baselines express their policy as quality estimates so that the shared objective, flags and
constraints apply to them exactly as to learned routers; the fallback order follows the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

import numpy as np

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError

if TYPE_CHECKING:
    from training.dataset import RoutingDataset


def _rank_scores(keys: Sequence[tuple[float, ...]], descending: bool) -> np.ndarray:
    """Map sort keys to scores in (0, 1]: the best key gets 1.0, the worst 1/m."""
    m = len(keys)
    order = sorted(range(m), key=lambda i: keys[i], reverse=descending)
    scores = np.empty(m, dtype=np.float64)
    for rank, i in enumerate(order):
        scores[i] = (m - rank) / m
    return scores


class RandomRouter(Router):
    """Uniformly random quality estimates: a random choice, reproducible from ``seed``."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        if not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(self.seed)
        return Prediction(quality=self._rng.random((len(features), len(candidates))))


class CheapestRouter(Router):
    """Always the cheapest candidate (by input + output price); fallback goes up in price."""

    name = "cheapest"

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        keys = [(c.input_price + c.output_price, c.input_price) for c in candidates]
        row = _rank_scores(keys, descending=False)
        return Prediction(quality=np.tile(row, (len(features), 1)))


class StrongestRouter(Router):
    """Always the strongest candidate by its attributes (price, then size); fallback goes down.

    Price is the primary key because it is known for every backend while size often is not
    (closed models), and in a pool the most expensive model is the one bought for its strength.
    """

    name = "strongest"

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        keys = [(c.input_price + c.output_price, c.size_b or 0.0) for c in candidates]
        row = _rank_scores(keys, descending=True)
        return Prediction(quality=np.tile(row, (len(features), 1)))


class BestSingleRouter(Router):
    """The model with the best mean quality on the training data, for every query.

    Candidates it never saw get quality 0 (ranked last).
    """

    name = "best-single"

    def fit(self, dataset: RoutingDataset) -> Self:
        self.models_ = list(dataset.models)
        self.mean_quality_ = dict(zip(dataset.models, dataset.quality.mean(axis=0).tolist(), strict=True))
        return self

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        if not hasattr(self, "mean_quality_"):
            raise RouterError("best-single router is not fitted")
        row = np.asarray([self.mean_quality_.get(c.name, 0.0) for c in candidates])
        return Prediction(quality=np.tile(row, (len(features), 1)))


class OracleRouter(Router):
    """Reads the true quality of each (query, model): an upper bound, for evaluation only.

    ``fit`` must see the very queries it is asked about (the harness fits it on the test split).
    Among models that are equally right, the objective's tie-break takes the cheapest.
    """

    name = "oracle"
    evaluation_only = True

    def fit(self, dataset: RoutingDataset) -> Self:
        self.models_ = list(dataset.models)
        self.truth_ = {q: dataset.quality[i] for i, q in enumerate(dataset.queries)}
        return self

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        if not hasattr(self, "truth_"):
            raise RouterError("oracle router is not fitted")
        cols = [self.models_.index(c.name) if c.name in self.models_ else -1 for c in candidates]
        out = np.zeros((len(features), len(candidates)))
        for i, text in enumerate(features.texts):
            row = self.truth_.get(text)
            if row is None:
                raise RouterError("oracle asked about a query it was not fitted on")
            for j, col in enumerate(cols):
                out[i, j] = row[col] if col >= 0 else 0.0
        return Prediction(quality=out)
