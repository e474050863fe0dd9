"""The gateway's one seam to the backends: :class:`Transport`, its limits, its responses and its errors.

Every upstream call (the dispatcher's chat completions, the admin and CLI backend probes) goes through one
``Transport``, built once per process by the app factory (``gateway.app``); tests may hand in another one. The
seam is shaped like httpx's (``AsyncBaseTransport.handle_async_request`` returns a response whose body is read
as it comes, and failures are a small hierarchy of transport errors), but smaller: one call,
:meth:`Transport.request`, with the request's timeouts and its response-size cap as arguments.

The one implementation is :class:`gateway.proxy.http1.Http1Transport` (HTTP/1.1 over asyncio, responses parsed by
httptools); see its module doc for why it is not httpx's or aiohttp's client, and for the measurements.

Limits (:class:`UpstreamLimits`, from ``Settings``): connections in all and per origin, how long a request may
wait for a free one (``PoolTimeout``), response head size and header count (a backend cannot make the gateway
buffer 20 MB of headers), and, per request, the body size (``ResponseTooLarge``) and a total deadline for the
whole exchange, head to last byte (``TotalTimeout``), besides the connect and idle-read timeouts.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from gateway.settings import Settings

# -- errors: the names the dispatcher, the relay and the log rows use ---------------------------------------------


class UpstreamError(Exception):
    """Any failure to get an answer from a backend (httpx's ``TransportError``)."""


class ConnectError(UpstreamError):
    """The TCP (or TLS) connection could not be made: refused, unreachable, bad certificate."""


class TimeoutException(UpstreamError):
    """A timeout of one of the kinds below."""


class ConnectTimeout(TimeoutException):
    """Connecting took longer than the connect timeout."""


class PoolTimeout(TimeoutException):
    """No connection slot (in all, or for the origin) came free within the pool timeout."""


class ReadTimeout(TimeoutException):
    """No response byte arrived for the read timeout."""


class TotalTimeout(TimeoutException):
    """The exchange, head to last byte, took longer than its total deadline."""


class ReadError(UpstreamError):
    """The connection failed (reset) before the response head was in."""


class RemoteProtocolError(UpstreamError):
    """The backend broke HTTP: closed early, malformed response, too many or too large headers."""


class ResponseTooLarge(RemoteProtocolError):
    """The response body (as sent, or decoded) is over the request's cap."""


class LocalProtocolError(UpstreamError):
    """The request itself cannot be sent (a line break in a header value)."""


class UnsupportedProtocol(UpstreamError):
    """The URL is not ``http://`` or ``https://``."""


def describe(exc: BaseException) -> str:
    """``"ReadTimeout: no response bytes for 1 s"``: what attempts and log rows say about a failure."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- limits and timeouts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamLimits:
    """What one transport allows itself and its backends (defaults: ``Settings``' upstream fields)."""

    max_connections: int = 1000
    max_connections_per_host: int = 500  # per (scheme, host, port): one stalled backend cannot hold every slot
    keepalive_s: float = 30.0
    max_header_count: int = 100  # response headers; aiohttp's default is 128, Node's 2000 (h11 bounds bytes only)
    max_header_bytes: int = 64 * 1024  # status line + headers; httpcore lets h11 buffer 100 KiB, Node 16 KiB
    max_response_bytes: int = 64 * 1024 * 1024  # default body cap of a request that names none


def limits_from(settings: Settings) -> UpstreamLimits:
    """The transport limits a gateway's settings ask for."""
    return UpstreamLimits(
        max_connections=settings.upstream_max_connections,
        max_connections_per_host=settings.upstream_max_connections_per_host,
        max_header_count=settings.upstream_max_header_count,
        max_header_bytes=settings.upstream_max_header_bytes,
        max_response_bytes=max(settings.max_response_bytes, settings.max_stream_bytes),
    )


@dataclass(frozen=True)
class Timeouts:
    """Seconds; None is no limit. ``total`` bounds the whole exchange, pool wait and connect included."""

    connect: float | None = 5.0
    read: float | None = 120.0
    total: float | None = None
    pool: float | None = 10.0


# -- responses ----------------------------------------------------------------------------------------------------


class UpstreamResponse(ABC):
    """A response whose head is in; the body is read with ``aiter_raw`` (as sent) or ``aread`` (decoded)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    max_body_bytes: int

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @abstractmethod
    def aiter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, undecoded; the transport raises ``ResponseTooLarge`` past the cap."""

    @abstractmethod
    async def aclose(self) -> None:
        """Done with the response: a body read whole hands its connection back, any other closes it."""

    async def aread(self) -> bytes:
        """The whole body, ``Content-Encoding`` (gzip, deflate) decoded, at most ``max_body_bytes`` decoded."""
        parts = [chunk async for chunk in self.aiter_raw()]
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        encoding = (self.header("content-encoding") or "").lower()
        return decode_content(body, encoding, self.max_body_bytes) if encoding else body


def decode_content(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """``body`` decoded by each coding of a ``Content-Encoding`` value, in reverse order of application;
    ``ResponseTooLarge`` when the decoded size would pass ``max_bytes`` (a compressed bomb stops there)."""
    for coding in reversed([c.strip() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise RemoteProtocolError(f"unsupported content-encoding {coding!r} (asked for gzip, deflate)")
        wbits = zlib.MAX_WBITS | 16 if coding != "deflate" else zlib.MAX_WBITS
        try:
            body = _inflate(body, wbits, max_bytes)
        except zlib.error:
            if coding != "deflate":
                raise RemoteProtocolError("response body is not valid gzip") from None
            try:  # some servers send raw deflate without the zlib wrapper
                body = _inflate(body, -zlib.MAX_WBITS, max_bytes)
            except zlib.error as exc:
                raise RemoteProtocolError(f"response body is not valid deflate ({exc})") from None
    return body


def _inflate(data: bytes, wbits: int, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, max_bytes + 1)
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise ResponseTooLarge(f"decoded response body is over the limit of {max_bytes} bytes")
    return out + inflater.flush()


# -- the seam ----------------------------------------------------------------------------------------------------


class Transport(ABC):
    """Sends one request upstream and returns once the response head is in."""

    limits: UpstreamLimits

    @abstractmethod
    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes = b"",
        timeouts: Timeouts = Timeouts(),  # frozen: one shared default is safe
        max_body_bytes: int | None = None,
    ) -> UpstreamResponse:
        """``method`` ``url`` with ``headers`` (plus Host, and Content-Length when there is a body) and
        ``content``. ``max_body_bytes`` caps the response body (default ``limits.max_response_bytes``). Raises an
        :class:`UpstreamError`."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close idle connections; exchanges under way close theirs when they end."""
