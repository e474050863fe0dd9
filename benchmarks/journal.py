"""Request-path cost of the log writer's write-ahead journal: ``LogWriter.submit`` with the journal off and on.

One command (from the repository root): ``python benchmarks/journal.py`` (``--rows``, ``--rounds``).

Each round times ``--rows`` calls of ``submit`` on a writer that is not started (so the background task never
runs and only the request-path work is timed: ``prepare_row``, the queue, and with the journal on,
``encode_row`` + one ``os.write`` to a file in a temporary directory). Rounds alternate off/on so drift on a
shared machine hits both; the median round is reported, and the parts of the journal's cost are timed alone.
The garbage collector is off while a round runs: ``--rows`` rows held in the queue (in the gateway it is drained
every 0.5 s) make its pauses vary by about 3 us/row between rounds, as much as the cost being measured.
The row is shaped like the chat route's (two candidates, one attempt, flags), without prompt or answer text.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.settings import Settings
from gateway.store import LogWriter, make_engine
from gateway.store.db import dumps_json
from gateway.store.spool import encode_row


def chat_row(i: int) -> dict[str, Any]:
    return {
        "id": f"{i:032x}", "created_at": datetime.now(UTC), "model_requested": "auto", "stream": i % 2 == 0,
        "prompt_text": None, "pool": "auto", "router": "knn", "router_version": "v3", "key_id": "k1",
        "flags": {"cost": 0.5, "latency": 0.0}, "backend": "cheap", "status": "ok", "http_status": 200,
        "candidates": [
            {"backend": "cheap", "quality": 0.61, "utility": 0.55, "expected_cost_usd": 1.5e-6},
            {"backend": "strong", "quality": 0.93, "utility": 0.41, "expected_cost_usd": 3.1e-4},
        ],
        "attempts": [{"backend": "cheap", "status": 200, "error": None, "latency_ms": 41.5}],
        "prompt_tokens": 11, "completion_tokens": 22, "cost_usd": 1.23e-4, "latency_ms": 42.3, "ttft_ms": 10.5,
        "error_type": None, "error_message": None, "response_text": None,
    }


async def time_submits(rows: list[dict[str, Any]], journal: bool, work: Path) -> float:
    """Seconds for ``len(rows)`` submits on a fresh writer (not started: nothing but the request path runs)."""
    spool = Path(tempfile.mkdtemp(dir=work))
    settings = Settings(database_url=f"sqlite+aiosqlite:///{work}/bench.db", spool_dir=spool,
                        log_queue_size=len(rows) + 1, log_batch_size=len(rows) + 1, log_journal=journal)
    engine = make_engine(settings.database_url)
    writer = LogWriter(engine, settings)
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for row in rows:
            writer.submit(row)
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    assert writer.queue_depth == len(rows)
    if journal:
        assert writer.journal is not None and writer.journal.unjournaled_rows == 0
        assert sum(f.stat().st_size for f in spool.glob("journal-*.jsonl")) > 0
    await engine.dispose()
    return elapsed


def parts(row: dict[str, Any], n: int, work: Path) -> dict[str, float]:
    """Microseconds per row of the journal's pieces alone (and of the json encoder it no longer uses first)."""
    line = encode_row(row)
    fd = os.open(work / "parts.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        write = timeit.timeit(lambda: os.write(fd, line), number=n)
    finally:
        os.close(fd)
    return {"encode_row (orjson)": timeit.timeit(lambda: encode_row(row), number=n) / n * 1e6,
            "json encoder (before)": timeit.timeit(lambda: dumps_json(row), number=n) / n * 1e6,
            "os.write": write / n * 1e6, "line bytes": float(len(line))}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = [chat_row(i) for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for journal in (False, True):
                times[journal].append(await time_submits(rows, journal, work))
        off, on = (statistics.median(times[j]) / args.rows * 1e6 for j in (False, True))
        print(f"submit, {args.rows} rows x {args.rounds} rounds (median round), us/row:")
        print(f"  journal off {off:6.2f}   journal on {on:6.2f}   cost of the journal {on - off:+.2f} "
              f"({on / off:.2f}x submit)")
        print("  parts: " + ", ".join(f"{k} {v:.2f}" for k, v in parts(rows[0], args.rows, work).items()))


if __name__ == "__main__":
    asyncio.run(main())
