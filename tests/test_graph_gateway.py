"""A GraphRouter artifact served by the gateway: real MiniLM embeddings, the real openai client, a pool that
mixes trained LLM nodes with a model the graph has never seen (scored from its registered description)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows

TRAINED = ("llama-3.1-nemotron-51b-instruct", "qwen2.5-7b-instruct", "gemma-2-9b-it")
UNSEEN = "mixtral-8x7b-instruct-v0.1"
UNSEEN_DESCRIPTION = ("Mixtral-8x7B-Instruct is a sparse mixture-of-experts model with eight 7-billion parameter "
                      "experts, tuned to follow instructions for reasoning, math, code and general questions.")
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from routers.base import ModelCard
    from routers.graph import GraphRouter
    from training.features import Featurizer
    from training.loaders import load_dataset

    folder = tmp_path_factory.mktemp("graph")
    featurizer = Featurizer(cache_dir=folder / "emb")
    ds = load_dataset("llmrouter", limit=300).select_models(list(TRAINED))
    ds = ds.with_features(featurizer.featurize_dataset(ds))
    router = GraphRouter(epochs=60, seed=0)
    router.text_encoder = featurizer.embed
    router.fit(ds)
    # a new model joins the pool without retraining: its description is embedded into the artifact
    router.register_models([ModelCard(UNSEEN, 0.6, 0.6, size_b=46.7, description=UNSEEN_DESCRIPTION)])
    prices = {c.name: c.input_price for c in ds.cards} | {UNSEEN: 0.6}
    return router.save(folder / "graph.router"), prices


def test_graph_router_serves_a_mixed_pool_and_a_cost_flag_moves_the_choice(
    artifact: tuple[Path, dict], fake_backends, gateway, tmp_path: Path
) -> None:
    path, prices = artifact
    urls = {name: fake_backends(name)[1].url for name in (*TRAINED, UNSEEN)}
    backends = [backend_yaml(n, u, input_price=prices[n], output_price=prices[n], retries=0) for n, u in urls.items()
                if n != UNSEEN]
    backends.append(backend_yaml(UNSEEN, urls[UNSEEN], input_price=0.6, output_price=0.6, size_b=46.7, retries=0,
                                 description=json.dumps(UNSEEN_DESCRIPTION)))
    pool = "backends:\n" + "\n".join(backends) + f"""
pools:
  - name: auto
    members: {json.dumps([*TRAINED, UNSEEN])}
    router: graph
    artifact: {path}
    objective: quality-first
"""
    gw = gateway(pool, embedding_cache_dir=tmp_path / "emb")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert first.headers["x-poolgate-router"] == "graph"  # not the fallback "graph>cheapest"
    assert first.headers["x-poolgate-backend"] in urls
    cheap = client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, extra_body={"poolgate": {"flags": {"cost": 100000}}})
    assert cheap.headers["x-poolgate-backend"] == "gemma-2-9b-it"  # the cheapest, once cost dominates
    rows = sorted(wait_rows(gw.settings.database_url, 2), key=lambda r: r["created_at"])
    predicted = {c["backend"]: c["quality"] for c in rows[0]["candidates"]}
    assert set(predicted) == set(urls)
    assert all(0 < q < 1 for q in predicted.values())  # the unseen model too: scored, not zeroed
    cost = {c["backend"]: c["expected_cost_usd"] for c in rows[0]["candidates"]}
    assert cost["llama-3.1-nemotron-51b-instruct"] > 4 * cost["gemma-2-9b-it"]  # the graph's cost head, in USD
