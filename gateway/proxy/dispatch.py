"""Dispatch a request down the router's ranking over the gateway's one upstream transport (``gateway.proxy.upstream``).

For each ranked backend (skipping those whose breaker is open) it tries up to ``1 + retries`` times,
with exponential backoff, on connect errors, timeouts, 429 and 5xx, and on a 200 that is not an answer: a plain
body that is not a JSON completion (HTML, empty, malformed, an ``error`` object), a stream that does not start
as an event stream, a body over the size cap. It falls back to the next backend only while nothing has reached
the client: a non-streaming answer is buffered whole (at most ``max_response_bytes``); for a stream, the first
body chunk is read before the backend is committed to, so a backend that stalls before its first byte still falls
back. Other 4xx answers are the client's fault and are returned without fallback, with the backend's own OpenAI
error fields (``gateway.proxy.upstream_errors``). Each attempt is
bounded by the backend's ``connect_timeout_s``, ``read_timeout_s`` (any silence) and ``timeout_s`` (the whole
exchange, a stream's last byte included).

A 429 or 503 with ``Retry-After`` is obeyed: that backend is not retried within the request, its breaker
holds it off for the time asked (at most ``RETRY_AFTER_CAP_S``), and the request falls back at once. When
every backend that answered said 429, the client gets 429 (with the shortest Retry-After) instead of 502.

Upstream text on its way to the client or the log is scrubbed of the backend's key (``gateway.proxy.scrub``).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.pools import BackendConfig
from gateway.proxy.breaker import BreakerRegistry
from gateway.proxy.scrub import NO_SECRET, Scrubber, scrub_secrets
from gateway.proxy.upstream import Timeouts, Transport, UpstreamError, UpstreamResponse, describe
from gateway.proxy.upstream_errors import relayed_error_body, upstream_message
from gateway.tracing import Tracing
from gateway.translate.to_anthropic import answer_to_chat, request_to_messages, stream_to_chat

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.05
#: A backend's Retry-After is obeyed up to this long (a bogus header must not bench a backend for hours).
RETRY_AFTER_CAP_S = 300.0
#: How a body that is an event stream may begin (after blank lines): a field name or a comment.
_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")


@dataclass
class UpstreamResult:
    """A backend that answered. Non-streaming: ``body`` (and ``parsed``, the JSON object of a 2xx answer);
    streaming: ``stream`` (first chunk included)."""

    backend: BackendConfig
    status: int
    attempts: list[dict[str, Any]]
    body: bytes = b""
    parsed: dict[str, Any] | None = None
    content_type: str = "application/json"
    response: UpstreamResponse | None = None
    stream: AsyncIterator[bytes] | None = None
    passed_headers: dict[str, str] = field(default_factory=dict)  # what the client also sees (_replay_signal)
    first_byte_at: float | None = None
    scrubber: Scrubber = NO_SECRET
    api: str = "openai"  # the answer's shape: "anthropic" for a Messages answer passed through (``NativeRequest``)


@dataclass(frozen=True)
class NativeRequest:
    """A request as the client sent it in a backend's own API, for backends that speak it (``api: anthropic``:
    ``POST /v1/messages`` passed through): ``body`` goes upstream untouched but for ``model`` (the backend's),
    ``headers`` (``anthropic-version``, ``anthropic-beta``) with it; the client's key never does."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    only: bool = False  # the request uses what only the backend's own API has (``thinking``, ``top_k``, ...)

    def apis(self) -> frozenset[str]:
        """The backend ``api`` values that may serve this request."""
        return frozenset({"anthropic"}) if self.only else frozenset({"openai", "anthropic"})


#: the Messages API version sent when the client named none
ANTHROPIC_VERSION = "2023-06-01"


@dataclass
class AllBackendsFailed(Exception):
    """No ranked backend answered; ``status`` is what the client gets (502 or 503)."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 502
    message: str = "all backends failed"
    retry_after_s: float | None = None  # set when the client should wait (backends rate-limited or held off)


class Dispatcher:
    """Tries a request's ranked backends over ``transport``; plain answers over ``max_response_bytes`` and
    streams over ``max_stream_bytes`` are failures; ``pool_timeout_s`` bounds the wait for a connection."""

    def __init__(self, transport: Transport, breakers: BreakerRegistry, *, max_response_bytes: int = 16 * 2**20,
                 max_stream_bytes: int = 64 * 2**20, pool_timeout_s: float = 10.0,
                 tracing: Tracing | None = None) -> None:
        self.transport = transport
        self.tracing = tracing or Tracing()
        self.breakers = breakers
        self.max_response_bytes = max_response_bytes
        self.max_stream_bytes = max_stream_bytes
        self.pool_timeout_s = pool_timeout_s

    @staticmethod
    def upstream_payload(payload: dict[str, Any], backend: BackendConfig, stream: bool) -> bytes:
        """The body sent upstream: the client's fields untouched, but ``model`` and our extension."""
        body = {k: v for k, v in payload.items() if k != "poolgate"}
        body["model"] = backend.model
        if stream:  # ask for usage always, so every streamed request is logged with real tokens
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            body["stream_options"] = opts
        return orjson.dumps(body)

    @staticmethod
    def messages_exchange(backend: BackendConfig, payload: dict[str, Any], stream: bool,
                          native: NativeRequest | None) -> tuple[str, bytes, dict[str, str]]:
        """(URL, body, headers) of a request to an ``api: anthropic`` backend: ``native`` passed through (only
        ``model`` replaced), else the chat ``payload`` translated (``gateway.translate.to_anthropic``)."""
        if native is not None:
            body = {k: v for k, v in native.body.items() if k != "poolgate"}
            body["model"] = backend.model
        else:
            body = request_to_messages(payload, backend.model, stream)
        client = native.headers if native is not None else {}
        headers = {"anthropic-version": client.get("anthropic-version") or ANTHROPIC_VERSION}
        if client.get("anthropic-beta"):
            headers["anthropic-beta"] = client["anthropic-beta"]
        key = backend.api_key()
        if key:
            headers["x-api-key"] = key
        return f"{backend.base_url}/messages", orjson.dumps(body), headers

    async def dispatch(
        self, ranking: list[BackendConfig], payload: dict[str, Any], stream: bool, fallback: bool = True,
        path: str = "chat/completions", native: NativeRequest | None = None,
    ) -> UpstreamResult:
        """Try ``ranking`` in order with ``payload`` POSTed to ``<base_url>/<path>`` (``embeddings`` for
        ``/v1/embeddings``); to an ``api: anthropic`` backend, ``native`` passed through or else ``payload``
        translated to a Messages request (routing ranks only backends the request can go to); the first usable
        answer, else :class:`AllBackendsFailed`."""
        attempts: list[dict[str, Any]] = []
        tried = ranking if fallback else ranking[:1]
        skipped_open = 0
        for backend in tried:
            breaker = self.breakers.get(backend.name)
            if not breaker.allow():
                skipped_open += 1
                attempts.append({"backend": backend.name, "status": None, "error": "circuit open", "latency_ms": 0.0})
                continue
            result = await self._try_backend(backend, payload, stream, attempts, path, native)
            if result is not None:
                return result
        last = next((a["error"] for a in reversed(attempts) if a["error"]), "no backend available")
        status, retry_after = self._verdict(tried, attempts, skipped_open)
        raise AllBackendsFailed(attempts, status, f"all backends failed; last error: {last}", retry_after)

    def _verdict(
        self, tried: list[BackendConfig], attempts: list[dict[str, Any]], skipped_open: int
    ) -> tuple[int, float | None]:
        """Status for the client when every backend failed, and how long it should wait (Retry-After)."""
        statuses = [a["status"] for a in attempts if a["status"] is not None]
        waits = [w for w in (self.breakers.get(b.name).open_for_s() for b in tried) if w > 0]
        retry_after = min(waits) if waits else None
        if statuses and all(s == 429 for s in statuses):
            return 429, retry_after
        if skipped_open == len(tried):
            return 503, retry_after
        return 502, None

    async def _try_backend(
        self, backend: BackendConfig, payload: dict[str, Any], stream: bool, attempts: list[dict[str, Any]],
        path: str = "chat/completions", native: NativeRequest | None = None,
    ) -> UpstreamResult | None:
        breaker = self.breakers.get(backend.name)
        # a stream is relayed as raw bytes, so it must come uncompressed; a whole answer is decoded on reading
        headers = {"content-type": "application/json", "accept-encoding": "identity" if stream else "gzip, deflate"}
        key = backend.api_key()
        if backend.api == "anthropic":
            url, content, own = self.messages_exchange(backend, payload, stream, native)
            headers.update(own)
        else:
            content = self.upstream_payload(payload, backend, stream)
            url = f"{backend.base_url}/{path}"
            if key:
                headers["authorization"] = f"Bearer {key}"
        scrubber = Scrubber(key)
        timeouts = Timeouts(connect=backend.connect_timeout_s, read=backend.read_timeout_s, total=backend.timeout_s,
                            pool=self.pool_timeout_s)
        for i in range(backend.retries + 1):
            if i:
                await asyncio.sleep(BACKOFF_BASE_S * (2 ** (i - 1)))
            started = time.perf_counter()
            with self.tracing.span(f"chat {backend.model}", _attempt_attributes(backend, i), client=True) as span:
                status, error, result, retry_after, error_answer = await self._attempt(
                    url, content, headers, timeouts, stream, scrubber)
                if span is not None:
                    _end_attempt_span(span, status, error)
            elapsed = (time.perf_counter() - started) * 1000
            if error:  # upstream error text reaches the client and the log: never with a secret in it
                error = scrub_secrets(error, key)
            attempt = {"backend": backend.name, "status": status, "error": error, "latency_ms": round(elapsed, 2)}
            attempts.append(attempt)
            if result is not None:
                breaker.record_success()
                result.backend, result.attempts, result.scrubber = backend, attempts, scrubber
                if backend.api == "anthropic":
                    _messages_answer(result, passed_through=native is not None)
                return result
            if status is not None and status >= 400 and status not in RETRYABLE_STATUS:
                # the client's mistake (or the backend's verdict on it): pass it through, no fallback
                breaker.record_success()
                return UpstreamResult(backend, status, attempts, body=relayed_error_body(status, error_answer, key))
            if retry_after is not None and status in (429, 503):
                breaker.hold_off(min(retry_after, RETRY_AFTER_CAP_S))  # told when to come back: not before
                break
            breaker.record_failure()  # including a 200 that was not an answer
            if not breaker.allow():
                break
        return None

    async def _attempt(
        self, url: str, content: bytes, headers: dict[str, str], timeouts: Timeouts, stream: bool, scrubber: Scrubber
    ) -> tuple[int | None, str | None, UpstreamResult | None, float | None, bytes]:
        """One HTTP exchange: (status, error text, result-if-usable, Retry-After seconds if the backend sent it,
        the body of an error answer)."""
        cap = self.max_stream_bytes if stream else self.max_response_bytes
        try:
            response = await self.transport.request("POST", url, headers, content, timeouts, cap)
        except UpstreamError as exc:
            return None, describe(exc), None, None, b""
        status = response.status
        try:
            if status >= 400 or not stream:
                body = await response.aread()
                await response.aclose()
                if status >= 400:
                    wait = parse_retry_after(response.header("retry-after"))
                    return status, upstream_message(status, body), None, wait, body
                body = scrubber.answer(body)  # before parsing: the text the row keeps is scrubbed too
                parsed, problem = _completion(body)
                if parsed is None:
                    ctype = response.header("content-type") or "no content-type"
                    return status, f"upstream HTTP {status} answer is not a JSON completion ({problem}; {ctype}, " \
                                   f"{len(body)} bytes: {_preview(body)})", None, None, b""
                return status, None, UpstreamResult(
                    None, status, [], body=body, parsed=parsed,  # type: ignore[arg-type]
                    content_type=response.header("content-type") or "application/json",
                    passed_headers=_replay_signal(response),
                ), None, b""
            chunks = response.aiter_raw()
            first = await chunks.__anext__()
            first_at = time.perf_counter()
        except StopAsyncIteration:
            await response.aclose()
            return None, "upstream closed the stream before sending anything", None, None, b""
        except UpstreamError as exc:
            await response.aclose()
            return None, describe(exc), None, None, b""
        if not _looks_like_sse(first):
            await response.aclose()
            ctype = response.header("content-type") or "no content-type"
            return status, f"upstream HTTP {status} answer to a stream request is not an event stream ({ctype}: " \
                           f"{_preview(first)})", None, None, b""
        return status, None, UpstreamResult(
            None,  # type: ignore[arg-type]
            status,
            [],
            content_type=response.header("content-type") or "text/event-stream",
            response=response,
            stream=_prepend(first, chunks),
            first_byte_at=first_at,
            passed_headers=_replay_signal(response),
        ), None, b""


def _messages_answer(result: UpstreamResult, passed_through: bool) -> None:
    """An ``api: anthropic`` backend's answer: as it is when the client's Messages request was passed through,
    else translated to chat completions (``gateway.translate.to_anthropic``) for the chat pipeline."""
    if passed_through:
        result.api = "anthropic"
    elif result.parsed is not None:
        result.parsed = answer_to_chat(result.parsed)
        result.body = orjson.dumps(result.parsed)
    elif result.stream is not None:
        result.stream = stream_to_chat(result.stream)


def _attempt_attributes(backend: BackendConfig, retry: int) -> dict[str, Any]:
    """An upstream attempt's span attributes (GenAI client conventions; no prompt, no key)."""
    parts = urlsplit(backend.base_url)
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": backend.model,
            "server.address": parts.hostname or "", "server.port": parts.port or (443 if parts.scheme == "https"
                                                                                  else 80),
            "poolgate.backend": backend.name, "poolgate.retry": retry}


def _end_attempt_span(span: Any, status: int | None, error: str | None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error:
        # why: opentelemetry is imported only when tracing is on (a span exists only then)
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", str(status) if status is not None else "transport")
        span.set_status(Status(StatusCode.ERROR, error[:200]))


_REPLAY_MATCHES = frozenset({"exact", "nearest"})


def _replay_signal(response: UpstreamResponse) -> dict[str, str]:
    """The replay demo backend's match headers, passed on as ``x-poolgate-replay-match`` (exact|nearest) and
    ``x-poolgate-replay-similarity``, so a demo user sees when the answer was recorded for another prompt.

    Only these two and only well-formed values: a backend's headers are otherwise never relayed."""
    match, similarity = response.header("x-replay-match"), response.header("x-replay-similarity")
    if match not in _REPLAY_MATCHES:
        return {}
    out = {"x-poolgate-replay-match": str(match)}
    try:
        value = float(similarity or "")
    except ValueError:
        return out
    if 0.0 <= value <= 1.0:
        out["x-poolgate-replay-similarity"] = f"{value:.3f}"
    return out


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _completion(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """The JSON object of a 2xx answer, or None and what is wrong with it."""
    if not body.strip():
        return None, "empty body"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(parsed, dict):
        return None, f"a JSON {type(parsed).__name__}, not an object"
    if "error" in parsed and "choices" not in parsed:
        return None, "an error object"
    return parsed, ""


def _looks_like_sse(first: bytes) -> bool:
    """Whether a stream's first chunk can be the start of an event stream (a field, a comment, blank lines)."""
    head = first.lstrip(b"\r\n")[:8]
    return not head or any(s.startswith(head[: len(s)]) for s in _SSE_STARTS)


def _preview(body: bytes) -> str:
    return repr(body[:120].decode("utf-8", "replace"))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent, unparsable or not > 0."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return seconds if seconds > 0 else None
