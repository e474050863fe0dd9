"""The per-request access log: one line per HTTP request on the ``poolgate.access`` logger, as text or JSON lines.

An ASGI middleware (outside FastAPI's routing, so 404s, 413s and admin calls are logged too) times each request
to its last response byte (a stream's included) and, for chat completions, adds what routing did from the
request's record (the route leaves it in ``request.state.poolgate_record``). Never logged: prompts, answers,
headers (the API key is one), query strings; the caller is named by key id. ``poolgate serve`` attaches the
handler (``--log-format text|json``); elsewhere (tests, embedding apps) the logger has none and stays quiet.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.record import RequestRecord

ACCESS_LOGGER = logging.getLogger("poolgate.access")
RECORD_STATE_KEY = "poolgate_record"  # request.state attribute the chat route sets
LogFormat = Literal["text", "json"]

#: the text line's key=value fields, in order (the JSON line has every field)
_TEXT_FIELDS = ("request_id", "key_id", "model", "pool", "router", "router_version", "backend", "attempts",
                "prompt_tokens", "completion_tokens", "cost_usd", "error_type")


def _record_fields(record: RequestRecord) -> dict[str, Any]:
    """What the access log says about a chat completion: routing and usage, never text."""
    return {
        "request_id": record.id, "key_id": record.key_id, "model": record.model_requested, "pool": record.pool,
        "router": record.router, "router_version": record.router_version, "backend": record.backend,
        "attempts": len(record.attempts), "stream": record.stream, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "cost_usd": round(record.cost_usd, 8),
        "ttft_ms": record.ttft_ms, "error_type": record.error_type,
    }


def access_fields(scope: Scope, status: int, duration_ms: float, bytes_out: int) -> dict[str, Any]:
    """One request's access-log fields (the record's, when the chat route left one)."""
    client = scope.get("client")
    fields: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client": client[0] if client else None, "method": scope.get("method"), "path": scope.get("path"),
        "status": status, "duration_ms": round(duration_ms, 2), "bytes_out": bytes_out,
        "pid": os.getpid(),  # which worker of `poolgate serve --workers N` answered (JSON lines only)
    }
    record = (scope.get("state") or {}).get(RECORD_STATE_KEY)
    if isinstance(record, RequestRecord):
        fields.update(_record_fields(record))
    return fields


class AccessLogMiddleware:
    """Logs one line per HTTP request when the response has ended (or the app raised: status 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not ACCESS_LOGGER.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 500, 0

        async def watch(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            fields = access_fields(scope, status, (time.perf_counter() - started) * 1000, sent)
            ACCESS_LOGGER.info("%s %s %s", fields["method"], fields["path"], status, extra={"access": fields})


class AccessFormatter(logging.Formatter):
    """Renders an access record as one text line or one JSON object (``fmt``)."""

    def __init__(self, fmt: LogFormat = "text") -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "access", None)
        if fields is None:
            return super().format(record)
        if self.fmt == "json":
            return json.dumps(fields, separators=(",", ":"), default=str)
        head = (f"{fields['time']} {fields['client'] or '-'} {fields['method']} {fields['path']} "
                f"{fields['status']} {fields['duration_ms']:.1f}ms")
        rest = " ".join(f"{k}={fields[k]}" for k in _TEXT_FIELDS if fields.get(k) not in (None, ""))
        return f"{head} {rest}".rstrip()


def configure_access_log(fmt: LogFormat = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Send the access log to ``stream`` (stderr) in ``fmt``; returns the handler (to remove it again)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(AccessFormatter(fmt))
    ACCESS_LOGGER.addHandler(handler)
    ACCESS_LOGGER.setLevel(logging.INFO)
    ACCESS_LOGGER.propagate = False  # one line, not one more through a root handler
    return handler
