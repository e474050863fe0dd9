"""A small HTTP/1.1 client for the dispatcher's upstream POSTs: keep-alive connections per origin, responses
parsed by httptools, bodies handed on as they arrive.

Why not aiohttp here: measured on the 2-core benchmark machine against the fake backend, up to a streamed
answer's first chunk, aiohttp's client costs ~0.19 ms per request and this one ~0.05 ms (warm; a process that
idles between requests, as a relay between tokens does, pays 2.5-3 times that, and so does every first token).
aiohttp still serves httpx's general API (``gateway.upstream.AiohttpTransport.handle_async_request``).

What it does: ``POST`` only, the request head and body in one write; ``http`` and ``https`` (the system's CA
store); a response head, then a body (``Content-Length``, chunked, or up to the connection's end) yielded as it
comes, with reading paused while more than ``HIGH_WATER`` bytes wait to be consumed. A connection returns to its
origin's pool when its response was read whole and may be kept alive; idle ones close after ``keepalive_s``.
A request sent on a kept-alive connection that the server closes without a byte of answer is sent once more on a
new connection: that is the server's idle timer firing as the request went out (uvicorn, so vLLM, closes idle
connections after 5 s), not a failure of the backend.
Timeouts are httpx's: ``connect`` for the TCP (and TLS) connect, ``read`` for any wait for response bytes.
Failures are httpx's exceptions, named as the dispatcher and relay expect: ``ConnectError``/``ConnectTimeout``,
``ReadTimeout``, ``ReadError`` (reset before the head), ``RemoteProtocolError`` (closed before the head or
mid-body, malformed response). It does not follow redirects, keep cookies, use proxies, or decode
``Content-Encoding`` (httpx does that in ``aread``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

import httptools
import httpx

HIGH_WATER = 256 * 1024  # response bytes buffered before the socket stops being read
_Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time; the parser's callbacks fill the current response."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reset_exchange()

    def reset_exchange(self) -> None:
        """Forget the last exchange: the connection is ready for the next request."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last_activity = 0.0
        self.answered = False  # whether any byte of this exchange's response has come

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.head_done and exc is None and self._until_eof():
            self.complete = True  # a body delimited by the connection's end has ended
            self._wake()
        elif self.head_done:
            self._fail(httpx.RemoteProtocolError("peer closed connection without sending complete message body"))
        elif exc is not None:
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        else:
            self._fail(httpx.RemoteProtocolError("server disconnected without sending a response"))

    def _until_eof(self) -> bool:
        """Whether the response's body runs to the connection's end (neither a length nor chunked)."""
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names and self.status not in (204, 304)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an informational answer (100, 103): the real one follows
            self.headers = []
            return
        self.status, self.head_done = status, True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()  # the consumer resumes it (take)
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # asked now: the parser forgets once this returns
            self._wake()

    # the exchange's side
    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, read_timeout: float | None) -> None:
        """Until the parser has news (head, body bytes, end) or the connection failed; ``ReadTimeout`` when no
        byte arrives for ``read_timeout`` seconds."""
        self.waiter = self.loop.create_future()
        self.last_activity = self.loop.time()
        timer = None if read_timeout is None else self.loop.call_later(read_timeout, self._check, read_timeout)
        try:
            await self.waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def _check(self, read_timeout: float) -> None:
        if self.waiter is None or self.waiter.done():
            return
        left = self.last_activity + read_timeout - self.loop.time()
        if left > 0:  # bytes came in the meantime (not enough for the waiter yet)
            self.loop.call_later(left, self._check, read_timeout)
            return
        self._fail(httpx.ReadTimeout(f"no response bytes for {read_timeout:g} s"))
        self.close()

    def take(self) -> bytes:
        """Every body byte received and not yet taken (reading resumes if it was paused)."""
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        if self.buffered > HIGH_WATER and self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self.buffered = 0
        return data


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; a body read whole hands its connection back to the pool."""

    def __init__(self, pool: Http1Pool, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (conn := self._conn) is not None:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                self._conn = None
                self._pool.release(conn)
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._read_timeout)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # left before the end: the rest of the body would be in the next answer's way
            conn.close()
            self._pool.release(conn)


class Http1Pool:
    """Keep-alive HTTP/1.1 connections per origin, at most ``max_connections`` exchanges at once.

    ``ssl_context`` verifies ``https`` origins (default: the system's CA store, made on first use)."""

    def __init__(self, max_connections: int = 1000, keepalive_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._targets: dict[str, tuple[_Origin, bytes, bytes]] = {}
        self._ssl = ssl_context
        self._reaper: asyncio.TimerHandle | None = None

    async def post(
        self, url: str, content: bytes, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response:
        """Send the POST; return once the response head is in, with the body streaming behind it."""
        origin, target, host = self._target(url)
        head = [b"POST ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise httpx.LocalProtocolError(f"line break in request header {name!r}")
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(content))
        request = b"".join(head) + content
        await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = self._reuse(origin)
            if conn is not None:
                try:
                    await self._send(conn, request, timeout.read)
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    if conn.answered:
                        raise
                    conn.close()  # closed unanswered as the request went out: the server's idle timer, not a fault
                    conn = None
            if conn is None:
                conn = await self._connect(origin, timeout.connect)
                await self._send(conn, request, timeout.read)
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return httpx.Response(status_code=conn.status, headers=conn.headers,
                              stream=_Body(self, conn, timeout.read),
                              extensions={"http_version": b"HTTP/1.1"})

    @staticmethod
    async def _send(conn: _Connection, request: bytes, read_timeout: float | None) -> None:
        """Write the request; return once the response head is in (its error if the connection failed first)."""
        assert conn.transport is not None
        conn.transport.write(request)
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            await conn.wait(read_timeout)

    def release(self, conn: _Connection) -> None:
        """An exchange is over: keep its connection if the response was read whole and the server allows it."""
        self._slots.release()
        if conn.closed or not conn.keep_alive:
            conn.close()
            return
        conn.reset_exchange()
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._reaper is None:
            self._reaper = conn.loop.call_later(self.keepalive_s, self._reap)

    def _reuse(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
            if not conn.closed and not conn.head_done and conn.error is None:
                return conn
            conn.close()  # closed by the server, or it said something unasked (a 408 before closing)
        return None

    async def _connect(self, origin: _Origin, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        ssl_context = self._ssl_context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(origin), host, port, ssl=ssl_context,
                                                       server_hostname=host if ssl_context else None)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} took over {connect_timeout:g} s") from exc
        except OSError as exc:  # refused, unreachable, name not resolved, TLS handshake failed
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _target(self, url: str) -> tuple[_Origin, bytes, bytes]:
        """(origin, request target, Host header) of ``url``, parsed once per URL."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise httpx.UnsupportedProtocol(f"cannot POST to {url!r}")
            default = 443 if parts.scheme == "https" else 80
            port = parts.port or default
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="/?=&%:@!$'()*+,;~")
            host_header = (host if host.isascii() else host.encode("idna").decode("ascii")) + (
                "" if port == default else f":{port}")
            found = ((parts.scheme, parts.hostname, port), target.encode("ascii"), host_header.encode("ascii"))
            if len(self._targets) < 4096:  # backends' URLs are few; a bound all the same
                self._targets[url] = found
        return found

    def _reap(self) -> None:
        """Close connections idle for longer than ``keepalive_s``; come back while any stay idle."""
        self._reaper = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.keepalive_s
        for origin, idle in list(self._idle.items()):
            for conn in [c for c in idle if c.idle_since <= cutoff or c.closed]:
                idle.remove(conn)
                conn.close()
            if not idle:
                del self._idle[origin]
        if self._idle:
            self._reaper = loop.call_later(self.keepalive_s / 2, self._reap)

    def close(self) -> None:
        """Close every idle connection (exchanges under way close theirs when they end)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

