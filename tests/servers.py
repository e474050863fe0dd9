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
    With ``tool_calls`` set, a request that offers tools is answered with a call of the first one (plain and streamed).
    ``POST /v1/embeddings`` answers one vector of ``embedding_dim`` numbers per input, with usage.
    Every received request body is kept in ``requests``, its headers in ``headers``."""

    def __init__(self, name: str, mode: str = "ok", delay_s: float = 0.0, usage: bool = True,
                 retry_after: str | None = None, echo_auth: bool = False, error: dict[str, Any] | None = None,
                 tool_calls: bool = False, embedding_dim: int = 4) -> None:
        self.name = name
        self.mode = mode
        self.delay_s = delay_s
        self.usage = usage
        self.retry_after = retry_after
        self.echo_auth = echo_auth
        self.error = error or {}
        self.tool_calls = tool_calls
        self.embedding_dim = embedding_dim
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/embeddings", self.embeddings, methods=["POST"])])

    async def embeddings(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(str(x)) + k) for k in
                                                                  range(self.embedding_dim)]}
                for i, x in enumerate(inputs)]
        tokens = sum(len(str(x).split()) for x in inputs)
        return Response(orjson.dumps({"object": "list", "data": data, "model": body["model"],
                                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
                        media_type="application/json")

    def _tool_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        tools = body.get("tools")
        if not (self.tool_calls and tools):
            return None
        return {"id": "call_fake1", "type": "function",
                "function": {"name": tools[0]["function"]["name"], "arguments": '{"city": "Oslo"}'}}

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
        call = self._tool_call(body)
        if not body.get("stream"):
            answer = completion(body["model"], text)
            if call is not None:
                answer["choices"][0].update(message={"role": "assistant", "content": None, "tool_calls": [call]},
                                            finish_reason="tool_calls")
            return Response(orjson.dumps(answer), media_type="application/json")
        if call is not None:
            return StreamingResponse(self._stream_call(body, call), media_type="text/event-stream")
        return StreamingResponse(self._stream(body, text, mode), media_type="text/event-stream")

    async def _stream_call(self, body: dict[str, Any], call: dict[str, Any]) -> Any:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        args = call["function"]["arguments"]
        first = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                               "arguments": ""}}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [first]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": args[:5]}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}]
        for delta in deltas:
            yield b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta}]}) + b"\n\n"
        end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        yield b"data: " + orjson.dumps({**base, "choices": [end]}) + b"\n\n"
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

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
