"""Fake backends on loopback whose answers carry every kind of usage, for the exact-cost and pass-through tests.

:class:`DetailedOpenAI` is an OpenAI-compatible backend whose usage has cached prompt tokens
(``prompt_tokens_details.cached_tokens``), cache writes (``cache_creation_input_tokens``, as LiteLLM reports
them) and reasoning tokens (``completion_tokens_details.reasoning_tokens``), plain and streamed (the usage chunk
only when asked for with ``stream_options.include_usage``, as OpenAI does).

:class:`FakeAnthropic` is an Anthropic Messages API: ``POST /v1/messages`` answers a message (text, or a
``tool_use`` block of the first tool offered) with Anthropic's usage (``input_tokens`` without the cache reads
and writes; ``usage`` replaces it with any value, for hostile answers), and streams the Messages event sequence.
Both keep every request's body and headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


class DetailedOpenAI:
    """Usage: ``prompt`` tokens of which ``cached`` read and ``written`` written to the cache; ``completion`` of
    which ``reasoning``. ``usage`` may replace the whole usage object (hostile values)."""

    def __init__(self, prompt: int = 100, cached: int = 60, written: int = 0, completion: int = 40,
                 reasoning: int = 25, usage: Any = None) -> None:
        self.counts = (prompt, cached, written, completion, reasoning)
        self.override = usage
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    def usage(self) -> Any:
        if self.override is not None:
            return self.override
        prompt, cached, written, completion, reasoning = self.counts
        out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion,
                               "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                               "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0}}
        if written:
            out["cache_creation_input_tokens"] = written
        return out

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        if not body.get("stream"):
            answer = {"id": "chatcmpl-d", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "four"},
                                   "finish_reason": "stop"}], "usage": self.usage()}
            return Response(orjson.dumps(answer), media_type="application/json")
        return StreamingResponse(self._stream(body), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-d", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        for delta, finish in (({"role": "assistant", "content": "fo"}, None), ({"content": "ur"}, None),
                              ({}, "stop")):
            yield b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish}]}) + b"\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            yield b"data: " + orjson.dumps({**base, "choices": [], "usage": self.usage()}) + b"\n\n"
        yield b"data: [DONE]\n\n"


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class FakeAnthropic:
    """An Anthropic Messages API on loopback. Usage: ``input`` uncached input tokens, ``read`` cache reads,
    ``written`` cache writes, ``output`` output tokens."""

    def __init__(self, input_tokens: int = 20, read: int = 50, written: int = 30, output: int = 15,
                 usage: Any = None) -> None:
        self.usage = usage if usage is not None else {
            "input_tokens": input_tokens, "cache_creation_input_tokens": written, "cache_read_input_tokens": read,
            "output_tokens": output}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    def _content(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if body.get("tools"):
            return [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_01", "name": body["tools"][0]["name"],
                     "input": {"city": "Oslo"}}]
        return [{"type": "text", "text": "Hello from Claude"}]

    async def messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if request.headers.get("x-api-key") != "sk-ant-backend":
            err = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
            return Response(orjson.dumps(err), status_code=401, media_type="application/json")
        content = self._content(body)
        stop = "tool_use" if body.get("tools") else "end_turn"
        if not body.get("stream"):
            return Response(orjson.dumps({"id": "msg_01", "type": "message", "role": "assistant",
                                          "model": body["model"], "content": content, "stop_reason": stop,
                                          "stop_sequence": None, "usage": self.usage}),
                            media_type="application/json")
        return StreamingResponse(self._stream(body, content, stop), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], content: list[dict[str, Any]], stop: str) -> AsyncIterator[bytes]:
        start_usage = {**self.usage, "output_tokens": 1} if isinstance(self.usage, dict) else self.usage
        yield sse("message_start", {"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
        yield sse("ping", {"type": "ping"})
        for i, block in enumerate(content):
            if block["type"] == "text":
                yield sse("content_block_start", {"type": "content_block_start", "index": i,
                                                  "content_block": {"type": "text", "text": ""}})
                for word in block["text"].split(" "):
                    piece = word if word == block["text"].split(" ")[0] else " " + word
                    yield sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                      "delta": {"type": "text_delta", "text": piece}})
            else:
                yield sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                args = orjson.dumps(block["input"]).decode()
                for part in (args[:5], args[5:]):
                    yield sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                      "delta": {"type": "input_json_delta", "partial_json": part}})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": i})
        yield sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                    "usage": {"output_tokens": self.usage.get("output_tokens")}
                                    if isinstance(self.usage, dict) else self.usage})
        yield sse("message_stop", {"type": "message_stop"})
