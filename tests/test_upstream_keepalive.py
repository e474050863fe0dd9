"""A kept-alive upstream connection that the server closes just as a request goes out on it (its idle timer ran
out: uvicorn's, so vLLM's, is 5 s) costs the request nothing: ``gateway.proxy.http1`` sends it again on a new
connection. Only then: a new connection closed unanswered, or one closed after part of an answer, is an error."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.proxy.http1 import Http1Transport
from gateway.proxy.upstream import RemoteProtocolError, Timeouts, UpstreamError
from tests.servers import FakeBackend, ServerThread

BODY = b'{"model": "m", "messages": []}'
JSON = {"content-type": "application/json"}
T = Timeouts(connect=2.0, read=5.0)
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"


@dataclass
class IdleClosingServer:
    """Answers ``answers`` requests per connection, then takes the next request's head and ends the connection
    without a reply: with a FIN (``close="fin"``), a reset (``"reset"``), or after half a status line
    (``"partial"``)."""

    answers: int
    close: str = "fin"
    connections: int = 0
    requests: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(self.answers):
                await self._read_request(reader)
                writer.write(ANSWER)
                await writer.drain()
            await self._read_request(reader)
            if self.close == "partial":
                writer.write(b"HTTP/1.1 200 O")
                await writer.drain()
            elif self.close == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                           struct.pack("ii", 1, 0))
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        self.requests += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    servers: list[asyncio.Server] = []

    async def start(backend: IdleClosingServer) -> IdleClosingServer:
        server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
        backend.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return backend

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("close", ["fin", "reset"])
async def test_request_on_a_connection_closed_as_it_went_out_is_answered_over_a_new_one(serve, close: str) -> None:
    backend = await serve(IdleClosingServer(answers=1, close=close))
    pool = Http1Transport()
    try:
        for _ in range(3):
            r = await pool.request("POST", backend.url, JSON, BODY, T)
            assert r.status == 200 and await r.aread() == b'{"ok":true}'
    finally:
        pool.close()
    # 1st on a new connection; 2nd and 3rd each went out on the kept one, were dropped unanswered, then re-sent
    assert (backend.connections, backend.requests) == (3, 5)


async def test_new_connection_closed_unanswered_is_an_error_and_not_sent_again(serve) -> None:
    backend = await serve(IdleClosingServer(answers=0))
    pool = Http1Transport()
    with pytest.raises(RemoteProtocolError, match="without sending a response"):
        await pool.request("POST", backend.url, JSON, BODY, T)
    pool.close()
    assert (backend.connections, backend.requests) == (1, 1)


async def test_kept_connection_closed_after_part_of_an_answer_is_an_error_and_not_sent_again(serve) -> None:
    backend = await serve(IdleClosingServer(answers=1, close="partial"))
    pool = Http1Transport()
    r = await pool.request("POST", backend.url, JSON, BODY, T)
    assert await r.aread() == b'{"ok":true}'
    with pytest.raises(RemoteProtocolError):  # the server began an answer: it may have done the work
        await pool.request("POST", backend.url, JSON, BODY, T)
    pool.close()
    assert (backend.connections, backend.requests) == (1, 2)


def test_bursts_after_idling_for_uvicorns_keep_alive_timeout_all_succeed() -> None:
    """The real race: bursts of 24 POSTs to uvicorn, each after an idle pause about as long as its keep-alive
    timeout, so many go out on connections whose timer fires as they arrive (without the re-send, ~6% failed)."""
    keep_alive_s = 0.2
    backend = ServerThread(FakeBackend("s").app, timeout_keep_alive=keep_alive_s)
    body = b'{"model": "m", "messages": [{"role": "user", "content": "q"}]}'

    async def bursts() -> list[str]:
        pool, failures = Http1Transport(), []

        async def one() -> None:
            try:
                r = await pool.request("POST", f"{backend.url}/v1/chat/completions", JSON, body, T)
                await r.aread()
            except UpstreamError as exc:
                failures.append(repr(exc))

        for k in range(25):
            await asyncio.gather(*(one() for _ in range(24)))
            await asyncio.sleep(keep_alive_s + (k % 7 - 3) / 1000)  # within 3 ms either side of the timeout
        pool.close()
        return failures

    with backend:
        failures = asyncio.run(bursts())
    assert not failures, failures[:3]
