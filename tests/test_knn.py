"""kNN router on hand-made embeddings (no model needed): neighbours, k by CV on training data, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.base import ModelCard, QueryFeatures, Router, RouterError
from routers.dataset import RoutingDataset
from routers.knn import KNNRouter
from routers.registry import make_router

CARDS = [ModelCard("cheap", 0.1, 0.1), ModelCard("strong", 10.0, 30.0)]


def _features(emb: np.ndarray, texts: list[str]) -> QueryFeatures:
    n = len(texts)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return QueryFeatures(texts=texts, stats=np.zeros((n, 1)), prompt_tokens=np.full(n, 10.0),
                         embeddings=unit.astype(np.float32))


def _clusters(n_per: int = 30, seed: int = 0) -> RoutingDataset:
    """Two clusters of queries: near +x only 'strong' is right, near -x only 'cheap' is right."""
    rng = np.random.default_rng(seed)
    a = np.array([1.0, 0.0, 0.0]) + 0.1 * rng.standard_normal((n_per, 3))
    b = np.array([-1.0, 0.0, 0.0]) + 0.1 * rng.standard_normal((n_per, 3))
    texts = [f"hard {i}" for i in range(n_per)] + [f"easy {i}" for i in range(n_per)]
    quality = np.vstack([np.tile([0.0, 1.0], (n_per, 1)), np.tile([1.0, 0.0], (n_per, 1))])
    n = 2 * n_per
    ds = RoutingDataset(name="clusters", queries=texts, models=["cheap", "strong"], quality=quality,
                        prompt_tokens=np.full(n, 10.0), completion_tokens=np.full((n, 2), 5.0),
                        cost_usd=np.tile([1e-6, 1e-4], (n, 1)), cards=CARDS)
    return ds.with_features(_features(np.vstack([a, b]), texts))


def test_knn_predicts_the_quality_of_the_nearest_training_queries() -> None:
    router = KNNRouter(k=5).fit(_clusters())
    query = _features(np.array([[0.9, 0.1, 0.0], [-1.0, 0.05, 0.0]]), ["new hard", "new easy"])
    pred = router.predict(query, CARDS)
    assert pred.quality.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_knn_scores_candidates_by_name_and_unknown_ones_zero() -> None:
    router = KNNRouter(k=3).fit(_clusters())
    query = _features(np.array([[-1.0, 0.0, 0.0]]), ["easy"])
    pred = router.predict(query, [ModelCard("unknown"), CARDS[0]])
    assert pred.quality.tolist() == [[0.0, 1.0]]


def test_k_is_chosen_by_cross_validation_on_the_training_data() -> None:
    ds = _clusters(n_per=40)
    # flip a few labels inside each cluster: k=1 then copies the noise, larger k averages it away
    noisy = ds.quality.copy()
    noisy[::7] = 1.0 - noisy[::7]
    ds = RoutingDataset(**{**ds.__dict__, "quality": noisy})
    router = KNNRouter(k_grid=(1, 15), cv_folds=4).fit(ds)
    assert router.k_ == 15
    assert router.cv_mse_[15] < router.cv_mse_[1]


def test_knn_without_embeddings_is_a_clear_error() -> None:
    ds = _clusters()
    bare = RoutingDataset(**{**ds.__dict__, "features": None})
    with pytest.raises(RouterError, match="needs query embeddings"):
        KNNRouter().fit(bare)
    router = KNNRouter(k=1).fit(ds)
    no_emb = QueryFeatures(texts=["x"], stats=np.zeros((1, 1)), prompt_tokens=np.ones(1))
    with pytest.raises(RouterError, match="needs query embeddings"):
        router.predict(no_emb, CARDS)


def test_knn_is_registered_and_round_trips_through_an_artifact(tmp_path: Path) -> None:
    router = make_router("knn", k=3).fit(_clusters())
    loaded = Router.load(router.save(tmp_path / "knn.pgr"))
    query = _features(np.array([[1.0, 0.0, 0.0]]), ["q"])
    assert np.array_equal(loaded.predict(query, CARDS).quality, router.predict(query, CARDS).quality)


def test_neighbours_at_equal_similarity_are_the_earlier_keys_whatever_the_last_bit() -> None:
    from routers.knn import _top_k

    rng = np.random.default_rng(0)
    key = rng.normal(size=16).astype(np.float32)
    key /= np.linalg.norm(key)
    keys = np.stack([key * 0.5, key, key, key * (1 + 1e-7), -key])  # 1, 2, 3 are the same key up to the last bit
    picked = _top_k(key[None, :], keys, 2)[0]
    assert picked.tolist() == [1, 2]
