"""The upstream transport's limits, each against a real server on loopback that breaks it: response head size and
header count, body size (sent and decoded), the total deadline of an exchange, the pool-acquire timeout and the
per-host limit. Each refusal is the named transport error, the connection is dropped, and the transport goes on
serving (httpx refuses such heads too; it has no body cap, per-host limit or total deadline of its own)."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.proxy.http1 import Http1Transport
from gateway.proxy.upstream import (
    PoolTimeout,
    RemoteProtocolError,
    ResponseTooLarge,
    Timeouts,
    TotalTimeout,
    UpstreamLimits,
)
from tests.rawbackend import RawBackend, head

JSON = {"content-type": "application/json"}
T = Timeouts(connect=2.0, read=5.0)
OK = b'{"ok":true}'


async def ok(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    writer.write(head(length=len(OK)) + OK)


def many_headers(n: int, size: int = 10) -> Any:
    async def script(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        extra = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * size) for i in range(n))
        writer.write(head(length=len(OK), extra=extra) + OK)

    return script


async def huge_header(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nx-big: ")
    for _ in range(40):  # 10 MB of one header value, in 256 KiB writes
        writer.write(b"v" * 256 * 1024)
        await writer.drain()
    writer.write(b"\r\ncontent-length: 2\r\n\r\n{}")


def body_of(size: int, chunked: bool) -> Any:
    async def script(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        piece = b"x" * 65536
        if not chunked:
            writer.write(head(length=size))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(size // len(piece)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")

    return script


BOMB = gzip.compress(b"\0" * 64 * 1024 * 1024)  # 64 MiB of zeros in ~64 KB


async def gzip_bomb(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    writer.write(head(length=len(BOMB), extra=b"content-encoding: gzip\r\n") + BOMB)


async def trickle(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    writer.write(head(length=600))
    for _ in range(600):  # a byte every 0.1 s: never silent for the 1 s read timeout, 60 s in all
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.1)


async def hang(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


@pytest.fixture
async def transport() -> AsyncIterator[Http1Transport]:
    t = Http1Transport(UpstreamLimits(max_header_count=100, max_header_bytes=64 * 1024,
                                      max_response_bytes=1024 * 1024))
    yield t
    await t.aclose()


async def answers_ok(transport: Http1Transport, url: str) -> None:
    """The transport still serves after a refusal."""
    r = await transport.request("POST", url, JSON, b"{}", T)
    assert r.status == 200 and await r.aread() == OK


# head() adds 3 headers (content-type, content-length, connection) to the n scripted ones
@pytest.mark.parametrize("n, size", [(98, 10), (20_000, 10), (60, 2000)], ids=["101", "20003", "63x2KB"])
async def test_response_with_too_many_or_too_large_headers_is_refused(transport: Http1Transport, n: int,
                                                                      size: int) -> None:
    with RawBackend(many_headers(n, size)) as bad, RawBackend(ok) as good:
        with pytest.raises(RemoteProtocolError, match="more than 100 headers|head is over 65536 bytes"):
            await transport.request("POST", bad.url, JSON, b"{}", T)
        await answers_ok(transport, good.url)
    with RawBackend(many_headers(97)) as fine:  # 100 headers, at the limit: accepted
        await answers_ok(transport, fine.url)


async def test_one_header_of_ten_megabytes_is_refused_after_the_head_limit(transport: Http1Transport) -> None:
    with RawBackend(huge_header) as bad, pytest.raises(RemoteProtocolError, match="head is over 65536 bytes"):
        await transport.request("POST", bad.url, JSON, b"{}", T)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_cap_is_refused_while_a_body_at_the_cap_is_read(transport: Http1Transport,
                                                                             chunked: bool) -> None:
    with RawBackend(body_of(4 * 1024 * 1024, chunked)) as big, RawBackend(body_of(1024 * 1024, chunked)) as fits:
        r = await transport.request("POST", big.url, JSON, b"{}", T)
        with pytest.raises(ResponseTooLarge, match="over the limit of 1048576 bytes"):
            await r.aread()
        await r.aclose()
        r = await transport.request("POST", fits.url, JSON, b"{}", T)
        assert len(await r.aread()) == 1024 * 1024
        r = await transport.request("POST", big.url, JSON, b"{}", T, max_body_bytes=8 * 1024 * 1024)  # per request
        assert len(await r.aread()) == 4 * 1024 * 1024


async def test_compressed_body_is_decoded_only_up_to_the_cap(transport: Http1Transport) -> None:
    with RawBackend(gzip_bomb) as bomb:
        r = await transport.request("POST", bomb.url, JSON, b"{}", T)
        with pytest.raises(ResponseTooLarge, match="decoded response body is over the limit"):
            await r.aread()
        await r.aclose()


async def test_body_that_trickles_past_the_total_deadline_is_cut(transport: Http1Transport) -> None:
    with RawBackend(trickle) as slow:
        started = time.monotonic()
        r = await transport.request("POST", slow.url, JSON, b"{}", Timeouts(connect=2, read=1, total=1.5))
        with pytest.raises(TotalTimeout, match="took over 1.5 s"):
            await r.aread()
        await r.aclose()
        assert time.monotonic() - started < 30  # the trickle alone would take 60 s; the read timeout never fires


async def test_pool_timeout_when_a_host_holds_its_slots_while_other_hosts_are_served() -> None:
    t = Http1Transport(UpstreamLimits(max_connections=10, max_connections_per_host=2))
    with RawBackend(hang) as stalled, RawBackend(ok) as other:
        held = [asyncio.create_task(t.request("POST", stalled.url, JSON, b"{}", Timeouts(read=20))) for _ in range(2)]
        while stalled.requests < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(PoolTimeout, match="2 per host"):
            await t.request("POST", stalled.url, JSON, b"{}", Timeouts(read=20, pool=0.3))
        await answers_ok(t, other.url)  # another origin has slots of its own
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await answers_ok(t, other.url)
    await t.aclose()


async def test_pool_timeout_when_every_slot_is_taken() -> None:
    t = Http1Transport(UpstreamLimits(max_connections=2, max_connections_per_host=2))
    with RawBackend(hang) as a, RawBackend(hang) as b, RawBackend(ok) as c:
        held = [asyncio.create_task(t.request("POST", u, JSON, b"{}", Timeouts(read=20))) for u in (a.url, b.url)]
        while a.requests + b.requests < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(PoolTimeout, match="2 in all"):
            await t.request("POST", c.url, JSON, b"{}", Timeouts(pool=0.3))
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await answers_ok(t, c.url)  # the slots of cancelled requests came back
    await t.aclose()


async def test_get_request_has_no_body_and_answers(transport: Http1Transport) -> None:
    seen: list[bytes] = []

    async def models(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        seen.append(orjson.dumps(body))
        writer.write(head(length=len(OK)) + OK)

    with RawBackend(models) as backend:
        r = await transport.request("GET", f"{backend.url}/v1/models", {}, b"", T)
        assert r.status == 200 and await r.aread() == OK
    assert seen == [b"{}"]  # no content-length, no body
