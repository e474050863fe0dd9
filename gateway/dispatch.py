"""Dispatch a request down the router's ranking over one shared ``httpx.AsyncClient`` (over the gateway's
``AiohttpTransport`` its requests go through ``AiohttpTransport.post``, a shorter path; see gateway.upstream).

For each ranked backend (skipping those whose breaker is open) it tries up to ``1 + retries`` times,
with exponential backoff, on connect errors, timeouts, 429 and 5xx. It falls back to the next
backend only while nothing has reached the client: a non-streaming answer is buffered whole; for a
stream, the first body chunk is read before the backend is committed to, so a backend that stalls
before its first byte still falls back. Other 4xx answers are the client's fault and are returned
as they are, without fallback.

A 429 or 503 with ``Retry-After`` is obeyed: that backend is not retried within the request, its breaker
holds it off for the time asked (at most ``RETRY_AFTER_CAP_S``), and the request falls back at once. When
every backend that answered said 429, the client gets 429 (with the shortest Retry-After) instead of 502.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from gateway.breaker import BreakerRegistry
from gateway.pools import BackendConfig
from gateway.upstream import direct_transport

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.05
#: A backend's Retry-After is obeyed up to this long (a bogus header must not bench a backend for hours).
RETRY_AFTER_CAP_S = 300.0
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{6,}")


@dataclass
class UpstreamResult:
    """A backend that answered. Non-streaming: ``body``; streaming: ``stream`` (first chunk included)."""

    backend: BackendConfig
    status: int
    attempts: list[dict[str, Any]]
    body: bytes = b""
    content_type: str = "application/json"
    response: httpx.Response | None = None
    stream: AsyncIterator[bytes] | None = None
    first_byte_at: float | None = None


@dataclass
class AllBackendsFailed(Exception):
    """No ranked backend answered; ``status`` is what the client gets (502 or 503)."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 502
    message: str = "all backends failed"
    retry_after_s: float | None = None  # set when the client should wait (backends rate-limited or held off)


class Dispatcher:
    def __init__(self, client: httpx.AsyncClient, breakers: BreakerRegistry) -> None:
        self.client = client
        self.breakers = breakers
        self._direct = direct_transport(client)  # its HTTP/1.1 path without httpx's client layers (gateway.upstream)

    async def _send(self, url: str, content: bytes, headers: dict[str, str], timeout: httpx.Timeout) -> httpx.Response:
        """POST upstream; the response head is in, its body still to be read."""
        if self._direct is not None:
            return await self._direct.post(url, content, headers, timeout)
        request = self.client.build_request("POST", url, content=content, headers=headers, timeout=timeout)
        return await self.client.send(request, stream=True)

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

    async def dispatch(
        self, ranking: list[BackendConfig], payload: dict[str, Any], stream: bool, fallback: bool = True
    ) -> UpstreamResult:
        attempts: list[dict[str, Any]] = []
        tried = ranking if fallback else ranking[:1]
        skipped_open = 0
        for backend in tried:
            breaker = self.breakers.get(backend.name)
            if not breaker.allow():
                skipped_open += 1
                attempts.append({"backend": backend.name, "status": None, "error": "circuit open", "latency_ms": 0.0})
                continue
            result = await self._try_backend(backend, payload, stream, attempts)
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
        self, backend: BackendConfig, payload: dict[str, Any], stream: bool, attempts: list[dict[str, Any]]
    ) -> UpstreamResult | None:
        breaker = self.breakers.get(backend.name)
        content = self.upstream_payload(payload, backend, stream)
        # a stream is relayed as raw bytes, so it must come uncompressed; a whole answer is decoded by httpx
        headers = {"content-type": "application/json", "accept-encoding": "identity" if stream else "gzip, deflate"}
        key = backend.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(backend.read_timeout_s, connect=backend.connect_timeout_s)
        url = f"{backend.base_url}/chat/completions"
        for i in range(backend.retries + 1):
            if i:
                await asyncio.sleep(BACKOFF_BASE_S * (2 ** (i - 1)))
            started = time.perf_counter()
            outcome = await self._attempt(url, content, headers, timeout, stream)
            elapsed = (time.perf_counter() - started) * 1000
            status, error, result, retry_after = outcome
            if error:  # upstream error text reaches the client and the log: never with a secret in it
                error = scrub_secrets(error, key)
            attempt = {"backend": backend.name, "status": status, "error": error, "latency_ms": round(elapsed, 2)}
            attempts.append(attempt)
            if result is not None:
                breaker.record_success()
                result.backend, result.attempts = backend, attempts
                return result
            if status is not None and status not in RETRYABLE_STATUS:
                # the client's mistake (or the backend's verdict on it): pass it through, no fallback
                breaker.record_success()
                return UpstreamResult(backend, status, attempts, body=error_body(status, error))
            if retry_after is not None and status in (429, 503):
                breaker.hold_off(min(retry_after, RETRY_AFTER_CAP_S))  # told when to come back: not before
                break
            breaker.record_failure()
            if not breaker.allow():
                break
        return None

    async def _attempt(
        self, url: str, content: bytes, headers: dict[str, str], timeout: httpx.Timeout, stream: bool
    ) -> tuple[int | None, str | None, UpstreamResult | None, float | None]:
        """One HTTP exchange: (status, error text, result-if-usable, Retry-After seconds if the backend sent it)."""
        try:
            response = await self._send(url, content, headers, timeout)
        except httpx.HTTPError as exc:
            return None, _describe(exc), None, None
        try:
            if response.status_code >= 400 or not stream:
                body = await response.aread()
                await response.aclose()
                if response.status_code >= 400:
                    wait = parse_retry_after(response.headers.get("retry-after"))
                    return response.status_code, _upstream_message(response.status_code, body), None, wait
                ctype = response.headers.get("content-type", "application/json")
                return 200, None, UpstreamResult(
                    None, response.status_code, [], body=body, content_type=ctype  # type: ignore[arg-type]
                ), None
            chunks = response.aiter_raw()
            first = await chunks.__anext__()
            first_at = time.perf_counter()
        except StopAsyncIteration:
            await response.aclose()
            return None, "upstream closed the stream before sending anything", None, None
        except httpx.HTTPError as exc:
            await response.aclose()
            return None, _describe(exc), None, None
        return 200, None, UpstreamResult(
            None,  # type: ignore[arg-type]
            200,
            [],
            content_type=response.headers.get("content-type", "text/event-stream"),
            response=response,
            stream=_prepend(first, chunks),
            first_byte_at=first_at,
        ), None


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def scrub_secrets(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets or any ``Bearer <token>`` (some providers echo the key they got)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub("Bearer ***", text)


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


def _describe(exc: httpx.HTTPError) -> str:
    kind = type(exc).__name__
    text = str(exc)
    return f"{kind}: {text}" if text else kind


def _upstream_message(status: int, body: bytes) -> str:
    try:
        data = orjson.loads(body)
        msg = data.get("error", {}).get("message") if isinstance(data, dict) else None
    except orjson.JSONDecodeError:
        msg = None
    return f"upstream HTTP {status}: {msg or body[:200].decode('utf-8', 'replace')}"


def error_body(status: int, message: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message or f"upstream HTTP {status}", "type": "upstream_error", "param": None,
                   "code": str(status)}}
    )
