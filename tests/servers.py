"""Real HTTP servers on loopback for tests: uvicorn in a thread, and a controllable fake backend."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Serve an ASGI app with uvicorn on 127.0.0.1:<port> in a daemon thread; ``options`` go to ``uvicorn.Config``."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        self.port = port or free_port()
        # a backend made to hang keeps its request open: shut down without waiting for it past 2 s
        options = {"timeout_graceful_shutdown": 2, **options}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                access_log=False, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def completion(model: str, content: str, prompt_tokens: int = 7, completion_tokens: int = 3) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class FakeBackend:
    """An OpenAI-compatible backend whose behaviour a test sets: ``mode`` is one of
    ok, 500, 503, 429, 400, 401, hang, stall (headers then no body), drop (stream dies after two chunks), reset,
    stall_mid (two chunks, then silence), truncate (two chunks, then a clean end without [DONE]),
    empty (200 stream with no body at all). ``retry_after`` adds that Retry-After header to 429/503 answers;
    a 401 echoes the Authorization header it got (as careless providers do), and so does every error answer
    when ``echo_auth`` is set, to test that secrets are scrubbed. ``error`` replaces the fields of the error
    object (e.g. a provider's own type, param and code).
    Every received request body is kept in ``requests``, its headers in ``headers``."""

    def __init__(self, name: str, mode: str = "ok", delay_s: float = 0.0, usage: bool = True,
                 retry_after: str | None = None, echo_auth: bool = False, error: dict[str, Any] | None = None) -> None:
        self.name = name
        self.mode = mode
        self.delay_s = delay_s
        self.usage = usage
        self.retry_after = retry_after
        self.echo_auth = echo_auth
        self.error = error or {}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        mode = self.mode
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if mode in ("500", "503", "429", "400", "401"):
            message = f"fake {mode}"
            if mode == "401" or self.echo_auth:
                message += f": invalid key {request.headers.get('authorization')!r}"
            err = {"error": {"message": message, "type": "x", "param": None, "code": None, **self.error}}
            headers = {"retry-after": self.retry_after} if self.retry_after and mode in ("429", "503") else None
            return Response(orjson.dumps(err), status_code=int(mode), media_type="application/json", headers=headers)
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "reset":
            # uvicorn turns this into a 500; for a real TCP reset use tests.tcpproxy.TcpProxy.reset_after_request
            raise ConnectionResetError("fake reset")
        text = f"answer from {self.name}"
        if not body.get("stream"):
            return Response(orjson.dumps(completion(body["model"], text)), media_type="application/json")
        return StreamingResponse(self._stream(body, text, mode), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], text: str, mode: str) -> Any:
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "empty":
            return
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        words = text.split(" ")
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            yield b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta}]}) + b"\n\n"
            if mode == "drop" and i == 1:
                raise ConnectionResetError("fake drop mid-stream")
            if mode == "stall_mid" and i == 1:
                await asyncio.sleep(3600)
            if mode == "truncate" and i == 1:
                return
        yield b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) \
            + b"\n\n"
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
            yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"
