"""Chat completions -> an ``api: anthropic`` backend's Messages API, and its answers back to chat completions.

What lets ``/v1/chat/completions`` (and the routes built on it: Responses, legacy completions) be served by a
backend that speaks only the Anthropic Messages API. The dispatcher (``gateway.proxy.dispatch``) sends
:func:`request_to_messages` of the chat body and turns the answer back with :func:`answer_to_chat` or, streamed,
:func:`stream_to_chat`, so the rest of the pipeline (usage checks, relay, row) sees chat completions.

Request: system and developer messages become ``system``; text and image parts become blocks (a ``data:`` URL a
base64 image source, any other URL a url source); an assistant's ``tool_calls`` become ``tool_use`` blocks, and
``tool`` messages ``tool_result`` blocks of one user turn; ``tools`` / ``tool_choice`` /
``parallel_tool_calls``, ``stop``, ``temperature``, ``top_p``, ``user`` map to their Messages forms;
``max_tokens`` (or ``max_completion_tokens``) is required by the Messages API and defaults to
``DEFAULT_MAX_TOKENS``. Parameters with no Messages equivalent that change the answer (:func:`untranslatable`:
``n`` > 1, ``logprobs``, ``response_format``, ``logit_bias``, ``audio``) keep such backends out of the ranking
(``gateway.api.pipeline``); others (``seed``, penalties, ``stream_options``, ...) are not sent.

Answer: text blocks joined as ``content``, ``tool_use`` blocks as ``tool_calls``, ``stop_reason`` as
``finish_reason``, usage as OpenAI's (``gateway.proxy.usage.openai_usage``: cache reads as
``prompt_tokens_details.cached_tokens``, cache writes as ``cache_creation_input_tokens``); usage that is not
believable is left out, so the pipeline counts and marks the row estimated.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.proxy.streaming import EventSplitter
from gateway.proxy.usage import Usage, openai_usage, parse_anthropic_usage
from gateway.translate.sse import as_dict, as_str, tool_arguments

#: ``max_tokens`` sent when the chat request names none (the Messages API requires one)
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter", "pause_turn": "stop"}


def untranslatable(payload: dict[str, Any]) -> list[str]:
    """Chat parameters the Messages API has no equivalent for, and that change the answer."""
    out = [name for name in ("logprobs", "top_logprobs", "response_format", "logit_bias", "audio", "prediction")
           if payload.get(name) not in (None, False)]
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        out.append("n")
    return sorted(out)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _image(part: dict[str, Any]) -> dict[str, Any]:
    url = as_str(as_dict(part.get("image_url")).get("url"))
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str) and part["text"]:
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part))
    return blocks


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks as a turn of ``role``, joined to the previous turn when it has the same role."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _messages(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        m = as_dict(m)
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text(m.get("content")))
        elif role == "user":
            _append(turns, "user", _blocks(m.get("content")))
        elif role == "assistant":
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = as_dict(as_dict(call).get("function"))
                blocks.append({"type": "tool_use", "id": as_str(as_dict(call).get("id")),
                               "name": as_str(fn.get("name")), "input": tool_arguments(fn.get("arguments"))})
            _append(turns, "assistant", blocks)
        elif role == "tool":
            _append(turns, "user", [{"type": "tool_result", "tool_use_id": as_str(m.get("tool_call_id")),
                                     "content": _text(m.get("content"))}])
    return "\n\n".join(s for s in system if s), turns


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    out: dict[str, Any] | None = None
    if choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(as_dict(choice.get("function")).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    elif choice == "auto" or parallel is False:
        out = {"type": "auto"}
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def request_to_messages(payload: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """A chat-completions body (already validated by ``parse_chat_request``) as a Messages request to ``model``."""
    system, turns = _messages(payload.get("messages") or [])
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "max_tokens": limit, "messages": turns}
    if system:
        body["system"] = system
    for name in ("temperature", "top_p"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(payload.get("user"), str):
        body["metadata"] = {"user_id": payload["user"]}
    tools = [as_dict(t.get("function")) for t in payload.get("tools") or [] if isinstance(t, dict)]
    if tools:
        body["tools"] = [{"name": fn.get("name"), "input_schema": fn.get("parameters") or {"type": "object"},
                          **({"description": fn["description"]} if isinstance(fn.get("description"), str) else {})}
                         for fn in tools]
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    if choice is not None and (tools or choice["type"] == "none"):
        body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def _chat_usage(usage: Usage) -> dict[str, Any] | None:
    return openai_usage(usage.settled(0, 0)) if usage.complete else None


def answer_to_chat(message: dict[str, Any]) -> dict[str, Any]:
    """A Messages answer as a chat completion (one choice)."""
    content = message.get("content")
    blocks = [as_dict(b) for b in content] if isinstance(content, list) else []
    text = "".join(as_str(b.get("text")) for b in blocks if b.get("type") == "text")
    out: dict[str, Any] = {"role": "assistant", "content": text or None}
    calls = [{"id": as_str(b.get("id")), "type": "function", "function": {
        "name": as_str(b.get("name")), "arguments": orjson.dumps(b.get("input") or {}).decode()}}
        for b in blocks if b.get("type") == "tool_use"]
    if calls:
        out["tool_calls"] = calls
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{as_str(message.get('id'), 'anthropic')}", "object": "chat.completion",
        "created": int(time.time()), "model": as_str(message.get("model")),
        "choices": [{"index": 0, "message": out, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(as_str(message.get("stop_reason")), "stop")}]}
    usage = _chat_usage(parse_anthropic_usage(message.get("usage")))
    if usage is not None:
        answer["usage"] = usage
    return answer


class _ChunkWriter:
    """Chat chunks of one translated stream, and what the Messages events told so far."""

    def __init__(self) -> None:
        self.base: dict[str, Any] = {"id": "chatcmpl-anthropic", "object": "chat.completion.chunk",
                                     "created": int(time.time()), "model": ""}
        self.usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}  # Messages block index -> chat tool call index

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return b"data: " + orjson.dumps({**self.base, "choices": choices, **extra}) + b"\n\n"

    def event(self, data: dict[str, Any]) -> bytes:
        """The chat SSE bytes of one Messages event (b"" for those that carry nothing for chat)."""
        kind = data.get("type")
        if kind == "message_start":
            message = as_dict(data.get("message"))
            self.base["id"] = f"chatcmpl-{as_str(message.get('id'), 'anthropic')}"
            self.base["model"] = as_str(message.get("model"))
            self.usage.update(as_dict(message.get("usage")))
            return self.chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = as_dict(data.get("content_block"))
            at = data.get("index")
            if block.get("type") == "tool_use" and isinstance(at, int):
                index = self.tools[at] = len(self.tools)
                return self.chunk({"tool_calls": [{"index": index, "id": as_str(block.get("id")), "type": "function",
                                                   "function": {"name": as_str(block.get("name")),
                                                                "arguments": ""}}]})
            return b""
        if kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return self.chunk({"content": delta["text"]})
            at = data.get("index")
            if delta.get("type") == "input_json_delta" and isinstance(at, int) and at in self.tools:
                return self.chunk({"tool_calls": [{"index": self.tools[at], "function": {
                    "arguments": as_str(delta.get("partial_json"))}}]})
            return b""
        if kind == "message_delta":
            self.usage.update(as_dict(data.get("usage")))
            reason = as_str(as_dict(data.get("delta")).get("stop_reason"))
            return self.chunk({}, FINISH_REASONS.get(reason, "stop")) if reason else b""
        if kind == "message_stop":
            usage = _chat_usage(parse_anthropic_usage(self.usage))
            return (self.chunk(None, usage=usage) if usage is not None else b"") + b"data: [DONE]\n\n"
        if kind == "error":
            err = as_dict(data.get("error"))
            return b"data: " + orjson.dumps({"error": {"message": as_str(err.get("message"), "upstream error"),
                                                       "type": "upstream_error", "param": None,
                                                       "code": as_str(err.get("type")) or None}}) + b"\n\n"
        return b""


async def stream_to_chat(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A Messages event stream (bytes as the backend sends them) as a chat-completions event stream."""
    splitter = EventSplitter()
    writer = _ChunkWriter()
    async for raw in events:
        out = []
        for event in splitter.feed(raw):
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    try:
                        data = orjson.loads(line[5:].strip())
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(data, dict):
                        out.append(writer.event(data))
        if any(out):
            yield b"".join(out)
