"""IRT / matrix-factorization router on a synthetic pool whose quality depends on each model's embedding direction."""

from __future__ import annotations

import io
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from routers.base import ModelCard, QueryFeatures, Router, RouterError
from routers.dataset import RoutingDataset
from routers.irt import CardFeatures, IRTRouter
from routers.registry import make_router

DIM = 8
#: two strong (large, dear) and two weak (small, cheap) models, each good in its own direction of embedding space
CARDS = [
    ModelCard("atlas-70b", 5.0, 15.0, size_b=70.0, release_date=date(2024, 6, 1),
              description="large strong reasoning model for hard questions"),
    ModelCard("orion-65b", 4.0, 12.0, size_b=65.0, release_date=date(2024, 9, 1),
              description="large strong reasoning model with long answers"),
    ModelCard("pico-2b", 0.1, 0.2, size_b=2.0, release_date=date(2024, 3, 1),
              description="small fast cheap model for simple chat"),
    ModelCard("nano-3b", 0.15, 0.3, size_b=3.0, release_date=date(2024, 1, 1),
              description="small fast cheap model for short replies"),
]
ABILITY = np.array([1.5, 1.2, -1.5, -1.2])


def _directions() -> np.ndarray:
    return np.eye(DIM)[:4]


def _features(emb: np.ndarray, encoder: str | None = "minilm") -> QueryFeatures:
    n = len(emb)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return QueryFeatures(texts=[f"query {i}" for i in range(n)],
                         stats=np.zeros((n, 3)), prompt_tokens=np.full(n, 20.0),
                         embeddings=unit.astype(np.float32), encoder=encoder)


def _true_quality(emb: np.ndarray) -> np.ndarray:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-(4.0 * unit @ _directions().T * np.sqrt(DIM) / 2 + ABILITY)))


def _queries(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM))


def _dataset(n: int = 600, seed: int = 0) -> RoutingDataset:
    emb = _queries(n, seed)
    feats = _features(emb)
    quality = (np.random.default_rng(seed + 1).random((n, 4)) < _true_quality(emb)).astype(np.float64)
    ds = RoutingDataset(name="synthetic", queries=feats.texts, models=[c.name for c in CARDS], quality=quality,
                        prompt_tokens=np.full(n, 20.0), completion_tokens=np.full((n, 4), 50.0),
                        cost_usd=np.tile([c.cost_usd(20, 50) for c in CARDS], (n, 1)), cards=CARDS)
    return ds.with_features(feats)


@pytest.fixture(scope="module")
def router() -> IRTRouter:
    return IRTRouter(seed=0).fit(_dataset())


def test_irt_picks_far_better_than_random_on_new_queries(router: IRTRouter) -> None:
    emb = _queries(400, seed=7)
    truth = _true_quality(emb)
    pred = router.predict(_features(emb), CARDS)
    picked = truth[np.arange(len(emb)), pred.quality.argmax(axis=1)].mean()
    random_pick, oracle = truth.mean(), truth.max(axis=1).mean()
    assert picked > random_pick + 0.6 * (oracle - random_pick)
    # the predicted quality tracks the true probability cell by cell
    assert np.corrcoef(pred.quality.ravel(), truth.ravel())[0, 1] > 0.8


def test_a_saved_and_loaded_router_predicts_identically(router: IRTRouter, tmp_path: Path) -> None:
    loaded = Router.load(router.save(tmp_path / "irt.pgr"))
    assert isinstance(loaded, IRTRouter)
    feats = _features(_queries(50, seed=3))
    candidates = [*CARDS, ModelCard("stranger", 1.0, 1.0, size_b=30.0, description="a model nobody has seen")]
    before, after = router.predict(feats, candidates), loaded.predict(feats, candidates)
    assert np.array_equal(before.quality, after.quality)
    assert before.uncertainty is not None and after.uncertainty is not None
    assert np.array_equal(before.uncertainty, after.uncertainty)


def test_the_artifact_holds_only_json_and_plain_numeric_arrays(router: IRTRouter, tmp_path: Path) -> None:
    path = router.save(tmp_path / "irt.pgr")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert "manifest.json" in names
        arrays = [n for n in names if n != "manifest.json"]
        assert arrays and all(n.startswith("arrays/") and n.endswith(".npy") for n in arrays)
        for name in arrays:
            arr = np.load(io.BytesIO(zf.read(name)), allow_pickle=False)  # raises on any pickled (object) array
            assert arr.dtype.kind in "biuf"


def test_a_new_model_is_scored_from_its_card_and_ranks_with_the_training_models_it_resembles(
        router: IRTRouter) -> None:
    newcomer = ModelCard("zephyr-68b", 4.5, 14.0, size_b=68.0, release_date=date(2024, 8, 1),
                         description="large strong reasoning model for hard questions")
    weakling = ModelCard("mite-1b", 0.1, 0.1, size_b=1.0, release_date=date(2024, 2, 1),
                         description="small fast cheap model")
    feats = _features(_queries(300, seed=11))
    pred = router.predict(feats, [*CARDS, newcomer, weakling])
    assert pred.quality.shape == (300, 6)
    assert np.all((pred.quality[:, 4:] > 0) & (pred.quality[:, 4:] < 1))
    mean = pred.quality.mean(axis=0)
    strong, weak = mean[:2].mean(), mean[2:4].mean()
    assert mean[4] > max(mean[2:4])  # above both weak training models
    assert abs(mean[4] - strong) < abs(mean[4] - weak)
    assert mean[5] < min(mean[:2])  # and a small cheap card below both strong ones
    assert abs(mean[5] - weak) < abs(mean[5] - strong)


def test_uncertainty_has_the_quality_shape_and_averages_about_one(router: IRTRouter) -> None:
    train = _dataset().features
    assert train is not None
    pred = router.predict(train, CARDS)
    assert pred.uncertainty is not None and pred.uncertainty.shape == pred.quality.shape
    assert np.all(pred.uncertainty >= 0)
    assert pred.uncertainty.mean() == pytest.approx(1.0, rel=1e-6)  # scaled by the training cells' mean spread
    fresh = router.predict(_features(_queries(200, seed=5)), CARDS).uncertainty
    assert fresh is not None and 0.6 < fresh.mean() < 1.6


def test_a_single_member_reports_no_uncertainty() -> None:
    pred = IRTRouter(n_members=1, epochs=3).fit(_dataset(n=120)).predict(_features(_queries(5, 1)), CARDS)
    assert pred.uncertainty is None


def test_predict_refuses_embeddings_of_another_encoder(router: IRTRouter) -> None:
    with pytest.raises(RouterError, match="fitted on 'minilm' embeddings, got 'minilm-static'"):
        router.predict(_features(_queries(3, 1), encoder="minilm-static"), CARDS)


def test_missing_embeddings_and_unfitted_use_are_clear_errors(router: IRTRouter) -> None:
    ds = _dataset(n=60)
    with pytest.raises(RouterError, match="needs query embeddings"):
        IRTRouter().fit(RoutingDataset(**{**ds.__dict__, "features": None}))
    bare = QueryFeatures(texts=["x"], stats=np.zeros((1, 3)), prompt_tokens=np.ones(1))
    with pytest.raises(RouterError, match="needs query embeddings"):
        router.predict(bare, CARDS)
    with pytest.raises(RouterError, match="not fitted"):
        IRTRouter().predict(_features(_queries(2, 1)), CARDS)
    with pytest.raises(RouterError, match="bad parameter n_members"):
        IRTRouter(n_members=0).fit(ds)


def test_same_seed_same_router_and_registered_by_name() -> None:
    ds = _dataset(n=200)
    feats = _features(_queries(20, seed=9))
    a = make_router("irt", seed=3, n_members=2).fit(ds).predict(feats, CARDS).quality
    b = IRTRouter(seed=3, n_members=2).fit(ds).predict(feats, CARDS).quality
    assert np.array_equal(a, b)


def test_card_vocabulary_keeps_only_words_shared_by_some_but_not_all_cards() -> None:
    vocab = CardFeatures.fit(CARDS).vocab
    assert {"large", "strong", "small", "cheap"} <= set(vocab)
    assert "atlas" not in vocab and "70b" not in vocab  # on one card only: it could only memorize that card
    assert "model" not in vocab  # on every card: says nothing
