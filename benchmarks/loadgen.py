"""Closed-loop HTTP/1.1 load generator for chat completions: raw asyncio + httptools on uvloop.

``concurrency`` keep-alive connections each send one request, wait for the whole answer, and send the
next, so the offered load adapts to the server (a closed loop, as a pool of real clients behaves). Request
bodies are built before the clock starts; per request it does one socket write and an incremental parse, a
few microseconds of CPU, so on a shared 2-core machine it takes as little as it can from the server measured.

Every request asks a distinct question: request ``i`` of a run carries prompt ``start + i`` of the prompt
file, with a variant number appended once the file is used up, so a gateway's embedding cache never hits.

Run in its own process: ``python -m benchmarks.loadgen SPEC.json`` prints one JSON result (see :func:`summarize`).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson

from benchmarks.common import percentile

#: a streamed event that carries answer text (OpenAI, LiteLLM and poolgate spell it with or without a space)
_CONTENT = re.compile(rb'"content":\s?"[^"]')
REQUEST_TIMEOUT_S = 60.0


@dataclass
class LoadSpec:
    """One measurement: where to send, what, how many at once, for how long."""

    host: str
    port: int
    model: str
    prompts_file: str
    start: int = 0
    concurrency: int = 1
    requests: int = 0  # measured requests; 0 = run for ``duration_s``
    duration_s: float = 0.0
    warmup: int = 0
    stream: bool = False
    api_key: str | None = None
    max_tokens: int = 16
    path: str = "/v1/chat/completions"
    headers: dict[str, str] | None = None  # extra headers on every request (Portkey's provider and host)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSpec:
        return cls(**data)


@dataclass
class Sample:
    status: int
    latency_ms: float
    ttft_ms: float | None


@dataclass
class Tally:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def prompt_for(prompts: list[str], index: int) -> str:
    """Prompt number ``index`` of an endless, never-repeating sequence built from ``prompts``."""
    base = prompts[index % len(prompts)]
    round_ = index // len(prompts)
    return base if round_ == 0 else f"{base} (variant {round_})"


def build_requests(spec: LoadSpec, prompts: list[str], first: int, count: int) -> list[bytes]:
    """The raw HTTP requests ``first .. first+count-1`` of the run (headers and body)."""
    head = (f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nContent-Type: application/json\r\n"
            "Accept: */*\r\n")
    if spec.api_key:
        head += f"Authorization: Bearer {spec.api_key}\r\n"
    for name, value in (spec.headers or {}).items():
        head += f"{name}: {value}\r\n"
    out = []
    for i in range(first, first + count):
        body: dict[str, Any] = {"model": spec.model, "max_tokens": spec.max_tokens,
                                "messages": [{"role": "user", "content": prompt_for(prompts, spec.start + i)}]}
        if spec.stream:
            body["stream"] = True
        raw = orjson.dumps(body)
        out.append(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return out


class Connection(asyncio.Protocol):
    """One keep-alive client connection; ``await exchange(raw)`` -> (status, ttft_s or None, body head)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, float | None, bytes]] | None = None
        self.closed = False
        self.first_token_at: float | None = None
        self.body_head = b""
        self.tail = b""
        self.stream = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError(f"bad response: {exc}"))

    def on_body(self, body: bytes) -> None:
        if self.stream and self.first_token_at is None:
            if _CONTENT.search(self.tail + body):
                self.first_token_at = time.perf_counter()
            self.tail = body[-64:]  # an event split across two reads is still seen
        if len(self.body_head) < 4096:
            self.body_head += body[: 4096 - len(self.body_head)]

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.first_token_at, self.body_head))

    async def exchange(self, raw: bytes, stream: bool) -> tuple[int, float | None, bytes]:
        assert self.transport is not None
        self.first_token_at, self.body_head, self.tail, self.stream = None, b"", b"", stream
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await asyncio.wait_for(self.waiter, REQUEST_TIMEOUT_S)


async def _connect(spec: LoadSpec) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Connection, spec.host, spec.port)
    return proto


async def _worker(
    spec: LoadSpec, queue: list[bytes], tally: Tally | None, deadline: float, state: dict[str, int]
) -> None:
    conn = await _connect(spec)
    while True:
        if deadline and time.perf_counter() >= deadline:
            break
        i = state["next"]
        if i >= len(queue):
            break
        state["next"] = i + 1
        if conn.closed:
            conn = await _connect(spec)
        started = time.perf_counter()
        try:
            status, first_at, head = await conn.exchange(queue[i], spec.stream)
        except (ConnectionError, OSError, TimeoutError) as exc:
            if tally is not None:
                tally.errors.append(f"{type(exc).__name__}: {exc}")
            if conn.transport is not None:
                conn.transport.close()
            conn = await _connect(spec)
            continue
        ended = time.perf_counter()
        if tally is None:
            continue
        if status >= 400:
            tally.errors.append(f"HTTP {status}: {head[:300].decode('utf-8', 'replace')}")
            continue
        ttft = (first_at - started) * 1000 if first_at is not None else None
        tally.samples.append(Sample(status, (ended - started) * 1000, ttft))
    if conn.transport is not None:
        conn.transport.close()


async def run(spec: LoadSpec) -> dict[str, Any]:
    """Warm up, then measure; returns :func:`summarize` of the measured requests."""
    with open(spec.prompts_file, encoding="utf-8") as fh:
        prompts = json.load(fh)
    if spec.warmup:
        warm = build_requests(spec, prompts, 0, spec.warmup)
        state = {"next": 0}
        await asyncio.gather(*(_worker(spec, warm, None, 0.0, state) for _ in range(spec.concurrency)))
    # duration mode: more requests than any server reaches on 2 cores (the direct fake backend: ~17k/s)
    count = spec.requests or max(2000, int(spec.duration_s * 25_000))
    queue = build_requests(spec, prompts, spec.warmup, count)
    tally = Tally()
    state = {"next": 0}
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + spec.duration_s if not spec.requests and spec.duration_s else 0.0
    await asyncio.gather(*(_worker(spec, queue, tally, deadline, state) for _ in range(spec.concurrency)))
    elapsed = time.perf_counter() - started
    out = summarize(tally, elapsed, spec.warmup + state["next"])
    # how much of the machine the load generator itself took while measuring (1.0 = one core)
    out["loadgen_cores"] = round((time.process_time() - cpu_started) / elapsed, 3) if elapsed > 0 else None
    return out


def _pct(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 3) if values else None


def summarize(tally: Tally, elapsed_s: float, sent: int) -> dict[str, Any]:
    """``ok``/``errors`` counts, ``rps`` (ok per second), latency and TTFT percentiles in ms, first errors."""
    lat = [s.latency_ms for s in tally.samples]
    ttft = [s.ttft_ms for s in tally.samples if s.ttft_ms is not None]
    return {
        "ok": len(lat), "errors": len(tally.errors), "sent_total": sent, "elapsed_s": round(elapsed_s, 3),
        "rps": round(len(lat) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99),
        "mean_ms": round(sum(lat) / len(lat), 3) if lat else None,
        "ttft_p50_ms": _pct(ttft, 50), "ttft_p99_ms": _pct(ttft, 99),
        "error_samples": tally.errors[:3],
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        spec = LoadSpec.from_dict(json.load(fh))
    import uvloop

    result = uvloop.run(run(spec))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
