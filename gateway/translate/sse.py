"""Reading the relayed chat-completions event stream as chunks, and writing events of another API."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

DONE: dict[str, Any] = {"__done__": True}


async def chat_chunks(stream: AsyncIterator[bytes]) -> AsyncGenerator[dict[str, Any], None]:
    """Each ``data:`` payload of the relayed stream as a JSON object (``DONE`` for ``[DONE]``; an error event is
    ``{"error": {...}}``, as the relay writes it). The relay hands out whole events, so no event spans chunks."""
    try:
        async for chunk in stream:
            for line in chunk.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    yield DONE
                    continue
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    yield parsed
    finally:  # a client that leaves closes this reader: the relay under it must close too (upstream, log row)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class Preamble:
    """The events a translated stream opens with, sent prefixed to its first relayed output: until the relay under
    it has taken its first step, closing the stream (a client that left) could not run the relay's ``finally``
    (an async generator closed before it starts runs none), and the request's log row would be lost."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self, data: bytes) -> bytes:
        out, self.data = self.data + data, b""
        return out


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The message of an error event, else None."""
    err = chunk.get("error")
    if err is None:
        return None
    msg = err.get("message") if isinstance(err, dict) else None
    return msg if isinstance(msg, str) else "upstream stream error"


def tool_arguments(raw: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` string as an object (a model's malformed JSON is kept under ``_raw``)."""
    if isinstance(raw, dict):
        return raw
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str | bytes) and raw else {}
    except orjson.JSONDecodeError:
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_raw": raw}


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (backends may send anything)."""
    return value if isinstance(value, dict) else {}


def as_str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def first_message(parsed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the first choice, its message) of a chat completion, empty objects where they are missing."""
    choices = parsed.get("choices")
    choice = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    return choice, as_dict(choice.get("message"))
