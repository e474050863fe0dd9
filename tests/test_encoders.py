"""The two sentence encoders (``minilm``, ``minilm-static``): the static one embeds like a sentence encoder, routers
remember the encoder they were fitted with and refuse another, and the gateway serves a router with its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from gateway.routing.embedding import Embedders
from routers.base import QueryFeatures, Router, RouterError
from routers.encoders.static import StaticEncoder
from routers.features import text_stats
from tests.dbutil import wait_rows
from tests.servers import ServerThread
from training.features import Featurizer
from training.loaders import load_dataset
from training.train_router import save_result, train_router

MIXTRAL, GPT4 = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"  # the data set's model names
POOL = f"""
backends:
  - {{{{name: "{MIXTRAL}", base_url: "{{replay}}/mixtral-8x7b/v1", model: mixtral-8x7b, input_price: 0.6,
     output_price: 0.6}}}}
  - {{{{name: "{GPT4}", base_url: "{{replay}}/gpt-4-1106/v1", model: gpt-4-1106, input_price: 10.0,
     output_price: 30.0}}}}
pools:
  - {{{{name: auto, members: ["{MIXTRAL}", "{GPT4}"], router: knn, artifact: "{{artifact}}", objective: balanced}}}}
"""


@pytest.fixture(scope="module")
def static() -> StaticEncoder:
    encoder = StaticEncoder()  # the packaged Model2Vec model (routers/encoders/data/minilm-static)
    encoder.load()
    return encoder


def test_static_embeddings_are_unit_vectors_and_related_texts_are_closer(static: StaticEncoder) -> None:
    vec = static(["How do I sort a list in Python?", "Sorting a Python list: which function?",
                  "Who won the football world cup in 1998?", ""])
    assert vec.shape == (4, 384) and vec.dtype == np.float32
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert vec[0] @ vec[1] > vec[0] @ vec[2] + 0.1
    assert np.array_equal(static(["How do I sort a list in Python?"])[0], vec[0])  # deterministic


def test_one_default_encoder_for_the_library_and_the_command_line() -> None:
    from gateway.settings import Settings
    from training.features import DEFAULT_ENCODER

    assert Settings().embedding_encoder == DEFAULT_ENCODER == Featurizer().encoder == "minilm-static"


def test_featurizer_stamps_its_encoder_and_rejects_unknown_ones(tmp_path: Path) -> None:
    feats = Featurizer(cache_dir=tmp_path, encoder="minilm-static").featurize(["a question", "another"])
    assert feats.encoder == "minilm-static" and feats.embeddings is not None and feats.embeddings.shape == (2, 384)
    assert feats.subset([1]).encoder == "minilm-static"
    assert not (tmp_path / "static").exists() and not list(tmp_path.glob("**/chunk-*"))  # no per-text cache
    with pytest.raises(ValueError, match="unknown encoder 'bert'"):
        Featurizer(encoder="bert")


def _features(texts: list[str], embeddings: np.ndarray, encoder: str | None) -> QueryFeatures:
    return QueryFeatures(texts, text_stats(texts), np.full(len(texts), 20.0), embeddings, encoder=encoder)


def test_a_router_refuses_embeddings_of_another_encoder_than_it_was_fitted_on(tmp_path: Path) -> None:
    result = train_router("knn", "routellm-gsm8k", limit=120, encoder="minilm-static")
    router = Router.load(save_result(result, tmp_path / "knn.router").path)  # type: ignore[arg-type]
    assert router.encoder_ == "minilm-static"
    cards = load_dataset("routellm-gsm8k", limit=120).cards
    texts = ["What is 12 times 7?"]
    vec = Featurizer(encoder="minilm-static").embed(texts)
    assert router.predict(_features(texts, vec, "minilm-static"), cards).quality.shape == (1, len(cards))
    with pytest.raises(RouterError, match="fitted on 'minilm-static' embeddings, got 'minilm'"):
        router.predict(_features(texts, vec, "minilm"), cards)


def test_a_graph_router_artifact_keeps_its_encoder(tmp_path: Path) -> None:
    result = train_router("graph", "routellm-gsm8k", limit=120, encoder="minilm-static", params={"epochs": 2})
    assert Router.load(save_result(result, tmp_path / "graph.router").path).encoder_ == "minilm-static"  # type: ignore[arg-type]


async def test_gateway_embedders_give_what_the_featurizer_gave_at_training(static: StaticEncoder) -> None:
    embedders = Embedders()
    text = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    served = await embedders.embed(text, "minilm-static")
    assert np.array_equal(served, Featurizer(encoder="minilm-static").embed([text])[0])
    with pytest.raises(ValueError, match="unknown encoder"):
        await embedders.embed(text, "bert")
    embedders.close()


@pytest.fixture(scope="module")
def replay() -> Iterator[ServerThread]:
    from gateway.replay.data import ReplayStore
    from gateway.replay.server import create_replay_app

    with ServerThread(create_replay_app(ReplayStore.load())) as server:
        yield server


def test_pool_serves_a_static_encoder_router_with_static_embeddings(
    tmp_path: Path, replay: ServerThread, gateway: Callable[..., ServerThread]
) -> None:
    result = train_router("knn", "routellm-gsm8k", limit=200, encoder="minilm-static")
    artifact = save_result(result, tmp_path / "knn-static.router").path
    server = gateway(POOL.format(replay=replay.url, artifact=artifact))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    prompts = ["What is 15% of 80?", "A train travels 60 miles in 1.5 hours. What is its average speed?"]
    for prompt in prompts:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}])
        assert raw.headers["x-poolgate-router"] == "knn"  # not "knn>cheapest": the router itself decided
        assert raw.parse().choices[0].message.content
    rows = wait_rows(server.settings.database_url, len(prompts))  # type: ignore[attr-defined]
    assert all(r["router"] == "knn" for r in rows)
    assert {r["backend"] for r in rows} <= {MIXTRAL, GPT4}
