"""The complexity router serving real requests: trained on a slice of RouteLLM GSM8K, saved as an artifact, loaded
by the gateway from the pool file, and asked through pool ``auto`` with the openai client; the replay backend
answers with the two models' real recorded answers. Everything runs on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openai
import orjson
import pytest

import gateway.replay
from gateway.pools import parse_pool_file
from routers.base import QueryFeatures, Router
from routers.features import text_stats
from routers.objective import PRESETS, decide
from routers.pricing import count_prompt_tokens
from tests.dbutil import wait_rows
from tests.servers import ServerThread

SAMPLE = Path(gateway.replay.__file__).parent / "sample" / "gsm8k_sample.jsonl"
ALIASES = {"gpt-4-1106": "gpt-4-1106-preview", "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1"}
POOL = """
backends:
  - {{name: mixtral-8x7b, base_url: "{replay}/mixtral-8x7b/v1", model: mixtral-8x7b,
     input_price: 0.6, output_price: 0.6}}
  - {{name: gpt-4-1106, base_url: "{replay}/gpt-4-1106/v1", model: gpt-4-1106,
     input_price: 10.0, output_price: 30.0}}
pools:
  - {{name: auto, members: [mixtral-8x7b, gpt-4-1106], router: complexity, artifact: "{artifact}",
     objective: quality-first}}
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The router trained on 200 GSM8K prompts, names mapped to the pool's backends, saved to a file.

    On GSM8K the calibrated P(Mixtral solves it) stays near its 64 % base rate (about 0.57-0.69 on the sample),
    and the learned no-loss threshold sends nearly everything to GPT-4; a fixed cascade threshold in the middle
    of that band makes the classifier split the sample, so both backends are exercised."""
    from training.train_router import save_result, train_router

    params = {"aliases": ALIASES, "confidence": 0.63}
    result = train_router("complexity", "routellm-gsm8k", params=params, limit=200)
    return save_result(result, tmp_path_factory.mktemp("artifact") / "complexity.router").path  # type: ignore[return-value]


@pytest.fixture(scope="module")
def replay() -> Iterator[ServerThread]:
    from gateway.replay.data import ReplayStore
    from gateway.replay.server import create_replay_app

    with ServerThread(create_replay_app(ReplayStore.load())) as server:
        yield server


def _expected_choices(artifact: Path, pool_yaml: str, prompts: list[str]) -> list[str]:
    """What the classifier decides for each prompt, computed here the way the gateway computes its features."""
    from training.features import Featurizer

    router = Router.load(artifact)
    pool_file = parse_pool_file(pool_yaml)
    cards = [pool_file.backend(m).card() for m in pool_file.pools[0].members]
    out = []
    for prompt, emb in zip(prompts, Featurizer().embed(prompts), strict=True):
        tokens = count_prompt_tokens([{"role": "user", "content": prompt}])
        feats = QueryFeatures([prompt], text_stats([prompt]), np.asarray([tokens], dtype=float), emb[None, :])
        ranking, _ = decide(router.predict(feats, cards), cards, PRESETS["quality-first"], tokens)
        out.append(cards[ranking[0]].name)
    return out


def test_pool_auto_routes_real_requests_with_the_trained_complexity_router(
    artifact: Path, replay: ServerThread, gateway: Callable[..., ServerThread]
) -> None:
    pool_yaml = POOL.format(replay=replay.url, artifact=artifact)
    prompts = [orjson.loads(line)["prompt"] for line in SAMPLE.read_text().splitlines()[:40]]
    expected = _expected_choices(artifact, pool_yaml, prompts)
    # two prompts the classifier sends to each backend
    picked = [i for name in ("mixtral-8x7b", "gpt-4-1106")
              for i in [j for j, e in enumerate(expected) if e == name][:2]]
    assert len(picked) == 4, f"the classifier sent all 40 sample prompts to one backend: {set(expected)}"

    server = gateway(pool_yaml)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    for i in picked:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompts[i]}])
        assert raw.headers["x-poolgate-router"] == "complexity"
        assert raw.headers["x-poolgate-backend"] == expected[i]
        assert raw.parse().choices[0].message.content  # the backend's recorded answer came back

    rows = wait_rows(server.settings.database_url, len(picked))  # type: ignore[attr-defined]
    assert sorted(r["backend"] for r in rows) == sorted(expected[i] for i in picked)
    for row in rows:
        assert row["router"] == "complexity" and row["pool"] == "auto"
        scores = {c["backend"]: c for c in row["candidates"]}
        assert set(scores) == {"mixtral-8x7b", "gpt-4-1106"}
        # the chosen backend is the one of highest utility among the logged candidate scores
        assert max(scores.values(), key=lambda c: c["utility"])["backend"] == row["backend"]
        assert all(0.0 <= c["quality"] <= 1.0 for c in scores.values())


def test_a_request_the_router_cannot_classify_falls_back_to_the_pool_default(
    artifact: Path, replay: ServerThread, gateway: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    server = gateway(POOL.format(replay=replay.url, artifact=artifact))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    with caplog.at_level("WARNING", logger="poolgate.routing"):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "   "}])
    assert raw.headers["x-poolgate-router"] == "complexity>cheapest"
    assert raw.headers["x-poolgate-backend"] == "mixtral-8x7b"
    assert "empty query text" in caplog.text
