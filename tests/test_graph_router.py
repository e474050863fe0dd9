"""GraphRouter on a small synthetic routing set: it learns task structure, is deterministic, round-trips
through its artifact, refuses corrupt or mismatched artifacts by file name, and scores bad input."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from routers import artifact
from routers.base import ModelCard, QueryFeatures, Router, RouterError
from routers.dataset import RoutingDataset
from routers.features import text_stats
from routers.graph import GraphRouter
from routers.registry import make_router

TASKS = ("math", "gsm8k", "mbpp")
#: probability that each model answers each task well
SKILL = {
    "small": {"math": 0.2, "gsm8k": 0.3, "mbpp": 0.85},
    "mid": {"math": 0.75, "gsm8k": 0.7, "mbpp": 0.3},
    "big": {"math": 0.85, "gsm8k": 0.85, "mbpp": 0.6},
}
CARDS = [
    ModelCard("small", 0.1, 0.1, size_b=7, description="small fast model tuned for code"),
    ModelCard("mid", 0.3, 0.3, size_b=20, description="medium model tuned for math reasoning"),
    ModelCard("big", 1.0, 1.0, size_b=70, description="large strong general model"),
]


def hash_encoder(texts: list[str]) -> np.ndarray:
    """A deterministic bag-of-words embedding (384-d, unit norm): a real encoder, no model download."""
    out = np.zeros((len(texts), 384), np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def synthetic(n: int, seed: int) -> RoutingDataset:
    """Queries whose words reveal their task; each model is good at some tasks (Bernoulli outcomes)."""
    rng = np.random.default_rng(seed)
    tasks = [TASKS[i % 3] for i in range(n)]
    queries = [" ".join([*rng.choice([f"{t}{j}" for j in range(25)], 8), f"id{seed}x{i}"]) for i, t in enumerate(tasks)]
    quality = np.asarray([[float(rng.random() < SKILL[c.name][t]) for c in CARDS] for t in tasks])
    prompt = rng.integers(20, 200, n).astype(np.float64)
    completion = np.full((n, len(CARDS)), 256.0)
    p_in = np.asarray([c.input_price for c in CARDS]) / 1e6
    cost = prompt[:, None] * p_in + completion * np.asarray([c.output_price for c in CARDS]) / 1e6
    return RoutingDataset("synthetic", queries, [c.name for c in CARDS], quality, prompt, completion, cost,
                          list(CARDS), tasks)


def features(ds: RoutingDataset) -> QueryFeatures:
    """What the gateway gives ``predict``: text, text statistics, prompt tokens, embedding (no task label)."""
    return QueryFeatures(ds.queries, text_stats(ds.queries), ds.prompt_tokens, hash_encoder(ds.queries))


def fitted(seed: int = 0) -> GraphRouter:
    router = GraphRouter(epochs=120, hidden=32, seed=seed)
    router.text_encoder = hash_encoder
    return router.fit(synthetic(360, seed=0))


@pytest.fixture(scope="module")
def router() -> GraphRouter:
    return fitted()


@pytest.fixture(scope="module")
def test_set() -> RoutingDataset:
    return synthetic(150, seed=1)


def test_registry_builds_the_graph_router() -> None:
    assert isinstance(make_router("graph"), GraphRouter)


def test_predictions_are_probabilities_and_usd_costs_for_every_pair(router, test_set) -> None:
    pred = router.predict(features(test_set), CARDS)
    assert pred.quality.shape == pred.cost_usd.shape == (150, 3)
    assert ((pred.quality > 0) & (pred.quality < 1)).all()
    # cost is price x tokens up to a learned residual; the 10x price ratio must survive
    assert (pred.cost_usd[:, 2] > 5 * pred.cost_usd[:, 0]).all()


def test_it_learns_which_model_is_good_at_which_task_without_task_labels(router, test_set) -> None:
    pred = router.predict(features(test_set), CARDS).quality
    by_task = {t: pred[[i for i, x in enumerate(test_set.tasks or []) if x == t]].mean(axis=0) for t in TASKS}
    assert by_task["mbpp"][0] > by_task["mbpp"][1] + 0.2  # the code model on code
    assert by_task["math"][1] > by_task["math"][0] + 0.2  # the math model on math
    # the expected quality of its choices (noise-free, from SKILL) beats the best single model's 0.767
    chosen = pred.argmax(axis=1)
    expected = np.mean([SKILL[CARDS[j].name][t] for j, t in zip(chosen, test_set.tasks or [], strict=True)])
    best_single = max(np.mean([SKILL[c.name][t] for t in TASKS]) for c in CARDS)
    assert expected > best_single + 0.04  # the per-task best policy reaches 0.85


def test_same_seed_same_predictions_and_batch_equals_one_by_one(router, test_set) -> None:
    again = fitted()
    feats = features(test_set)
    np.testing.assert_array_equal(router.predict(feats, CARDS).quality, again.predict(feats, CARDS).quality)
    one = np.concatenate([router.predict(feats.subset([i]), CARDS).quality for i in range(5)])
    np.testing.assert_allclose(one, router.predict(feats.subset(range(5)), CARDS).quality, rtol=1e-5, atol=1e-6)


def test_artifact_round_trip_gives_identical_predictions(router, test_set, tmp_path: Path) -> None:
    path = router.save(tmp_path / "graph.router")
    loaded = Router.load(path)
    assert isinstance(loaded, GraphRouter) and loaded.text_encoder is None  # encoders are never stored
    feats = features(test_set)
    np.testing.assert_array_equal(loaded.predict(feats, CARDS).quality, router.predict(feats, CARDS).quality)
    np.testing.assert_array_equal(loaded.predict(feats, CARDS).cost_usd, router.predict(feats, CARDS).cost_usd)


def test_truncated_artifact_fails_at_load_naming_the_file(router, tmp_path: Path) -> None:
    path = router.save(tmp_path / "graph.router")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(RouterError, match=r"graph\.router: not a valid artifact zip"):
        Router.load(path)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: s.update(format_=99), "format 99"),
        (lambda s: s["weights_"].pop("head.0.weight"), "weights do not match"),
        (lambda s: s["weights_"].update({"head.0.weight": np.zeros((5, 5), np.float32)}), "weights do not match"),
    ],
)
def test_mismatched_artifact_fails_at_load_naming_file_and_reason(router, tmp_path: Path, edit, reason) -> None:
    state = router.get_state()
    state["weights_"] = dict(state["weights_"])
    edit(state)
    path = tmp_path / "bad.router"
    path.write_bytes(artifact.dumps("graph", router.get_params(), state))
    with pytest.raises(RouterError, match=rf"bad\.router: .*{reason}"):
        Router.load(path)


def test_queries_without_task_labels_and_unknown_llm_without_description_are_scored(router, test_set) -> None:
    feats = features(test_set)
    mystery = ModelCard("mystery", 0.5, 0.5)  # no description, no size, no context window
    pool = [CARDS[2], mystery, ModelCard("newcomer", 0.2, 0.4, size_b=13, description="a new coding model")]
    pred = router.predict(feats, pool)
    assert pred.quality.shape == (150, 3) and np.isfinite(pred.quality).all() and np.isfinite(pred.cost_usd).all()
    assert (pred.cost_usd > 0).all()
    # the trained node keeps its own evidence: the same scores as in the trained pool
    same = router.predict(feats, [CARDS[2]]).quality[:, 0]
    np.testing.assert_allclose(pred.quality[:, 0], same, rtol=1e-6)


def test_registered_description_is_used_without_an_encoder(router, tmp_path: Path) -> None:
    card = ModelCard("newcomer", 0.2, 0.4, size_b=13, description="small fast model tuned for code and tests")
    router.register_models([card], encoder=hash_encoder)
    loaded = Router.load(router.save(tmp_path / "graph.router"))
    assert isinstance(loaded, GraphRouter)
    np.testing.assert_allclose(loaded.description_embedding(card), hash_encoder([card.description])[0], rtol=1e-6)
    blank = ModelCard("blank", 0.2, 0.4)
    np.testing.assert_array_equal(loaded.description_embedding(blank), loaded.state_.desc_mean)


def test_bad_query_input_gets_a_clear_router_error(router, test_set) -> None:
    feats = features(test_set)
    with pytest.raises(RouterError, match="needs query embeddings"):
        router.predict(QueryFeatures(feats.texts, feats.stats, feats.prompt_tokens), CARDS)
    with pytest.raises(RouterError, match="shape"):
        router.predict(QueryFeatures(feats.texts, feats.stats, feats.prompt_tokens, feats.embeddings[:, :10]), CARDS)
    with pytest.raises(RouterError, match="not fitted"):
        GraphRouter().predict(feats, CARDS)
    empty = router.predict(feats.subset([]), CARDS)
    assert empty.quality.shape == (0, 3)
