"""The one cost formula with cached, cache-write and reasoning tokens, usage parsing of both APIs, and the chat ->
Messages request translation (units; tests/test_cost_exact.py and tests/test_passthrough_anthropic.py run them
through a real gateway)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.pools import parse_pool_file
from gateway.proxy.usage import anthropic_usage, openai_usage, parse_anthropic_usage, parse_usage
from gateway.translate.to_anthropic import answer_to_chat, request_to_messages, untranslatable
from routers.base import ModelCard
from routers.pricing import TokenUsage, detail_prices, token_cost_usd, usage_cost_usd

POOL = parse_pool_file("""
backends:
  - {name: a, base_url: "http://127.0.0.1:9/v1", model: a, input_price: 2, output_price: 8, cached_input_price: 0.5,
     cache_write_price: 2.5, reasoning_price: 4}
  - {name: b, base_url: "http://127.0.0.1:9/v1", model: b, input_price: 2, output_price: 8}
""")


def test_the_formula_prices_each_kind_of_token_and_reduces_to_two_prices_without_details() -> None:
    a, b = POOL.backend("a"), POOL.backend("b")
    usage = TokenUsage(100, 40, cached_tokens=60, cache_write_tokens=10, reasoning_tokens=25)
    assert usage_cost_usd(a, usage) == pytest.approx((30 * 2 + 60 * 0.5 + 10 * 2.5 + 15 * 8 + 25 * 4) / 1e6)
    assert usage_cost_usd(b, usage) == pytest.approx((100 * 2 + 40 * 8) / 1e6)  # defaults: input / output price
    assert detail_prices(b) == (2.0, 2.0, 8.0)
    card = ModelCard(name="m", input_price=1.0, output_price=3.0)  # a router's card has no detail prices
    assert detail_prices(card) == (1.0, 1.0, 3.0)
    batch = token_cost_usd(np.array([100.0, 10.0]), np.array([40.0, 0.0]), 2.0, 8.0,
                           cached_tokens=np.array([60.0, 0.0]), cached_input_price=0.5)
    assert batch == pytest.approx([(40 * 2 + 60 * 0.5 + 40 * 8) / 1e6, 20 / 1e6])


def test_pool_file_refuses_negative_detail_prices() -> None:
    with pytest.raises(ValueError, match="cached_input_price"):
        parse_pool_file('backends: [{name: x, base_url: "http://h/v1", model: x, cached_input_price: -1}]')


def test_openai_usage_details_are_checked_against_their_totals() -> None:
    u = parse_usage({"prompt_tokens": 100, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 60},
                     "completion_tokens_details": {"reasoning_tokens": 25}, "cache_creation_input_tokens": 10})
    assert (u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens, u.complete) == (60, 10, 25, True)
    over = parse_usage({"prompt_tokens": 100, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 90},
                        "cache_creation_input_tokens": 20})
    assert (over.cached_tokens, over.cache_write_tokens, over.complete) == (90, 0, False)
    assert "cache_write_tokens" in over.dropped
    assert parse_usage({"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}).complete


def test_anthropic_usage_counts_cache_reads_and_writes_into_the_prompt_both_ways() -> None:
    u = parse_anthropic_usage({"input_tokens": 20, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 30,
                               "output_tokens": 15})
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.completion_tokens) == (100, 50, 30, 15)
    tokens = u.settled(0, 0)
    assert anthropic_usage(tokens) == {"input_tokens": 20, "output_tokens": 15, "cache_read_input_tokens": 50,
                                       "cache_creation_input_tokens": 30}
    back = parse_usage(openai_usage(tokens))
    assert back.settled(0, 0) == tokens  # OpenAI's form carries the same counts
    assert not parse_anthropic_usage({"input_tokens": 10**9, "cache_read_input_tokens": 10**9,
                                      "output_tokens": 1}).complete


def test_chat_requests_translate_to_messages() -> None:
    body = request_to_messages({
        "model": "pool", "max_tokens": 50, "stop": "END", "user": "u1", "temperature": 0.2,
        "messages": [{"role": "system", "content": "S1"}, {"role": "developer", "content": "S2"},
                     {"role": "user", "content": [{"type": "text", "text": "look"}, {
                         "type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "done"},
                     {"role": "user", "content": "and?"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
    }, "claude-x", stream=True)
    assert body["model"] == "claude-x" and body["system"] == "S1\n\nS2" and body["stream"] is True
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u1"}
    assert body["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "done"},
                                     {"type": "text", "text": "and?"}]},
    ]
    assert request_to_messages({"messages": [{"role": "user", "content": "hi"}]}, "m", False)["max_tokens"] == 4096
    assert untranslatable({"n": 2, "logprobs": True, "seed": 3}) == ["logprobs", "n"]
    assert untranslatable({"n": 1, "logprobs": False}) == []


def test_messages_answers_translate_to_chat_and_bad_usage_is_left_out() -> None:
    chat = answer_to_chat({"id": "msg_1", "model": "m", "stop_reason": "max_tokens", "content": [
        {"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"x": 1}}],
        "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5}})
    choice = chat["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == "a"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x":1}'}
    assert chat["usage"]["prompt_tokens"] == 8 and chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    assert "usage" not in answer_to_chat({"content": "junk", "usage": {"input_tokens": -1, "output_tokens": 2}})


async def test_a_hostile_messages_stream_translates_without_raising() -> None:
    from gateway.translate.to_anthropic import stream_to_chat

    events = [b'event: message_start\ndata: {"type":"message_start","message":"oops"}\n\n',
              b'data: {"type":"content_block_start","index":[1],"content_block":{"type":"tool_use"}}\n\n',
              b'data: {"type":"content_block_delta","index":{},"delta":{"type":"input_json_delta"}}\n\n',
              b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n',
              b"data: not json\n\n", b'data: [1, 2]\n\n',
              b'data: {"type":"message_delta","delta":"x","usage":[3]}\n\n', b'data: {"type":"message_stop"}\n\n']

    async def upstream():  # type: ignore[no-untyped-def]
        for e in events:
            yield e

    out = b"".join([chunk async for chunk in stream_to_chat(upstream())])
    assert b'"content":"hi"' in out and out.endswith(b"data: [DONE]\n\n") and b'"usage"' not in out


def test_a_limit_reserves_every_token_at_its_sides_dearest_price() -> None:
    from gateway.limits.tenancy import Tenancy
    from gateway.settings import Settings
    from routers.pricing import worst_cost_usd

    dear = parse_pool_file("""
backends:
  - {name: r, base_url: "http://127.0.0.1:9/v1", model: r, input_price: 3, output_price: 8, cache_write_price: 3.75,
     reasoning_price: 12}
pools:
  - {name: p, members: [r]}
""")
    assert worst_cost_usd(dear.backend("r"), 100, 10) == pytest.approx((100 * 3.75 + 10 * 12) / 1e6)
    tenancy = Tenancy(Settings(), dear, None, None)  # type: ignore[arg-type]  # estimate needs no service
    assert tenancy.estimate("p", {"max_tokens": 10}, 100) == (110, pytest.approx((100 * 3.75 + 10 * 12) / 1e6))
    assert worst_cost_usd(POOL.backend("b"), 100, 10) == pytest.approx((100 * 2 + 10 * 8) / 1e6)
