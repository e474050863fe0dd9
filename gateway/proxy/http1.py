"""The gateway's upstream transport (``gateway.proxy.upstream.Transport``): HTTP/1.1 over asyncio, keep-alive
connections per origin, responses parsed by httptools (uvicorn's parser), bodies handed on as they arrive.

Why not httpx's or aiohttp's client: measured on the 2-core benchmark machine against the fake backend, per
request up to a streamed answer's first chunk (warm; a process that idles between requests, as a relay between
tokens does, pays 2.5-3 times as much): httpx over httpcore ~0.4 ms with one pooled connection and ~1.1 ms with 32
(httpcore polls every pooled connection on every request), aiohttp ~0.19 ms, this client ~0.05 ms; the
gateway adds ~1 ms per request in all, so aiohttp would cost a fifth of it again. ``benchmarks/overhead.py``
gives the end-to-end figures (``--compare-tree`` runs another tree's gateway beside this one).

What it does: any method, the request head and body in one write; ``http`` and ``https`` (the system's CA store,
or the ``ssl_context`` given); a response head, then a body (``Content-Length``, chunked, or up to the
connection's end) yielded as it comes, with reading paused while more than ``HIGH_WATER`` bytes wait to be
consumed. A connection returns to its origin's pool when its response was read whole and may be kept alive; idle
ones close after ``keepalive_s``. A request sent on a kept-alive connection that the server closes without a byte
of answer is sent once more on a new connection: that is the server's idle timer firing as the request went out
(uvicorn, so vLLM, closes idle connections after 5 s), not a failure of the backend.

Limits (``UpstreamLimits``; each refused with the error named, the connection closed): at most
``max_connections`` exchanges at once and ``max_connections_per_host`` per origin, waiting for a slot at most
``Timeouts.pool`` (``PoolTimeout``); a response head (status line and headers, 1xx answers included) of at most
``max_header_bytes`` and ``max_header_count`` headers (``RemoteProtocolError``); a body of at most the request's
``max_body_bytes`` (``ResponseTooLarge``); ``Timeouts.connect`` for the TCP (and TLS) connect, ``read`` for any
wait for response bytes (``ReadTimeout``), ``total`` for the whole exchange from the slot wait to the last byte
(``TotalTimeout``). It does not follow redirects, keep cookies, use proxies, or decode ``Content-Encoding``
(``UpstreamResponse.aread`` does, bounded).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

import httptools

from gateway.proxy.upstream import (
    ConnectError,
    ConnectTimeout,
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    ResponseTooLarge,
    Timeouts,
    TotalTimeout,
    Transport,
    UnsupportedProtocol,
    UpstreamError,
    UpstreamLimits,
    UpstreamResponse,
)

HIGH_WATER = 256 * 1024  # response bytes buffered before the socket stops being read
_Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time; the parser's callbacks fill the current response."""

    def __init__(self, origin: _Origin, limits: UpstreamLimits) -> None:
        self.origin = origin
        self.limits = limits
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
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last_activity = 0.0
        self.answered = False  # whether any byte of this exchange's response has come
        self.head_bytes = 0  # bytes received before the head was complete
        self.header_bytes = 0  # of the header lines parsed so far
        self.body_bytes = 0
        self.max_body = self.limits.max_response_bytes
        self.deadline: float | None = None  # loop time by which the exchange must be over
        self.total_s: float | None = None

    def begin(self, deadline: float | None, total_s: float | None, max_body: int) -> None:
        """The limits of the exchange about to start on this connection."""
        self.deadline, self.total_s, self.max_body = deadline, total_s, max_body

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.answered = True
        if self.error is not None:
            return
        if not self.head_done:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(RemoteProtocolError(f"malformed response from upstream: {exc}"))
            return
        if not self.head_done and self.head_bytes > self.limits.max_header_bytes:
            self._refuse(RemoteProtocolError(f"upstream response head is over {self.limits.max_header_bytes} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete or self.error is not None:
            self._wake()
            return
        if self.head_done and exc is None and self._until_eof():
            self.complete = True  # a body delimited by the connection's end has ended
            self._wake()
        elif self.head_done:
            self._fail(RemoteProtocolError("peer closed connection without sending complete message body"))
        elif exc is not None:
            self._fail(ReadError(str(exc) or type(exc).__name__))
        else:
            self._fail(RemoteProtocolError("server disconnected without sending a response"))

    def _until_eof(self) -> bool:
        """Whether the response's body runs to the connection's end (neither a length nor chunked)."""
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names and self.status not in (204, 304)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.error is not None:
            return
        if len(self.headers) >= self.limits.max_header_count:
            self._refuse(RemoteProtocolError(f"upstream response has more than {self.limits.max_header_count} "
                                             "headers"))
            return
        self.header_bytes += len(name) + len(value) + 4  # exact, where head_bytes may include body bytes
        if self.header_bytes > self.limits.max_header_bytes:
            self._refuse(RemoteProtocolError(f"upstream response head is over {self.limits.max_header_bytes} bytes"))
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.error is not None:
            return
        status = self.parser.get_status_code()
        if status < 200:  # an informational answer (100, 103): the real one follows (head_bytes goes on counting)
            self.headers = []
            self.header_bytes = 0
            return
        self.status, self.head_done = status, True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.error is not None:
            return
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            self._refuse(ResponseTooLarge(f"upstream response body is over the limit of {self.max_body} bytes"))
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()  # the consumer resumes it (take)
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done and self.error is None:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # asked now: the parser forgets once this returns
            self._wake()

    # the exchange's side
    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _refuse(self, error: UpstreamError) -> None:
        """Fail the exchange and drop the connection (its remaining bytes are never read)."""
        self._fail(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expired(self) -> bool:
        """Past the exchange's deadline (failing it with ``TotalTimeout`` if so)."""
        if self.deadline is None or self.loop.time() < self.deadline:
            return False
        self._refuse(TotalTimeout(f"upstream exchange took over {self.total_s:g} s"))
        return True

    async def wait(self, read_timeout: float | None) -> None:
        """Until the parser has news (head, body bytes, end) or the connection failed; ``ReadTimeout`` when no
        byte arrives for ``read_timeout`` seconds, ``TotalTimeout`` at the exchange's deadline."""
        if self.expired():
            return
        now = self.loop.time()
        self.waiter = self.loop.create_future()
        self.last_activity = now
        delay = read_timeout
        if self.deadline is not None:
            delay = self.deadline - now if delay is None else min(delay, self.deadline - now)
        timer = None if delay is None else self.loop.call_later(delay, self._check, read_timeout)
        try:
            await self.waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def _check(self, read_timeout: float | None) -> None:
        if self.waiter is None or self.waiter.done() or self.expired():
            return
        now = self.loop.time()
        left = None if read_timeout is None else self.last_activity + read_timeout - now
        if left is not None and left <= 0:
            self._refuse(ReadTimeout(f"no response bytes for {read_timeout:g} s"))
            return
        if self.deadline is not None:  # bytes came in the meantime (not enough for the waiter yet)
            left = self.deadline - now if left is None else min(left, self.deadline - now)
        if left is not None:
            self.loop.call_later(left, self._check, read_timeout)

    def take(self) -> bytes:
        """Every body byte received and not yet taken (reading resumes if it was paused)."""
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        if self.buffered > HIGH_WATER and self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self.buffered = 0
        return data


class _Response(UpstreamResponse):
    """The response body as it arrives; a body read whole hands its connection back to the pool."""

    def __init__(self, pool: Http1Transport, conn: _Connection, read_timeout: float | None) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self.max_body_bytes = conn.max_body
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        while (conn := self._conn) is not None:
            if conn.chunks:
                if not conn.complete and conn.expired():
                    raise conn.error  # type: ignore[misc]  # expired() set it
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


class Http1Transport(Transport):
    """Keep-alive HTTP/1.1 connections per origin, within ``limits`` (see the module doc).

    ``ssl_context`` verifies ``https`` origins (default: the system's CA store, made on first use)."""

    def __init__(self, limits: UpstreamLimits | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limits = limits or UpstreamLimits()
        self.keepalive_s = self.limits.keepalive_s
        self._slots = asyncio.Semaphore(self.limits.max_connections)
        self._host_slots: dict[_Origin, asyncio.Semaphore] = {}
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._targets: dict[str, tuple[_Origin, bytes, bytes]] = {}
        self._ssl = ssl_context
        self._reaper: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes = b"",
        timeouts: Timeouts = Timeouts(),  # frozen: one shared default is safe
        max_body_bytes: int | None = None,
    ) -> UpstreamResponse:
        """Send the request; return once the response head is in, with the body streaming behind it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.total is None else loop.time() + timeouts.total
        origin, target, host = self._target(url)
        request = _encode(method, target, host, headers, content)
        max_body = self.limits.max_response_bytes if max_body_bytes is None else max_body_bytes
        await self._acquire(origin, _within(timeouts.pool, deadline, loop))
        conn: _Connection | None = None
        try:
            conn = self._reuse(origin)
            if conn is not None:
                conn.begin(deadline, timeouts.total, max_body)
                try:
                    await self._send(conn, request, timeouts.read)
                except (RemoteProtocolError, ReadError):
                    if conn.answered:
                        raise
                    conn.close()  # closed unanswered as the request went out: the server's idle timer, not a fault
                    conn = None
            if conn is None:
                conn = await self._connect(origin, _within(timeouts.connect, deadline, loop))
                conn.begin(deadline, timeouts.total, max_body)
                await self._send(conn, request, timeouts.read)
        except BaseException:
            if conn is not None:
                conn.close()
            self._release_slots(origin)
            raise
        return _Response(self, conn, timeouts.read)

    async def _acquire(self, origin: _Origin, pool_timeout: float | None) -> None:
        """One slot of the origin's and one of the transport's, waiting at most ``pool_timeout`` for both."""
        host = self._host_slots.get(origin)
        if host is None:
            host = self._host_slots[origin] = asyncio.Semaphore(self.limits.max_connections_per_host)
        if not host.locked() and not self._slots.locked():  # free: no timer to arm
            await host.acquire()
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(pool_timeout):
                await host.acquire()
                try:
                    await self._slots.acquire()
                except BaseException:
                    host.release()
                    raise
        except TimeoutError:
            scheme, name, port = origin
            raise PoolTimeout(f"no free upstream connection to {name}:{port} within {pool_timeout:g} s "
                              f"({self.limits.max_connections_per_host} per host, "
                              f"{self.limits.max_connections} in all)") from None

    def _release_slots(self, origin: _Origin) -> None:
        self._slots.release()
        self._host_slots[origin].release()

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
        self._release_slots(conn.origin)
        if conn.closed or not conn.keep_alive or conn.error is not None:
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
            if not conn.closed and not conn.head_done and conn.error is None and not conn.answered:
                return conn
            conn.close()  # closed by the server, or it said something unasked (a 408 before closing)
        return None

    async def _connect(self, origin: _Origin, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        ssl_context = self._ssl_context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(origin, self.limits), host, port,
                                                       ssl=ssl_context, server_hostname=host if ssl_context else None)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {host}:{port} took over {connect_timeout:g} s") from exc
        except OSError as exc:  # refused, unreachable, name not resolved, TLS handshake failed
            raise ConnectError(str(exc) or type(exc).__name__) from exc
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
                raise UnsupportedProtocol(f"cannot send a request to {url!r}")
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

    async def aclose(self) -> None:
        self.close()


def _within(timeout: float | None, deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    """``timeout``, shortened to what is left before ``deadline``."""
    if deadline is None:
        return timeout
    left = max(0.0, deadline - loop.time())
    return left if timeout is None else min(timeout, left)


def _encode(method: str, target: bytes, host: bytes, headers: Mapping[str, str], content: bytes) -> bytes:
    """The request head and body, as one buffer; ``LocalProtocolError`` for a header that cannot be sent."""
    head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers.items():
        if "\r" in name or "\n" in name or ":" in name or "\r" in value or "\n" in value:
            raise LocalProtocolError(f"line break or colon in request header {name!r}")
        try:
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"request header {name!r} is not latin-1") from None
    if content or method not in ("GET", "HEAD"):
        head.append(b"content-length: %d\r\n" % len(content))
    head.append(b"\r\n")
    return b"".join(head) + content
