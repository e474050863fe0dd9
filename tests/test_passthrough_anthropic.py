"""``api: anthropic`` backends: ``POST /v1/messages`` passed through untouched to a real fake Anthropic Messages API
on loopback (tests/costfakes.py), with the real ``anthropic`` SDK pointed at poolgate; plain, streamed, tools; one
log row per request with the exact usage (cache reads and writes) and cost; chat completions (and the Responses
API over them) translated to Messages for such backends, unless they use what Messages has no equivalent for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import backend_yaml
from tests.costfakes import FakeAnthropic
from tests.dbutil import wait_rows
from tests.servers import ServerThread

MASTER = "mk-pass"
CLAUDE = {"input_price": 3.0, "output_price": 15.0, "cached_input_price": 0.3, "cache_write_price": 3.75}
#: the fake's usage: 20 uncached input, 50 read from the cache, 30 written to it, 15 output
EXACT = (20 * 3.0 + 50 * 0.3 + 30 * 3.75 + 15 * 15.0) / 1e6
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def pool_yaml(claude_url: str, gpt_url: str) -> str:
    return f"""
backends:
  - name: claude
    api: anthropic
    base_url: {claude_url}/v1
    model: claude-upstream
    api_key_env: POOLGATE_TEST_ANTHROPIC_KEY
    retries: 0
{"".join(f"    {k}: {v}{chr(10)}" for k, v in CLAUDE.items())}
{backend_yaml("gpt", gpt_url, input_price=5.0, output_price=20.0, retries=0)}
pools:
  - name: mixed
    members: [claude, gpt]
    router: cheapest
  - name: claude-only
    members: [claude]
  - name: gpt-only
    members: [gpt]
"""


@pytest.fixture
def gw(fake_backends: Any, gateway: Any, tmp_path: Path, monkeypatch: Any) -> Any:
    monkeypatch.setenv("POOLGATE_TEST_ANTHROPIC_KEY", "sk-ant-backend")
    fake = FakeAnthropic()
    upstream = ServerThread(fake.app).__enter__()
    gpt, gs = fake_backends("gpt")
    server = gateway(pool_yaml(upstream.url, gs.url), auth_enabled=True, master_key=MASTER)
    server.fake, server.gpt, server.db = fake, gpt, f"sqlite+aiosqlite:///{tmp_path}/gw.db"
    server.pool_text = pool_yaml(upstream.url, gs.url)
    yield server
    upstream.__exit__(None, None, None)


def new_key(gw: Any) -> str:
    r = httpx.post(f"{gw.url}/admin/keys", json={"name": "team"}, headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 201, r.text
    return str(r.json()["secret"])


def client(gw: Any, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def assert_exact_row(row: dict[str, Any], stream: bool) -> None:
    assert (row["backend"], row["status"], row["stream"]) == ("claude", "ok", stream), row
    assert (row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"], row["completion_tokens"]) == \
        (100, 50, 30, 15), row
    assert row["usage_estimated"] is False and row["cost_usd"] == pytest.approx(EXACT, rel=1e-9)


def test_plain_message_is_passed_through_untouched_with_the_backends_key(gw: Any) -> None:
    key = new_key(gw)
    raw = client(gw, key).messages.with_raw_response.create(
        model="mixed", max_tokens=64, system=[{"type": "text", "text": "Be brief.",
                                               "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hi"}], extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert raw.headers["x-poolgate-backend"] == "claude" and raw.headers["x-poolgate-cost-usd"] == f"{EXACT:.8f}"
    assert orjson.loads(raw.http_response.content)["id"] == "msg_01"  # the backend's answer, not a translation
    msg = raw.parse()
    assert msg.content[0].text == "Hello from Claude" and msg.stop_reason == "end_turn"
    assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (50, 30)
    sent, headers = gw.fake.requests[0], gw.fake.headers[0]
    # untouched but for the model: cache_control, the system blocks, as the client sent them
    assert sent == {"model": "claude-upstream", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}],
                    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]}
    assert headers["x-api-key"] == "sk-ant-backend"
    assert headers["anthropic-version"] == raw.http_response.request.headers["anthropic-version"]  # the SDK's
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "authorization" not in headers and key not in str(headers)  # the client's key never goes upstream
    rows = wait_rows(gw.db, 1)
    assert len(rows) == 1
    assert_exact_row(rows[0], stream=False)


def test_stream_is_relayed_as_is_and_logged_with_exact_usage(gw: Any) -> None:
    key = new_key(gw)
    with client(gw, key).messages.stream(model="claude-only", max_tokens=64,
                                         messages=[{"role": "user", "content": "Hi"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.id == "msg_01" and final.content[0].text == "Hello from Claude"
    assert (final.usage.cache_read_input_tokens, final.usage.output_tokens) == (50, 15)
    raw = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                     json={"model": "claude-only", "max_tokens": 64, "stream": True,
                           "messages": [{"role": "user", "content": "Hi"}]})
    assert raw.text.count("event: ") == 9 and "event: ping" in raw.text  # every upstream event, as it came
    assert gw.fake.requests[-1]["stream"] is True and "stream_options" not in gw.fake.requests[-1]
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2
    for row in rows:
        assert_exact_row(row, stream=True)


def test_tools_plain_and_streamed(gw: Any) -> None:
    key = new_key(gw)
    c = client(gw, key)
    msg = c.messages.create(model="claude-only", max_tokens=64, tools=[WEATHER],
                            messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert msg.stop_reason == "tool_use"
    call = msg.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Oslo"}
    assert gw.fake.requests[0]["tools"] == [WEATHER]
    follow = c.messages.create(model="claude-only", max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "12 C"}]}])
    assert follow.content[-1].type == "tool_use"
    assert gw.fake.requests[1]["messages"][2]["content"][0]["type"] == "tool_result"
    with c.messages.stream(model="claude-only", max_tokens=64, tools=[WEATHER],
                           messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        final = stream.get_final_message()
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Oslo"}
    rows = wait_rows(gw.db, 3)
    assert len(rows) == 3
    for row in rows:
        assert_exact_row(row, stream=row["stream"])


def test_messages_only_parameters_go_to_anthropic_members_only(gw: Any) -> None:
    key = new_key(gw)
    c = client(gw, key)
    hi = [{"role": "user", "content": "Hi"}]
    msg = c.messages.create(model="mixed", max_tokens=64, extra_body={"top_k": 5}, messages=hi)
    assert msg.content[0].text == "Hello from Claude" and gw.fake.requests[0]["top_k"] == 5
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(model="gpt-only", max_tokens=64, extra_body={"top_k": 5}, messages=hi)
    assert "top_k" in bad.value.body["error"]["message"] and "api: anthropic" in bad.value.body["error"]["message"]
    assert gw.gpt.requests == []


def test_chat_completions_are_translated_to_messages_plain_streamed_and_with_tools(gw: Any) -> None:
    key = new_key(gw)
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    raw = oa.chat.completions.with_raw_response.create(model="mixed", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert raw.headers["x-poolgate-backend"] == "claude" and raw.headers["x-poolgate-cost-usd"] == f"{EXACT:.8f}"
    done = raw.parse()
    assert done.choices[0].message.content == "Hello from Claude" and done.choices[0].finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.prompt_tokens_details.cached_tokens,
            done.usage.completion_tokens) == (100, 50, 15)
    assert gw.fake.requests[0] == {"model": "claude-upstream", "max_tokens": 4096, "system": "Be brief.",
                                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert gw.fake.headers[0]["x-api-key"] == "sk-ant-backend" and key not in str(gw.fake.headers[0])
    chunks = list(oa.chat.completions.create(model="claude-only", stream=True, stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": "Hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Claude"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 100
    tools = [{"type": "function", "function": {"name": "get_weather", "description": WEATHER["description"],
                                               "parameters": WEATHER["input_schema"]}}]
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    called = oa.chat.completions.create(model="claude-only", messages=ask, tools=tools, tool_choice="required")
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert gw.fake.requests[-1]["tools"] == [WEATHER] and gw.fake.requests[-1]["tool_choice"] == {"type": "any"}
    follow = [*ask, called.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "12 C"}]
    oa.chat.completions.create(model="claude-only", messages=follow, tools=tools)
    assert [m["role"] for m in gw.fake.requests[-1]["messages"]] == ["user", "assistant", "user"]
    assert gw.fake.requests[-1]["messages"][1]["content"][-1] == {"type": "tool_use", "id": "toolu_01",
                                                                   "name": "get_weather", "input": {"city": "Oslo"}}
    assert gw.fake.requests[-1]["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_01",
                                                               "content": "12 C"}]
    streamed = list(oa.chat.completions.create(model="claude-only", messages=ask, tools=tools, stream=True))
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id == "toolu_01" and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    resp = oa.responses.create(model="claude-only", input="Hi")
    assert resp.output_text == "Hello from Claude" and resp.usage.input_tokens_details.cached_tokens == 50
    rows = wait_rows(gw.db, 6)  # plain, streamed, tool call, its follow-up, streamed tool call, Responses
    assert len(rows) == 6
    for row in rows:
        assert_exact_row(row, stream=row["stream"])


def test_chat_parameters_without_a_messages_equivalent_leave_anthropic_backends_out(gw: Any) -> None:
    key = new_key(gw)
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    hi = [{"role": "user", "content": "Hi"}]
    raw = oa.chat.completions.with_raw_response.create(model="mixed", messages=hi, logprobs=True)
    assert raw.headers["x-poolgate-backend"] == "gpt"  # claude is cheaper, but has no logprobs
    with pytest.raises(openai.BadRequestError) as bad:
        oa.chat.completions.create(model="claude-only", messages=hi, n=2)
    assert bad.value.code == "unsupported_route" and "n > 1" in bad.value.message
    assert gw.fake.requests == []
    rows = wait_rows(gw.db, 1)
    served = next(r for r in rows if r["backend"] == "gpt")
    claude = next(c for c in served["candidates"] if c["backend"] == "claude")
    assert claude["feasible"] is False and "logprobs" in claude["excluded"]


def test_pools_validate_accepts_and_describes_anthropic_backends(gw: Any, tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(gw.pool_text)
    result = CliRunner().invoke(main, ["pools", "validate", str(path)], env={"POOLGATE_TEST_ANTHROPIC_KEY": "x"})
    assert result.exit_code == 0, result.output
    assert "backend claude: api anthropic: POST /v1/messages passed through" in result.output
    assert "/v1/chat/completions, /v1/responses and /v1/completions translated to Messages" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(gw.pool_text.replace("    api: anthropic\n", "    api: anthropic\n    capabilities: [embeddings]\n"))
    result = CliRunner().invoke(main, ["pools", "validate", str(bad)])
    assert result.exit_code == 2 and "api anthropic serves /v1/messages only" in result.output


def test_health_probe_speaks_the_messages_api_to_anthropic_backends(gw: Any) -> None:
    resp = httpx.get(f"{gw.url}/admin/pools/health", headers={"authorization": f"Bearer {MASTER}"})
    claude = next(b for b in resp.json()["backends"] if b["backend"] == "claude")
    assert claude["ok"] is True and claude["probe"] == "chat", claude  # no /models here: a 1-token message
    assert gw.fake.headers[-1]["x-api-key"] == "sk-ant-backend" and gw.fake.requests[-1]["max_tokens"] == 1


@pytest.mark.parametrize("usage", [
    "lots", [1, 2], {"input_tokens": -3, "output_tokens": 15}, {"input_tokens": 20, "output_tokens": 10**13},
    {"input_tokens": 20, "output_tokens": 15, "cache_read_input_tokens": "50"},
    {"input_tokens": 20, "output_tokens": 15, "cache_creation_input_tokens": -1},
])
def test_implausible_anthropic_usage_is_not_believed(gateway: Any, tmp_path: Path, monkeypatch: Any,
                                                     usage: Any) -> None:
    monkeypatch.setenv("POOLGATE_TEST_ANTHROPIC_KEY", "sk-ant-backend")
    fake = FakeAnthropic(usage=usage)
    with ServerThread(fake.app) as upstream:
        gw = gateway(pool_yaml(upstream.url, "http://127.0.0.1:9"), auth_enabled=True, master_key=MASTER)
        key = new_key(gw)
        hi = [{"role": "user", "content": "Hi"}]
        msg = client(gw, key).messages.create(model="claude-only", max_tokens=64, messages=hi)
        assert msg.content[0].text == "Hello from Claude"  # the answer is relayed whatever its usage says
        # passed through untouched, bad usage included (the SDK's stream reader chokes on a non-object one)
        raw = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": key},
                         json={"model": "claude-only", "max_tokens": 64, "stream": True, "messages": hi})
        assert raw.status_code == 200 and '"text":" Claude"' in raw.text and "event: message_stop" in raw.text
        chat = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "claude-only", "messages": hi})
        assert chat.status_code == 200 and chat.headers["x-poolgate-cost-estimated"] == "true"
        rows = wait_rows(f"sqlite+aiosqlite:///{tmp_path}/gw.db", 3)
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "ok" and row["usage_estimated"] is True, row
        assert 0 <= row["cached_tokens"] + row["cache_write_tokens"] <= row["prompt_tokens"] < 10**9
        assert 0 < row["completion_tokens"] < 10**9 and row["cost_usd"] < 1.0


def test_a_cached_pass_through_answer_is_served_again_without_an_upstream_call(gateway: Any, tmp_path: Path,
                                                                              monkeypatch: Any) -> None:
    monkeypatch.setenv("POOLGATE_TEST_ANTHROPIC_KEY", "sk-ant-backend")
    fake = FakeAnthropic()
    with ServerThread(fake.app) as upstream:
        text = pool_yaml(upstream.url, "http://127.0.0.1:9").replace(
            "  - name: claude-only\n    members: [claude]\n", "  - name: claude-only\n    members: [claude]\n"
            "    cache: {exact: true}\n")
        gw = gateway(text, auth_enabled=True, master_key=MASTER)
        key = new_key(gw)
        hi = [{"role": "user", "content": "Hi"}]
        # temperature 0: a sampled answer is not reused unless the pool says so
        first = client(gw, key).messages.create(model="claude-only", max_tokens=64, messages=hi,
                                               extra_body={"temperature": 0})
        again = client(gw, key).messages.with_raw_response.create(model="claude-only", max_tokens=64, messages=hi,
                                                                  extra_body={"temperature": 0})
        assert again.headers["x-poolgate-cache"] == "hit-exact" and len(fake.requests) == 1
        assert again.parse().content[0].text == first.content[0].text == "Hello from Claude"
        chat = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "claude-only", "max_tokens": 64, "messages": hi, "temperature": 0})
        assert chat.json()["choices"][0]["message"]["content"] == "Hello from Claude"  # the chat form was kept
        thinking = client(gw, key).messages.create(model="claude-only", max_tokens=64, messages=hi,
                                                   extra_body={"temperature": 0, "top_k": 3})
        assert thinking.content[0].text == "Hello from Claude" and fake.requests[-1]["top_k"] == 3  # not a hit
        rows = wait_rows(f"sqlite+aiosqlite:///{tmp_path}/gw.db", 4)
    assert sorted(r["cache"] or "" for r in rows) == ["", "", "exact", "exact"]
    assert next(r for r in rows if r["cache"] is None and r["stream"] is False)["cost_usd"] == pytest.approx(EXACT)
