"""Tryage-style router: a multi-output predictor of each candidate's quality and verbosity for a query.

After Hari & Thomson (2023), "Tryage: Real-time, intelligent Routing of User Prompts to Large Language
Models": a perceptive router predicts how well every model in a library will do on a prompt, and a
separate objective with user flags (cost, size, recency, latency, verbosity) picks along the Pareto front.
Here the prediction is this module; the choice is :func:`routers.objective.decide`, shared by every router.

Model. One model-conditioned regressor (an sklearn MLP) scores a (query, model) pair from

    x = [PCA(query embedding) || standardized text stats, log prompt tokens || model attributes || model id]

and has two outputs: quality (then calibrated to [0, 1]) and verbosity (log output tokens). Model
attributes are log input / output price, log size, release date (years), log context window; an attribute
that is constant over the training models carries no information and is zeroed. The model id is a one-hot
over the training models, dropped to all-zeros for a random ``id_dropout`` share of training rows so the
network also learns to score a model from its attributes alone.

Candidates at predict time:
- a name seen in training: its one-hot and its *training* attributes (a pool file's prices for it do not
  change the prediction; they only change the cost in the objective);
- an unseen name with attributes (a size, a release date, or a non-zero price): attributes only, one-hot
  all zeros; missing size / date / context are filled with the training models' median;
- an unseen name with no attribute at all (no size, no date, both prices 0): the mean over the training
  models of their predicted quality and verbosity for that query (an "average model").

Attributes carry only as much as the training pool teaches: on LLMRouter, leaving each of the nine models
out of training and scoring it from its attributes predicted it no better than the average model (per-query
correlation with the truth 0.28 vs 0.34, mean absolute error 0.42 vs 0.43; see the issue-8 note), because
price, size and date explain little there (a 70B model is among the worst). Known models are unaffected.

Calibration. Raw quality outputs are mapped by a sigmoid a * raw + b (Platt scaling with the soft labels
the datasets give), fitted on a held-out slice of unique training queries (``calib_frac``), which also
picks the number of epochs (early stopping on its squared error). One strictly increasing map for all
models, so per-query rankings are unchanged and calibrated values can be traded against cost.
``calibration_`` records the expected calibration error (10 equal-width bins) on that slice, before and
after.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from threadpoolctl import threadpool_limits

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

ATTRIBUTE_NAMES: tuple[str, ...] = ("log_input_price", "log_output_price", "log_size_b", "release_year",
                                    "log2_context")
_EPOCH_ORIGIN = date(2020, 1, 1).toordinal()
_BIG_BATCH = 4096  # (query, model) pairs above which predict limits BLAS threads


def raw_attributes(card: ModelCard) -> np.ndarray:
    """The card's attributes in :data:`ATTRIBUTE_NAMES` order; ``nan`` where unknown."""
    return np.asarray([
        np.log1p(card.input_price),
        np.log1p(card.output_price),
        np.log(card.size_b) if card.size_b else np.nan,
        (card.release_date.toordinal() - _EPOCH_ORIGIN) / 365.25 if card.release_date else np.nan,
        np.log2(card.context_window) if card.context_window else np.nan,
    ], dtype=np.float64)


def has_attributes(card: ModelCard) -> bool:
    """Whether an unseen card says anything about the model (a size, a date, or a non-zero price)."""
    return bool(card.size_b or card.release_date or card.input_price or card.output_price)


def expected_calibration_error(pred: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """ECE: sum over equal-width bins of pred of (bin share) x |mean pred - mean target| (soft targets allowed)."""
    p, t = np.ravel(pred), np.ravel(target)
    if len(p) == 0:
        return float("nan")
    idx = np.minimum((np.clip(p, 0, 1) * bins).astype(np.int64), bins - 1)
    err = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            err += sel.mean() * abs(float(p[sel].mean()) - float(t[sel].mean()))
    return err


def _mlp_forward(net: tuple[list[np.ndarray], list[np.ndarray]], x: np.ndarray) -> np.ndarray:
    """An sklearn MLP's outputs (ReLU hidden layers, linear output) in plain numpy: no per-call validation."""
    coefs, intercepts = net
    h = x
    for w, b in zip(coefs[:-1], intercepts[:-1], strict=True):
        h = np.maximum(h @ w + b, 0.0)
    out: np.ndarray = h @ coefs[-1] + intercepts[-1]
    return out


def _fit_sigmoid(raw: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(a, b) minimizing the cross-entropy of sigmoid(a * raw + b) against soft targets in [0, 1]."""
    # why: sklearn and scipy take about a second to import; only fitting needs them
    from scipy.optimize import minimize

    x, y = np.ravel(raw), np.clip(np.ravel(target), 0.0, 1.0)

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = ab[0] * x + ab[1]
        p = 1.0 / (1.0 + np.exp(-z))
        nll = np.logaddexp(0.0, z) - y * z  # -[y log p + (1 - y) log(1 - p)], stable
        g = p - y
        return float(nll.mean()), np.asarray([(g * x).mean(), g.mean()])

    res = minimize(loss, np.asarray([4.0, -2.0]), jac=True, method="L-BFGS-B",
                   bounds=[(1e-3, None), (None, None)])  # a > 0 keeps the map increasing
    return float(res.x[0]), float(res.x[1])


class TryageRouter(Router):
    """Predicts per-candidate quality in [0, 1] and output tokens from the query and the model's attributes.

    Parameters: ``pca_dim`` embedding dimensions kept; ``hidden`` MLP layer widths; ``alpha`` L2 penalty;
    ``max_epochs`` / ``patience`` early stopping on the calibration slice; ``id_dropout`` share of training
    rows without the model id; ``calib_frac`` share of unique training queries held out to calibrate;
    ``members`` MLPs averaged (seeds ``seed .. seed + members - 1``, each with its own id-dropout draw; the
    average has less variance than any one of them); ``seed`` for every random choice; ``threads`` BLAS threads
    while fitting and for large batches (small matrices on a shared machine run far faster on one thread than
    with threads spinning against each other).
    """

    name = "tryage"
    requires_embeddings = True

    def __init__(
        self, pca_dim: int = 64, hidden: Sequence[int] = (256,), alpha: float = 1e-2, max_epochs: int = 40,
        patience: int = 4, id_dropout: float = 0.25, calib_frac: float = 0.2, members: int = 5, seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.pca_dim = pca_dim
        self.hidden = tuple(hidden)
        self.alpha = alpha
        self.max_epochs = max_epochs
        self.patience = patience
        self.id_dropout = id_dropout
        self.calib_frac = calib_frac
        self.members = members
        self.seed = seed
        self.threads = threads

    # -- features --------------------------------------------------------------------------------
    def _query_matrix(self, feats: QueryFeatures) -> np.ndarray:
        """``[n, pca_dim + k + 1]``: projected embedding, standardized stats and log prompt tokens."""
        if feats.embeddings is None:
            raise RouterError("tryage needs query embeddings; the featurizer was asked for none")
        emb = (np.asarray(feats.embeddings, dtype=np.float64) - self.emb_mean_) @ self.components_.T
        extra = np.column_stack([np.asarray(feats.stats, dtype=np.float64), np.log1p(feats.prompt_tokens)])
        return np.hstack([emb, (extra - self.stat_mean_) / self.stat_std_])

    def _model_block(self, cards: Sequence[ModelCard]) -> tuple[np.ndarray, np.ndarray]:
        """``[m, a + n_train]`` attribute + one-hot rows for ``cards``, and a mask of cards with no attributes."""
        rows, blank = [], []
        for card in cards:
            onehot = np.zeros(len(self.models_))
            known = card.name in self.models_
            if known:
                onehot[self.models_.index(card.name)] = 1.0
                raw = self.train_attrs_[self.models_.index(card.name)]
            else:
                raw = raw_attributes(card)
            filled = np.where(np.isnan(raw), self.attr_fill_, raw)
            rows.append(np.concatenate([(filled - self.attr_mean_) * self.attr_scale_, onehot]))
            blank.append(not known and not has_attributes(card))
        return np.asarray(rows), np.asarray(blank, dtype=bool)

    @staticmethod
    def _pairs(q: np.ndarray, mblock: np.ndarray) -> np.ndarray:
        """All (query, model) pairs, query-major: ``[n * m, dq + dm]``."""
        n, m = len(q), len(mblock)
        return np.hstack([np.repeat(q, m, axis=0), np.tile(mblock, (n, 1))])

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, dataset: RoutingDataset) -> Self:
        self._record_encoder(dataset)
        with threadpool_limits(self.threads):
            return self._fit(dataset)

    def _fit(self, dataset: RoutingDataset) -> Self:
        feats = dataset.features
        if feats is None or feats.embeddings is None:
            raise RouterError("tryage needs query embeddings: fit on a dataset with features attached (with_features)")
        if len(set(dataset.queries)) < 5:
            raise RouterError("tryage needs at least 5 distinct training queries")
        rng = np.random.default_rng(self.seed)
        self._fit_transforms(dataset, feats)
        train, calib = self._calib_split(dataset.queries, rng)
        q = self._query_matrix(feats)
        mblock, _ = self._model_block(dataset.cards)
        tok = np.log1p(np.asarray(dataset.completion_tokens, dtype=np.float64))
        self.tok_mean_, self.tok_std_ = float(tok.mean()), float(tok.std()) or 1.0
        # verbosity target scaled to the spread of a quality target, so neither output dominates the loss
        targets = np.stack([dataset.quality, (tok - self.tok_mean_) / self.tok_std_ * 0.25], axis=-1)
        x_all = self._pairs(q[train], mblock)
        y_tr = targets[train].reshape(-1, 2)
        x_ca, y_ca = self._pairs(q[calib], mblock), targets[calib].reshape(-1, 2)
        self.nets_: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
        self.epochs_, self.val_mse_ = [], []
        for member in range(max(1, self.members)):
            x_tr = x_all.copy()
            x_tr[rng.random(len(x_tr)) < self.id_dropout, -len(self.models_):] = 0.0
            net, epochs, mse = self._train_mlp(x_tr, y_tr, x_ca, y_ca, self.seed + member)
            self.nets_.append(net)
            self.epochs_.append(epochs)
            self.val_mse_.append(mse)
        raw = self._forward(x_ca)[:, 0]
        self.calib_a_, self.calib_b_ = _fit_sigmoid(raw, y_ca[:, 0])
        self.calibration_ = {
            "ece_raw": expected_calibration_error(np.clip(raw, 0, 1), y_ca[:, 0]),
            "ece_calibrated": expected_calibration_error(self._calibrate(raw), y_ca[:, 0]),
            "calib_pairs": len(y_ca), "a": self.calib_a_, "b": self.calib_b_,
        }
        return self

    def _fit_transforms(self, dataset: RoutingDataset, feats: QueryFeatures) -> None:
        """PCA of embeddings, standardization of stats, and attribute fill / scaling from the training data."""
        emb = np.asarray(feats.embeddings, dtype=np.float64)
        self.emb_mean_ = emb.mean(axis=0)
        _, _, vt = np.linalg.svd(emb - self.emb_mean_, full_matrices=False)
        self.components_ = vt[: min(self.pca_dim, len(vt))]
        extra = np.column_stack([np.asarray(feats.stats, dtype=np.float64), np.log1p(feats.prompt_tokens)])
        self.stat_mean_ = extra.mean(axis=0)
        self.stat_std_ = np.where(extra.std(axis=0) > 0, extra.std(axis=0), 1.0)
        self.models_ = list(dataset.models)
        attrs = np.asarray([raw_attributes(c) for c in dataset.cards])
        fill = [float(np.median(col[~np.isnan(col)])) if (~np.isnan(col)).any() else 0.0 for col in attrs.T]
        self.attr_fill_ = np.asarray(fill)
        self.train_attrs_ = np.where(np.isnan(attrs), self.attr_fill_, attrs)
        self.attr_mean_ = self.train_attrs_.mean(axis=0)
        spread = self.train_attrs_.std(axis=0)
        # an attribute constant over the training models taught nothing: zero it rather than extrapolate
        self.attr_scale_ = np.where(spread > 1e-9, 1.0 / np.where(spread > 1e-9, spread, 1.0), 0.0)

    def _calib_split(self, queries: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(fit rows, calibration rows): a ``calib_frac`` share of unique query texts is held out."""
        _, group = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
        n_groups = int(group.max()) + 1
        held = np.zeros(n_groups, dtype=bool)
        n_held = min(max(1, round(self.calib_frac * n_groups)), n_groups - 1)
        held[rng.permutation(n_groups)[:n_held]] = True
        return np.flatnonzero(~held[group]), np.flatnonzero(held[group])

    def _train_mlp(
        self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray, seed: int
    ) -> tuple[tuple[list[np.ndarray], list[np.ndarray]], int, float]:
        """One MLP: Adam epochs, early stopping on the held-out slice; (best epoch's weights, epochs, its MSE)."""
        # why: sklearn and scipy take about a second to import; only fitting needs them
        from sklearn.neural_network import MLPRegressor

        mlp = MLPRegressor(hidden_layer_sizes=self.hidden, alpha=self.alpha, batch_size=min(256, len(x_tr)),
                           learning_rate_init=1e-3, random_state=seed, shuffle=True)
        best, best_net, stale, epochs = np.inf, None, 0, 0
        for epoch in range(self.max_epochs):
            mlp.partial_fit(x_tr, y_tr)
            mse = float(((_mlp_forward((mlp.coefs_, mlp.intercepts_), x_va) - y_va) ** 2).mean())
            if mse < best - 1e-6:
                best, stale, epochs = mse, 0, epoch + 1
                best_net = ([w.copy() for w in mlp.coefs_], [b.copy() for b in mlp.intercepts_])
            else:
                stale += 1
                if stale >= self.patience:
                    break
        assert best_net is not None
        return best_net, epochs, best

    # -- inference -------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The members' mean raw outputs ``[rows, 2]``."""
        out: np.ndarray = np.mean([_mlp_forward(net, x) for net in self.nets_], axis=0)
        return out

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        out: np.ndarray = 1.0 / (1.0 + np.exp(-(self.calib_a_ * raw + self.calib_b_)))
        return out

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        if not hasattr(self, "nets_"):
            raise RouterError("tryage router is not fitted")
        self._check_encoder(features)
        if len(features) * len(candidates) < _BIG_BATCH:  # request-time path: no thread-pool juggling
            return self._predict(features, candidates)
        with threadpool_limits(self.threads):
            return self._predict(features, candidates)

    def _predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        n, m = len(features), len(candidates)
        if n == 0 or m == 0:
            return Prediction(quality=np.zeros((n, m)), output_tokens=np.zeros((n, m)))
        q = self._query_matrix(features)
        mblock, blank = self._model_block(candidates)
        out = self._forward(self._pairs(q, mblock)).reshape(n, m, 2)
        quality = self._calibrate(out[..., 0])
        tokens = np.expm1(out[..., 1] / 0.25 * self.tok_std_ + self.tok_mean_).clip(min=1.0)
        if blank.any():
            quality[:, blank], tokens[:, blank] = self._average_model(q)
        return Prediction(quality=quality, output_tokens=tokens)

    def _average_model(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-query mean over the training models of predicted quality and tokens, ``[n, 1]`` each."""
        mblock, _ = self._model_block([ModelCard(name=name) for name in self.models_])
        out = self._forward(self._pairs(q, mblock)).reshape(len(q), len(self.models_), 2)
        tokens = np.expm1(out[..., 1] / 0.25 * self.tok_std_ + self.tok_mean_).clip(min=1.0)
        return self._calibrate(out[..., 0]).mean(axis=1, keepdims=True), tokens.mean(axis=1, keepdims=True)

    def describe(self) -> dict[str, Any]:
        """Fit summary for reports: epochs, validation MSE, calibration errors."""
        return {"epochs": getattr(self, "epochs_", None), "val_mse": getattr(self, "val_mse_", None),
                **getattr(self, "calibration_", {})}
