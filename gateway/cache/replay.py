"""A chat completion to and from the chat-completions event stream, so a cached answer replays as a stream and a
streamed answer can be kept.

:func:`replay_stream` turns a kept completion into the chunks a backend would have streamed (role and content, tool
calls, the finish reason, usage when the client asked for it, ``[DONE]``); the drop-in routes translate those chunks
to Messages or Responses events as they do a backend's. :class:`StreamAssembler` reads the events relayed to the
client and, when the stream ended with ``[DONE]`` and no error, gives back the completion they spell.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson


def iter_data(raw: bytes) -> Iterator[str]:
    """Each ``data:`` payload of an event stream, as text."""
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip().decode("utf-8", "replace")


def _chunk(base: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"


async def replay_stream(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE bytes of ``completion`` streamed (see the module docstring)."""
    base = {"id": completion.get("id") or "chatcmpl-cached", "object": "chat.completion.chunk",
            "created": completion.get("created") or 0, "model": completion.get("model") or ""}
    choices = completion.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        yield _chunk(base, [{"index": index, "delta": delta, "finish_reason": None}])
        yield _chunk(base, [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    if include_usage and isinstance(completion.get("usage"), dict):
        yield _chunk(base, [], usage=completion["usage"])
    yield b"data: [DONE]\n\n"


class StreamAssembler:
    """Feed it the relayed bytes (``feed``); :meth:`completion` is the answer they spelled, or None when the stream
    failed, was cut, or grew past ``max_bytes`` (then nothing is kept: bounded memory for any stream)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf: list[bytes] = []
        self._size = 0
        self.too_large = False

    def feed(self, data: bytes) -> None:
        if self.too_large:
            return
        self._size += len(data)
        if self._size > self.max_bytes:
            self.too_large, self._buf = True, []
            return
        self._buf.append(data)

    def completion(self) -> dict[str, Any] | None:
        if self.too_large:
            return None
        done, head, usage = False, None, None
        choices: dict[int, dict[str, Any]] = {}
        for payload in iter_data(b"".join(self._buf)):
            if payload == "[DONE]":
                done = True
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(event, dict) or "error" in event:
                return None
            head = head or event
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            for c in event.get("choices") or []:
                _merge(choices.setdefault(int(c.get("index", 0)), {"content": [], "calls": {}, "finish": None}), c)
        if not done or head is None or not choices:
            return None
        out = {"id": head.get("id"), "object": "chat.completion", "created": head.get("created"),
               "model": head.get("model"), "choices": [_choice(i, choices[i]) for i in sorted(choices)]}
        if usage is not None:
            out["usage"] = usage
        return out


def _merge(acc: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if isinstance(delta.get("content"), str):
        acc["content"].append(delta["content"])
    for call in delta.get("tool_calls") or []:
        slot = acc["calls"].setdefault(int(call.get("index", 0)), {"id": None, "type": "function",
                                                                    "function": {"name": "", "arguments": ""}})
        slot["id"] = call.get("id") or slot["id"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""
    if choice.get("finish_reason"):
        acc["finish"] = choice["finish_reason"]


def _choice(index: int, acc: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(acc["content"]) or None}
    if acc["calls"]:
        message["tool_calls"] = [acc["calls"][i] for i in sorted(acc["calls"])]
    return {"index": index, "message": message, "finish_reason": acc["finish"] or "stop"}
