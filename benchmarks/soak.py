"""Bounded soak: hundreds of concurrent streaming clients against ``poolgate serve`` over the replay pool.

    python -m benchmarks.soak --clients 300 --duration 180                      # by hand, a few minutes
    python -m benchmarks.soak --clients 200 --duration 20 --database-url URL --json   # what the test runs

It starts ``poolgate serve`` with the demo pool (which starts the replay backend: real recorded GSM8K answers,
streamed at ``--ms-per-token``), then ``--clients`` coroutines each send streaming requests back to back until
``--duration`` is over, checking that every stream ends with ``[DONE]`` and carries no error event. It samples
the gateway's resident memory every second and, at the end, counts the log rows of the requests it made.

Figures are ratios within the run: rows logged / requests answered, RSS at the end / RSS after warm-up (the
median of the first and the last fifth of the sampled window, so one GC pause moves neither).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from benchmarks.common import Child, free_port, percentile

SAMPLE = Path(__file__).resolve().parent.parent / "gateway" / "replay" / "sample" / "gsm8k_sample.jsonl"


@dataclass
class Tally:
    ids: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def one_stream(session: Any, url: str, prompt: str, tally: Tally) -> None:
    """One streaming request; a non-200, an error event, a missing [DONE] or an exception is an error."""
    body = {"model": "auto", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    try:
        async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
            request_id = r.headers.get("x-poolgate-request-id")
            if r.status != 200:
                tally.errors.append(f"HTTP {r.status}: {(await r.read())[:200]!r}")
                return
            async for chunk in r.content.iter_any():
                if first is None:
                    first = time.perf_counter()
                if b'"error"' in chunk:
                    tally.errors.append(f"error event: {chunk[:200]!r}")
                tail = (tail + chunk)[-64:]
    except Exception as exc:  # a soak counts every failure, whatever it is
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if not tail.rstrip().endswith(b"data: [DONE]"):
        tally.errors.append(f"stream without [DONE]: ...{tail!r}")
        return
    tally.ids.append(request_id or "")
    tally.latency_ms.append((time.perf_counter() - started) * 1000)
    tally.ttft_ms.append(((first or time.perf_counter()) - started) * 1000)


async def drive(port: int, clients: int, duration_s: float, prompts: list[str]) -> Tally:
    """``clients`` coroutines sending streams back to back until ``duration_s`` is over."""
    import aiohttp

    tally = Tally()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    deadline = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                await one_stream(session, url, prompts[i % len(prompts)], tally)
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return tally


class RssSampler(threading.Thread):
    """Samples one process's RSS (MiB) every ``every_s`` seconds until stopped."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.wait(self.every_s):
            try:
                self.samples.append((time.monotonic() - start, self.process.memory_info().rss / 2**20))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def rss_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, float]:
    """Medians of the first and last fifth of the post-warm-up window, their difference and ratio, the max."""
    window = [mb for t, mb in samples if t >= warmup_s] or [mb for _, mb in samples]
    fifth = max(1, len(window) // 5)
    start, end = statistics.median(window[:fifth]), statistics.median(window[-fifth:])
    step = max(1, len(samples) // 12)  # the curve's shape, to tell a plateau from a leak
    trace = [[round(t), round(mb, 1)] for t, mb in samples[::step]]
    return {"after_warmup_mb": round(start, 1), "end_mb": round(end, 1), "max_mb": round(max(window), 1),
            "growth_mb": round(end - start, 1), "end_over_start": round(end / start, 3), "samples": len(window),
            "trace_s_mb": trace}


def count_rows(database_url: str, ids: list[str], timeout_s: float = 60.0) -> dict[str, int]:
    """Rows of this run's requests, waiting for the asynchronous writer; duplicates cannot exist (primary key)."""
    from sqlalchemy import select

    from gateway.store import make_engine
    from gateway.store.models import Request

    async def fetch() -> set[str]:
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                return {r[0] for r in await conn.execute(select(Request.id))}
        finally:
            await engine.dispose()

    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        stored = asyncio.run(fetch())
        if wanted <= stored or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {"logged": len(wanted & stored), "missing": len(wanted - stored), "other_rows": len(stored - wanted)}


def pct(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


def soak(clients: int, duration_s: float, database_url: str | None, ms_per_token: float,
         workdir: Path) -> dict[str, Any]:
    from gateway.store import upgrade
    from gateway.store.db import redact

    database_url = database_url or f"sqlite+aiosqlite:///{workdir}/soak.db"
    upgrade(database_url)
    port, replay_port = free_port(), free_port()
    env = {"POOLGATE_DATABASE_URL": database_url, "POOLGATE_REPLAY_PORT": str(replay_port),
           "POOLGATE_REPLAY_MS_PER_TOKEN": str(ms_per_token), "POOLGATE_REPLAY_LATENCY_MS": "20",
           "POOLGATE_SPOOL_DIR": str(workdir / "spool"), "HF_HUB_OFFLINE": "1"}
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_")}
    gateway = Child("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                    workdir / "gateway.log", cwd=workdir)
    gateway.env = {**env_clean, **env}  # not the caller's other POOLGATE_* settings (a pool file, say)
    prompts = [orjson.loads(line)["prompt"] for line in SAMPLE.read_text().splitlines()]
    gateway.start()
    try:
        gateway.wait_http(f"http://127.0.0.1:{port}/health/ready", timeout_s=120)
        assert gateway.proc is not None
        sampler = RssSampler(gateway.proc.pid)
        sampler.start()
        started = time.monotonic()
        tally = asyncio.run(drive(port, clients, duration_s, prompts))
        elapsed = time.monotonic() - started
        sampler.stop()
        rows = count_rows(database_url, tally.ids)
    finally:
        gateway.stop()
    return {
        "clients": clients, "duration_s": round(elapsed, 1), "database": redact(database_url),
        "ms_per_token": ms_per_token, "requests": len(tally.ids) + len(tally.errors), "completed": len(tally.ids),
        "errors": len(tally.errors), "error_samples": tally.errors[:5],
        "streams_per_s": round(len(tally.ids) / elapsed, 1),
        "latency_ms": {"p50": pct(tally.latency_ms, 50), "p99": pct(tally.latency_ms, 99)},
        "ttft_ms": {"p50": pct(tally.ttft_ms, 50), "p99": pct(tally.ttft_ms, 99)},
        "rss": rss_summary(sampler.samples, warmup_s=min(10.0, duration_s / 5)),
        "rows": {**rows, "logged_over_completed": round(rows["logged"] / max(1, len(tally.ids)), 4)},
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300, help="concurrent streaming clients")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--database-url", default=None, help="log store (migrated here); default SQLite in a tempdir")
    parser.add_argument("--ms-per-token", type=float, default=1.0, help="replay streaming pace")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poolgate-soak-") as tmp:
        result = soak(args.clients, args.duration, args.database_url, args.ms_per_token, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>14}: {value}")


if __name__ == "__main__":
    main()
