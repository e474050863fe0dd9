"""The transport under the gateway's one shared ``httpx.AsyncClient``: httpx's API over aiohttp's connection pool.

Why: httpx's default transport (httpcore) checks every pooled connection with a ``poll()`` call on each request,
so its cost grows with the number of open upstream connections. Measured on the 2-core benchmark machine against
a fake backend, a request through httpcore cost ~0.4 ms of CPU with one connection and ~1.1 ms with 32 in use;
through this transport it costs ~0.15 ms (httpx's own client layer included), flat in the number of connections.

What stays the same for the dispatcher and the SSE relay: requests are built and sent with httpx, responses are
``httpx.Response`` objects (``aread``, ``aiter_raw``, ``aclose``), and failures are httpx exceptions
(``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``), so retries and
fallback behave as before. Bodies pass through undecoded (``auto_decompress`` off): httpx decodes
``Content-Encoding`` itself in ``aread``, exactly as over httpcore. Redirects are not followed, cookies are not kept.

The dispatcher's requests take a shorter way (:func:`direct_transport`, :meth:`AiohttpTransport.post`): no
``httpx.Request``, none of httpx's client layers (auth, redirects, cookie jar, event hooks, response wrapping,
none of which the gateway uses), and not aiohttp but the small HTTP/1.1 client of ``gateway.http1``. Measured
on the benchmark machine against the fake backend, per request up to a streamed answer's first chunk (warm; a
process that idles between requests, as a relay between tokens does, pays 2.5-3 times as much): httpx's
``client.send`` + ``aiter_raw`` over aiohttp 0.32 ms, aiohttp alone 0.19 ms, ``gateway.http1`` 0.05 ms. Its
response is still an ``httpx.Response`` and its failures are httpx's exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx

from gateway.http1 import Http1Pool


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """httpx's per-request timeouts (connect, read) as aiohttp's: per socket connect and per socket read."""
    t: dict[str, Any] = request.extensions.get("timeout") or {}
    return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=t.get("connect"), sock_read=t.get("read"))


def _mapped(exc: BaseException, request: httpx.Request, connecting: bool) -> httpx.TransportError:
    """The httpx exception the dispatcher and relay expect for an aiohttp (or timeout) failure."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # a socket read (headers or body) took too long
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, TimeoutError):
        return (httpx.ConnectTimeout if connecting else httpx.ReadTimeout)(text, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(text, request=request)
    if connecting and isinstance(exc, aiohttp.ClientOSError):
        return httpx.ConnectError(text, request=request)
    return httpx.ReadError(text, request=request)


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives; closing it hands the connection back (or drops it)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, self._request, connecting=False) from exc

    async def aclose(self) -> None:
        # a fully read body has already returned its connection to the pool; a partly read one is closed
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport())``: one aiohttp connection pool for every backend.

    The aiohttp session is made on first use, inside the running event loop; ``aclose`` closes it.
    """

    def __init__(self, max_connections: int = 1000, keepalive_s: float = 30.0) -> None:
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._http1: Http1Pool | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                         keepalive_timeout=self.keepalive_s, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None), trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # httpx already sets what it wants
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session if self._session is not None and not self._session.closed else self._open()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        body = await request.aread()
        try:
            response = await session.request(request.method, str(request.url), headers=headers, data=body or None,
                                             timeout=_timeout(request), allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, request, connecting=True) from exc
        return httpx.Response(
            status_code=response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def post(
        self, url: str, content: bytes, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response:
        """POST ``content`` to ``url`` and return once the response head is in; the body streams as it comes.

        What ``client.send(client.build_request("POST", ...), stream=True)`` returns, for the dispatcher's hot
        path, over ``gateway.http1`` (a keep-alive pool of its own): only ``headers`` are sent (plus Host and
        Content-Length), and the response's ``request`` is unset.
        """
        if self._http1 is None:
            self._http1 = Http1Pool(self.max_connections, self.keepalive_s)
        return await self._http1.post(url, content, headers, timeout)

    async def aclose(self) -> None:
        if self._http1 is not None:
            self._http1.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let the connector finish closing its sockets


def direct_transport(client: httpx.AsyncClient) -> AiohttpTransport | None:
    """The ``AiohttpTransport`` every request of ``client`` goes through, so a caller may use its ``post``;
    None when the client has another transport or mounts (proxies from the environment route some URLs
    elsewhere). Reads httpx's private ``_transport``/``_mounts``: httpx has no public accessor for them."""
    transport = getattr(client, "_transport", None)
    if isinstance(transport, AiohttpTransport) and not getattr(client, "_mounts", None):
        return transport
    return None
