"""Faults injected by a controllable backend on loopback, and the exact log row each one leaves.

Every case sends one request through a real gateway to two fake backends (``cheap`` ranked first, ``strong``
second) and checks the client's answer and then the whole log row: status, backend, every attempt with its
status and error, tokens, cost and timing. test_gateway_proxy.py proves that fallback happens at all; this
file proves what is recorded when it does, plus Retry-After and the breaker under concurrent load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.conftest import backend_yaml, wait_until
from tests.dbutil import wait_rows
from tests.tcpproxy import TcpProxy

CHEAP = {"input_price": 0.5, "output_price": 1.0}
STRONG = {"input_price": 10, "output_price": 30}
BODY = {"model": "auto", "messages": [{"role": "user", "content": "what is 2+2?"}]}


def pool(cheap_url: str, strong_url: str, cheap_retries: int = 0, extra: str = "", cheap_timeout_s: float = 1.0) -> str:
    """cheap (the one that fails) times out after ``cheap_timeout_s``; strong (the fallback) has room to spare
    for a loaded machine."""
    return f"""
backends:
{backend_yaml("cheap", cheap_url, retries=cheap_retries, read_timeout_s=cheap_timeout_s, **CHEAP)}
{backend_yaml("strong", strong_url, retries=0, read_timeout_s=30.0, **STRONG)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
{extra}
"""


def cost(prices: dict[str, float], prompt: int, completion: int) -> float:
    return (prompt * prices["input_price"] + completion * prices["output_price"]) / 1e6


def one_row(gw: Any) -> dict[str, Any]:
    """The single row the request left (waits for the asynchronous writer; fails on zero or two)."""
    rows = wait_rows(gw.settings.database_url, 1)
    time.sleep(0.2)  # a second row, if the gateway wrongly wrote one, would have landed by now
    rows = wait_rows(gw.settings.database_url, 1)
    assert len(rows) == 1, rows
    return rows[0]


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def assert_fell_back_to_strong(row: dict[str, Any], stream: bool) -> None:
    assert row["status"] == "ok" and row["http_status"] == 200
    assert row["backend"] == "strong" and row["model_requested"] == "auto" and row["pool"] == "auto"
    assert row["router"] == "cheapest" and row["stream"] is stream
    assert [c["backend"] for c in row["candidates"]] == ["cheap", "strong"]
    assert row["attempts"][-1]["backend"] == "strong" and row["attempts"][-1]["status"] == 200
    assert row["attempts"][-1]["error"] is None
    completion = 3  # "answer from strong"
    assert row["prompt_tokens"] == 7 and row["completion_tokens"] == completion
    assert row["cost_usd"] == pytest.approx(cost(STRONG, 7, completion))
    assert row["error_type"] is None and row["error_message"] is None
    assert row["latency_ms"] >= sum(a["latency_ms"] for a in row["attempts"]) * 0.99


# httpx names an RST after the request by where it caught it (still connecting, reading, or mid-response)
RESET_ERRORS = ("ReadError", "ConnectError: [Errno 104]", "RemoteProtocolError")
# (fake backend mode, request streams?, expected status of the failed attempt, start(s) of its error text)
FALLBACK_CASES = [
    ("500", False, 500, "upstream HTTP 500: fake 500"),
    ("503", False, 503, "upstream HTTP 503: fake 503"),
    ("429", False, 429, "upstream HTTP 429: fake 429"),
    ("tcp-hang", False, None, "ReadTimeout"),
    ("tcp-reset", False, None, RESET_ERRORS),
    ("500", True, 500, "upstream HTTP 500: fake 500"),
    ("tcp-hang", True, None, "ReadTimeout"),
    ("tcp-reset", True, None, RESET_ERRORS),
    ("stall", True, None, "ReadTimeout"),
    ("empty", True, None, "upstream closed the stream before sending anything"),
]


@pytest.mark.parametrize(("mode", "stream", "failed_status", "error_start"), FALLBACK_CASES)
def test_failure_before_first_byte_falls_back_and_leaves_one_exact_row(
    fake_backends, gateway, mode, stream, failed_status, error_start
):
    cheap, cs = fake_backends("cheap", "ok" if mode.startswith("tcp-") else mode)
    _, ss = fake_backends("strong")
    with TcpProxy("127.0.0.1", cs.port) as proxy:  # tcp-*: a real RST after the request, or total silence
        if mode == "tcp-reset":
            proxy.reset_after_request()
        if mode == "tcp-hang":
            proxy.blackhole()
        gw = gateway(pool(f"http://127.0.0.1:{proxy.port}", ss.url))
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=15)
    assert r.status_code == 200 and r.headers["x-poolgate-backend"] == "strong"
    if stream:
        events = sse_events(r.text)
        assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
        assert "strong" in r.text and "cheap" not in r.text  # nothing of the failed backend reached the client
    else:
        assert r.json()["choices"][0]["message"]["content"] == "answer from strong"
    row = one_row(gw)
    assert row["id"] == r.headers["x-poolgate-request-id"]
    assert_fell_back_to_strong(row, stream)
    assert len(row["attempts"]) == 2 and len(cheap.requests) == (0 if mode.startswith("tcp-") else 1)
    failed = row["attempts"][0]
    assert failed["backend"] == "cheap" and failed["status"] == failed_status
    assert failed["error"].startswith(error_start), failed["error"]
    if mode in ("tcp-hang", "stall"):  # waited the backend's read timeout (1 s), no longer
        assert 950 <= failed["latency_ms"] < 3000
    if stream:
        assert row["ttft_ms"] is not None and row["ttft_ms"] >= failed["latency_ms"]


def test_refused_connection_leaves_a_connect_error_attempt(fake_backends, gateway):
    from tests.servers import free_port

    _, ss = fake_backends("strong")
    gw = gateway(pool(f"http://127.0.0.1:{free_port()}", ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=15)
    assert r.status_code == 200
    row = one_row(gw)
    assert_fell_back_to_strong(row, False)
    assert row["attempts"][0]["status"] is None and row["attempts"][0]["error"].startswith("ConnectError")


def test_retries_on_the_same_backend_are_each_recorded_before_fallback(fake_backends, gateway):
    cheap, cs = fake_backends("cheap", "500")
    _, ss = fake_backends("strong")
    gw = gateway(pool(cs.url, ss.url, cheap_retries=2))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=15)
    assert r.status_code == 200
    row = one_row(gw)
    assert_fell_back_to_strong(row, False)
    assert [(a["backend"], a["status"]) for a in row["attempts"]] == [
        ("cheap", 500), ("cheap", 500), ("cheap", 500), ("strong", 200)]
    assert len(cheap.requests) == 3


def test_slow_first_byte_within_the_timeout_is_waited_for_not_abandoned(fake_backends, gateway):
    cheap, cs = fake_backends("cheap", delay_s=0.4)
    strong, ss = fake_backends("strong")
    gw = gateway(pool(cs.url, ss.url, cheap_timeout_s=5.0))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**BODY, "stream": True}, timeout=15)
    assert r.status_code == 200 and r.headers["x-poolgate-backend"] == "cheap" and strong.requests == []
    row = one_row(gw)
    assert row["status"] == "ok" and len(row["attempts"]) == 1 and row["ttft_ms"] >= 400
    assert row["cost_usd"] == pytest.approx(cost(CHEAP, 7, 3))


# (mode, start of the row's error message): the stream had begun, so there is no fallback
MID_STREAM_CASES = [
    ("drop", "RemoteProtocolError"),
    ("stall_mid", "ReadTimeout"),
    ("truncate", "upstream ended the stream without [DONE]"),
]


@pytest.mark.parametrize(("mode", "error_start"), MID_STREAM_CASES)
def test_mid_stream_failure_ends_with_an_error_event_and_one_error_row(fake_backends, gateway, mode, error_start):
    _, cs = fake_backends("cheap", mode)
    strong, ss = fake_backends("strong")
    gw = gateway(pool(cs.url, ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**BODY, "stream": True}, timeout=15)
    assert r.status_code == 200 and r.headers["x-poolgate-backend"] == "cheap"
    events = sse_events(r.text)
    assert "[DONE]" not in events  # a client must not mistake a cut answer for a whole one
    relayed = [e for e in events if '"delta"' in e]
    assert len(relayed) == 2 and '"answer"' in relayed[0] and '" from"' in relayed[1]
    assert '"error"' in events[-1] and "upstream_stream_error" in events[-1]
    assert strong.requests == []  # bytes had reached the client: no fallback
    row = one_row(gw)
    assert row["id"] == r.headers["x-poolgate-request-id"]
    assert row["status"] == "error" and row["http_status"] == 200 and row["backend"] == "cheap"
    assert row["error_type"] == "upstream_stream_error" and row["error_message"].startswith(error_start)
    assert [(a["backend"], a["status"]) for a in row["attempts"]] == [("cheap", 200)]
    assert row["completion_tokens"] == 2  # "answer from": counted from what was relayed
    assert row["cost_usd"] == pytest.approx(cost(CHEAP, row["prompt_tokens"], 2))
    assert row["ttft_ms"] is not None


def test_429_with_retry_after_falls_back_at_once_and_holds_the_backend_off(fake_backends, gateway):
    cheap, cs = fake_backends("cheap", "429", retry_after="3")  # held off long enough for the checks below
    _, ss = fake_backends("strong")
    gw = gateway(pool(cs.url, ss.url, cheap_retries=3))
    client = httpx.Client(base_url=gw.url, timeout=15)
    first = client.post("/v1/chat/completions", json=BODY)
    assert first.headers["x-poolgate-backend"] == "strong"
    assert len(cheap.requests) == 1  # told to wait: none of the 3 retries were spent on it
    second = client.post("/v1/chat/completions", json=BODY)
    assert second.headers["x-poolgate-backend"] == "strong" and len(cheap.requests) == 1  # still held off
    assert client.get("/health/ready").json()["breakers"]["cheap"] == "open"
    cheap.mode = "ok"
    wait_until(lambda: client.get("/health/ready").json()["breakers"]["cheap"] == "half_open", 30,
               "the 3 s hold-off to end")
    third = client.post("/v1/chat/completions", json=BODY)
    assert third.headers["x-poolgate-backend"] == "cheap" and len(cheap.requests) == 2
    rows = {r["id"]: r for r in wait_rows(gw.settings.database_url, 3)}
    assert len(rows) == 3
    assert [(a["backend"], a["status"]) for a in rows[first.headers["x-poolgate-request-id"]]["attempts"]] == [
        ("cheap", 429), ("strong", 200)]
    assert [(a["backend"], a["error"]) for a in rows[second.headers["x-poolgate-request-id"]]["attempts"]] == [
        ("cheap", "circuit open"), ("strong", None)]


def test_every_backend_rate_limited_gives_429_with_the_shortest_retry_after(fake_backends, gateway):
    _, cs = fake_backends("cheap", "429", retry_after="7")
    _, ss = fake_backends("strong", "429", retry_after="3")
    gw = gateway(pool(cs.url, ss.url))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=15)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert r.headers["retry-after"] == "3"
    row = one_row(gw)
    assert row["status"] == "error" and row["http_status"] == 429
    assert [(a["backend"], a["status"]) for a in row["attempts"]] == [("cheap", 429), ("strong", 429)]


def test_retry_after_as_http_date_is_understood():
    from email.utils import formatdate

    from gateway.proxy.dispatch import parse_retry_after

    assert parse_retry_after("5") == 5.0
    assert 8 < (parse_retry_after(formatdate(time.time() + 10, usegmt=True)) or 0) <= 10
    assert parse_retry_after("0") is None and parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_breaker_opens_and_recovers_under_concurrent_load_without_failing_a_request(fake_backends, gateway):
    """32 concurrent clients: 150 requests while the cheap backend fails, then it heals and the load returns to it.

    Phases are driven by counts and the breaker's reported state, not by wall-clock sleeps, so a busy machine
    changes only the duration."""
    cheap, cs = fake_backends("cheap", "500")
    _, ss = fake_backends("strong")
    extra = "breaker:\n  failure_threshold: 3\n  reset_after_s: 0.3\n"
    gw = gateway(pool(cs.url, ss.url, extra=extra, cheap_timeout_s=30.0))  # healed cheap may be slow when busy
    results: list[tuple[float, float, str]] = []  # (sent, answered, backend)
    marks: dict[str, float] = {}

    async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200  # warm up
        cheap.requests.clear()

        async def worker() -> None:
            while "stop" not in marks:
                sent = time.monotonic()
                r = await client.post("/v1/chat/completions", json=BODY)
                assert r.status_code == 200, r.text
                results.append((sent, time.monotonic(), r.headers["x-poolgate-backend"]))

        async def control() -> None:
            marks["start"] = time.monotonic()
            while len(results) < 150:
                await asyncio.sleep(0.01)
            cheap.mode, marks["healed"] = "ok", time.monotonic()
            while (await client.get("/health/ready")).json()["breakers"]["cheap"] != "closed":
                await asyncio.sleep(0.01)
            marks["closed"] = time.monotonic()
            while sum(1 for sent, _, _ in results if sent > marks["closed"]) < 100:
                await asyncio.sleep(0.01)
            marks["stop"] = time.monotonic()

        await asyncio.gather(control(), *(worker() for _ in range(32)))
    failing = [b for _, answered, b in results if answered < marks["healed"]]
    assert len(failing) >= 150 and set(failing) == {"strong"}  # none failed: the fallback served them all
    # the open breaker kept traffic off the failing backend: the first concurrent wave plus one half-open
    # probe per reset period reached it, not the hundreds of requests sent meanwhile
    probes = (marks["healed"] - marks["start"]) / 0.3 + 2
    cheap_failures = len(cheap.requests) - sum(1 for _, _, b in results if b == "cheap")
    assert cheap_failures <= 32 + probes, (cheap_failures, probes)
    after = [b for sent, _, b in results if sent > marks["closed"]]
    assert len(after) >= 100 and set(after) == {"cheap"}  # recovered: the cheap backend carries the load again
    rows = wait_rows(gw.settings.database_url, len(results) + 1)
    assert len(rows) == len(results) + 1 and all(r["status"] == "ok" for r in rows)
    print(f"\nbreaker under load: {len(failing)} requests while failing (all served by the fallback), "
          f"{cheap_failures} reached the failing backend, {len(after)} after recovery all on it, {len(rows)} rows")
