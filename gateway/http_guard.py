"""Limits on what a client may make the HTTP server hold before the app sees a request.

uvicorn's httptools protocol buffers request headers without any bound (a 10 MB header was accepted whole) and
keeps a connection open for as long as its client trickles the request head, or sends nothing at all (slow
loris). ``guarded_protocol`` returns a subclass that answers 431 and closes once a request's URL and headers
pass ``max_header_bytes``, and answers 408 and closes when a connection has not delivered a complete request
head ``client_read_timeout_s`` after it opened (or after its previous response). Slow bodies are bounded in the
route (``gateway.api.request.read_json_body``).

Why a subclass of a private class: neither guarantee can be given from outside the HTTP parser. An ASGI
middleware sees a request only once its head is complete, and uvicorn's settings bound neither the head's size
(``h11_max_incomplete_event_size`` applies to the h11 protocol only, and answers 400) nor the time to receive it
(``timeout_keep_alive`` starts after a response). So ``pyproject.toml`` pins uvicorn to the range this is tested
on, and ``tests/test_http_guard.py`` checks that the installed uvicorn still has every hook used here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with OpenAI error JSON that closes the connection."""
    error = {"message": message, "type": "invalid_request_error", "param": None,
             "code": reason.lower().replace(" ", "_")}
    body = json.dumps({"error": error}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a bound on header bytes and a deadline for each request head."""

    max_header_bytes = 64 * 1024
    head_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_overflow = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_head_timer()  # the next request's head must arrive in time too (after keep-alive's own limit)

    def send_400_response(self, msg: str) -> None:
        if not self._head_overflow:
            super().send_400_response(msg)
            return
        self.logger.warning("request headers over %d bytes from %s: answered 431", self.max_header_bytes, self.client)
        self._reply_and_close(_response(431, "Request Header Fields Too Large",
                                        f"request headers are over {self.max_header_bytes} bytes"))

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_header_bytes:
            self._head_overflow = True
            # httptools turns this into HttpParserCallbackError; uvicorn then calls send_400_response (above)
            raise ValueError("request headers too large")

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being served: its own timeouts apply
        self._reply_and_close(_response(408, "Request Timeout",
                                        f"no complete request head within {self.head_timeout_s:g} s"))

    def _reply_and_close(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()


def guarded_protocol(max_header_bytes: int, head_timeout_s: float) -> type[GuardedHttpToolsProtocol]:
    """A ``GuardedHttpToolsProtocol`` subclass with these limits, for ``uvicorn.run(..., http=...)``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"max_header_bytes": max_header_bytes, "head_timeout_s": head_timeout_s})
