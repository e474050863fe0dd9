"""Relay an upstream SSE stream to the client event by event, and learn its usage on the way.

The dispatcher always asks the backend for usage (``stream_options.include_usage``); the usage-only
chunk is forwarded only if the client asked for it too. If the backend sends no (valid) usage, completion
tokens are counted from the relayed content. If the upstream fails or ends without ``[DONE]``, the
client gets an OpenAI-style error event and the log row says so.

Every event is scrubbed of the backend's key before it goes out, and events that carry an error also of any
``Bearer <token>`` (``gateway.proxy.scrub``). Memory is bounded whatever the backend sends: the transport buffers at
most ``gateway.proxy.http1.HIGH_WATER`` bytes and cuts a stream past ``max_stream_bytes``; an event may be at most
``MAX_EVENT_BYTES`` (a stream without event separators is cut there, never joined quadratically); content text is
kept for counting and storing up to ``TEXT_KEEP_CHARS`` characters, and only its length beyond that.

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

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.proxy.scrub import NO_SECRET, Scrubber
from gateway.proxy.upstream import ResponseTooLarge, UpstreamError, UpstreamResponse, describe
from routers.pricing import count_tokens

_DONE = b"[DONE]"
#: One SSE event's bound: an OpenAI chunk is well under 10 KB; a "stream" with no separator is cut here.
MAX_EVENT_BYTES = 1024 * 1024
#: Content text kept for counting tokens and for ``store_responses``; beyond it only the length is kept.
TEXT_KEEP_CHARS = 1024 * 1024
#: Unread event payloads are turned into text once they take this many bytes (so they never pile up).
_COMPACT_BYTES = 256 * 1024
#: Characters per token assumed for text beyond ``TEXT_KEEP_CHARS`` (cl100k_base averages about 4 on English).
CHARS_PER_TOKEN = 4
#: A streamed answer without usage is tokenized when it is at most this long, else estimated from its size: one
#: long word of 64 Ki characters costs ~30 ms of the event loop, of 1 Mi characters ~1 s.
INLINE_EXACT_COMPLETION_CHARS = 64 * 1024


class EventTooLarge(ResponseTooLarge):
    """An upstream SSE event (or a run of bytes without an event separator) over ``MAX_EVENT_BYTES``."""


@dataclass
class StreamOutcome:
    """What the relay saw; handed to ``on_finish`` exactly once. ``usage`` is the backend's last ``usage``
    value as sent (``gateway.proxy.usage.parse_usage`` checks it)."""

    usage: Any = None
    ttft_ms: float | None = None
    error: str | None = None
    error_code: str = "upstream_stream_error"
    done: bool = False
    client_disconnected: bool = False
    _events: list[bytes] = field(default_factory=list)
    _event_bytes: int = 0
    _parts: list[str] = field(default_factory=list)
    _kept_chars: int = 0
    dropped_chars: int = 0  # content characters seen beyond TEXT_KEEP_CHARS

    def add_event(self, data: bytes) -> None:
        """A data payload that may carry content (read only when the text is needed, or when they pile up)."""
        self._events.append(data)
        self._event_bytes += len(data)
        if self._event_bytes > _COMPACT_BYTES:
            self._compact()

    def _compact(self) -> None:
        for raw in self._events:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            choices = data.get("choices") if isinstance(data, dict) else None
            if isinstance(data, dict) and data.get("type") == "content_block_delta":  # an Anthropic stream's text
                choices = [{"delta": {"content": (data.get("delta") or {}).get("text")}}] \
                    if isinstance(data.get("delta"), dict) else None
            for choice in choices if isinstance(choices, list) else ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                piece = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(piece, str) and piece:
                    room = TEXT_KEEP_CHARS - self._kept_chars
                    if room > 0:
                        self._parts.append(piece[:room])
                        self._kept_chars += min(room, len(piece))
                    self.dropped_chars += max(0, len(piece) - max(room, 0))
        self._events.clear()
        self._event_bytes = 0

    def text(self) -> str:
        """Concatenated content deltas (the first ``TEXT_KEEP_CHARS`` characters)."""
        if self._events:
            self._compact()
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def counted_completion_tokens(self) -> int:
        """Completion tokens counted from the content (an estimate past ``TEXT_KEEP_CHARS``)."""
        text = self.text()
        # on the event loop (the relay's finish is synchronous): exact only up to a bound that costs little
        return count_tokens(text, INLINE_EXACT_COMPLETION_CHARS) + -(-self.dropped_chars // CHARS_PER_TOKEN)


def error_event(message: str, code: str = "upstream_stream_error") -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


class _EventSplitter:
    """Cuts a byte stream into SSE events; bytes are joined only once a separator has arrived."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.tail = b""  # the last bytes held: a separator may span two chunks

    def feed(self, chunk: bytes) -> list[bytes]:
        probe = self.tail + chunk[:3] if self.parts else b""
        if b"\n\n" not in chunk and b"\r\n\r\n" not in chunk and b"\n\n" not in probe.replace(b"\r", b""):
            self._hold(chunk)
            return []
        data = b"".join(self.parts) + chunk if self.parts else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        *events, rest = data.split(b"\n\n")
        self.parts, self.size, self.tail = [], 0, b""
        if rest:
            self._hold(rest)
        return events

    def _hold(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        self.tail = (self.tail + data)[-3:]
        if self.size > MAX_EVENT_BYTES:
            raise EventTooLarge(f"upstream sent {self.size} bytes without an event separator (limit "
                                f"{MAX_EVENT_BYTES})")

    def rest(self) -> bytes:
        return b"".join(self.parts)


EventSplitter = _EventSplitter  # for translators of other event streams (``gateway.translate.to_anthropic``)


async def relay(
    chunks: AsyncIterator[bytes],
    response: UpstreamResponse | None,
    started: float,
    client_wants_usage: bool,
    on_finish: Callable[[StreamOutcome], None],
    scrubber: Scrubber = NO_SECRET,
    api: str = "openai",
) -> AsyncIterator[bytes]:
    """Yield SSE bytes to the client; call ``on_finish`` once, before the last event, whatever happens. ``api``
    anthropic: a Messages event stream, relayed as it is (``_inspect_anthropic``)."""
    out = StreamOutcome()
    inspect = _inspect_anthropic if api == "anthropic" else _inspect
    splitter = _EventSplitter()
    finished = False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            on_finish(out)

    try:
        async for chunk in chunks:
            events = splitter.feed(chunk)
            if not events:
                continue
            emit = [e + b"\n\n" for e in (inspect(event, out, client_wants_usage, scrubber) for event in events)
                    if e is not None]
            if emit:
                if out.ttft_ms is None:
                    out.ttft_ms = (time.perf_counter() - started) * 1000
                if out.done:
                    finish()
                yield b"".join(emit)
        last = splitter.rest()
        if last.strip() and (kept := inspect(last, out, client_wants_usage, scrubber)) is not None:
            if out.done:
                finish()
            yield kept + b"\n\n"
        if not out.done:
            out.error = "upstream ended the stream without " + ("message_stop" if api == "anthropic" else "[DONE]")
            finish()
            yield error_event(out.error)
    except UpstreamError as exc:
        out.error = describe(exc)
        if isinstance(exc, ResponseTooLarge):
            out.error_code = "upstream_response_too_large"
        finish()  # no-op when [DONE] already went out: the client had the complete answer
        yield error_event(f"upstream failed mid-stream ({out.error})", out.error_code)
    except BaseException:  # client went away (cancelled) or the server is shutting down
        out.client_disconnected = True
        out.error = out.error or "client disconnected"
        raise
    finally:
        if response is not None:
            await response.aclose()
        finish()


def _inspect(event: bytes, out: StreamOutcome, client_wants_usage: bool, scrubber: Scrubber) -> bytes | None:
    """Record what an event tells us; return it scrubbed if it goes to the client, None if it does not."""
    event = scrubber.answer(event)
    if b'"error"' in event or b"event: error" in event or b"event:error" in event:
        event = scrubber.error(event)
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == _DONE:
            out.done = True
            return event
        if b'"error"' in data[:20]:
            out.error = "upstream sent an error event"
            return event
        out.add_event(data)
        if b'"usage"' in data and b'"usage":null' not in data.replace(b" ", b""):
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                return event
            if isinstance(parsed, dict) and parsed.get("usage") is not None:
                out.usage = parsed["usage"]
                if not parsed.get("choices") and not client_wants_usage:
                    return None
    return event


def _inspect_anthropic(event: bytes, out: StreamOutcome, client_wants_usage: bool, scrubber: Scrubber) -> bytes:
    """An Anthropic Messages event, relayed as it is (scrubbed): ``message_stop`` ends it; the usage is
    message_start's ``message.usage`` updated by each message_delta's ``usage`` (output tokens are cumulative)."""
    event = scrubber.answer(event)
    if b'"error"' in event:
        event = scrubber.error(event)
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        kind = parsed.get("type") if isinstance(parsed, dict) else None
        if kind == "message_stop":
            out.done = True
        elif kind == "error":
            out.error = "upstream sent an error event"
        elif kind == "content_block_delta":
            out.add_event(data)
        elif kind in ("message_start", "message_delta"):
            holder = parsed.get("message") if kind == "message_start" else parsed
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                out.usage = {**out.usage, **usage} if isinstance(out.usage, dict) else dict(usage)
    return event


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
