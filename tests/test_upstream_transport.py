"""The gateway's one upstream transport (``gateway.proxy.http1.Http1Transport``) on real servers: answers, streams,
keep-alive, TLS, and the transport errors the dispatcher and the relay expect (``gateway.proxy.upstream``). Its limits
are proved in ``test_upstream_limits.py``."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.proxy.http1 import HIGH_WATER, Http1Transport
from gateway.proxy.upstream import (
    ConnectError,
    LocalProtocolError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    Timeouts,
    UpstreamResponse,
)
from tests.servers import ServerThread, free_port
from tests.tcpproxy import TcpProxy

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
PAUSE_S = 3.0  # how long the slow routes stay silent: well past SHORT's 1 s read timeout, short for teardown
JSON = {"content-type": "application/json"}
T = Timeouts(connect=2.0, read=5.0)
SHORT = Timeouts(connect=2.0, read=1.0)  # for the slow routes: times out long before they speak again


async def echo(request: Request) -> Response:
    seen = {"body": orjson.loads(await request.body()), "authorization": request.headers.get("authorization")}
    return Response(orjson.dumps(seen), media_type="application/json")


async def hang(request: Request) -> Response:
    await asyncio.sleep(PAUSE_S)
    return Response(b"{}", media_type="application/json")


def _events(then: str) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        yield b"data: {\"n\": 1}\n\n"
        yield b"data: {\"n\": 2}\n\n"
        if then == "stall":
            await asyncio.sleep(PAUSE_S)
        else:
            raise ConnectionResetError("cut mid-stream")

    async def route(request: Request) -> Response:
        return StreamingResponse(gen(), media_type="text/event-stream")

    return route


BIG = bytes(range(256)) * (4 * HIGH_WATER // 256)  # more than the client buffers before it pauses reading


async def big(request: Request) -> Response:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(BIG), 65536):
            yield BIG[i:i + 65536]

    return StreamingResponse(gen(), media_type="application/octet-stream")


async def zipped(request: Request) -> Response:
    return Response(gzip.compress(b'{"ok": true}'), media_type="application/json", headers={"content-encoding": "gzip"})


async def read_until_timeout(response: UpstreamResponse) -> bytes:
    """The body bytes that came before reading it raised ``ReadTimeout`` (it must); the response is closed."""
    seen = b""
    with pytest.raises(ReadTimeout):
        async for chunk in response.aiter_raw():
            seen += chunk
    await response.aclose()
    return seen


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/hang", hang, methods=["POST"]),
                            Route("/stall", _events("stall"), methods=["POST"]),
                            Route("/drop", _events("drop"), methods=["POST"]), Route("/gz", zipped, methods=["POST"]),
                            Route("/big", big, methods=["POST"])])
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture
async def transport() -> AsyncIterator[Http1Transport]:
    t = Http1Transport()
    yield t
    await t.aclose()


async def test_post_answers_and_keeps_one_connection_for_sequential_requests(transport: Http1Transport,
                                                                             url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as proxy:
        for i in range(3):
            r = await transport.request("POST", f"http://127.0.0.1:{proxy.port}/echo",
                                        {**JSON, "authorization": f"Bearer k{i}"}, BODY, T)
            assert r.status == 200 and r.header("content-type") == "application/json"
            assert orjson.loads(await r.aread()) == {"body": orjson.loads(BODY), "authorization": f"Bearer k{i}"}
            await r.aclose()
        assert proxy.connections == 1


async def test_post_streams_events_before_the_backend_finishes_then_times_out(transport: Http1Transport,
                                                                              url: str) -> None:
    r = await transport.request("POST", f"{url}/stall", JSON, b"{}", SHORT)
    assert (await read_until_timeout(r)).count(b"data: ") == 2


async def test_post_body_left_unread_drops_its_connection_and_the_next_post_works(transport: Http1Transport,
                                                                                  url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as proxy:
        r = await transport.request("POST", f"http://127.0.0.1:{proxy.port}/stall", JSON, b"{}", T)
        async for chunk in r.aiter_raw():
            assert chunk.startswith(b"data: ")
            break
        await r.aclose()  # the rest of that answer must not be read as the next one's
        r = await transport.request("POST", f"http://127.0.0.1:{proxy.port}/echo", JSON, BODY, T)
        assert orjson.loads(await r.aread())["body"] == orjson.loads(BODY)
        assert proxy.connections == 2


async def test_post_failures_are_the_transport_errors_the_dispatcher_expects(transport: Http1Transport,
                                                                            url: str) -> None:
    with pytest.raises(ConnectError):
        await transport.request("POST", f"http://127.0.0.1:{free_port()}/v1/chat/completions", JSON, BODY, T)
    with pytest.raises(ReadTimeout):
        await transport.request("POST", f"{url}/hang", JSON, BODY, SHORT)
    r = await transport.request("POST", f"{url}/drop", JSON, b"{}", T)
    with pytest.raises(RemoteProtocolError):
        async for _ in r.aiter_raw():
            pass
    await r.aclose()
    port = int(url.rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as proxy:
        proxy.reset_after_request()
        with pytest.raises((ReadError, RemoteProtocolError)):
            await transport.request("POST", f"http://127.0.0.1:{proxy.port}/echo", JSON, BODY, T)


async def test_post_header_with_a_line_break_is_refused_before_sending(transport: Http1Transport, url: str) -> None:
    with pytest.raises(LocalProtocolError):
        await transport.request("POST", f"{url}/echo", {**JSON, "authorization": "Bearer k\r\nx-injected: 1"},
                                BODY, T)
    r = await transport.request("POST", f"{url}/echo", JSON, BODY, T)  # the pool is still usable
    assert r.status == 200 and await r.aread()


async def test_post_gzip_answer_is_decoded_by_aread(transport: Http1Transport, url: str) -> None:
    r = await transport.request("POST", f"{url}/gz", JSON, b"{}", T)
    assert orjson.loads(await r.aread()) == {"ok": True}


async def test_post_body_larger_than_the_read_buffer_arrives_whole_when_read_late(transport: Http1Transport,
                                                                                  url: str) -> None:
    r = await transport.request("POST", f"{url}/big", JSON, b"{}", T)
    await asyncio.sleep(0.3)  # the server pushes more than the client buffers: reading pauses, then resumes
    assert await r.aread() == BIG


def _close_delimited_server(payload: bytes) -> tuple[socket.socket, threading.Thread]:
    """A server that answers one request with a body that ends where the connection ends (no length)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n" + payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


async def test_post_body_delimited_by_the_connection_end_is_read_whole(transport: Http1Transport) -> None:
    srv, thread = _close_delimited_server(b"until the end")
    with srv:
        r = await transport.request("POST", f"http://127.0.0.1:{srv.getsockname()[1]}/x", JSON, b"{}", T)
        assert await r.aread() == b"until the end"
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(https URL, CA file) of the echo app served over TLS with a fresh self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    with ServerThread(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        yield f"https://localhost:{server.port}", cert


async def test_post_over_tls_checks_the_certificate_and_answers(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    trusting = Http1Transport(ssl_context=ssl.create_default_context(cafile=str(ca)))
    for _ in range(2):
        r = await trusting.request("POST", f"{url}/echo", JSON, BODY, T)
        assert r.status == 200 and orjson.loads(await r.aread())["body"] == orjson.loads(BODY)
    trusting.close()
    with pytest.raises(ConnectError):  # the system's CA store does not know this certificate
        await Http1Transport().request("POST", f"{url}/echo", JSON, BODY, T)
