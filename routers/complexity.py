"""Complexity-classifier router: EllieSQL-style cost tiers, a calibrated classifier, expected quality per model.

EllieSQL (Zhu et al., 2025) observes that most queries are simple: a classifier that sends each query to the
cheapest tier able to solve it saves tokens at no loss of accuracy. This router builds that for any pool.

Tiers. The training models are ordered by their mean cost per query on the training data; models whose mean
costs are equal (relative tolerance :data:`TIE_RTOL`) share a tier (the LLMRouter pool has three price levels).
A tier *solves* a query when one of its models scores ``>= threshold``. A query's label is the cheapest tier that
solves it; a query no tier solves goes to the top tier (``unsolved="top"``, as EllieSQL labels them), to the
cheapest tier (``"cheapest"``), or is left out of the classifier's training (``"drop"``).

Classifier. Features are the MiniLM embedding plus the text statistics of :mod:`routers.features` and the log
prompt length, standardized. A multinomial scikit-learn ``LogisticRegression`` with ``class_weight`` (default
``"balanced"``: the tiers are skewed) is fitted on all training rows; its probabilities are then calibrated by
multinomial Platt scaling: an unweighted logistic regression on the classifier's *out-of-fold* logits (folds
grouped by query text, stratified by tier), which also undoes the class weights' shift of the tier priors.
``C=None`` picks the regularization from ``c_grid`` by the calibrated out-of-fold log loss.

Into the shared objective. ``E[t, m]`` is the mean quality of model m over the training queries labeled t, so
``quality[q, m] = sum_t P(t | q) E[t, m]`` is an expected quality per model (``mode="expected"``), which
:func:`routers.objective.decide` weighs against cost, flags and budgets like every other router's. Two of
EllieSQL's decision rules sit on top of the same probabilities:

- ``"cascade"`` (default): the cheapest candidate tier whose probability of success ``P(label <= t | q)`` is at
  least ``confidence``. ``confidence=None`` learns it on the out-of-fold probabilities of the training rows: of
  :data:`CONFIDENCE_GRID`, the threshold of lowest cost whose quality stays within ``max_quality_loss``
  (relative) of the best single model's; if none does, the threshold of highest quality.
- ``"argmax"``: the most probable candidate tier (EllieSQL's plain classifier router).

Rules see only the candidates' tiers: a tier missing from the pool hands its probability to the cheapest candidate
tier above it (the top candidate tier takes what lies above it), so a cascade always ends. A rule is expressed as
quality so that flags still apply: the chosen tier's candidates are lifted into the band ``[1 - LIFT, 1]`` (in the
order of their expected quality), the others scaled into ``[0, 1 - LIFT)``. With cost weight 0 the decision is
exactly the rule; a cost weight pulls it down to cheaper tiers with high expected quality.

Candidates. A candidate is matched to a training model by name, after ``aliases`` (pool backend name ->
training model name). A candidate never seen in training stands in for the model with the nearest price
(distance ``|log(input + output price)|``; ties go to the cheaper model). Serving needs only numpy: the artifact
holds arrays, not scikit-learn objects.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from threadpoolctl import threadpool_limits

from routers.base import ModelCard, Prediction, QueryFeatures, Router, RouterError

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

log = logging.getLogger("poolgate.routers.complexity")

MODES: tuple[str, ...] = ("cascade", "argmax", "expected")
UNSOLVED: tuple[str, ...] = ("top", "cheapest", "drop")
C_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
TIE_RTOL = 1e-6
#: width of the top quality band a decision rule lifts its chosen tier into
LIFT = 0.01
#: cascade confidence when it cannot be learned (too few training queries to hold any out)
FALLBACK_CONFIDENCE = 0.8
CONFIDENCE_GRID = np.round(np.arange(0.30, 1.0001, 0.01), 2)


# -- tiers and labels ----------------------------------------------------------------------------
def cost_tiers(mean_cost: np.ndarray, rtol: float = TIE_RTOL) -> list[list[int]]:
    """Group model indices into tiers by mean cost per query, cheapest first; equal costs share a tier."""
    order = sorted(range(len(mean_cost)), key=lambda j: (float(mean_cost[j]), j))
    tiers: list[list[int]] = []
    for j in order:
        if tiers and math.isclose(mean_cost[j], mean_cost[tiers[-1][0]], rel_tol=rtol, abs_tol=1e-15):
            tiers[-1].append(j)
        else:
            tiers.append([j])
    return tiers


def tier_labels(quality: np.ndarray, tiers: Sequence[Sequence[int]], threshold: float, unsolved: str) -> np.ndarray:
    """Per query: index of the cheapest tier with a model scoring ``>= threshold``; unsolved ones per ``unsolved``.

    ``unsolved``: ``"top"`` -> the last tier, ``"cheapest"`` -> tier 0, ``"drop"`` -> -1 (not a training label).
    """
    solved = np.stack([(quality[:, list(t)] >= threshold).any(axis=1) for t in tiers], axis=1)
    labels = np.argmax(solved, axis=1)
    labels[~solved.any(axis=1)] = {"top": len(tiers) - 1, "cheapest": 0, "drop": -1}[unsolved]
    return labels


def rule_tiers(proba: np.ndarray, present: np.ndarray, mode: str, confidence: float) -> np.ndarray:
    """The tier (one of ``present``, sorted ascending) that the cascade or argmax rule picks per query."""
    # tier t's probability goes to the cheapest present tier >= t (beyond the top one: to the top one)
    owner = np.minimum(np.searchsorted(present, np.arange(proba.shape[1])), len(present) - 1)
    mass = np.stack([proba[:, owner == i].sum(axis=1) for i in range(len(present))], axis=1)
    if mode == "argmax":
        return np.asarray(present[np.argmax(mass, axis=1)])
    success = np.cumsum(mass, axis=1)  # P(cheapest solving tier <= t); the last column is 1
    return np.asarray(present[np.argmax(success >= confidence - 1e-9, axis=1)])


# -- classifier pieces (pure functions on arrays) ------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _logits(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Softmax logits ``[n, k]`` of a fitted logistic regression (binary: one decision column -> ``[0, d]``)."""
    d = x @ coef.T + intercept
    return np.column_stack([np.zeros(len(x)), d[:, 0]]) if coef.shape[0] == 1 else d


def _calib_input(logits: np.ndarray) -> np.ndarray:
    """What the calibrator sees: the log-odds for two tiers, centred logits for more."""
    if logits.shape[1] == 2:
        return logits[:, 1:] - logits[:, :1]
    return logits - logits.mean(axis=1, keepdims=True)


def _folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds grouped by query text and stratified by tier; none when there are too few queries to hold out."""
    # why: sklearn and scipy take about a second to import; only fitting needs them
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = min(n_folds, int(groups.max()) + 1)
    if n_folds < 2 or len(y) < 4 * n_folds:
        return []
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a tier rarer than the fold count only warns; the folds stay valid
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(y)), y, groups))


def _oof_logits(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], grid: Sequence[float],
                class_weight: str | None) -> dict[float, np.ndarray]:
    """Out-of-fold softmax logits ``[n, k]`` for each C of ``grid``; a tier absent from a training fold gets a
    very low logit. Within a fold the C values are fitted in increasing order, each warm-started from the last."""
    # why: sklearn and scipy take about a second to import; only fitting needs them
    from sklearn.linear_model import LogisticRegression

    out = {c: np.zeros((len(y), int(y.max()) + 1)) for c in grid}
    for tr, te in folds:
        present = np.unique(y[tr])
        if len(present) < 2:  # nothing to learn in this fold: uninformative logits
            continue
        clf = LogisticRegression(class_weight=class_weight, max_iter=2000, warm_start=True)
        for c in sorted(grid):
            clf.set_params(C=c).fit(x[tr], y[tr])
            part = _logits(clf.coef_, clf.intercept_, x[te])
            full = np.full((len(te), out[c].shape[1]), part.min() - 10.0)
            full[:, present] = part
            out[c][te] = full
    return out


def _calibrate(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit multinomial Platt scaling on logits; returns (coef, intercept, calibrated probabilities ``[n, k]``)."""
    # why: sklearn and scipy take about a second to import; only fitting needs them
    from sklearn.linear_model import LogisticRegression

    z = _calib_input(logits)
    cal = LogisticRegression(C=100.0, max_iter=2000).fit(z, y)
    coef, intercept = cal.coef_.astype(np.float64), cal.intercept_.astype(np.float64)
    return coef, intercept, _softmax(_logits(coef, intercept, z))  # y holds every tier (fit checks it)


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))))


def learn_confidence(success: np.ndarray, quality: np.ndarray, cost: np.ndarray, target: float
                     ) -> tuple[float, float, float]:
    """The cascade threshold with the lowest mean cost whose mean quality reaches ``target``; if none does, the
    one with the highest quality. Returns (threshold, its mean quality, its mean cost).

    ``success`` ``[n, T]``: out-of-fold ``P(label <= t)``. ``quality``/``cost`` ``[n, T]``: the true outcome of
    sending each query to tier t (to the model the router would take there)."""
    rows = np.arange(len(success))
    points = []
    for tau in CONFIDENCE_GRID:
        tier = np.argmax(success >= tau - 1e-9, axis=1)
        points.append((float(tau), float(quality[rows, tier].mean()), float(cost[rows, tier].mean())))
    ok = [p for p in points if p[1] >= target - 1e-12]
    if ok:
        return min(ok, key=lambda p: (p[2], -p[0]))
    return max(points, key=lambda p: (p[1], -p[2]))


class ComplexityRouter(Router):
    """Send each query to the cheapest tier likely to solve it (see the module docstring for the method)."""

    name = "complexity"
    requires_embeddings = True

    # set by fit (the artifact holds these numpy arrays, no scikit-learn objects)
    tiers_: list[list[str]]
    tier_of_model_: np.ndarray
    prices_: np.ndarray
    tier_counts_: np.ndarray
    expected_: np.ndarray
    mu_: np.ndarray
    sd_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray
    cal_coef_: np.ndarray | None
    cal_intercept_: np.ndarray | None
    C_: float
    cv_log_loss_: float
    confidence_: float
    confidence_fit_: dict[str, float]

    def __init__(
        self,
        mode: str = "cascade",
        confidence: float | None = None,
        max_quality_loss: float = 0.0,
        threshold: float = 0.5,
        unsolved: str = "top",
        C: float | None = None,
        c_grid: Sequence[float] = C_GRID,
        class_weight: str | None = "balanced",
        cv_folds: int = 3,
        use_stats: bool = True,
        aliases: Mapping[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        self.mode = mode
        self.confidence = confidence
        self.max_quality_loss = max_quality_loss
        self.threshold = threshold
        self.unsolved = unsolved
        self.C = C
        self.c_grid = tuple(c_grid)
        self.class_weight = class_weight
        self.cv_folds = cv_folds
        self.use_stats = use_stats
        self.aliases = dict(aliases or {})
        self.seed = seed

    # -- training --------------------------------------------------------------------------------
    def fit(self, dataset: RoutingDataset) -> Self:
        """Label tiers, fit and calibrate the classifier, learn ``E[tier, model]`` and the cascade threshold.

        Bad input (no embeddings, empty query text, fewer than two models, a tier that is the label of no
        training query, bad parameters) raises :class:`RouterError` and is logged."""
        self._record_encoder(dataset)
        try:
            self._fit(dataset)
        except RouterError as exc:
            log.error("complexity: cannot train on %r: %s", dataset.name, exc)
            raise
        return self

    def _fit(self, dataset: RoutingDataset) -> None:
        self._check_params()
        feats = self._check_dataset(dataset)
        quality = np.asarray(dataset.quality, dtype=np.float64)
        tiers = cost_tiers(dataset.cost_usd.mean(axis=0))
        labels = tier_labels(quality, tiers, self.threshold, self.unsolved)
        self._check_tiers(dataset, tiers, labels)
        keep = labels >= 0
        self.models_ = list(dataset.models)
        self.tiers_ = [[dataset.models[j] for j in t] for t in tiers]
        self.tier_of_model_ = np.empty(len(dataset.models), dtype=np.int64)
        for t, members in enumerate(tiers):
            self.tier_of_model_[members] = t
        self.prices_ = np.asarray([c.input_price + c.output_price for c in dataset.cards], dtype=np.float64)
        self.tier_counts_ = np.bincount(labels[keep], minlength=len(tiers))
        self.expected_ = np.stack([quality[labels == t].mean(axis=0) for t in range(len(tiers))])
        raw = self._raw_features(feats)
        self.mu_, self.sd_ = raw.mean(axis=0), raw.std(axis=0) + 1e-6
        x = (raw[keep] - self.mu_) / self.sd_
        groups = np.unique(np.asarray(dataset.queries, dtype=object)[keep], return_inverse=True)[1]
        # why: sklearn and scipy take about a second to import; only fitting needs them
        import sklearn.linear_model  # noqa: F401  (loads scipy's BLAS first: a limit covers loaded libraries only)

        # one BLAS thread: the problems are small, and on a shared 2-core machine OpenBLAS's spinning worker
        # threads made L-BFGS ~40x slower than single-threaded
        with threadpool_limits(limits=1, user_api="blas"):
            oof = self._fit_classifier(x, labels[keep], groups)
        self.confidence_ = self._fit_confidence(oof, quality[keep], np.asarray(dataset.cost_usd)[keep], tiers)

    def _check_params(self) -> None:
        if self.mode not in MODES:
            raise RouterError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.unsolved not in UNSOLVED:
            raise RouterError(f"unsolved must be one of {', '.join(UNSOLVED)}, got {self.unsolved!r}")
        if self.confidence is not None and not 0.0 < self.confidence <= 1.0:
            raise RouterError(f"confidence must be in (0, 1] or None (learned), got {self.confidence}")
        if not 0.0 <= self.max_quality_loss < 1.0:
            raise RouterError(f"max_quality_loss must be in [0, 1), got {self.max_quality_loss}")
        if self.C is not None and not self.C > 0:
            raise RouterError(f"C must be > 0, got {self.C}")
        if self.cv_folds < 2:
            raise RouterError(f"cv_folds must be >= 2, got {self.cv_folds}")

    def _check_dataset(self, dataset: RoutingDataset) -> QueryFeatures:
        feats = dataset.features
        if len(dataset) == 0:
            raise RouterError("the training data has no queries")
        if len(dataset.models) < 2:
            raise RouterError(f"needs at least two models to make tiers, the data has {dataset.models}")
        if feats is None or feats.embeddings is None:
            raise RouterError("needs query embeddings: fit on a dataset with features attached (with_features)")
        empty = [i for i, q in enumerate(dataset.queries) if not q.strip()]
        if empty:
            raise RouterError(f"{len(empty)} training queries have empty text (first at row {empty[0]}); remove them")
        return feats

    def _check_tiers(self, dataset: RoutingDataset, tiers: list[list[int]], labels: np.ndarray) -> None:
        counts = np.bincount(labels[labels >= 0], minlength=len(tiers))
        empty = [f"tier {t} ({', '.join(dataset.models[j] for j in tiers[t])})" for t in range(len(tiers))
                 if counts[t] == 0]
        if empty:
            raise RouterError(
                f"{'; '.join(empty)}: cheapest solving tier of no training query (threshold {self.threshold}, "
                f"unsolved={self.unsolved!r}, {len(labels)} queries); train on more data or drop that model"
            )

    def _raw_features(self, feats: QueryFeatures) -> np.ndarray:
        if feats.embeddings is None:
            raise RouterError("needs query embeddings; the featurizer was asked for none")
        parts = [np.asarray(feats.embeddings, dtype=np.float64)]
        if self.use_stats:
            parts += [np.asarray(feats.stats, dtype=np.float64), np.log1p(feats.prompt_tokens)[:, None]]
        return np.hstack(parts)

    def _fit_classifier(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray | None:
        """Choose C, fit the weighted classifier on all rows, calibrate it on out-of-fold logits.

        Returns the calibrated out-of-fold probabilities, or None when there were too few queries to hold out
        (then the classifier's own probabilities are served, uncalibrated)."""
        # why: sklearn and scipy take about a second to import; only fitting needs them
        from sklearn.linear_model import LogisticRegression

        folds = _folds(y, groups, self.cv_folds, self.seed)
        best: tuple[float, float, Any] = (math.inf, self.C or 1.0, None)
        grid = [self.C] if self.C is not None else list(self.c_grid)
        for c, logits in (_oof_logits(x, y, folds, grid, self.class_weight) if folds else {}).items():
            calibrated = _calibrate(logits, y)
            loss = _log_loss(calibrated[2], y)
            best = min(best, (loss, c, calibrated), key=lambda b: b[0])
        self.cv_log_loss_, self.C_, calibrated = best
        clf = LogisticRegression(C=self.C_, class_weight=self.class_weight, max_iter=2000).fit(x, y)
        self.coef_, self.intercept_ = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
        self.cal_coef_, self.cal_intercept_ = (None, None) if calibrated is None else calibrated[:2]
        return None if calibrated is None else np.asarray(calibrated[2])

    def _fit_confidence(self, oof: np.ndarray | None, quality: np.ndarray, cost: np.ndarray,
                        tiers: list[list[int]]) -> float:
        """The cascade threshold: as given, else learned on the out-of-fold probabilities (see the docstring)."""
        self.confidence_fit_ = {}
        if self.confidence is not None:
            return float(self.confidence)
        if oof is None:
            return FALLBACK_CONFIDENCE
        expected = oof @ self.expected_
        rows = np.arange(len(oof))
        # in each tier, the model the router would take: the one of highest expected quality
        picks = np.stack([np.asarray(t)[np.argmax(expected[:, t], axis=1)] for t in tiers], axis=1)
        q_tier, c_tier = quality[rows[:, None], picks], cost[rows[:, None], picks]
        target = float(quality.mean(axis=0).max()) * (1.0 - self.max_quality_loss)
        tau, q, c = learn_confidence(np.cumsum(oof, axis=1), q_tier, c_tier, target)
        self.confidence_fit_ = {"target_quality": target, "oof_quality": q, "oof_cost_usd": c,
                                "best_single_cost_usd": float(cost.mean(axis=0)[quality.mean(axis=0).argmax()])}
        return tau

    # -- serving ---------------------------------------------------------------------------------
    def tier_proba(self, features: QueryFeatures) -> np.ndarray:
        """Calibrated ``P(tier | query)``, ``[n, n_tiers]`` (tiers as in ``tiers_``, cheapest first)."""
        if not hasattr(self, "coef_"):
            raise RouterError("complexity router is not fitted")
        x = (self._raw_features(features) - self.mu_) / self.sd_
        z = _logits(self.coef_, self.intercept_, x)
        if self.cal_coef_ is not None and self.cal_intercept_ is not None:
            z = _logits(self.cal_coef_, self.cal_intercept_, _calib_input(z))
        return _softmax(z)

    def model_index(self, card: ModelCard) -> int:
        """Training model that stands for ``card``: by (aliased) name, else the nearest price."""
        name = self.aliases.get(card.name, card.name)
        if name in self.models_:
            return self.models_.index(name)
        dist = np.abs(np.log(self.prices_ + 1e-9) - math.log(card.input_price + card.output_price + 1e-9))
        near = np.flatnonzero(np.isclose(dist, dist.min()))
        return int(near[np.argmin(self.prices_[near])])

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        """Expected quality per candidate (``mode="expected"``), or the cascade/argmax rule expressed as quality."""
        if len(candidates) < 2:
            raise RouterError(f"complexity routing needs at least two candidates, got {len(candidates)}")
        self._check_encoder(features)
        if any(not t.strip() for t in features.texts):
            raise RouterError("empty query text: nothing to classify")
        proba = self.tier_proba(features)
        cols = [self.model_index(c) for c in candidates]
        quality = (proba @ self.expected_)[:, cols]
        if self.mode == "expected":
            return Prediction(quality=quality)
        cand_tier = self.tier_of_model_[cols]
        chosen = rule_tiers(proba, np.unique(cand_tier), self.mode, self.confidence_)
        lifted = cand_tier[None, :] == chosen[:, None]
        return Prediction(quality=np.where(lifted, 1.0 - LIFT + LIFT * quality, (1.0 - LIFT) * quality))

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary of the fitted router: tiers, label counts, C, CV log loss, cascade threshold."""
        if not hasattr(self, "coef_"):
            return {"fitted": False}
        return {
            "mode": self.mode,
            "tiers": self.tiers_,
            "label_counts": self.tier_counts_.tolist(),
            "C": self.C_,
            "cv_log_loss": None if math.isinf(self.cv_log_loss_) else round(self.cv_log_loss_, 4),
            "calibrated": self.cal_coef_ is not None,
            "confidence": self.confidence_,
            **{k: round(v, 6) for k, v in self.confidence_fit_.items()},
        }
