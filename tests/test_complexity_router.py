"""Complexity router on hand-made embeddings (no model needed): tiers, labels, calibration, rules, bad input."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from routers.base import ModelCard, QueryFeatures, Router, RouterError
from routers.complexity import ComplexityRouter, cost_tiers, rule_tiers, tier_labels
from routers.dataset import RoutingDataset
from routers.objective import PRESETS, Flags, choose_batch
from routers.registry import make_router

CARDS = [ModelCard("small", 0.1, 0.1), ModelCard("medium", 1.0, 1.0), ModelCard("large", 10.0, 30.0)]
CENTRES = np.eye(8)[:4] * 3.0  # one cluster per difficulty 0..3 (3: no tier solves it)


def _features(difficulty: np.ndarray, seed: int, texts: list[str] | None = None) -> QueryFeatures:
    rng = np.random.default_rng(seed)
    emb = CENTRES[difficulty] + rng.standard_normal((len(difficulty), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(difficulty)
    texts = texts or [f"query {seed}-{i} of difficulty {d}" for i, d in enumerate(difficulty)]
    return QueryFeatures(texts=texts, stats=np.zeros((n, 2)), prompt_tokens=np.full(n, 20.0),
                         embeddings=emb.astype(np.float32))


def _dataset(counts: tuple[int, ...] = (120, 40, 60, 20), seed: int = 0) -> RoutingDataset:
    """Skewed tiers: difficulty d is solved by the models of tier >= d (d=3 by none)."""
    difficulty = np.repeat(np.arange(len(counts)), counts)
    quality = (np.arange(3)[None, :] >= difficulty[:, None]).astype(float)
    quality[difficulty == 3] = 0.0
    n = len(difficulty)
    feats = _features(difficulty, seed)
    cost = np.tile([1e-6, 1e-5, 1e-4], (n, 1))
    ds = RoutingDataset(name="tiers", queries=feats.texts, models=[c.name for c in CARDS], quality=quality,
                        prompt_tokens=feats.prompt_tokens, completion_tokens=np.full((n, 3), 10.0),
                        cost_usd=cost, cards=CARDS)
    return ds.with_features(feats)


@pytest.fixture(scope="module")
def router() -> ComplexityRouter:
    """The default router (cascade, learned confidence) fitted once for the tests that only read it."""
    return ComplexityRouter().fit(_dataset())


def test_tiers_order_models_by_cost_and_equal_costs_share_a_tier() -> None:
    assert cost_tiers(np.array([0.2, 0.1, 0.9, 0.2, 0.9])) == [[1], [0, 3], [2, 4]]


def test_label_is_the_cheapest_solving_tier_and_unsolved_queries_go_where_asked() -> None:
    quality = np.array([[1, 1, 1], [0, 0.7, 1], [0, 0, 0.4], [0, 0, 0]], dtype=float)
    tiers = [[0], [1], [2]]
    assert tier_labels(quality, tiers, 0.5, "top").tolist() == [0, 1, 2, 2]
    assert tier_labels(quality, tiers, 0.5, "cheapest").tolist() == [0, 1, 0, 0]
    assert tier_labels(quality, tiers, 0.3, "drop").tolist() == [0, 1, 2, -1]
    assert tier_labels(quality, [[0, 1], [2]], 0.5, "drop").tolist() == [0, 0, -1, -1]


def test_calibrated_tier_probabilities_match_held_out_frequencies(router: ComplexityRouter) -> None:
    test = _dataset(seed=1)
    proba = router.tier_proba(test.features)  # type: ignore[arg-type]
    labels = tier_labels(test.quality, [[0], [1], [2]], 0.5, "top")
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert np.abs(proba.mean(axis=0) - np.bincount(labels) / len(labels)).max() < 0.06
    assert (proba.argmax(axis=1) == labels).mean() > 0.8


def test_expected_quality_is_tier_probability_times_learned_tier_quality() -> None:
    router = ComplexityRouter(mode="expected").fit(_dataset())
    feats = _dataset(seed=2).features
    pred = router.predict(feats, CARDS)  # type: ignore[arg-type]
    assert np.allclose(pred.quality, router.tier_proba(feats) @ router.expected_)  # type: ignore[arg-type]
    # the top tier holds the unsolved queries: its own queries are right 60 of 80 times
    assert router.expected_[2].tolist() == pytest.approx([0.0, 0.0, 0.75])


def test_cascade_takes_the_cheapest_tier_whose_success_probability_clears_the_confidence() -> None:
    router = ComplexityRouter(mode="cascade", confidence=0.6).fit(_dataset())
    feats = _dataset(seed=3).features
    assert feats is not None
    success = np.cumsum(router.tier_proba(feats), axis=1)
    want = np.argmax(success >= 0.6, axis=1)
    got = choose_batch(router.predict(feats, CARDS), CARDS, PRESETS["quality-first"], feats.prompt_tokens)
    assert got.tolist() == want.tolist()
    assert set(got.tolist()) == {0, 1, 2}


def test_learned_confidence_keeps_quality_and_saves_cost_on_held_out_queries(router: ComplexityRouter) -> None:
    test = _dataset(seed=4)
    assert test.features is not None
    choice = choose_batch(router.predict(test.features, CARDS), CARDS, Flags(), test.features.prompt_tokens)
    rows = np.arange(len(test))
    best_single = test.quality.mean(axis=0).max()
    assert test.quality[rows, choice].mean() >= best_single - 0.02
    assert test.cost_usd[rows, choice].mean() < 0.6 * test.cost_usd[:, 2].mean()
    assert 0.3 <= router.confidence_ < 1.0


def test_a_lambda_still_moves_decisions_to_cheaper_tiers(router: ComplexityRouter) -> None:
    feats = _dataset(seed=5).features
    assert feats is not None
    pred = router.predict(feats, CARDS)
    first = choose_batch(pred, CARDS, Flags(quality=1.0, cost=0.0), feats.prompt_tokens)
    cheap = choose_batch(pred, CARDS, Flags(quality=1.0, cost=50.0), feats.prompt_tokens)
    assert (cheap <= first).all() and (cheap < first).any()


def test_rules_see_only_the_candidates_tiers() -> None:
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert rule_tiers(proba, np.array([0, 1, 2]), "argmax", 0.7).tolist() == [0, 2]
    # without tier 1 its mass goes up to tier 2; the cascade at 0.7 then needs tier 2 for the first query
    assert rule_tiers(proba, np.array([0, 2]), "cascade", 0.7).tolist() == [2, 2]
    assert rule_tiers(proba, np.array([0, 1]), "cascade", 0.99).tolist() == [1, 1]


def test_candidates_match_by_alias_then_by_nearest_price() -> None:
    router = ComplexityRouter(aliases={"pool-large": "large"}).fit(_dataset())
    assert router.model_index(ModelCard("pool-large", 99.0, 99.0)) == 2
    assert router.model_index(ModelCard("never-seen", 0.9, 1.2)) == 1
    assert router.model_index(ModelCard("free")) == 0


def test_artifact_round_trips_and_holds_no_scikit_learn_objects(tmp_path: Path) -> None:
    router = make_router("complexity", mode="expected").fit(_dataset())
    path = router.save(tmp_path / "c.router")
    loaded = Router.load(path)
    feats = _dataset(seed=6).features
    assert feats is not None
    assert np.array_equal(loaded.predict(feats, CARDS).quality, router.predict(feats, CARDS).quality)
    assert not any("sklearn" in type(v).__module__ for v in vars(loaded).values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("empty_text", "empty text"),
        ("one_model", "at least two models"),
        ("empty_tier", "tier 1 (medium): cheapest solving tier of no training query"),
        ("no_embeddings", "needs query embeddings"),
    ],
)
def test_bad_training_data_is_a_clear_logged_error(change: str, message: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    ds = _dataset()
    feats = ds.features
    assert feats is not None
    if change == "empty_text":
        ds.queries[3] = "  "
    elif change == "one_model":
        ds = ds.select_models(["large"])
    elif change == "empty_tier":
        ds = ds.subset(np.flatnonzero(ds.quality[:, 0] == ds.quality[:, 1]))  # drop what medium solves first
    else:
        ds = ds.with_features(QueryFeatures(ds.queries, feats.stats, feats.prompt_tokens))
    with caplog.at_level(logging.ERROR, logger="poolgate.routers.complexity"), \
            pytest.raises(RouterError, match=re.escape(message)):
        ComplexityRouter().fit(ds)
    assert message in caplog.text


def test_requests_it_cannot_route_raise_so_the_gateway_falls_back(router: ComplexityRouter) -> None:
    feats = _dataset(seed=8).features
    assert feats is not None
    with pytest.raises(RouterError, match="at least two candidates"):
        router.predict(feats.subset([0]), CARDS[:1])
    empty = QueryFeatures([""], feats.stats[:1], feats.prompt_tokens[:1], feats.embeddings[:1])  # type: ignore[index]
    with pytest.raises(RouterError, match="empty query text"):
        router.predict(empty, CARDS)
    with pytest.raises(RouterError, match="not fitted"):
        ComplexityRouter().predict(feats, CARDS)
