"""Tryage router on hand-made embeddings with planted structure (no embedding model needed)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from routers.base import ModelCard, QueryFeatures, Router, RouterError
from routers.dataset import RoutingDataset
from routers.objective import Flags, choose_batch
from routers.registry import make_router
from routers.tryage import TryageRouter, expected_calibration_error
from training.metrics import best_choice_rate

CARDS = [
    ModelCard("small", 0.1, 0.1, size_b=7, release_date=date(2024, 5, 1)),
    ModelCard("coder", 0.3, 0.3, size_b=15, release_date=date(2024, 9, 1)),
    ModelCard("big", 2.0, 6.0, size_b=70, release_date=date(2024, 1, 1)),
]
CENTERS = np.eye(8)[:3] * 3.0
# P(correct) per cluster (rows: chat, code, math) and model (columns: small, coder, big)
P_RIGHT = np.array([[0.9, 0.6, 0.9], [0.2, 0.9, 0.6], [0.1, 0.2, 0.8]])
# output tokens per cluster and model: "big" is verbose on math
TOKENS = np.array([[60, 60, 80], [150, 120, 150], [100, 100, 600]], dtype=np.float64)


def features(emb: np.ndarray, texts: list[str]) -> QueryFeatures:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(texts)
    return QueryFeatures(texts=texts, stats=np.zeros((n, 3)), prompt_tokens=np.full(n, 20.0),
                         embeddings=unit.astype(np.float32))


def sample(n_per: int, seed: int) -> tuple[QueryFeatures, np.ndarray, np.ndarray, np.ndarray]:
    """(features, true P(correct) [n, 3], sampled 0/1 quality [n, 3], output tokens [n, 3]), clusters in order."""
    rng = np.random.default_rng(seed)
    emb = np.vstack([c + 0.3 * rng.standard_normal((n_per, 8)) for c in CENTERS])
    texts = [f"q{seed}-{i}" for i in range(len(emb))]
    p = np.repeat(P_RIGHT, n_per, axis=0)
    tokens = np.repeat(TOKENS, n_per, axis=0) * rng.uniform(0.9, 1.1, p.shape)
    return features(emb, texts), p, (rng.random(p.shape) < p).astype(np.float64), tokens


def dataset(n_per: int = 150, seed: int = 0) -> RoutingDataset:
    feats, _, quality, tokens = sample(n_per, seed)
    n = len(feats)
    ds = RoutingDataset(name="planted", queries=feats.texts, models=[c.name for c in CARDS], quality=quality,
                        prompt_tokens=feats.prompt_tokens, completion_tokens=tokens,
                        cost_usd=np.zeros((n, 3)), cards=CARDS)
    return ds.with_features(feats)


@pytest.fixture(scope="module")
def router() -> TryageRouter:
    return TryageRouter(seed=0).fit(dataset())


@pytest.fixture(scope="module")
def test_set() -> tuple[QueryFeatures, np.ndarray, np.ndarray, np.ndarray]:
    return sample(60, seed=1)


def test_predictions_are_calibrated_qualities_and_positive_token_counts(router, test_set) -> None:
    feats = test_set[0]
    pred = router.predict(feats, CARDS)
    assert pred.quality.shape == pred.output_tokens.shape == (len(feats), 3)
    assert ((pred.quality > 0) & (pred.quality < 1)).all()
    assert (pred.output_tokens >= 1).all()


def test_it_learns_which_model_is_best_for_each_kind_of_query(router, test_set) -> None:
    feats, p_true, _, _ = test_set
    pick = router.predict(feats, CARDS).quality.argmax(axis=1)
    # the planted best model per cluster (ties count as best, as in Tryage's routing accuracy)
    assert best_choice_rate(p_true, pick) >= 0.95


def test_predicted_quality_matches_the_true_probability_of_success(router, test_set) -> None:
    feats, p_true, _, _ = test_set
    pred = router.predict(feats, CARDS).quality
    assert np.abs(pred - p_true).mean() < 0.08
    assert expected_calibration_error(pred, p_true) < 0.06
    assert router.calibration_["ece_calibrated"] < 0.08


def test_it_predicts_verbosity_per_query_and_model(router, test_set) -> None:
    feats, _, _, tokens = test_set
    pred = router.predict(feats, CARDS).output_tokens
    assert np.abs(np.log(pred) - np.log(tokens)).mean() < 0.25  # within about 25 % on average
    math_rows = slice(120, 180)
    assert pred[math_rows, 2].mean() > 3 * pred[math_rows, 0].mean()


def test_the_verbosity_flag_uses_the_predicted_lengths(router, test_set) -> None:
    feats = test_set[0].subset(np.arange(120, 180))  # math: "big" is best but verbose
    pred = router.predict(feats, CARDS)
    assert (choose_batch(pred, CARDS, Flags(), feats.prompt_tokens) == 2).mean() > 0.9
    terse = choose_batch(pred, CARDS, Flags(verbosity=2.0), feats.prompt_tokens)
    assert (terse != 2).mean() > 0.9


def test_a_known_model_is_scored_by_name_whatever_the_pool_file_says_about_it(router, test_set) -> None:
    feats = test_set[0]
    repriced = [replace(c, input_price=c.input_price * 3, size_b=None) for c in CARDS]
    np.testing.assert_allclose(router.predict(feats, repriced).quality, router.predict(feats, CARDS).quality)


def test_an_unseen_model_is_scored_from_its_attributes(router, test_set) -> None:
    feats, p_true, _, _ = test_set
    twin = replace(CARDS[2], name="big-v2")  # same attributes as "big", a name never seen
    pred = router.predict(feats, [twin, CARDS[0]]).quality
    assert np.abs(pred[:, 0] - p_true[:, 2]).mean() < 0.15


def test_an_unseen_model_without_attributes_counts_as_the_average_model(router, test_set) -> None:
    feats = test_set[0]
    pred = router.predict(feats, [ModelCard("mystery"), *CARDS])
    np.testing.assert_allclose(pred.quality[:, 0], pred.quality[:, 1:].mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(pred.output_tokens[:, 0], pred.output_tokens[:, 1:].mean(axis=1), rtol=1e-9)


def test_artifact_round_trip_and_registry(router, test_set, tmp_path: Path) -> None:
    feats = test_set[0]
    loaded = Router.load(router.save(tmp_path / "tryage.router"))
    np.testing.assert_array_equal(loaded.predict(feats, CARDS).quality, router.predict(feats, CARDS).quality)
    assert isinstance(make_router("tryage"), TryageRouter)


def test_bad_use_is_a_router_error(test_set) -> None:
    feats = test_set[0]
    with pytest.raises(RouterError, match="not fitted"):
        TryageRouter().predict(feats, CARDS)
    ds = dataset(n_per=5)
    with pytest.raises(RouterError, match="embeddings"):
        TryageRouter().fit(replace(ds, features=replace(ds.features, embeddings=None)))
    fitted = TryageRouter(max_epochs=2).fit(ds)
    with pytest.raises(RouterError, match="embeddings"):
        fitted.predict(replace(feats, embeddings=None), CARDS)
