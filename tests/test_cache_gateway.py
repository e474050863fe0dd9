"""The response cache through a real gateway: the real ``openai`` client on loopback, fake backends that count the
calls they get, the log rows read back from the store. Exact and semantic hits, tenants, opt-outs, streaming replay,
TTL expiry, and one cache in Redis shared by two gateways."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import backend_yaml, drop_redis_prefix, redis_url, requires_redis
from tests.dbutil import wait_rows
from tests.dropin import MASTER

Q = [{"role": "user", "content": "What is the capital of France?"}]


def pool(cheap_url: str, strong_url: str, cache: str) -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=0.5, output_price=1.0, retries=0)}
{backend_yaml("strong", strong_url, input_price=10, output_price=30, retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
    cache: {cache}
  - name: plain
    members: [cheap, strong]
    router: cheapest
"""


def start(fake_backends: Any, gateway: Any, tmp_path: Any, cache: str, tool_calls: bool = False,
          **settings: Any) -> Any:
    cheap, cs = fake_backends("cheap", tool_calls=tool_calls)
    strong, ss = fake_backends("strong", tool_calls=tool_calls)
    gw = gateway(pool(cs.url, ss.url, cache), **settings)
    gw.cheap, gw.strong, gw.cheap_url, gw.strong_url = cheap, strong, cs.url, ss.url
    gw.db = settings.get("database_url", f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    return gw


def client(gw: Any, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


def ask(c: openai.OpenAI, messages: list[dict[str, Any]] = Q, model: str = "auto", **kw: Any) -> Any:
    kw.setdefault("temperature", 0)
    return c.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)


def test_a_repeated_request_is_served_from_the_cache_with_no_upstream_call_and_its_saving_logged(
        fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{exact: true}")
    c = client(gw)
    first = ask(c)
    assert first.headers["x-poolgate-cache"] == "miss" and len(gw.cheap.requests) == 1
    # the same question, keys in another order, another end user and stream false: the same normalized request
    second = c.chat.completions.with_raw_response.create(temperature=0, messages=Q, model="auto", user="bob",
                                                         stream=False)
    assert second.headers["x-poolgate-cache"] == "hit-exact"
    assert len(gw.cheap.requests) == 1 and len(gw.strong.requests) == 0  # zero upstream calls
    assert second.parse().choices[0].message.content == "answer from cheap"
    assert second.headers["x-poolgate-backend"] == "cheap" and float(second.headers["x-poolgate-cost-usd"]) == 0
    rows = sorted(wait_rows(gw.db, 2), key=lambda r: r["created_at"])
    assert rows[0]["cache"] is None and rows[0]["cost_usd"] > 0
    assert rows[1]["cache"] == "exact" and rows[1]["cost_usd"] == 0
    assert rows[1]["cache_saved_usd"] == pytest.approx(rows[0]["cost_usd"])
    assert float(second.headers["x-poolgate-cache-saved-usd"]) == pytest.approx(rows[0]["cost_usd"])
    # another parameter is another request; a pool without a cache never says anything about one
    assert ask(c, max_tokens=5).headers["x-poolgate-cache"] == "miss"
    assert "x-poolgate-cache" not in ask(c, model="plain").headers
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'poolgate_cache_requests_total{pool="auto",result="hit-exact"} 1.0' in metrics
    assert 'poolgate_cache_saved_usd_total{kind="exact",pool="auto"}' in metrics
    wait_rows(gw.db, 4)  # the report reads the store: every row written first
    report = _report(gw.db, pool(gw.cheap_url, gw.strong_url, "{exact: true}"))
    auto = next(c for c in report.cache if c.pool == "auto")
    assert (auto.requests, auto.exact_hits, auto.semantic_hits) == (3, 1, 0)
    assert auto.saved_usd == pytest.approx(rows[0]["cost_usd"]) and auto.hit_rate == pytest.approx(1 / 3)
    assert [c.pool for c in report.cache] == ["auto"]  # "plain" has no cache and no hit


def _report(db: str, pool_yaml: str) -> Any:
    """The routing report (``poolgate report``'s numbers) of the test's log store."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy.ext.asyncio import create_async_engine

    from gateway.commands.report import terminal_view
    from gateway.loop.report import routing_report
    from gateway.pools import parse_pool_file
    from gateway.store.repository import LogRepository

    async def run() -> Any:
        engine = create_async_engine(db)
        try:
            return await routing_report(LogRepository(engine), parse_pool_file(pool_yaml))
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as threads:
        rep = threads.submit(asyncio.run, run()).result()
    assert any("response cache" in str(getattr(r, "title", "")) for r in terminal_view(rep))
    return rep


def test_sampling_requests_are_cached_only_when_the_pool_or_the_request_says_so(fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{exact: true}")
    c = client(gw)
    for _ in range(2):  # temperature unset: the provider samples, so no reuse
        assert ask(c, temperature=None).headers["x-poolgate-cache"] == "bypass"
    marked = {"poolgate": {"cache": True}}
    assert ask(c, temperature=0.7, extra_body=marked).headers["x-poolgate-cache"] == "miss"
    assert ask(c, temperature=0.7, extra_body=marked).headers["x-poolgate-cache"] == "hit-exact"
    assert len(gw.cheap.requests) == 3


def test_no_cache_header_and_body_opt_out_skip_the_cache(fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{exact: true}")
    c = client(gw)
    ask(c)
    assert ask(c).headers["x-poolgate-cache"] == "hit-exact" and len(gw.cheap.requests) == 1
    fresh = ask(c, extra_headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-poolgate-cache"] == "bypass" and len(gw.cheap.requests) == 2
    off = ask(c, extra_body={"poolgate": {"cache": False}})
    assert off.headers["x-poolgate-cache"] == "bypass" and len(gw.cheap.requests) == 3
    assert ask(c, extra_headers={"Cache-Control": "no-store"}).headers["x-poolgate-cache"] == "bypass"
    assert len(gw.cheap.requests) == 4
    with pytest.raises(openai.BadRequestError) as info:
        ask(c, extra_body={"poolgate": {"cache": "yes"}})
    assert info.value.body["param"] == "poolgate.cache"


def test_streaming_requests_replay_a_cached_answer_and_streamed_answers_are_kept(fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{exact: true}")
    c = client(gw)
    ask(c)  # a plain answer, replayed as a stream
    with c.chat.completions.with_streaming_response.create(model="auto", messages=Q, temperature=0, stream=True,
                                                          stream_options={"include_usage": True}) as raw:
        assert raw.headers["x-poolgate-cache"] == "hit-exact"
        chunks = list(raw.parse())
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "answer from cheap"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert len(gw.cheap.requests) == 1
    other = [{"role": "user", "content": "And of Spain?"}]
    streamed = list(c.chat.completions.create(model="auto", messages=other, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == "answer from cheap"
    time.sleep(0.2)  # the streamed answer is kept when the stream ends
    again = ask(c, messages=other)
    assert again.headers["x-poolgate-cache"] == "hit-exact" and len(gw.cheap.requests) == 2
    assert again.parse().choices[0].message.content == "answer from cheap"
    rows = wait_rows(gw.db, 4)
    assert sorted(r["cache"] or "-" for r in rows) == ["-", "-", "exact", "exact"]


def test_messages_responses_and_tool_calls_replay_from_the_cache_plain_and_streamed(fake_backends, gateway, tmp_path):
    import anthropic

    gw = start(fake_backends, gateway, tmp_path, "{exact: true, sampled: true}", tool_calls=True)
    claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "2+2?"}]
    assert claude.messages.create(model="auto", max_tokens=20, messages=question).content[0].text == "answer from cheap"
    with claude.messages.stream(model="auto", max_tokens=20, messages=question) as events:
        assert "".join(events.text_stream) == "answer from cheap"
    oa = client(gw)
    assert oa.responses.create(model="auto", input="3+3?").output_text == "answer from cheap"
    streamed = list(oa.responses.create(model="auto", input="3+3?", stream=True))
    assert streamed[-1].type == "response.completed" and streamed[-1].response.output_text == "answer from cheap"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    first = ask(oa, messages=[{"role": "user", "content": "Weather?"}], tools=tools).parse()
    assert first.choices[0].message.tool_calls[0].function.arguments == '{"city": "Oslo"}'
    chunks = list(oa.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Weather?"}],
                                             tools=tools, temperature=0, stream=True))
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0][0].function.name == "get_weather" and calls[0][0].function.arguments == '{"city": "Oslo"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert len(gw.cheap.requests) == 3  # one upstream call per question: the second of each was a cache hit
    assert sorted(r["cache"] or "-" for r in wait_rows(gw.db, 6)) == ["-", "-", "-", "exact", "exact", "exact"]


def test_entries_expire_after_their_ttl(fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{exact: true, ttl_s: 0.5}")
    c = client(gw)
    ask(c)
    assert ask(c).headers["x-poolgate-cache"] == "hit-exact"
    time.sleep(0.7)
    assert ask(c).headers["x-poolgate-cache"] == "miss" and len(gw.cheap.requests) == 2


def test_another_tenants_identical_request_misses(fake_backends, gateway, tmp_path):
    gw = start(fake_backends, gateway, tmp_path, "{exact: true}", auth_enabled=True, master_key=MASTER)

    def new_key() -> str:
        r = httpx.post(f"{gw.url}/admin/keys", json={"name": "t"}, headers={"authorization": f"Bearer {MASTER}"})
        return str(r.json()["secret"])

    alice, bob = client(gw, new_key()), client(gw, new_key())
    ask(alice)
    assert ask(alice).headers["x-poolgate-cache"] == "hit-exact"
    assert ask(bob).headers["x-poolgate-cache"] == "miss" and len(gw.cheap.requests) == 2
    assert ask(bob).headers["x-poolgate-cache"] == "hit-exact" and len(gw.cheap.requests) == 2


def _similarity(a: str, b: str) -> float:
    from routers.encoders.static import StaticEncoder

    enc = StaticEncoder(None)
    enc.load()
    va, vb = enc([a, b])
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_a_semantically_close_request_hits_only_above_the_threshold(fake_backends, gateway, tmp_path):
    close, near_miss = "what is the capital of france", "What is the capital of Spain?"
    # the premise, measured with the encoder the cache uses: one paraphrase above 0.97, one other question below
    assert _similarity(Q[0]["content"], close) > 0.97 > _similarity(Q[0]["content"], near_miss)
    gw = start(fake_backends, gateway, tmp_path, "{exact: false, semantic: {threshold: 0.97, encoder: minilm-static}}")
    c = client(gw)
    assert ask(c).headers["x-poolgate-cache"] == "miss"
    time.sleep(0.2)
    hit = ask(c, messages=[{"role": "user", "content": close}])
    assert hit.headers["x-poolgate-cache"] == "hit-semantic" and float(hit.headers["x-poolgate-cache-similarity"]) > .97
    assert len(gw.cheap.requests) == 1
    assert ask(c, messages=[{"role": "user", "content": near_miss}]).headers["x-poolgate-cache"] == "miss"
    # the same question after another conversation is another context: no semantic match across contexts
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, *Q]
    assert ask(c, messages=history).headers["x-poolgate-cache"] == "miss"
    assert len(gw.cheap.requests) == 3
    rows = wait_rows(gw.db, 4)
    semantic = [r for r in rows if r["cache"] == "semantic"]
    assert len(semantic) == 1 and semantic[0]["cost_usd"] == 0 and semantic[0]["cache_saved_usd"] > 0


@requires_redis
def test_a_redis_cache_is_shared_by_two_gateways(fake_backends, gateway, tmp_path):
    url, prefix = redis_url(), f"pgtest-cache-{uuid.uuid4().hex[:8]}:"
    assert url is not None
    try:
        cheap, cs = fake_backends("cheap")
        strong, ss = fake_backends("strong")
        text = pool(cs.url, ss.url, "{exact: true, semantic: {threshold: 0.97, encoder: minilm-static}}")
        a = gateway(text, redis_url=url, redis_key_prefix=prefix)
        b = gateway(text, redis_url=url, redis_key_prefix=prefix, database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db",
                    spool_dir=tmp_path / "spool-b")
        assert ask(client(a)).headers["x-poolgate-cache"] == "miss"
        time.sleep(0.2)
        assert ask(client(b)).headers["x-poolgate-cache"] == "hit-exact"
        close = [{"role": "user", "content": "what is the capital of france"}]
        assert ask(client(b), messages=close).headers["x-poolgate-cache"] == "hit-semantic"
        assert len(cheap.requests) == 1
    finally:
        drop_redis_prefix(url, prefix)


def test_a_cache_whose_redis_is_unreachable_misses_and_never_fails_a_request(fake_backends, gateway, tmp_path):
    from tests.servers import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: every connection is refused
    gw = start(fake_backends, gateway, tmp_path, "{exact: true, semantic: {threshold: 0.97, encoder: minilm-static}}",
               redis_url=dead, redis_retry_s=0.01)
    c = client(gw)
    for _ in range(3):
        raw = ask(c)
        assert raw.status_code == 200 and raw.headers["x-poolgate-cache"] == "miss"
    assert len(gw.cheap.requests) == 3


def test_pool_file_cache_options_are_validated_with_clear_errors():
    from gateway.pools import PoolFileError, parse_pool_file

    def check(cache: str) -> str:
        with pytest.raises(PoolFileError) as info:
            parse_pool_file(pool("http://a", "http://b", cache))
        return str(info.value)

    assert "cache.semantic.threshold" in check("{semantic: {threshold: 1.5}}")
    assert "nothing would be cached" in check("{exact: false}")
    assert "cache.ttl_s" in check("{ttl_s: 0}")
    assert "cache.bogus" in check("{bogus: 1}")
    assert "<pool file>:19: pools.0.cache.max_entries: Input should be greater than or equal to 1" in check(
        "{max_entries: 0}")  # the line of the pool's cache: key
