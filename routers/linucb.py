"""An online router: disjoint LinUCB over the request embedding plus a bias, with exponential decay.

Each backend (arm) ``a`` keeps a ridge regression of reward on ``x = [embedding, 1]``::

    A_a = decay * A_a + x x^T + (1 - decay) * ridge * I      (the ridge term keeps A_a invertible as it decays)
    b_a = decay * b_a + (reward - prior) * x
    quality_a(x) = clip(prior + theta_a . x + alpha * sqrt(x^T A_a^-1 x), 0, 1),   theta_a = A_a^-1 b_a

``decay`` < 1 forgets old feedback geometrically, so the router follows a backend whose quality drifts.
Rewards are centred on ``prior`` so that an arm with no data is estimated at ``prior`` plus its full
exploration bonus: an unseen backend is tried, not ignored. The quality it reports is optimistic by design
(upper confidence bound); the shared objective then trades it against cost as for any router.

It needs no training to serve (a fresh instance routes at the prior), learns from :meth:`LinUCBRouter.update`
(one feedback label at a time, between retrains), and :meth:`fit` warm-starts it from a data set's observed cells.
Its state is arrays plus JSON (:mod:`routers.artifact`), like every router.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset


class LinUCBRouter(Router):
    """Disjoint LinUCB (see the module docstring). ``alpha``: width of the confidence bonus; ``ridge``: prior
    precision; ``decay``: per-update forgetting factor in (0, 1]; ``prior``: the reward expected of an unseen arm;
    ``encoder``: the sentence encoder whose embeddings it reads (``minilm-static`` by default: cheap to serve)."""

    name = "linucb"
    requires_embeddings = True

    def __init__(self, alpha: float = 0.3, ridge: float = 1.0, decay: float = 0.999, prior: float = 0.5,
                 encoder: str = "minilm-static") -> None:
        if alpha < 0 or ridge <= 0 or not 0 < decay <= 1 or not 0 <= prior <= 1:
            raise ValueError("need alpha >= 0, ridge > 0, 0 < decay <= 1, 0 <= prior <= 1")
        self.alpha, self.ridge, self.decay, self.prior, self.encoder = alpha, ridge, decay, prior, encoder
        # fitted state (ends in _): empty until the first update; serving needs none of it
        self.models_: list[str] = []
        self.dim_: int | None = None  # length of x (embedding + bias); fixed by the first update
        self.A_ = np.zeros((0, 0, 0))
        self.b_ = np.zeros((0, 0))
        self.n_ = np.zeros(0)  # decayed number of updates per arm
        self.encoder_ = encoder

    # -- features --------------------------------------------------------------------------------
    def _design(self, features: QueryFeatures) -> np.ndarray:
        """``[n, d + 1]``: each query's embedding and a constant 1."""
        n = len(features)
        if features.embeddings is None:
            raise RouterError("linucb reads embeddings but the features have none")
        self._check_encoder(features)
        emb = np.asarray(features.embeddings, dtype=np.float64).reshape(n, -1)
        return np.hstack([emb, np.ones((n, 1))])

    def _arm(self, backend: str, dim: int) -> int:
        """Index of ``backend``'s arm, adding a fresh one (prior precision ``ridge``) when it is new."""
        if self.dim_ is None:
            self.dim_ = dim
            self.A_, self.b_ = np.zeros((0, dim, dim)), np.zeros((0, dim))
        elif dim != self.dim_:
            raise RouterError(f"linucb holds {self.dim_}-dim features, got {dim}-dim ones (another encoder?)")
        if backend not in self.models_:
            self.models_.append(backend)
            self.A_ = np.concatenate([self.A_, self.ridge * np.eye(dim)[None]])
            self.b_ = np.concatenate([self.b_, np.zeros((1, dim))])
            self.n_ = np.concatenate([self.n_, [0.0]])
        return self.models_.index(backend)

    # -- learning --------------------------------------------------------------------------------
    def update(self, features: QueryFeatures, backend: str, reward: float | Sequence[float] | np.ndarray) -> None:
        """Learn that ``backend`` earned ``reward`` (in [0, 1]) on each query of ``features`` (one reward each, or
        one for all). Decay applies to that backend's arm once per query."""
        x = self._design(features)
        rewards = np.broadcast_to(np.asarray(reward, dtype=np.float64), (len(x),))
        if not np.isfinite(rewards).all() or (rewards < 0).any() or (rewards > 1).any():
            raise RouterError(f"linucb rewards must be in [0, 1], got {rewards.tolist()}")
        a = self._arm(backend, x.shape[1])
        eye = np.eye(x.shape[1])
        for row, r in zip(x, rewards, strict=True):
            self.A_[a] = self.decay * self.A_[a] + np.outer(row, row) + (1 - self.decay) * self.ridge * eye
            self.b_[a] = self.decay * self.b_[a] + (r - self.prior) * row
            self.n_[a] = self.decay * self.n_[a] + 1.0

    def fit(self, dataset: RoutingDataset) -> Self:
        """Warm start: one update per observed (query, model) cell of ``dataset`` (NaN cells are skipped)."""
        feats = dataset.features
        if feats is None:
            raise RouterError("linucb.fit needs the data set's features (embeddings)")
        if feats.encoder is not None:
            self.encoder_ = feats.encoder
        for j, model in enumerate(dataset.models):
            observed = np.flatnonzero(np.isfinite(dataset.quality[:, j]))
            if len(observed):
                self.update(feats.subset(observed), model, np.clip(dataset.quality[observed, j], 0, 1))
        return self

    # -- serving ---------------------------------------------------------------------------------
    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        x = self._design(features)
        quality = np.empty((len(x), len(candidates)))
        for j, card in enumerate(candidates):
            quality[:, j] = self._ucb(x, card.name)
        return Prediction(quality=np.clip(quality, 0.0, 1.0))

    def _ucb(self, x: np.ndarray, backend: str) -> np.ndarray:
        if backend not in self.models_:  # an arm with no data: the prior and its full bonus
            width = np.sqrt(np.einsum("ij,ij->i", x, x) / self.ridge)
            return self.prior + self.alpha * width
        a = self.models_.index(backend)
        if self.dim_ != x.shape[1]:
            raise RouterError(f"linucb holds {self.dim_}-dim features, got {x.shape[1]}-dim ones")
        inv = np.linalg.inv(self.A_[a])
        theta = inv @ self.b_[a]
        width = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, inv, x), 0.0))
        return self.prior + x @ theta + self.alpha * width

    def mean_quality(self, features: QueryFeatures, backend: str) -> np.ndarray:
        """The point estimate (no bonus) of ``backend``'s reward on each query: what it has learned."""
        saved, self.alpha = self.alpha, 0.0
        try:
            return np.clip(self._ucb(self._design(features), backend), 0.0, 1.0)
        finally:
            self.alpha = saved

    # -- artifacts -------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"models_": list(self.models_), "dim_": self.dim_, "A_": self.A_, "b_": self.b_, "n_": self.n_,
                "encoder_": self.encoder_}

    def set_state(self, state: dict[str, Any]) -> None:
        models, dim = list(state["models_"]), state["dim_"]
        A, b, n = (np.asarray(state[k], dtype=np.float64) for k in ("A_", "b_", "n_"))
        m = len(models)
        shapes_ok = A.shape == (m, dim, dim) and b.shape == (m, dim) and n.shape == (m,)
        ok = m == 0 if dim is None else shapes_ok
        if not ok:
            raise RouterError(f"linucb state shapes disagree: {m} arms, dim {dim}, A {A.shape}, b {b.shape}")
        self.models_, self.dim_, self.A_, self.b_, self.n_ = models, dim, A, b, n
        self.encoder_ = str(state.get("encoder_", self.encoder_))
