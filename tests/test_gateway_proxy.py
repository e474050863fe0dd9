"""The proxy end to end: real openai client -> real gateway -> fake backends, all on loopback."""

from __future__ import annotations

import os

import httpx
import openai
import pytest

from tests.conftest import backend_yaml, wait_until
from tests.dbutil import wait_rows


def two_backend_pool(cheap_url: str, strong_url: str, router: str = "cheapest", extra: str = "") -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=0.5, output_price=1.0, retries=0, read_timeout_s=1.0)}
{backend_yaml("strong", strong_url, input_price=10, output_price=30, retries=0, read_timeout_s=1.0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: {router}
{extra}
"""


def test_openai_client_gets_routed_answer_with_poolgate_headers(fake_backends, gateway):
    cheap, cs = fake_backends("cheap")
    strong, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "2+2?"}]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "answer from cheap"
    assert raw.headers["x-poolgate-backend"] == "cheap"
    assert raw.headers["x-poolgate-router"] == "cheapest"
    assert float(raw.headers["x-poolgate-cost-usd"]) == pytest.approx((7 * 0.5 + 3 * 1.0) / 1e6)
    assert len(raw.headers["x-poolgate-request-id"]) == 32
    assert cheap.requests[0]["model"] == "cheap-upstream"
    assert "poolgate" not in cheap.requests[0]
    assert strong.requests == []


def test_other_openai_fields_pass_through_untouched(fake_backends, gateway):
    cheap, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    client.chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice="auto",
        temperature=0.3, seed=5, extra_body={"top_k": 4},
    )
    sent = cheap.requests[0]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    assert sent["temperature"] == 0.3 and sent["seed"] == 5 and sent["top_k"] == 4


async def test_async_streaming_relays_chunks_and_usage(fake_backends, gateway):
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "answer from cheap"
    assert usage is not None and usage.completion_tokens == 3
    rows = wait_rows(gw.settings.database_url, 1)
    assert rows[0]["stream"] and rows[0]["completion_tokens"] == 3 and rows[0]["ttft_ms"] is not None


def test_stream_without_include_usage_hides_usage_chunk_but_logs_usage(fake_backends, gateway):
    cheap, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                                 stream=True))
    assert all(c.usage is None for c in chunks)
    assert cheap.requests[0]["stream_options"] == {"include_usage": True}
    row = wait_rows(gw.settings.database_url, 1)[0]
    assert row["completion_tokens"] == 3 and row["prompt_tokens"] == 7 and row["cost_usd"] > 0


@pytest.mark.parametrize("mode", ["500", "429", "hang", "reset"])
def test_failing_first_backend_falls_back_to_next_ranked(fake_backends, gateway, mode):
    _, cs = fake_backends("cheap", mode)
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "q"}]}, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-poolgate-backend"] == "strong"
    row = wait_rows(gw.settings.database_url, 1)[0]
    assert [a["backend"] for a in row["attempts"]] == ["cheap", "strong"]
    assert row["attempts"][0]["error"]


def test_refused_connection_falls_back(fake_backends, gateway):
    from tests.servers import free_port

    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(f"http://127.0.0.1:{free_port()}", ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "q"}]}, timeout=10)
    assert r.status_code == 200 and r.headers["x-poolgate-backend"] == "strong"


def test_stall_before_first_stream_byte_falls_back(fake_backends, gateway):
    _, cs = fake_backends("cheap", "stall")
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "x"}], stream=True) if c.choices)
    assert text == "answer from strong"


def test_mid_stream_failure_ends_with_error_event_and_error_row(fake_backends, gateway):
    _, cs = fake_backends("cheap", "drop")
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                                stream=True):
            pass
    row = wait_rows(gw.settings.database_url, 1)[0]
    assert row["status"] == "error" and row["backend"] == "cheap"
    assert row["error_type"] == "upstream_stream_error"


def test_breaker_opens_after_failures_and_closes_after_probe(fake_backends, gateway):
    cheap, cs = fake_backends("cheap", "500")
    _, ss = fake_backends("strong")
    # open long enough that the checks below fit on a loaded machine; then wait for half-open, not a fixed time
    extra = "breaker:\n  failure_threshold: 2\n  reset_after_s: 3\n"
    gw = gateway(two_backend_pool(cs.url, ss.url) + extra)
    body = {"model": "auto", "messages": [{"role": "user", "content": "q"}]}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=body).headers["x-poolgate-backend"] == "strong"
        hits = len(cheap.requests)
        r = client.post("/v1/chat/completions", json=body)
        assert r.headers["x-poolgate-backend"] == "strong" and len(cheap.requests) == hits  # open: skipped
        assert client.get("/health/ready").json()["breakers"]["cheap"] == "open"
        cheap.mode = "ok"
        wait_until(lambda: client.get("/health/ready").json()["breakers"]["cheap"] == "half_open", 30,
                   "the breaker to turn half-open")
        r = client.post("/v1/chat/completions", json=body)  # half-open probe succeeds
        assert r.headers["x-poolgate-backend"] == "cheap"
        assert client.get("/health/ready").json()["breakers"]["cheap"] == "closed"


def test_all_backends_failing_gives_502_openai_error_and_one_row(fake_backends, gateway):
    _, cs = fake_backends("cheap", "500")
    _, ss = fake_backends("strong", "500")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "q"}]})
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error"
    rows = wait_rows(gw.settings.database_url, 1)
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["http_status"] == 502


def test_upstream_client_error_is_passed_through_without_fallback(fake_backends, gateway):
    _, cs = fake_backends("cheap", "400")
    strong, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "q"}]})
    assert r.status_code == 400 and "fake 400" in r.json()["error"]["message"]
    assert strong.requests == []


def test_models_lists_pools_and_backends(fake_backends, gateway):
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    ids = {m.id for m in client.models.list()}
    assert ids == {"auto", "cheap", "strong"}
    assert httpx.get(f"{gw.url}/health").json() == {"status": "ok", "pid": os.getpid()}  # in-process
    assert httpx.get(f"{gw.url}/health/ready").status_code == 200


def test_n_mixed_requests_leave_exactly_n_rows_with_tokens_and_cost(fake_backends, gateway, db_url):
    """On SQLite and on the real PostgreSQL: successes, upstream failures and unknown models, one row each."""
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong", "500")
    gw = gateway(two_backend_pool(cs.url, ss.url), database_url=db_url)
    client = httpx.Client(base_url=gw.url, timeout=10)
    msgs = [{"role": "user", "content": "q"}]
    statuses = []
    for i in range(12):
        model = ["auto", "strong", "nope"][i % 3]
        body = {"model": model, "messages": msgs, "stream": i % 2 == 0}
        statuses.append(client.post("/v1/chat/completions", json=body).status_code)
    assert statuses.count(200) == 4 and statuses.count(404) == 4
    assert statuses.count(502) + statuses.count(503) == 4  # 503 once the failing backend's breaker is open
    rows = wait_rows(db_url, 12)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4
    assert all(r["prompt_tokens"] == 7 and r["completion_tokens"] == 3 and r["cost_usd"] > 0 for r in ok)
    assert sorted(r["http_status"] for r in rows if r["status"] == "error") == sorted(s for s in statuses if s != 200)


def test_upstream_client_error_keeps_its_openai_fields_scrubbed_and_names_the_backend(
    fake_backends, gateway, monkeypatch
):
    """A provider's own error (type, param, code) reaches the client as it sent it, its key scrubbed from the
    message, with the backend that answered in x-poolgate-backend; not rewritten into a gateway error."""
    monkeypatch.setenv("CHEAP_KEY", "sk-cheap-backend-key-123456")
    fields = {"type": "invalid_request_error", "param": "max_tokens", "code": "integer_below_min_value"}
    _, cs = fake_backends("cheap", "400", echo_auth=True, error=fields)
    strong, ss = fake_backends("strong")
    gw = gateway(f"backends:\n{backend_yaml('cheap', cs.url, retries=0, api_key_env='CHEAP_KEY')}\n"
                 f"{backend_yaml('strong', ss.url, input_price=10)}\n"
                 "pools:\n  - name: auto\n    members: [cheap, strong]\n    router: cheapest\n")
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "q"}]})
    assert r.status_code == 400 and r.headers["x-poolgate-backend"] == "cheap"
    assert r.json() == {"error": {"message": "fake 400: invalid key 'Bearer ***'", **fields}}
    assert strong.requests == []  # the request's fault: no fallback


@pytest.mark.parametrize(("upstream", "relayed"), [
    ({"code": 400, "param": 7}, {"code": "400", "param": None}),  # vLLM's integer code as the spec's string
    ({"type": None}, {"type": "invalid_request_error"}),  # no type: the status's OpenAI type
])
def test_upstream_error_fields_of_the_wrong_type_become_valid_openai_fields(fake_backends, gateway, upstream, relayed):
    _, cs = fake_backends("cheap", "400", error=upstream)
    _, ss = fake_backends("strong")
    gw = gateway(two_backend_pool(cs.url, ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "q"}]})
    err = r.json()["error"]
    assert r.status_code == 400 and {k: err[k] for k in relayed} == relayed
    assert set(err) == {"message", "type", "param", "code"} and err["message"] == "fake 400"
