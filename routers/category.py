"""Two-step routing (Composition of Experts): classify a query into categories, then route by the category.

Step one, :class:`CategoryModel`: a multinomial logistic regression from what serving has (the query embedding,
the text statistics of :mod:`routers.features` and the log prompt length, standardized) to a distribution over
the *categories* of the training data: its task labels (LLMRouter's task families, MMLU's subjects, BIRD's
databases). Labels are used only at training time; at serving time a query gets ``P(category | query)``, which
any router may use as features (:meth:`CategoryModel.proba`). Scikit-learn fits it; serving is numpy (the
artifact holds the weights as arrays). ``C`` is chosen from a grid by grouped inner cross-validation on the
training rows (log loss), never on the rows being evaluated.

Step two, :class:`CategoryRouter`: each model's expected quality is the category mixture of its per-category
mean quality, ``quality[q, m] = sum_c P(c | q) * E[c, m]``, where ``E[c, m]`` is shrunk toward the model's
overall mean by ``prior_weight`` pseudo-queries (a category with few training queries says little). A
candidate is matched to a training model by name; any other candidate gets the mean over the training models
(an "average model"), so it is ranked by price alone. Its ``uncertainty`` is the entropy of ``P(c | q)`` plus
:data:`UNCERTAINTY_FLOOR`: queries that look like no training category get a larger caution margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from threadpoolctl import threadpool_limits

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
#: added to the category entropy to make the prediction's uncertainty (so a sure query still needs a small margin)
UNCERTAINTY_FLOOR = 0.02


def query_matrix(features: QueryFeatures) -> np.ndarray:
    """``[n, d]`` raw inputs of the category model: embedding, text statistics, log prompt tokens."""
    if features.embeddings is None:
        raise RouterError("the category model needs query embeddings")
    return np.hstack([np.asarray(features.embeddings, dtype=np.float64), np.asarray(features.stats, dtype=np.float64),
                      np.log1p(np.maximum(features.prompt_tokens, 0.0))[:, None]])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def group_folds(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per row with whole groups in one fold (groups shuffled with ``seed``)."""
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(n_groups)] = np.arange(n_groups) % max(n_folds, 1)
    return fold_of_group[inverse]


class CategoryModel:
    """``P(category | query)`` from serving features; see the module docstring. ``fit`` then ``proba``."""

    def __init__(self, C: float | None = None, c_grid: Sequence[float] = C_GRID, cv_folds: int = 3,
                 seed: int = 0, tol: float = 1e-4) -> None:
        self.C = C
        self.c_grid = tuple(c_grid)
        self.cv_folds = cv_folds
        self.seed = seed
        #: L-BFGS stopping tolerance (a looser one trades a little log loss for several times fewer iterations)
        self.tol = tol

    def fit(self, features: QueryFeatures, labels: Sequence[str], groups: np.ndarray | None = None) -> Self:
        # why: sklearn and scipy take about a second to import; only fitting needs them
        from sklearn.linear_model import LogisticRegression

        y_names = np.asarray([str(v) for v in labels], dtype=object)
        self.classes_ = sorted(set(y_names.tolist()))
        if len(self.classes_) < 2:
            raise RouterError(f"the category model needs at least two categories, got {self.classes_}")
        y = np.searchsorted(np.asarray(self.classes_, dtype=object), y_names)
        raw = query_matrix(features)
        self.mu_, self.sd_ = raw.mean(axis=0), raw.std(axis=0) + 1e-6
        x = (raw - self.mu_) / self.sd_
        groups = np.asarray(features.texts, dtype=object) if groups is None else groups
        # one BLAS thread: small problems, and spinning OpenBLAS workers slow L-BFGS badly on 2 shared cores
        with threadpool_limits(limits=1, user_api="blas"):
            self.C_, self.cv_log_loss_ = self._choose_c(x, y, groups)
            clf = LogisticRegression(C=self.C_, max_iter=1000, tol=self.tol).fit(x, y)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # sklearn gives one row for two classes
            coef, intercept = np.vstack([-coef, coef]) / 2, np.asarray([-intercept[0], intercept[0]]) / 2
        self.coef_, self.intercept_ = coef.astype(np.float64), intercept.astype(np.float64)
        return self

    def _choose_c(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
        # why: sklearn and scipy take about a second to import; only fitting needs them
        from sklearn.linear_model import LogisticRegression

        grid = [self.C] if self.C is not None else list(self.c_grid)
        if len(grid) == 1 or len(np.unique(groups)) < self.cv_folds:
            return float(grid[0]), math.nan
        fold = group_folds(groups, self.cv_folds, self.seed)
        losses = []
        for c in grid:
            loss = 0.0
            for f in range(self.cv_folds):
                tr, va = fold != f, fold == f
                clf = LogisticRegression(C=c, max_iter=500, tol=self.tol).fit(x[tr], y[tr])
                p = np.full((int(va.sum()), len(self.classes_)), 1e-9)
                p[:, clf.classes_] = np.maximum(clf.predict_proba(x[va]), 1e-9)
                loss -= float(np.log(p[np.arange(len(p)), y[va]] / p.sum(axis=1)).sum())
            losses.append(loss / len(y))
        best = int(np.argmin(losses))
        return float(grid[best]), float(losses[best])

    def proba(self, features: QueryFeatures) -> np.ndarray:
        """``[n, n_categories]`` probabilities (columns in ``classes_`` order)."""
        if not hasattr(self, "coef_"):
            raise RouterError("the category model is not fitted")
        x = (query_matrix(features) - self.mu_) / self.sd_
        if x.shape[1] != self.coef_.shape[1]:
            raise RouterError(f"category model expects {self.coef_.shape[1]} inputs, got {x.shape[1]}")
        return _softmax(x @ self.coef_.T + self.intercept_)

    def get_state(self) -> dict[str, Any]:
        return {"params": {"C": self.C, "c_grid": list(self.c_grid), "cv_folds": self.cv_folds, "seed": self.seed,
                           "tol": self.tol},
                **{k: v for k, v in vars(self).items() if k.endswith("_")}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CategoryModel:
        model = cls(**state["params"])
        for key, value in state.items():
            if key.endswith("_"):
                setattr(model, key, value)
        return model


def dataset_categories(dataset: RoutingDataset) -> list[str]:
    """The training categories of ``dataset``: its task labels (RouterError when it has none)."""
    if dataset.tasks is None or len(set(dataset.tasks)) < 2:
        raise RouterError(f"{dataset.name}: needs task labels of at least two tasks to learn categories")
    return list(dataset.tasks)


class CategoryRouter(Router):
    """Expected quality per model as a mixture over predicted categories (see the module docstring)."""

    name = "category"
    requires_embeddings = True

    def __init__(self, C: float | None = None, prior_weight: float = 10.0, cv_folds: int = 3, seed: int = 0) -> None:
        self.C = C
        self.prior_weight = prior_weight
        self.cv_folds = cv_folds
        self.seed = seed

    def fit(self, dataset: RoutingDataset) -> Self:
        self._record_encoder(dataset)
        feats = dataset.features
        if feats is None or feats.embeddings is None:
            raise RouterError("category needs query embeddings: fit on a dataset with features attached")
        if self.prior_weight < 0:
            raise RouterError(f"prior_weight must be >= 0, got {self.prior_weight}")
        labels = dataset_categories(dataset)
        model = CategoryModel(C=self.C, cv_folds=self.cv_folds, seed=self.seed).fit(feats, labels)
        quality = np.asarray(dataset.quality, dtype=np.float64)
        overall = quality.mean(axis=0)
        lab = np.asarray(labels, dtype=object)
        rows = []
        for c in model.classes_:
            q = quality[lab == c]
            rows.append((q.sum(axis=0) + self.prior_weight * overall) / (len(q) + self.prior_weight))
        self.models_ = list(dataset.models)
        self.category_ = model.get_state()
        self.expected_ = np.stack(rows)
        self._model = model
        return self

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._model = CategoryModel.from_state(self.category_)

    def category_proba(self, features: QueryFeatures) -> np.ndarray:
        if not hasattr(self, "_model"):
            raise RouterError("category router is not fitted")
        self._check_encoder(features)
        return self._model.proba(features)

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        proba = self.category_proba(features)
        per_model = proba @ self.expected_  # [n, m_train]
        average = per_model.mean(axis=1)
        out = np.stack([per_model[:, self.models_.index(c.name)] if c.name in self.models_ else average
                        for c in candidates], axis=1) if candidates else np.zeros((len(features), 0))
        # how unsure the category is (entropy in nats, plus a floor): scales the objective's caution margin
        entropy = -(proba * np.log(np.maximum(proba, 1e-12))).sum(axis=1) + UNCERTAINTY_FLOOR
        return Prediction(quality=out, uncertainty=np.repeat(entropy[:, None], out.shape[1], axis=1))

    def describe(self) -> dict[str, Any]:
        if not hasattr(self, "_model"):
            return {"fitted": False}
        return {"categories": len(self._model.classes_), "C": self._model.C_,
                "cv_log_loss": None if math.isnan(self._model.cv_log_loss_) else round(self._model.cv_log_loss_, 4)}
