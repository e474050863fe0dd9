"""A GraphRouter artifact written before ``routers/graph.py`` was split still loads and predicts as it did.

The fixture ``tests/fixtures/graph_router_88eb281.pkl`` was written by :func:`write_fixture` with the code of
commit 88eb281, when :class:`GraphState` was defined in ``routers.graph``; its pickle names that path. The
``.npz`` beside it holds the query features it was asked about and the predictions it gave then (a pool of a
trained LLM, a registered newcomer and a model with no description). Regenerate only on purpose: a fixture
written by newer code no longer proves that old artifacts load. Artifacts written now name the same paths,
so a gateway running the older code can still read them.
"""

from __future__ import annotations

import io
import pickle
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import ARTIFACT_MAGIC, ModelCard, QueryFeatures, Router
from routers.graph import GraphRouter
from training.dataset import RoutingDataset

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARTIFACT = FIXTURES / "graph_router_88eb281.pkl"
EXPECTED = FIXTURES / "graph_router_88eb281.npz"
DIM = 16  # small embeddings keep the fixture a few KB
TASKS = ("math", "mbpp")
CARDS = [
    ModelCard("coder", 0.1, 0.2, size_b=7, description="small model tuned for code"),
    ModelCard("solver", 1.0, 2.0, size_b=70, description="large model tuned for math"),
]
NEWCOMER = ModelCard("newcomer", 0.3, 0.6, size_b=13, description="new model tuned for code and math")
MYSTERY = ModelCard("mystery", 0.5, 0.5)  # no description, size or context window: the documented fallbacks
POOL = [CARDS[1], NEWCOMER, MYSTERY]


def hash_encoder(texts: list[str]) -> np.ndarray:
    """Deterministic bag-of-words embeddings (``DIM``-d, unit norm)."""
    out = np.zeros((len(texts), DIM), np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % DIM] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def synthetic(n: int, seed: int) -> RoutingDataset:
    """Queries whose words reveal their task; ``coder`` is good at code, ``solver`` at math."""
    rng = np.random.default_rng(seed)
    tasks = [TASKS[i % 2] for i in range(n)]
    queries = [" ".join(rng.choice([f"{t}{j}" for j in range(10)], 6)) for t in tasks]
    skill = {"math": (0.2, 0.9), "mbpp": (0.9, 0.4)}
    quality = np.asarray([[float(rng.random() < p) for p in skill[t]] for t in tasks])
    prompt = rng.integers(20, 200, n).astype(np.float64)
    completion = np.full((n, len(CARDS)), 128.0)
    cost = (prompt[:, None] * np.asarray([c.input_price for c in CARDS])
            + completion * np.asarray([c.output_price for c in CARDS])) / 1e6
    return RoutingDataset("synthetic", queries, [c.name for c in CARDS], quality, prompt, completion, cost,
                          list(CARDS), tasks)


def write_fixture() -> None:
    """Fit a tiny router, register the newcomer's description, save it and record its predictions."""
    router = GraphRouter(hidden=8, epochs=10, k_neighbors=5, seed=0)
    router.text_encoder = hash_encoder
    router.fit(synthetic(40, seed=0))
    router.register_models([NEWCOMER])
    router.text_encoder = None  # as in the gateway: scores come from the artifact alone
    test = synthetic(12, seed=1)
    emb = hash_encoder(list(test.queries))
    pred = router.predict(QueryFeatures(list(test.queries), np.zeros((12, 1)), test.prompt_tokens, emb,
                                        list(test.tasks or [])), POOL)
    FIXTURES.mkdir(exist_ok=True)
    router.save(ARTIFACT)
    np.savez(EXPECTED, embeddings=emb, prompt_tokens=test.prompt_tokens, tasks=np.asarray(test.tasks),
             quality=pred.quality, cost_usd=pred.cost_usd)


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles as usual and records every (module, name) the pickle resolves."""

    def __init__(self, fh: io.BufferedIOBase) -> None:
        super().__init__(fh)
        self.seen: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.seen.add((module, name))
        return super().find_class(module, name)


def pickled_names(path: Path) -> set[tuple[str, str]]:
    """The (module, name) pairs an artifact file's pickle refers to."""
    data = path.read_bytes()
    assert data.startswith(ARTIFACT_MAGIC)
    unpickler = _RecordingUnpickler(io.BytesIO(data[len(ARTIFACT_MAGIC):]))
    assert isinstance(unpickler.load()["state"], GraphRouter)
    return unpickler.seen


def test_fixture_names_graph_state_by_its_pre_split_module_path() -> None:
    assert ("routers.graph", "GraphState") in pickled_names(ARTIFACT)


def test_new_artifacts_keep_the_pre_split_names_so_older_code_reads_them(tmp_path: Path) -> None:
    resaved = Router.load(ARTIFACT).save(tmp_path / "graph.pkl")
    names = pickled_names(resaved)
    assert ("routers.graph", "GraphState") in names
    assert not any(module == "routers.graph_net" for module, _ in names)


def test_pre_split_artifact_predicts_as_it_did_when_written() -> None:
    loaded = Router.load(ARTIFACT)
    assert isinstance(loaded, GraphRouter)
    exp = np.load(EXPECTED)
    feats = QueryFeatures([f"q{i}" for i in range(len(exp["embeddings"]))], np.zeros((len(exp["embeddings"]), 1)),
                          exp["prompt_tokens"], exp["embeddings"], [str(t) for t in exp["tasks"]])
    pred = loaded.predict(feats, POOL)
    # the registered description is read from the artifact, not re-encoded
    np.testing.assert_allclose(loaded.description_embedding(NEWCOMER), hash_encoder([NEWCOMER.description])[0],
                               rtol=1e-6)
    np.testing.assert_allclose(pred.quality, exp["quality"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pred.cost_usd, exp["cost_usd"], rtol=1e-5, atol=1e-12)


if __name__ == "__main__":  # python -m tests.test_graph_artifact_compat write
    if sys.argv[1:] == ["write"]:
        write_fixture()
