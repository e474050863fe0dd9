"""Anthropic Messages API <-> chat completions.

Request: ``system`` (a string or text blocks) becomes a system message; content blocks map to chat parts
(``text``; ``image`` with a base64 or URL source becomes ``image_url``), an assistant's ``tool_use`` blocks to
``tool_calls``, a user's ``tool_result`` blocks to ``tool`` messages (before the turn's other content, as chat
expects); ``tools`` (``input_schema``) and ``tool_choice`` (auto, any, tool, none) to their chat forms;
``stop_sequences`` to ``stop``, ``metadata.user_id`` to ``user``. Parameters chat backends cannot honour
(``top_k``, ``thinking``, ...) are refused with a 400 that names them.

Answer: text and ``tool_use`` blocks, ``stop_reason`` from ``finish_reason``, ``usage`` from the chat usage (cached
prompt tokens as ``cache_read_input_tokens``, cache writes as ``cache_creation_input_tokens``, both apart from
``input_tokens`` as Anthropic counts them); a
stream becomes message_start, ping, content_block_start/delta/stop, message_delta and message_stop events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from gateway.errors import anthropic_error_body, known_params_object
from gateway.errors import invalid_value as _bad
from gateway.proxy.usage import anthropic_usage, parse_usage
from gateway.translate.sse import DONE, Preamble, as_dict, chat_chunks, chunk_error, first_message, sse, tool_arguments

SUPPORTED = frozenset({"model", "max_tokens", "messages", "system", "stop_sequences", "stream", "temperature",
                       "top_p", "tools", "tool_choice", "metadata", "poolgate"})
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}

def _text_of_blocks(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(f"{where} must be a string or an array of text blocks", where)
    texts = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise _bad(f"{where}[{i}] must be a text block", f"{where}[{i}]")
        texts.append(b["text"])
    return "\n".join(texts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64":
        return {"type": "image_url", "image_url": {"url": f"data:{src.get('media_type')};base64,{src.get('data')}"}}
    if isinstance(src, dict) and src.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": src.get("url")}}
    raise _bad(f"{where}.source must be a base64 or url image source", f"{where}.source")


def _message(m: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as one or more chat messages."""
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise _bad(f"{where}.role must be 'user' or 'assistant'", f"{where}.role")
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or an array of content blocks", f"{where}.content")
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            parts.append({"type": "text", "text": b["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image_part(b, bw))
        elif kind == "tool_use" and role == "assistant":
            tool_calls.append({"id": str(b.get("id")), "type": "function", "function": {
                "name": str(b.get("name")), "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind == "tool_result" and role == "user":
            text = b.get("content", "")
            results.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id")),
                            "content": text if isinstance(text, str) else _text_of_blocks(text, f"{bw}.content")})
        else:
            raise _bad(f"{bw}: content block type {kind!r} is not supported in a {role} message by poolgate "
                       f"(supported: text, image, tool_use, tool_result)", f"{bw}.type")
    out = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        msg: dict[str, Any] = {"role": "assistant", "content": text or None}
        if tool_calls:
            msg["tool_calls"] = tool_calls
        if text or tool_calls:
            out.append(msg)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice must be {type: auto | any | tool | none}", "tool_choice")


def request_to_chat(body: Any) -> dict[str, Any]:
    """A Messages request as a chat-completions body (``parse_chat_request`` then checks it as any other)."""
    body = known_params_object(body, SUPPORTED, "/v1/messages", list_supported=True)
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        raise _bad("'max_tokens' is required and must be an integer", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    chat_messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        chat_messages.append({"role": "system", "content": _text_of_blocks(body["system"], "system")})
    for i, m in enumerate(messages):
        chat_messages.extend(_message(m, i))
    chat: dict[str, Any] = {"model": body.get("model"), "messages": chat_messages, "max_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p", "poolgate"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    _tools(body, chat)
    return chat


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array", "tools")
        out = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("type") not in (None, "custom"):
                raise _bad(f"tools[{i}] must be a custom tool with a name and an input_schema (server tools are "
                           f"not supported by poolgate)", f"tools[{i}]")
            fn = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object"}}
            if isinstance(t.get("description"), str):
                fn["description"] = t["description"]
            out.append({"type": "function", "function": fn})
        chat["tools"] = out
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = _tool_choice(choice)
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True and tools:
            chat["parallel_tool_calls"] = False


def _usage(usage: Any) -> dict[str, int]:
    """A chat ``usage`` as Anthropic's: cache reads and writes apart from ``input_tokens`` (checked counts only)."""
    return anthropic_usage(parse_usage(usage).settled(0, 0))


def answer_from_chat(parsed: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A chat completion as a Messages answer (the first choice)."""
    choice, message = first_message(parsed)
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        call = as_dict(call)
        fn = as_dict(call.get("function"))
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{len(content)}", "name": fn.get("name"),
                        "input": tool_arguments(fn.get("arguments"))})
    return {"id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": parsed.get("model"),
            "content": content, "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": _usage(parsed.get("usage"))}


class _StreamState:
    def __init__(self) -> None:
        self.index = -1  # the open content block's index
        self.open: str | None = None  # "text" or the chat tool call index ("tool:0")
        self.stop_reason = "end_turn"
        self.usage: dict[str, int] = _usage(None)

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def start(self, key: str, block: dict[str, Any]) -> list[bytes]:
        events = self.close()
        self.index += 1
        self.open = key
        events.append(sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                                  "content_block": block}))
        return events


def _delta_events(state: _StreamState, delta: dict[str, Any]) -> list[bytes]:
    events: list[bytes] = []
    text = delta.get("content")
    if isinstance(text, str) and text:
        if state.open != "text":
            events += state.start("text", {"type": "text", "text": ""})
        events.append(sse("content_block_delta", {"type": "content_block_delta", "index": state.index,
                                                  "delta": {"type": "text_delta", "text": text}}))
    for call in delta.get("tool_calls") or []:
        key = f"tool:{call.get('index', 0)}"
        fn = call.get("function") or {}
        if state.open != key:
            events += state.start(key, {"type": "tool_use", "id": call.get("id") or f"toolu_{state.index + 1}",
                                        "name": fn.get("name"), "input": {}})
        if fn.get("arguments"):
            events.append(sse("content_block_delta", {"type": "content_block_delta", "index": state.index,
                                                      "delta": {"type": "input_json_delta",
                                                                "partial_json": fn["arguments"]}}))
    return events


async def stream_from_chat(chunks: AsyncIterator[bytes], request_id: str, model: str,
                           prompt_tokens: int) -> AsyncIterator[bytes]:
    """The relayed chat stream as Messages stream events."""
    state = _StreamState()
    state.usage["input_tokens"] = prompt_tokens
    message: dict[str, Any] = {"id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": model,
               "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": dict(state.usage)}
    # sent with the first relayed event, not before: the relay must have started for a client that leaves to
    # close it (an async generator closed before its first step runs no finally, so its log row would be lost)
    head = Preamble(sse("message_start", {"type": "message_start", "message": message}) + sse("ping", {"type": "ping"}))
    # closed as soon as this stream is: a client that leaves closes the relay (upstream, log row) at once
    async with aclosing(chat_chunks(chunks)) as reader:
        async for chunk in reader:
            if chunk is DONE:
                tail = state.close()
                tail.append(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": state.stop_reason,
                                                                                     "stop_sequence": None},
                                                  "usage": state.usage}))
                tail.append(sse("message_stop", {"type": "message_stop"}))
                yield head(b"".join(tail))
                continue
            if (err := chunk_error(chunk)) is not None:
                yield head(sse("error", anthropic_error_body(502, err)))
                continue
            if chunk.get("usage"):
                state.usage = _usage(chunk["usage"])
            events: list[bytes] = []
            for choice in chunk.get("choices") or []:
                if isinstance(choice.get("delta"), dict):
                    events += _delta_events(state, choice["delta"])
                if choice.get("finish_reason"):
                    state.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
            if events:
                yield head(b"".join(events))
