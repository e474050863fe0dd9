"""Relay an upstream SSE stream to the client event by event, and learn its usage on the way.

The dispatcher always asks the backend for usage (``stream_options.include_usage``); the usage-only
chunk is forwarded only if the client asked for it too. If the backend sends no usage, completion
tokens are counted from the relayed content. If the upstream fails or ends without ``[DONE]``, the
client gets an OpenAI-style error event and the log row says so.

``on_finish`` (which hands the log row to the writer, and so to its write-ahead journal) runs before the last
event goes out: before the chunk carrying ``[DONE]`` (usage comes before it), before the closing error event.
A gateway killed after the client has the complete answer has therefore journaled its row. Only a stream
cut short (client gone, server shutting down) finishes after its last byte, in ``finally``.

:class:`EventStreamResponse` sends the relayed bytes from the request's own task (see its docstring for why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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
    """Yield SSE bytes to the client; call ``on_finish`` once, before the last event, whatever happens."""
    out = StreamOutcome()
    buffer = b""
    finished = False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            on_finish(out)

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
                if out.done:
                    finish()
                yield b"".join(emit)
        if buffer.strip() and _inspect(buffer, out, client_wants_usage):
            if out.done:
                finish()
            yield buffer + b"\n\n"
        if not out.done:
            out.error = "upstream ended the stream without [DONE]"
            finish()
            yield error_event(out.error)
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finish()  # no-op when [DONE] already went out: the client had the complete answer
        yield error_event(f"upstream failed mid-stream ({out.error})")
    except BaseException:  # client went away (cancelled) or the server is shutting down
        out.client_disconnected = True
        out.error = out.error or "client disconnected"
        raise
    finally:
        if response is not None:
            await response.aclose()
        finish()


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


class _ClientGone(Exception):
    """A send failed because the client's connection is gone (ASGI spec 2.4 servers raise ``OSError``)."""


class EventStreamResponse(Response):
    """``text/event-stream`` of the relay's chunks, each sent as soon as the relay yields it.

    Starlette's ``StreamingResponse``, under ASGI spec < 2.4 (uvicorn's servers say 2.3), opens an anyio task
    group and streams from a second task, so the first event waits for a task switch after the route returns
    (~0.1 ms of a first token's latency on the benchmark machine). Here the request's task sends the head and
    every chunk itself; a small watcher task waits for the client's ``http.disconnect`` and, if the stream is
    still running, cancels it, as the task group would. Under spec 2.4 a send to a gone client raises
    ``OSError``, which ends the stream the same way. Either way the relay is closed, so it closes the upstream
    and hands its log row over.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"streaming": True, "client_gone": False}

        async def watch() -> None:
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # the server could not tell: leave the stream to its own end
                return
            if state["streaming"]:
                state["client_gone"] = True
                task.cancel()

        async def emit(message: dict[str, Any]) -> None:
            try:
                await send(message)
            except OSError as exc:
                raise _ClientGone from exc

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await emit({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await emit({"type": "http.response.body", "body": chunk, "more_body": True})
            await emit({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["client_gone"]:
                raise
            task.uncancel()  # our own cancellation: the client left, there is no one to answer
        except _ClientGone:
            pass
        finally:
            state["streaming"] = False
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:  # a relay left mid-way still closes the upstream and hands its row over
                await aclose()
        if self.background is not None:
            await self.background()
