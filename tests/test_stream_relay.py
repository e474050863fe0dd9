"""The relay passes each upstream event on as it comes, and lets go of the upstream when the client leaves.

A gated backend sends its first event and then holds the rest until the test releases it, so what the client
has seen at that moment is exactly what the gateway relayed without waiting for more. No timing assertions:
waits are bounded only so that a broken gateway fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows

WAIT_S = 10.0  # bound on every wait: a gateway that buffers or leaks fails instead of hanging


def event(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + b"\n\n"


def delta(content: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


class GatedBackend:
    """Streams ``first``, then waits for ``release`` before ``second``, the usage and [DONE]."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent_second = threading.Event()
        self.stream_closed = threading.Event()  # the stream ended for any reason (done, or the gateway left)
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        await request.body()
        return StreamingResponse(self.events(), media_type="text/event-stream")

    async def events(self) -> AsyncIterator[bytes]:
        try:
            yield event(delta("first"))
            released = await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 3 * WAIT_S)
            if not released:
                return
            self.sent_second.set()
            yield event(delta(" second"))
            yield event({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
            yield event("[DONE]")
        finally:
            self.stream_closed.set()


def one_backend_pool(url: str) -> str:
    return f"""
backends:
{backend_yaml("gated", url, input_price=1.0, output_price=2.0, retries=0, read_timeout_s=30.0)}
pools:
  - name: auto
    members: [gated]
    router: cheapest
"""


async def first_event(lines: AsyncIterator[str]) -> str:
    async for line in lines:
        if line.startswith("data: "):
            return line
    raise AssertionError("the stream ended before any event")


async def test_first_event_reaches_the_client_before_the_upstream_sends_the_second(gateway):
    from tests.servers import ServerThread

    backend = GatedBackend()
    with ServerThread(backend.app) as upstream:
        gw = gateway(one_backend_pool(upstream.url))
        body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=WAIT_S * 2) as client, \
                client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()
            first = await first_event(lines)
            assert '"first"' in first
            assert not backend.sent_second.is_set()  # relayed on its own, not held for what follows
            backend.release.set()
            rest = [line async for line in lines if line.startswith("data: ")]
    assert '" second"' in rest[0] and rest[-1] == "data: [DONE]"
    row = wait_rows(gw.settings.database_url, 1)[0]
    assert row["status"] == "ok" and row["completion_tokens"] == 2 and row["ttft_ms"] is not None


async def test_client_leaving_mid_stream_closes_the_upstream_and_logs_the_disconnect(gateway):
    from tests.servers import ServerThread

    backend = GatedBackend()
    with ServerThread(backend.app) as upstream:
        gw = gateway(one_backend_pool(upstream.url))
        body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=WAIT_S * 2) as client:
            async with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
                assert '"first"' in await first_event(r.aiter_lines())
            # leaving the block closed the client's connection while the backend still holds the rest
            closed = await asyncio.get_running_loop().run_in_executor(None, backend.stream_closed.wait, WAIT_S)
        backend.release.set()  # ends the backend's wait (in a thread) at once, whatever happened
        assert closed and not backend.sent_second.is_set()  # the gateway let go of the upstream stream
        row = wait_rows(gw.settings.database_url, 1)[0]
        assert row["status"] == "error" and row["error_type"] == "client_disconnected"
        assert row["completion_tokens"] == 1  # "first", counted from what was relayed
