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
    from routers.dataset import RoutingDataset


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
    """Always the candidate of highest expected quality; fallback goes down that order.

    Expected quality is the card's ``quality`` (filled by the gateway from the pool's learned router, i.e. each
    model's mean quality on its training data, or from the pool file's ``quality:``). Candidates without one
    come after those with one, ordered by price (the model bought for its strength), then size. The predicted
    quality of the top candidate is 1 and the others' lie in (0, 0.01] in rank order, so that the shared objective
    does not trade the strongest away for a cheaper one unless asked to (an explicit lambda that makes the price
    gap worth more than 0.99): this is a policy, not an estimate.
    """

    name = "strongest"

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        keys = [(c.quality is not None, c.quality or 0.0, c.input_price + c.output_price, c.size_b or 0.0)
                for c in candidates]
        row = np.asarray([1.0 if s == 1.0 else 0.01 * s for s in _rank_scores(keys, descending=True)])
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
