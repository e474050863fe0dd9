"""``POST /v1/messages`` with the real ``anthropic`` SDK: a real gateway over fake chat-completions backends."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows
from tests.dropin import new_key, tool_calling_gateway

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def gw(fake_backends: Any, gateway: Any, tmp_path: Any) -> Any:
    return tool_calling_gateway(fake_backends, gateway, tmp_path)


def client(gw: Any, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def test_messages_create_is_routed_by_the_pools_router_and_logged_once(gw):
    key = new_key(gw)  # the same key store as chat, sent as x-api-key (the SDK's default)
    raw = client(gw, key).messages.with_raw_response.create(
        model="auto", max_tokens=50, system="Answer briefly.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "2+2?"}]}])
    msg = raw.parse()
    assert raw.headers["x-poolgate-backend"] == "cheap" and raw.headers["x-poolgate-router"] == "cheapest"
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "answer from cheap"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 3)
    sent = gw.fakes["cheap"].requests[0]
    assert sent["messages"] == [{"role": "system", "content": "Answer briefly."},
                                {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}]
    assert sent["max_tokens"] == 50
    smart = client(gw, key).messages.with_raw_response.create(
        model="smart", max_tokens=50, messages=[{"role": "user", "content": "2+2?"}])
    assert smart.headers["x-poolgate-backend"] == "strong" and smart.headers["x-poolgate-router"] == "strongest"
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2
    assert {(r["pool"], r["backend"], r["status"]) for r in rows} == {("auto", "cheap", "ok"),
                                                                       ("smart", "strong", "ok")}
    assert all(r["prompt_tokens"] == 7 and r["completion_tokens"] == 3 and r["cost_usd"] > 0 for r in rows)


def test_messages_stream_yields_the_event_sequence_and_the_final_message(gw):
    key = new_key(gw)
    with client(gw, key).messages.stream(model="auto", max_tokens=50,
                                         messages=[{"role": "user", "content": "2+2?"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    with client(gw, key).messages.stream(model="auto", max_tokens=50,
                                         messages=[{"role": "user", "content": "2+2?"}]) as stream:
        assert "".join(stream.text_stream) == "answer from cheap"
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(events)
    assert final.content[0].type == "text" and final.content[0].text == "answer from cheap"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2 and all(r["stream"] is True and r["status"] == "ok" for r in rows)
    assert [r["completion_tokens"] for r in rows] == [3, 3]


def test_tool_use_round_trip_plain_and_streamed(gw):
    key = new_key(gw)
    c = client(gw, key)
    msg = c.messages.create(model="auto", max_tokens=50, tools=[WEATHER], tool_choice={"type": "auto"},
                            messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert msg.stop_reason == "tool_use"
    call = msg.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Oslo"}
    sent = gw.fakes["cheap"].requests[0]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": WEATHER["description"]}}]
    assert sent["tool_choice"] == "auto"
    with c.messages.stream(model="auto", max_tokens=50, tools=[WEATHER],
                           messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("tool_use", "get_weather", {"city": "Oslo"})]
    # the result goes back as a tool_result block: a tool message for the chat backend
    c.messages.create(model="auto", max_tokens=50, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "12 C, rain"},
                                     {"type": "text", "text": "So?"}]}])
    turn = gw.fakes["cheap"].requests[-1]["messages"]
    assert turn[1]["role"] == "assistant" and turn[1]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert turn[2] == {"role": "tool", "tool_call_id": call.id, "content": "12 C, rain"}
    assert turn[3] == {"role": "user", "content": [{"type": "text", "text": "So?"}]}
    assert len(wait_rows(gw.db, 3)) == 3


def test_bearer_auth_and_anthropic_version_header_are_accepted(gw):
    key = new_key(gw)
    r = httpx.post(f"{gw.url}/v1/messages", headers={"authorization": f"Bearer {key}",
                                                     "anthropic-version": "2023-06-01"},
                   json={"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "answer from cheap"


def test_errors_are_anthropic_error_json(gw):
    key = new_key(gw)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        client(gw, "pg-wrong").messages.create(model="auto", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert auth.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": auth.value.body["error"]["message"]}}
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(gw, key).messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(gw, key).messages.create(model="auto", max_tokens=5, extra_body={"top_k": 3},
                                        messages=[{"role": "user", "content": "x"}])
    assert "top_k" in bad.value.body["error"]["message"] and "not supported" in bad.value.body["error"]["message"]
    r = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": key}, json={"model": "auto", "messages": []})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{gw.url}/v1/messages/count_tokens", headers={"x-api-key": key}, json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert "POST /v1/messages/count_tokens is not supported" in r.json()["error"]["message"]


def test_a_client_that_leaves_a_stream_still_gets_its_row_logged(fake_backends, gateway, tmp_path):
    _, stalls = fake_backends("cheap", "stall_mid")  # two chunks, then silence
    gw = gateway(f"backends:\n{backend_yaml('cheap', stalls.url)}\npools:\n  - name: auto\n    members: [cheap]\n")
    body = {"model": "auto", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=10) as r:
        for line in r.iter_lines():
            if "content_block_delta" in line:
                break  # the client leaves mid-answer
    rows = wait_rows(f"sqlite+aiosqlite:///{tmp_path}/gw.db", 1)
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["error_type"] == "client_disconnected"
