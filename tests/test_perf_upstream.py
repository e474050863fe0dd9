"""The aiohttp-backed transport under the gateway's httpx client behaves like httpx's own on real servers."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.upstream import AiohttpTransport
from tests.servers import ServerThread, free_port

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
PAUSE_S = 1.0  # how long the slow routes stay silent: longer than the tests' timeouts, short for teardown


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


async def zipped(request: Request) -> Response:
    return Response(gzip.compress(b'{"ok": true}'), media_type="application/json", headers={"content-encoding": "gzip"})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/hang", hang, methods=["POST"]),
                            Route("/stall", _events("stall"), methods=["POST"]),
                            Route("/drop", _events("drop"), methods=["POST"]), Route("/gz", zipped, methods=["POST"])])
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=httpx.Timeout(5.0, connect=2.0)) as c:
        yield c


async def test_post_returns_the_answer_and_sends_body_and_headers(client: httpx.AsyncClient, url: str) -> None:
    for i in range(3):  # the pooled connection is reused between requests
        r = await client.post(f"{url}/echo", content=BODY, headers={"content-type": "application/json",
                                                                    "authorization": f"Bearer k{i}"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"body": orjson.loads(BODY), "authorization": f"Bearer k{i}"}


async def test_stream_yields_events_before_the_backend_finishes_then_times_out(
    client: httpx.AsyncClient, url: str
) -> None:
    request = client.build_request("POST", f"{url}/stall", content=b"{}", timeout=httpx.Timeout(0.3, connect=2.0))
    response = await client.send(request, stream=True)
    seen = b""
    with pytest.raises(httpx.ReadTimeout):
        async for chunk in response.aiter_raw():
            seen += chunk
    await response.aclose()
    assert seen.count(b"data: ") == 2


async def test_nothing_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{free_port()}/v1/chat/completions", content=BODY)


async def test_backend_that_never_answers_is_a_read_timeout(client: httpx.AsyncClient, url: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{url}/hang", content=BODY, timeout=httpx.Timeout(0.3, connect=2.0))


async def test_stream_cut_mid_body_is_a_transport_error(client: httpx.AsyncClient, url: str) -> None:
    response = await client.send(client.build_request("POST", f"{url}/drop", content=b"{}"), stream=True)
    with pytest.raises(httpx.TransportError):
        async for _ in response.aiter_raw():
            pass
    await response.aclose()


async def test_gzip_answer_is_decoded_by_httpx_as_over_httpcore(client: httpx.AsyncClient, url: str) -> None:
    r = await client.post(f"{url}/gz", content=b"{}")
    assert r.json() == {"ok": True}
