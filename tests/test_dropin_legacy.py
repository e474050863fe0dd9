"""``POST /v1/completions``, ``POST /v1/embeddings``, ``GET /v1/models/{id}`` and unsupported routes, with the real
``openai`` SDK against a real gateway over fake backends."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows


def pool(cheap_url: str, strong_url: str, emb_a: str, emb_b: str) -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=0.5, output_price=1.0, retries=0)}
{backend_yaml("strong", strong_url, input_price=10, output_price=30, retries=0)}
{backend_yaml("embed-dear", emb_a, input_price=0.13, capabilities="[embeddings]", retries=0)}
{backend_yaml("embed-cheap", emb_b, input_price=0.02, capabilities="[embeddings]", retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
  - name: embed
    members: [embed-dear, embed-cheap]
"""


@pytest.fixture
def gw(fake_backends: Any, gateway: Any, tmp_path: Any) -> Any:
    fakes = {name: fake_backends(name) for name in ("cheap", "strong", "embed-dear", "embed-cheap")}
    server = gateway(pool(*(srv.url for _, srv in fakes.values())))
    server.fakes = {name: fb for name, (fb, _) in fakes.items()}
    server.db = f"sqlite+aiosqlite:///{tmp_path}/gw.db"
    return server


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def test_completions_create_plain_and_streamed_are_text_completions_routed_and_logged(gw):
    c = client(gw)
    raw = c.completions.with_raw_response.create(model="auto", prompt="2+2=", max_tokens=5, temperature=0)
    done = raw.parse()
    assert raw.headers["x-poolgate-backend"] == "cheap" and raw.headers["x-poolgate-router"] == "cheapest"
    assert done.object == "text_completion" and done.choices[0].text == "answer from cheap"
    assert done.choices[0].finish_reason == "stop" and done.usage is not None and done.usage.completion_tokens == 3
    assert gw.fakes["cheap"].requests[0]["messages"] == [{"role": "user", "content": "2+2="}]
    chunks = list(c.completions.create(model="auto", prompt="2+2=", stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "answer from cheap"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2 and all(r["pool"] == "auto" and r["backend"] == "cheap" for r in rows)
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model="auto", prompt="x", echo=True)
    assert "echo" in info.value.message and "not supported" in info.value.message


def test_embeddings_route_to_the_cheapest_embedding_backend_and_log_usage_and_cost(gw):
    c = client(gw)
    raw = c.embeddings.with_raw_response.create(model="embed", input=["one two", "three"])
    result = raw.parse()
    assert raw.headers["x-poolgate-backend"] == "embed-cheap"
    assert [len(d.embedding) for d in result.data] == [4, 4] and result.usage.prompt_tokens == 3
    assert gw.fakes["embed-cheap"].requests[0]["model"] == "embed-cheap-upstream"
    assert gw.fakes["embed-dear"].requests == []
    assert float(raw.headers["x-poolgate-cost-usd"]) == pytest.approx(3 * 0.02 / 1e6)
    direct = c.embeddings.with_raw_response.create(model="embed-dear", input="hello")
    assert direct.headers["x-poolgate-backend"] == "embed-dear"
    rows = sorted(wait_rows(gw.db, 2), key=lambda r: r["created_at"])
    assert [(r["pool"], r["backend"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("embed", "embed-cheap", 3, 0), (None, "embed-dear", 1, 0)]
    assert rows[0]["cost_usd"] == pytest.approx(3 * 0.02 / 1e6) and rows[0]["usage_estimated"] is False
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="cheap", input="x")
    assert "embeddings" in info.value.message and info.value.param == "model"


def test_models_retrieve_every_pool_and_backend_and_404_otherwise(gw):
    c = client(gw)
    for name in ("auto", "embed", "cheap", "embed-cheap"):
        assert c.models.retrieve(name).id == name
    assert c.models.retrieve("auto").model_extra["poolgate"]["type"] == "pool"
    with pytest.raises(openai.NotFoundError) as info:
        c.models.retrieve("gpt-9")
    assert info.value.code == "model_not_found"


def test_unsupported_routes_get_an_openai_error_that_names_them(gw):
    r = httpx.post(f"{gw.url}/v1/audio/speech", json={})
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "unsupported_endpoint"
    assert "POST /v1/audio/speech is not supported" in err["message"]
    r = httpx.get(f"{gw.url}/v1/chat/completions")
    assert r.status_code == 405 and "GET /v1/chat/completions" in r.json()["error"]["message"]
