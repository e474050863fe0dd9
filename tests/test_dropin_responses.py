"""``POST /v1/responses`` with the real ``openai`` SDK: a real gateway over fake chat-completions backends."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.dbutil import wait_rows
from tests.dropin import new_key, tool_calling_gateway

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def gw(fake_backends: Any, gateway: Any, tmp_path: Any) -> Any:
    return tool_calling_gateway(fake_backends, gateway, tmp_path)


def client(gw: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


def test_responses_create_with_a_string_input_is_routed_and_logged_once(gw):
    c = client(gw, new_key(gw))
    raw = c.responses.with_raw_response.create(model="auto", input="2+2?", instructions="Answer briefly.",
                                               max_output_tokens=40)
    resp = raw.parse()
    assert raw.headers["x-poolgate-backend"] == "cheap" and raw.headers["x-poolgate-router"] == "cheapest"
    assert resp.object == "response" and resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.output_text == "answer from cheap"
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (7, 3)
    sent = gw.fakes["cheap"].requests[0]
    assert sent["messages"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"}]
    assert sent["max_tokens"] == 40
    smart = c.responses.with_raw_response.create(model="smart", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "2+2?"}]}])
    assert smart.headers["x-poolgate-backend"] == "strong" and smart.parse().output_text == "answer from strong"
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2
    assert {(r["pool"], r["backend"], r["status"]) for r in rows} == {("auto", "cheap", "ok"),
                                                                       ("smart", "strong", "ok")}


def test_responses_stream_has_the_responses_event_types(gw):
    c = client(gw, new_key(gw))
    events = list(c.responses.create(model="auto", input="2+2?", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert {"response.output_item.added", "response.content_part.added", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done", "response.output_item.done"} <= set(types)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "answer from cheap"
    final = events[-1].response
    assert final.output_text == "answer from cheap" and final.usage is not None and final.usage.output_tokens == 3
    with c.responses.stream(model="auto", input="2+2?") as stream:
        assert stream.get_final_response().output_text == "answer from cheap"
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2 and all(r["stream"] is True and r["status"] == "ok" for r in rows)


def test_function_tools_calls_and_their_outputs(gw):
    c = client(gw, new_key(gw))
    resp = c.responses.create(model="auto", input="Weather in Oslo?", tools=[WEATHER], tool_choice="auto")
    calls = [o for o in resp.output if o.type == "function_call"]
    assert [(o.name, o.arguments, o.call_id) for o in calls] == [("get_weather", '{"city": "Oslo"}', "call_fake1")]
    sent = gw.fakes["cheap"].requests[0]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["parameters"]}}]
    events = list(c.responses.create(model="auto", input="Weather in Oslo?", tools=[WEATHER], stream=True))
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == \
        '{"city": "Oslo"}'
    streamed = [o for o in events[-1].response.output if o.type == "function_call"]
    assert [(o.name, o.arguments) for o in streamed] == [("get_weather", '{"city": "Oslo"}')]
    c.responses.create(model="auto", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_fake1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_fake1", "output": "12 C, rain"}])
    turn = gw.fakes["cheap"].requests[-1]["messages"]
    assert turn[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_fake1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Oslo"}'}}]}
    assert turn[2] == {"role": "tool", "tool_call_id": "call_fake1", "content": "12 C, rain"}


def test_previous_response_id_continues_the_conversation_of_the_same_key_only(gw):
    key = new_key(gw)
    c = client(gw, key)
    first = c.responses.create(model="auto", input="What is 2+2?", instructions="Be brief.")
    c.responses.create(model="auto", input="And times 3?", previous_response_id=first.id)
    assert gw.fakes["cheap"].requests[-1]["messages"] == [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "answer from cheap"},
        {"role": "user", "content": "And times 3?"}]  # instructions are not carried over, as OpenAI does
    streamed = list(c.responses.create(model="auto", input="Sure?", stream=True, previous_response_id=first.id))
    third = c.responses.create(model="auto", input="Really?", previous_response_id=streamed[-1].response.id)
    assert third.status == "completed"
    assert [m["content"] for m in gw.fakes["cheap"].requests[-1]["messages"]] == [
        "What is 2+2?", "answer from cheap", "Sure?", "answer from cheap", "Really?"]
    other = client(gw, new_key(gw))
    with pytest.raises(openai.BadRequestError) as info:
        other.responses.create(model="auto", input="And times 3?", previous_response_id=first.id)
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"


def test_unsupported_parameters_and_tools_are_named_in_openai_errors(gw):
    c = client(gw, new_key(gw))
    with pytest.raises(openai.BadRequestError) as bg:
        c.responses.create(model="auto", input="x", background=True)
    assert "background" in bg.value.message and "not supported" in bg.value.message
    with pytest.raises(openai.BadRequestError) as tool:
        c.responses.create(model="auto", input="x", tools=[{"type": "web_search"}])
    assert "web_search" in tool.value.message and tool.value.param == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="nope", input="x")
