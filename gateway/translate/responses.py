"""OpenAI Responses API <-> chat completions.

Request: ``input`` (a string, or items: messages with ``input_text``/``output_text``/``input_image`` parts,
``function_call`` and ``function_call_output``) and ``instructions`` become chat messages, after the stored
conversation of ``previous_response_id`` (``gateway.translate.store``); function ``tools`` and ``tool_choice``
their chat forms; ``max_output_tokens`` is ``max_tokens``; ``text.format`` is ``response_format``. Parameters
without a chat equivalent (built-in tools, ``background``, ``include``, ...) are refused with a 400 naming them.

Answer: a ``response`` object whose output is a ``message`` item (``output_text``) and ``function_call`` items; a
stream is the Responses events (response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta/done, response.function_call_arguments.delta/done,
response.content_part.done, response.output_item.done, response.completed), each with its ``sequence_number``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from gateway.errors import invalid_value as _bad
from gateway.errors import known_params_object
from gateway.proxy.usage import parse_usage
from gateway.translate.sse import DONE, Preamble, as_dict, chat_chunks, chunk_error, first_message, sse

SUPPORTED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                       "max_output_tokens", "temperature", "top_p", "stream", "store", "metadata", "user", "text",
                       "previous_response_id", "truncation", "poolgate"})


def _part(p: Any, where: str) -> dict[str, Any]:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind in ("input_text", "output_text", "text") and isinstance(p.get("text"), str):
        return {"type": "text", "text": p["text"]}
    if kind == "input_image" and isinstance(p.get("image_url"), str):
        return {"type": "image_url", "image_url": {"url": p["image_url"], "detail": p.get("detail") or "auto"}}
    raise _bad(f"{where}: content part type {kind!r} is not supported by poolgate (supported: input_text, "
               f"output_text, input_image with an image_url)", f"{where}.type")


def _item_messages(item: Any, i: int, out: list[dict[str, Any]]) -> None:
    """Append the chat message(s) of one input item to ``out``."""
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object", where)
    kind = item.get("type", "message")
    if kind == "message":
        role, content = item.get("role"), item.get("content")
        if role not in ("user", "assistant", "system", "developer"):
            raise _bad(f"{where}.role must be user, assistant, system or developer", f"{where}.role")
        if isinstance(content, list):
            parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
            # only user messages take parts in every backend: the others are their text
            content = parts if role == "user" else "".join(p.get("text", "") for p in parts)
        elif not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or an array of parts", f"{where}.content")
        out.append({"role": role, "content": content})
    elif kind == "function_call":
        call = {"id": str(item.get("call_id")), "type": "function",
                "function": {"name": str(item.get("name")), "arguments": str(item.get("arguments") or "{}")}}
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant message
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        out.append({"role": "tool", "tool_call_id": str(item.get("call_id")),
                    "content": output if isinstance(output, str) else str(output)})
    else:
        raise _bad(f"{where}: item type {kind!r} is not supported by poolgate (supported: message, function_call, "
                   f"function_call_output)", f"{where}.type")


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as chat messages (not the instructions, not the previous conversation)."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array of items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        _item_messages(item, i, out)
    return out


def check_request(body: Any) -> dict[str, Any]:
    body = known_params_object(body, SUPPORTED, "/v1/responses", list_supported=True)
    if body.get("truncation") not in (None, "disabled"):
        raise _bad("only truncation 'disabled' is supported by poolgate", "truncation")
    return body


def request_to_chat(body: dict[str, Any], history: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """A Responses request as a chat body: instructions, then ``history`` (the previous response's conversation),
    then ``new`` (this request's input)."""
    messages = list(history) + new
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in ("temperature", "top_p", "user", "parallel_tool_calls", "poolgate"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    _format(body.get("text"), chat)
    _tools(body, chat)
    return chat


def _format(text: Any, chat: dict[str, Any]) -> None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise _bad("text.format.type must be text, json_object or json_schema", "text.format.type")


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array", "tools")
        out = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
                kind = t.get("type") if isinstance(t, dict) else None
                raise _bad(f"tools[{i}]: tool type {kind!r} is not supported by poolgate (function tools only)",
                           f"tools[{i}].type")
            fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
            out.append({"type": "function", "function": fn})
        chat["tools"] = out
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        raise _bad("tool_choice must be auto, none, required or {type: function, name}", "tool_choice")


def _usage(usage: Any) -> dict[str, Any]:
    """A chat ``usage`` as the Responses API's (checked counts only; cached and reasoning tokens included)."""
    u = parse_usage(usage).settled(0, 0)
    p, c = u.prompt_tokens, u.completion_tokens
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": u.cached_tokens}, "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens}, "total_tokens": p + c}


@dataclass
class ResponseShell:
    """What every ``response`` object of one request repeats."""

    id: str
    model: str
    body: dict[str, Any]
    created_at: int

    def object(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        b = self.body
        tools = [t for t in b.get("tools") or [] if isinstance(t, dict)]
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "model": self.model, "output": output, "usage": usage, "error": None, "incomplete_details": None,
                "instructions": b.get("instructions"), "metadata": b.get("metadata") or {},
                "previous_response_id": b.get("previous_response_id"), "tools": tools,
                "tool_choice": b.get("tool_choice") or "auto", "parallel_tool_calls": b.get("parallel_tool_calls",
                                                                                           True),
                "temperature": b.get("temperature"), "top_p": b.get("top_p"),
                "max_output_tokens": b.get("max_output_tokens"), "store": b.get("store", True),
                "text": b.get("text") or {"format": {"type": "text"}}, "truncation": "disabled"}


def new_shell(request_id: str, model: str, body: dict[str, Any]) -> ResponseShell:
    return ResponseShell(f"resp_{request_id}", model, body, int(time.time()))


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The output items as the chat assistant message a next turn replays."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
             for i in output if i["type"] == "function_call"]
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def answer_from_chat(parsed: dict[str, Any], shell: ResponseShell) -> dict[str, Any]:
    """A chat completion as a ``response`` object (the first choice)."""
    _, message = first_message(parsed)
    rid = shell.id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        output.append(_message_item(f"msg_{rid}", message["content"]))
    for j, call in enumerate(message.get("tool_calls") or []):
        call = as_dict(call)
        fn = as_dict(call.get("function"))
        output.append(_call_item(f"fc_{rid}_{j}", str(call.get("id") or f"call_{j}"), str(fn.get("name")),
                                 str(fn.get("arguments") or "")))
    return shell.object("completed", output, _usage(parsed.get("usage")))


class _Events:
    """The Responses stream's writer: numbered events and the output items as they are built."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.open_key: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(kind, data)

    def close(self) -> list[bytes]:
        item, self.open, self.open_key = self.open, None, None
        if item is None:
            return []
        index = len(self.output)
        item["status"] = "completed"
        self.output.append(item)
        if item["type"] == "message":
            part = item["content"][0]
            return [self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                               text=part["text"], logprobs=[]),
                    self.event("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part),
                    self.event("response.output_item.done", output_index=index, item=item)]
        return [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           arguments=item["arguments"]),
                self.event("response.output_item.done", output_index=index, item=item)]

    def text(self, piece: str) -> list[bytes]:
        events: list[bytes] = []
        index = len(self.output)
        if self.open_key != "text":
            events += self.close()
            index = len(self.output)
            self.open = _message_item(f"msg_{self.shell.id.removeprefix('resp_')}_{index}", "", "in_progress")
            self.open_key = "text"
            item = {**self.open, "content": []}
            events.append(self.event("response.output_item.added", output_index=index, item=item))
            events.append(self.event("response.content_part.added", item_id=self.open["id"], output_index=index,
                                     content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        assert self.open is not None
        self.open["content"][0]["text"] += piece
        events.append(self.event("response.output_text.delta", item_id=self.open["id"], output_index=index,
                                 content_index=0, delta=piece, logprobs=[]))
        return events

    def call(self, delta: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        key = f"call:{delta.get('index', 0)}"
        fn = delta.get("function") or {}
        if self.open_key != key:
            events += self.close()
            index = len(self.output)
            self.open = _call_item(f"fc_{self.shell.id.removeprefix('resp_')}_{index}",
                                   str(delta.get("id") or f"call_{index}"), str(fn.get("name")), "", "in_progress")
            self.open_key = key
            events.append(self.event("response.output_item.added", output_index=index, item=dict(self.open)))
        assert self.open is not None
        piece = fn.get("arguments")
        if isinstance(piece, str) and piece:
            self.open["arguments"] += piece
            events.append(self.event("response.function_call_arguments.delta", item_id=self.open["id"],
                                     output_index=len(self.output), delta=piece))
        return events


async def stream_from_chat(chunks: AsyncIterator[bytes], shell: ResponseShell,
                           on_complete: Callable[[dict[str, Any]], None]) -> AsyncIterator[bytes]:
    """The relayed chat stream as Responses events; ``on_complete`` gets the completed response object."""
    ev = _Events(shell)
    started = shell.object("in_progress", [], None)
    # sent with the first relayed event, not before (see gateway.translate.sse.Preamble)
    head = Preamble(ev.event("response.created", response=started) + ev.event("response.in_progress",
                                                                               response=started))
    # closed as soon as this stream is: a client that leaves closes the relay (upstream, log row) at once
    async with aclosing(chat_chunks(chunks)) as reader:
        async for chunk in reader:
            if chunk is DONE:
                tail = ev.close()
                final = shell.object("completed", ev.output, ev.usage or _usage(None))
                on_complete(final)
                tail.append(ev.event("response.completed", response=final))
                yield head(b"".join(tail))
                continue
            if (err := chunk_error(chunk)) is not None:
                yield head(ev.event("error", code="upstream_stream_error", message=err, param=None))
                continue
            if chunk.get("usage"):
                ev.usage = _usage(chunk["usage"])
            events: list[bytes] = []
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                if isinstance(delta.get("content"), str) and delta["content"]:
                    events += ev.text(delta["content"])
                for call in delta.get("tool_calls") or []:
                    events += ev.call(call)
            if events:
                yield head(b"".join(events))
