"""The online LinUCB router: it learns a 2-arm contextual problem online, forgets with decay, round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.base import ModelCard, QueryFeatures, Router, RouterError
from routers.linucb import LinUCBRouter
from routers.registry import make_router

CARDS = [ModelCard("a"), ModelCard("b")]


def _features(emb: np.ndarray) -> QueryFeatures:
    emb = np.atleast_2d(emb).astype(np.float32)
    n = len(emb)
    return QueryFeatures(["q"] * n, np.zeros((n, 1)), np.full(n, 10.0), embeddings=emb)


def _contexts(rng: np.random.Generator, n: int) -> np.ndarray:
    emb = rng.normal(size=(n, 4))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _p_correct(x: np.ndarray) -> np.ndarray:
    """Arm a is right (p 0.9) on queries with x[0] > 0, arm b on the others; the wrong arm has p 0.2."""
    a_best = x[0] > 0
    return np.array([0.9, 0.2]) if a_best else np.array([0.2, 0.9])


def _run(router: LinUCBRouter, rng: np.random.Generator, steps: int) -> np.ndarray:
    """Play ``steps`` rounds; the regret of each round (best arm's p minus the chosen arm's p)."""
    regret = np.empty(steps)
    for t, x in enumerate(_contexts(rng, steps)):
        feats = _features(x)
        arm = int(np.argmax(router.predict(feats, CARDS).quality[0]))
        p = _p_correct(x)
        regret[t] = p.max() - p[arm]
        router.update(feats, CARDS[arm].name, float(rng.random() < p[arm]))
    return regret


def test_linucb_regret_falls_on_a_two_arm_contextual_problem() -> None:
    rng = np.random.default_rng(0)
    regret = _run(LinUCBRouter(alpha=0.3, decay=1.0), rng, 600)
    first, last = regret[:100].mean(), regret[-200:].mean()
    assert last < 0.5 * first, (first, last)
    assert last < 0.15  # picks the right arm on most queries once it has learned


def test_linucb_beats_a_context_blind_policy() -> None:
    """Always the better arm on average earns regret 0.35 per round here; the contextual router does far better."""
    rng = np.random.default_rng(1)
    regret = _run(LinUCBRouter(alpha=0.3), rng, 600)
    assert regret[-300:].mean() < 0.35 / 2


def test_linucb_decay_follows_a_backend_whose_quality_drops() -> None:
    rng = np.random.default_rng(2)
    router = LinUCBRouter(alpha=0.0, decay=0.97)
    feats = _features(_contexts(rng, 1))
    for _ in range(200):
        router.update(feats, "a", 1.0)
        router.update(feats, "b", 0.5)
    assert router.predict(feats, CARDS).quality[0].argmax() == 0
    for _ in range(60):  # a degrades; old evidence fades
        router.update(feats, "a", 0.0)
    assert router.predict(feats, CARDS).quality[0].argmax() == 1


def test_linucb_unseen_backend_gets_the_prior_and_its_full_bonus() -> None:
    router = LinUCBRouter(alpha=0.5, prior=0.5)
    feats = _features(_contexts(np.random.default_rng(3), 1))
    for _ in range(50):
        router.update(feats, "a", 0.6)
    q = router.predict(feats, CARDS).quality[0]
    assert q[1] > q[0]  # b never tried: optimism sends the next query there


def test_linucb_save_load_round_trip_keeps_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    router = LinUCBRouter(alpha=0.2, decay=0.99)
    _run(router, rng, 100)
    path = router.save(tmp_path / "linucb.router")
    loaded = Router.load(path)
    assert isinstance(loaded, LinUCBRouter) and loaded.decay == 0.99 and loaded.models_ == router.models_
    probe = _features(_contexts(rng, 5))
    np.testing.assert_allclose(loaded.predict(probe, CARDS).quality, router.predict(probe, CARDS).quality)
    loaded.update(probe, "a", 1.0)  # a loaded router keeps learning
    assert loaded.n_[loaded.models_.index("a")] > router.n_[router.models_.index("a")]
    assert not any(p.suffix == ".pkl" for p in tmp_path.iterdir())


def test_linucb_is_registered_and_serves_unfitted() -> None:
    router = make_router("linucb")
    assert router.is_fitted  # a fresh instance routes at the prior
    q = router.predict(_features(np.ones(4) / 2), CARDS).quality
    assert q.shape == (1, 2) and np.allclose(q[0, 0], q[0, 1])


def test_linucb_refuses_rewards_outside_unit_range_and_changed_dimensions() -> None:
    router = LinUCBRouter()
    with pytest.raises(RouterError, match="rewards"):
        router.update(_features(np.ones(4)), "a", 1.5)
    router.update(_features(np.ones(4)), "a", 1.0)
    with pytest.raises(RouterError, match="dim"):
        router.update(_features(np.ones(6)), "a", 1.0)
