"""Relay an upstream SSE stream to the client event by event, and learn its usage on the way.

The dispatcher always asks the backend for usage (``stream_options.include_usage``); the usage-only
chunk is forwarded only if the client asked for it too. If the backend sends no usage, completion
tokens are counted from the relayed content. If the upstream fails or ends without ``[DONE]``, the
client gets an OpenAI-style error event and the log row says so.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from gateway.pricing import count_tokens

_DONE = b"[DONE]"


@dataclass
class StreamOutcome:
    """What the relay saw; handed to ``on_finish`` exactly once."""

    usage: dict[str, Any] | None = None
    completion_text: str | None = None
    ttft_ms: float | None = None
    error: str | None = None
    done: bool = False
    client_disconnected: bool = False
    raw_events: list[bytes] = field(default_factory=list)

    def completion_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return int(self.usage["completion_tokens"])
        return count_tokens(self.text())

    def text(self) -> str:
        """Concatenated content deltas (parsed only when needed)."""
        if self.completion_text is None:
            parts: list[str] = []
            for raw in self.raw_events:
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                for choice in data.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if isinstance(piece, str):
                        parts.append(piece)
            self.completion_text = "".join(parts)
        return self.completion_text


def error_event(message: str, code: str = "upstream_stream_error") -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def relay(
    chunks: AsyncIterator[bytes],
    response: httpx.Response | None,
    started: float,
    client_wants_usage: bool,
    on_finish: Callable[[StreamOutcome], None],
) -> AsyncIterator[bytes]:
    """Yield SSE bytes to the client; call ``on_finish`` once at the end, whatever happens."""
    out = StreamOutcome()
    buffer = b""
    try:
        async for chunk in chunks:
            buffer += chunk
            if b"\n\n" not in buffer and b"\r\n\r\n" not in buffer:
                continue
            buffer = buffer.replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            emit = []
            for event in events:
                if _inspect(event, out, client_wants_usage):
                    emit.append(event + b"\n\n")
            if emit:
                if out.ttft_ms is None:
                    out.ttft_ms = (time.perf_counter() - started) * 1000
                yield b"".join(emit)
        if buffer.strip() and _inspect(buffer, out, client_wants_usage):
            yield buffer + b"\n\n"
        if not out.done:
            out.error = "upstream ended the stream without [DONE]"
            yield error_event(out.error)
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        yield error_event(f"upstream failed mid-stream ({out.error})")
    except BaseException:  # client went away (cancelled) or the server is shutting down
        out.client_disconnected = True
        out.error = out.error or "client disconnected"
        raise
    finally:
        if response is not None:
            await response.aclose()
        on_finish(out)


def _inspect(event: bytes, out: StreamOutcome, client_wants_usage: bool) -> bool:
    """Record what an event tells us; return whether it goes to the client."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == _DONE:
            out.done = True
            return True
        if b'"error"' in data[:20]:
            out.error = "upstream sent an error event"
            return True
        out.raw_events.append(data)
        if b'"usage"' in data and b'"usage":null' not in data.replace(b" ", b""):
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                return True
            usage = parsed.get("usage")
            if isinstance(usage, dict):
                out.usage = usage
                if not parsed.get("choices") and not client_wants_usage:
                    return False
    return True
