"""Request-time embeddings: batching across concurrent requests, caching, failures, and fidelity to the featurizer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from gateway.routing.embedding import EmbeddingBatcher
from routers.encoders.minilm import MiniLMEncoder


class SlowCounter:
    """An embed function that records each batch and takes ``delay_s`` (so requests pile up meanwhile)."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        threading.Event().wait(self.delay_s)
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)


async def test_lone_request_is_embedded_at_once_and_then_cached() -> None:
    fn = SlowCounter(delay_s=0.0)
    batcher = EmbeddingBatcher(fn)
    first = await batcher.embed("hello")
    again = await batcher.embed("hello")
    assert fn.batches == [["hello"]]
    assert again is first and first.tolist() == [5.0, 1.0]


async def test_requests_arriving_while_the_encoder_is_busy_share_the_next_batch() -> None:
    fn = SlowCounter(delay_s=0.1)
    batcher = EmbeddingBatcher(fn, max_batch=8)
    first = asyncio.create_task(batcher.embed("a"))
    await asyncio.sleep(0.03)  # the first batch is running now
    rest = [asyncio.create_task(batcher.embed(t)) for t in ("bb", "ccc", "bb", "dddd")]
    results = await asyncio.gather(first, *rest)
    assert fn.batches == [["a"], ["bb", "ccc", "dddd"]]  # duplicates embedded once
    assert [r[0] for r in results] == [1.0, 2.0, 3.0, 2.0, 4.0]
    assert len(fn.threads) == 1 and fn.threads.pop().startswith("poolgate-embed")


async def test_max_batch_splits_a_crowd() -> None:
    fn = SlowCounter(delay_s=0.0)
    batcher = EmbeddingBatcher(fn, max_batch=2)
    await asyncio.gather(*(batcher.embed(str(i)) for i in range(5)))
    assert [len(b) for b in fn.batches] == [2, 2, 1]


async def test_a_failing_batch_fails_every_waiter_and_the_next_batch_still_runs() -> None:
    calls = []

    def flaky(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        if len(calls) == 1:
            raise RuntimeError("encoder down")
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = EmbeddingBatcher(flaky)
    results = await asyncio.gather(batcher.embed("x"), batcher.embed("y"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert (await batcher.embed("x")).tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def queries() -> list[str]:
    from training.loaders import load_dataset

    ds = load_dataset("llmrouter", limit=40)
    return sorted(ds.queries, key=len)[::4]  # short to long, a few of each


async def test_training_and_serving_embed_with_one_minilm_implementation(queries: list[str]) -> None:
    """The featurizer (training) and the gateway's embedders (serving) both run ``MiniLMEncoder``: float32 in
    training, equal to sentence-transformers' own encode to float rounding; ``auto`` (bfloat16 where native) at
    serving, within rounding of bfloat16 of the training vectors."""
    from sentence_transformers import SentenceTransformer

    from gateway.routing.embedding import Embedders
    from routers.encoders.model import model_path
    from training.features import Featurizer

    featurizer = Featurizer(encoder="minilm", disk_cache=False)
    training = featurizer.embed(queries)
    assert isinstance(featurizer._model, MiniLMEncoder)
    library = SentenceTransformer(str(model_path()), device="cpu").encode(
        queries, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    assert training.shape == library.shape == (len(queries), 384) and training.dtype == np.float32
    assert np.abs(training - library).max() < 1e-4

    import torch

    threads = torch.get_num_threads()  # the serving encoder limits torch to one thread in its own thread only
    embedders = Embedders()
    try:
        serving = np.stack([await embedders.embed(q, "minilm") for q in queries])
    finally:
        embedders.close()
        torch.set_num_threads(threads)
    assert embedders._batcher is not None and isinstance(embedders._batcher.embed_fn, MiniLMEncoder)
    assert serving.shape == training.shape and serving.dtype == np.float32
    assert (serving * training).sum(axis=1).min() > 0.9995
    exact = MiniLMEncoder(dtype="float32")(queries)  # the serving class in float32 is the training computation
    np.testing.assert_array_equal(exact, training)


async def test_training_and_serving_share_the_static_encoder(queries: list[str]) -> None:
    from gateway.routing.embedding import Embedders
    from training.features import Featurizer

    training = Featurizer(encoder="minilm-static").embed(queries[:4])
    embedders = Embedders()
    try:
        serving = np.stack([await embedders.embed(q, "minilm-static") for q in queries[:4]])
    finally:
        embedders.close()
    np.testing.assert_allclose(serving, training, rtol=0, atol=1e-6)
