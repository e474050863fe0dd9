"""A fast fake OpenAI-compatible backend for overhead benchmarks: raw asyncio + httptools, no framework.

``POST /v1/chat/completions`` answers every request with the same small completion (the requested model
echoed back, fixed usage). With ``"stream": true`` it sends ``--chunks`` SSE content events ``--chunk-gap-ms``
apart, then a usage event when ``stream_options.include_usage`` is set, then ``[DONE]``. ``GET /v1/models``
and ``GET /health`` answer too. HTTP/1.1 keep-alive; one uvloop event loop; it parses only what it must,
so that it is never the bottleneck of a gateway measurement.

Run: ``python -m benchmarks.fake_backend --port 9100 [--chunks 16] [--chunk-gap-ms 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import cast

import httptools
import orjson

ANSWER = "The answer is 42."
USAGE = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


def completion_body(model: str) -> bytes:
    """The fixed non-streaming answer for ``model``."""
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": USAGE,
    })


def stream_events(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    """SSE events of the streamed answer: ``chunks`` content deltas, a stop event, usage, ``[DONE]``."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    events = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": f"tok{i} "} if i == 0 else {"content": f"tok{i} "}
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        usage = {**USAGE, "completion_tokens": chunks, "total_tokens": USAGE["prompt_tokens"] + chunks}
        events.append({**base, "choices": [], "usage": usage})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _head(status: str, ctype: bytes, length: int | None, keep_alive: bool) -> bytes:
    conn = b"keep-alive" if keep_alive else b"close"
    size = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: " + str(length).encode()
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype + b"\r\n" + size
            + b"\r\nConnection: " + conn + b"\r\n\r\n")


class BackendProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools and answer them in order."""

    def __init__(self, chunks: int, gap_s: float) -> None:
        self.chunks = chunks
        self.gap_s = gap_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(b"400 Bad Request", b"text/plain", b"bad request", keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self._chat(b"".join(self.body), keep)
        elif method == b"GET" and path.endswith(b"/models"):
            body = orjson.dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]})
            self._send(b"200 OK", b"application/json", body, keep)
        elif method == b"GET" and path == b"/health":
            self._send(b"200 OK", b"application/json", b'{"status":"ok"}', keep)
        else:
            self._send(b"404 Not Found", b"application/json", b'{"error":{"message":"not found"}}', keep)

    def _chat(self, raw: bytes, keep: bool) -> None:
        try:
            req = orjson.loads(raw)
            model = str(req.get("model") or "bench")
        except (orjson.JSONDecodeError, AttributeError):
            self._send(b"400 Bad Request", b"application/json", b'{"error":{"message":"bad json"}}', keep)
            return
        if req.get("stream") is True:
            opts = req.get("stream_options") or {}
            events = stream_events(model, self.chunks, bool(isinstance(opts, dict) and opts.get("include_usage")))
            asyncio.get_running_loop().create_task(self._stream(events, keep))
        else:
            self._send(b"200 OK", b"application/json", completion_body(model), keep)

    async def _stream(self, events: list[bytes], keep: bool) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(_head("200 OK", b"text/event-stream", None, keep))
        for i, event in enumerate(events):
            if transport.is_closing():
                return
            transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            if self.gap_s and i < len(events) - 1:
                await asyncio.sleep(self.gap_s)
        transport.write(b"0\r\n\r\n")
        if not keep:
            transport.close()

    def _send(self, status: bytes, ctype: bytes, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(_head(status.decode(), ctype, len(body), keep_alive) + body)
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, chunks: int, gap_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BackendProtocol(chunks, gap_ms / 1000.0), host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=16, help="content events per streamed answer")
    parser.add_argument("--chunk-gap-ms", type=float, default=1.0, help="pause between streamed events")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.chunks, args.chunk_gap_ms))


if __name__ == "__main__":
    main()
