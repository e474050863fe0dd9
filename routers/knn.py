"""kNN router: a query's quality per model is the mean quality of its k most similar training queries.

The RouterBench kNN baseline (Hu et al., 2024): cosine similarity of unit-norm sentence embeddings, an
unweighted mean of the neighbours' per-model quality. ``k`` is picked by cross-validation on the training
data only (folds grouped by unique query text), minimizing the mean squared error of the predicted quality.

``center=True`` subtracts the training queries' mean embedding before the cosine (and re-normalizes): averaged
static token vectors share a large common direction that makes every pair of texts look alike. ``None`` (default)
centres ``minilm-static`` embeddings only. Measured with 5-fold CV on LLMRouter: centring lifts kNN on
``minilm-static`` embeddings from 0.627 to 0.644 quality, and moves kNN on ``minilm`` ones from 0.649 to 0.645
(noise, but no gain), so contextual embeddings are left as they are (see docs/encoders.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

import numpy as np

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError
from routers.features import unit_rows

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

K_GRID: tuple[int, ...] = (1, 3, 5, 10, 20, 40, 80)
_CHUNK = 2048  # query rows per similarity block: bounds memory at CHUNK x n_train floats


def _top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n, k]`` of each query's k most similar keys (by dot product), most similar first."""
    k = min(k, len(keys))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _CHUNK):
        # BLAS may differ in the last bit between runs and thread counts: similarities are compared at 1e-6 and
        # ties go to the earlier key, so one artifact gives the same neighbours everywhere
        sims = np.round((queries[start : start + _CHUNK] @ keys.T).astype(np.float64), 6)
        sims -= np.arange(len(keys)) * 1e-13
        # argpartition needs k < n; with k == n every key is a neighbour
        full = np.tile(np.arange(k), (len(sims), 1))
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(keys) else full
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start : start + _CHUNK] = np.take_along_axis(part, order, axis=1)
    return out


def _cv_k(
    emb: np.ndarray, quality: np.ndarray, texts: Sequence[str], grid: Sequence[int], folds: int, seed: int
) -> tuple[int, dict[int, float]]:
    """Pick k from ``grid`` by grouped k-fold CV (groups = unique texts); returns (best k, MSE per k)."""
    _, group = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    n_groups = int(group.max()) + 1
    folds = min(folds, n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(n_groups)] = np.arange(n_groups) % folds
    fold = fold_of_group[group]
    sq_err = {k: 0.0 for k in grid}
    for f in range(folds):
        tr, va = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        usable = [k for k in grid if k <= len(tr)]
        nbrs = _top_k(emb[va], emb[tr], max(usable))
        # cumulative sums over neighbours give the mean of the first k for every k at once
        cum = np.cumsum(quality[tr][nbrs], axis=1)  # [n_va, K, m]
        for k in grid:
            kk = min(k, nbrs.shape[1])
            pred = cum[:, kk - 1, :] / kk
            sq_err[k] += float(((pred - quality[va]) ** 2).sum())
    total = quality.size
    mse = {k: v / total for k, v in sq_err.items()}
    best = min(grid, key=lambda k: (mse[k], k))
    return best, mse


class KNNRouter(Router):
    """Mean quality of the k nearest training queries (cosine on MiniLM embeddings), per model.

    ``k=None`` chooses k from ``k_grid`` by ``cv_folds``-fold CV on the training data (seeded by ``seed``).
    Candidates never seen in training get quality 0 (ranked last).
    """

    name = "knn"
    requires_embeddings = True

    def __init__(
        self, k: int | None = None, k_grid: Sequence[int] = K_GRID, cv_folds: int = 5, seed: int = 0,
        center: bool | None = None,
    ) -> None:
        self.k = k
        self.center = center
        self.k_grid = tuple(k_grid)
        self.cv_folds = cv_folds
        self.seed = seed

    def fit(self, dataset: RoutingDataset) -> Self:
        self._record_encoder(dataset)
        feats = dataset.features
        if feats is None or feats.embeddings is None:
            raise RouterError("knn needs query embeddings: fit on a dataset with features attached (with_features)")
        if len(dataset) == 0:
            raise RouterError("knn cannot fit on an empty dataset")
        emb = np.asarray(feats.embeddings, dtype=np.float32)
        center = self.center if self.center is not None else self.encoder_ == "minilm-static"
        self.center_ = emb.mean(axis=0) if center else None
        emb = self._prepare(emb)
        quality = np.asarray(dataset.quality, dtype=np.float64)
        self.cv_mse_: dict[int, float] = {}
        if self.k is not None:
            if self.k < 1:
                raise RouterError(f"knn: k must be >= 1, got {self.k}")
            self.k_ = self.k
        elif len(set(dataset.queries)) < 2:
            self.k_ = 1
        else:
            grid = [k for k in self.k_grid if k >= 1] or [1]
            self.k_, self.cv_mse_ = _cv_k(emb, quality, dataset.queries, grid, self.cv_folds, self.seed)
        self.models_ = list(dataset.models)
        self.embeddings_ = emb
        self.quality_ = quality
        return self

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        if not hasattr(self, "embeddings_"):
            raise RouterError("knn router is not fitted")
        self._check_encoder(features)
        if features.embeddings is None:
            raise RouterError("knn needs query embeddings; the featurizer was asked for none")
        nbrs = _top_k(self._prepare(np.asarray(features.embeddings, dtype=np.float32)), self.embeddings_, self.k_)
        mean = self.quality_[nbrs].mean(axis=1)  # [n, m_train]
        out = np.zeros((len(features), len(candidates)))
        for j, card in enumerate(candidates):
            if card.name in self.models_:
                out[:, j] = mean[:, self.models_.index(card.name)]
        return Prediction(quality=out)

    def _prepare(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings as the neighbour search compares them: centred on the training mean (if ``center``), unit norm."""
        center = getattr(self, "center_", None)  # artifacts from before centering have none
        return emb if center is None else unit_rows(emb - center)
