"""Session affinity through a real gateway: the real ``openai`` client, fake backends counting their calls. Turn 1 of
a conversation is sent to the dear backend (a router override); later turns stick to it although the pool's router
(cheapest) would pick the cheap one, by the message prefix or an explicit x-poolgate-session header, until the
session expires or the sticky backend cannot serve the request."""

from __future__ import annotations

import time
import uuid
from typing import Any

import openai
import pytest

from tests.conftest import backend_yaml, drop_redis_prefix, redis_url, requires_redis
from tests.dbutil import wait_rows

TURN1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
STRONGEST = {"poolgate": {"router": "strongest"}}


def pool(cheap_url: str, strong_url: str, affinity: str = "{ttl_s: 60}", extra: str = "") -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=0.5, output_price=1.0, retries=0, capabilities="[tools]")}
{backend_yaml("strong", strong_url, input_price=10, output_price=30, retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
    affinity: {affinity}{extra}
breaker: {{failure_threshold: 1, reset_after_s: 60}}
"""


@pytest.fixture
def gw(fake_backends: Any, gateway: Any, tmp_path: Any) -> Any:
    return start(fake_backends, gateway, tmp_path)


def start(fake_backends: Any, gateway: Any, tmp_path: Any, affinity: str = "{ttl_s: 60}", extra: str = "",
          **settings: Any) -> Any:
    cheap, cs = fake_backends("cheap")
    strong, ss = fake_backends("strong")
    server = gateway(pool(cs.url, ss.url, affinity, extra), **settings)
    server.cheap, server.strong = cheap, strong
    server.db = settings.get("database_url", f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    return server


def chat(gw: Any, messages: list[dict[str, Any]], **kw: Any) -> Any:
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    return c.chat.completions.with_raw_response.create(model="auto", messages=messages, **kw)


def next_turn(messages: list[dict[str, Any]], answer: Any, question: str) -> list[dict[str, Any]]:
    content = answer.parse().choices[0].message.content
    return [*messages, {"role": "assistant", "content": content}, {"role": "user", "content": question}]


def test_turn_two_goes_to_the_backend_of_turn_one_although_the_router_would_pick_another(gw):
    first = chat(gw, TURN1, extra_body=STRONGEST)
    assert first.headers["x-poolgate-backend"] == "strong"
    time.sleep(0.1)  # the session is written off the response path
    turn2 = next_turn(TURN1, first, "And another?")
    second = chat(gw, turn2)
    assert second.headers["x-poolgate-backend"] == "strong"  # cheapest would have picked cheap
    assert second.headers["x-poolgate-affinity"] == "true"
    assert second.headers["x-poolgate-session"] == first.headers["x-poolgate-session"]
    third = chat(gw, next_turn(turn2, second, "One more?"))
    assert third.headers["x-poolgate-backend"] == "strong"
    # a new conversation with the same system prompt is a first turn: the router's
    assert chat(gw, [TURN1[0], {"role": "user", "content": "Name a colour."}]).headers["x-poolgate-backend"] == "cheap"
    # the flags may say the router decides this turn
    off = chat(gw, next_turn(turn2, second, "Yet another?"), extra_body={"poolgate": {"affinity": False}})
    assert off.headers["x-poolgate-backend"] == "cheap"
    rows = sorted(wait_rows(gw.db, 5), key=lambda r: r["created_at"])
    assert [r["affinity"] for r in rows] == [False, True, True, False, False]
    assert rows[0]["session_id"] and rows[0]["session_id"] == rows[1]["session_id"] == rows[2]["session_id"]
    assert rows[1]["policy"] == "affinity" and rows[1]["propensity"] is None
    assert rows[3]["session_id"] != rows[0]["session_id"]


def test_an_explicit_session_header_sticks_and_is_logged(gw):
    session = {"x-poolgate-session": "conv-42"}
    assert chat(gw, TURN1, extra_body=STRONGEST, extra_headers=session).headers["x-poolgate-backend"] == "strong"
    time.sleep(0.1)
    other = [{"role": "user", "content": "Something unrelated"}]  # no shared prefix: only the header ties them
    assert chat(gw, other, extra_headers=session).headers["x-poolgate-backend"] == "strong"
    assert chat(gw, other).headers["x-poolgate-backend"] == "cheap"
    rows = sorted(wait_rows(gw.db, 3), key=lambda r: r["created_at"])
    assert [r["session_id"] for r in rows[:2]] == ["conv-42", "conv-42"] and rows[1]["affinity"] is True


def test_a_session_expires_after_its_ttl(fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{ttl_s: 0.5}")
    first = chat(gw, TURN1, extra_body=STRONGEST)
    time.sleep(0.7)
    assert chat(gw, next_turn(TURN1, first, "And another?")).headers["x-poolgate-backend"] == "cheap"


def test_an_infeasible_sticky_backend_falls_back_to_the_router(gw):
    first = chat(gw, TURN1, extra_body=STRONGEST)
    time.sleep(0.1)
    turn2 = next_turn(TURN1, first, "Use the tool.")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    # only cheap declares tools: strong is not in the ranking, so the router's choice stands
    assert chat(gw, turn2, tools=tools).headers["x-poolgate-backend"] == "cheap"
    # the session now lives on cheap; send it back to strong, then open strong's breaker
    again = chat(gw, next_turn(turn2, chat(gw, turn2), "x"), extra_body=STRONGEST)
    assert again.headers["x-poolgate-backend"] == "strong"
    time.sleep(0.1)
    gw.strong.mode = "500"
    turn4 = next_turn(next_turn(turn2, chat(gw, turn2), "x"), again, "y")
    assert chat(gw, turn4).headers["x-poolgate-backend"] == "cheap"  # sticky strong failed: fallback answered
    calls = len(gw.strong.requests)
    assert chat(gw, turn4).headers["x-poolgate-backend"] == "cheap"  # breaker open: strong not even tried
    assert len(gw.strong.requests) == calls


def test_a_turn_answered_from_the_cache_keeps_its_session_on_the_backend_that_gave_the_answer(
        fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, extra="\n    cache: {exact: true, sampled: true}")
    assert chat(gw, TURN1, extra_body=STRONGEST, extra_headers={"x-poolgate-session": "a"}).headers[
        "x-poolgate-backend"] == "strong"
    time.sleep(0.1)
    hit = chat(gw, TURN1, extra_body=STRONGEST, extra_headers={"x-poolgate-session": "b"})
    assert hit.headers["x-poolgate-cache"] == "hit-exact" and len(gw.strong.requests) == 1
    time.sleep(0.1)
    later = chat(gw, [{"role": "user", "content": "Next?"}], extra_headers={"x-poolgate-session": "b"})
    assert later.headers["x-poolgate-backend"] == "strong" and later.headers["x-poolgate-cache"] == "miss"
    rows = sorted(wait_rows(gw.db, 3), key=lambda r: r["created_at"])
    assert [r["session_id"] for r in rows] == ["a", "b", "b"] and rows[2]["affinity"] is True


@requires_redis
def test_sessions_in_redis_are_shared_by_two_gateways(fake_backends, gateway, tmp_path):
    url, prefix = redis_url(), f"pgtest-aff-{uuid.uuid4().hex[:8]}:"
    assert url is not None
    try:
        cheap, cs = fake_backends("cheap")
        strong, ss = fake_backends("strong")
        a = gateway(pool(cs.url, ss.url), redis_url=url, redis_key_prefix=prefix)
        b = gateway(pool(cs.url, ss.url), redis_url=url, redis_key_prefix=prefix,
                    database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db", spool_dir=tmp_path / "spool-b")
        first = chat(a, TURN1, extra_body=STRONGEST)
        time.sleep(0.2)
        assert chat(b, next_turn(TURN1, first, "And another?")).headers["x-poolgate-backend"] == "strong"
    finally:
        drop_redis_prefix(url, prefix)
