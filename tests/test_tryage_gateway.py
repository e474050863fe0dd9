"""A fitted Tryage artifact served by the gateway: real MiniLM embeddings, real openai client, flags apply.

Fits a small Tryage (one MLP) on a slice of RouteLLM GSM8K (real prompts, real correctness, real answer
lengths) and serves it over two fake backends named after the data set's models.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from routers.tryage import TryageRouter
    from training.features import Featurizer
    from training.loaders import load_dataset

    folder = tmp_path_factory.mktemp("tryage")
    ds = load_dataset("routellm-gsm8k", limit=100)
    ds = ds.with_features(Featurizer(cache_dir=folder / "emb").featurize_dataset(ds))
    return TryageRouter(members=1, max_epochs=15, seed=0).fit(ds).save(folder / "tryage.router")


def test_tryage_serves_and_a_cost_flag_moves_the_choice_to_the_cheap_model(
    artifact: Path, fake_backends, gateway, tmp_path: Path
) -> None:
    _, strong = fake_backends(STRONG)
    _, weak = fake_backends(WEAK)
    pool = f"""
backends:
{backend_yaml(STRONG, strong.url, input_price=10, output_price=30, retries=0)}
{backend_yaml(WEAK, weak.url, input_price=0.6, output_price=0.6, retries=0)}
pools:
  - name: auto
    members: ["{STRONG}", "{WEAK}"]
    router: tryage
    artifact: {artifact}
    objective: quality-first
"""
    gw = gateway(pool, embedding_cache_dir=tmp_path / "emb")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert first.headers["x-poolgate-router"] == "tryage"
    assert first.headers["x-poolgate-backend"] == STRONG  # GPT-4 is right more often on GSM8K
    cheap = client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, extra_body={"poolgate": {"flags": {"cost": 100000}}})
    assert cheap.headers["x-poolgate-backend"] == WEAK
    assert json.loads(cheap.headers["x-poolgate-flags"])["cost"] == 100000
    rows = sorted(wait_rows(gw.settings.database_url, 2), key=lambda r: r["created_at"])
    predicted = {c["backend"]: c["quality"] for c in rows[0]["candidates"]}
    # calibrated probabilities of a correct answer, not ranks: both strictly inside (0, 1), GPT-4 above Mixtral
    assert 0 < predicted[WEAK] < predicted[STRONG] < 1
    assert rows[1]["flags"]["cost"] == 100000 and rows[1]["backend"] == WEAK
