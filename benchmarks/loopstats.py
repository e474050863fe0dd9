"""``poolgate serve`` with its garbage-collector pauses and event-loop stalls recorded (``overhead.py --profile``).

A sampling profiler shows where CPU time goes, not when the event loop stops: a 50 ms stall spread over many
frames (a full garbage collection runs inside whatever allocation triggered it) is invisible in a flame graph
and is exactly what makes a p99 at concurrency 32. So this wrapper runs the gateway unchanged and records, with
wall-clock times, every collection's generation and duration (``gc.callbacks``) and the lag of a 1 ms timer on
the event loop, into ``$LOOPSTATS_OUT`` (one JSON line a second with what is new, so the recording costs little
beyond the timer's 1,000 wake-ups a second). ``window`` reads one phase back.

Run as a script, ``python benchmarks/loopstats.py serve --pool-file ...`` (same options as ``poolgate serve``),
with the tree to measure first on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

_gc: list[tuple[float, int, float]] = []  # (wall time at the end, generation, pause ms)
_lags: list[tuple[float, float]] = []  # (wall time, lag of a 1 ms sleep in ms)
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc.append((time.time(), int(info["generation"]), (time.perf_counter() - _gc_started[0]) * 1000))


async def _watch(out: Path) -> None:
    last_dump = time.monotonic()
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        _lags.append((time.time(), (time.perf_counter() - started) * 1000 - 1.0))
        if time.monotonic() - last_dump > 1.0:
            last_dump = time.monotonic()
            line = json.dumps({"gc": _gc, "lags": _lags}) + "\n"
            _gc.clear()
            _lags.clear()
            with out.open("a") as fh:
                fh.write(line)


def window(path: Path, start: float, end: float) -> dict[str, Any]:
    """GC pauses and loop lags between wall times ``start`` and ``end``: counts, sums, maxima, lag percentiles."""
    data: dict[str, list[Any]] = {"gc": [], "lags": []}
    try:
        for line in path.read_text().splitlines():
            chunk = json.loads(line)
            data["gc"] += chunk["gc"]
            data["lags"] += chunk["lags"]
    except (OSError, ValueError):
        return {}
    lags = sorted(lag for t, lag in data["lags"] if start <= t <= end)
    out: dict[str, Any] = {"lag_samples": len(lags)}
    if lags:
        out |= {"lag_p50_ms": round(lags[len(lags) // 2], 2), "lag_p99_ms": round(lags[int(len(lags) * 0.99)], 2),
                "lag_max_ms": round(lags[-1], 1), "stalls_over_10ms": sum(lag > 10 for lag in lags)}
    for gen in (0, 1, 2):
        pauses = [ms for t, g, ms in data["gc"] if g == gen and start <= t <= end]
        out[f"gc{gen}"] = {"count": len(pauses), "sum_ms": round(sum(pauses), 1),
                           "max_ms": round(max(pauses), 1) if pauses else 0.0}
    return out


def render(label: str, w: dict[str, Any]) -> str:
    if not w:
        return f"loop {label}: no data"
    gcs = ", ".join(f"gen{g} {w[f'gc{g}']['count']}x sum {w[f'gc{g}']['sum_ms']} max {w[f'gc{g}']['max_ms']} ms"
                    for g in (0, 1, 2))
    return (f"loop {label}: 1 ms timer lag p50 {w.get('lag_p50_ms')} p99 {w.get('lag_p99_ms')} max "
            f"{w.get('lag_max_ms')} ms, {w.get('stalls_over_10ms')} stalls > 10 ms; GC {gcs}")


def main() -> None:
    # run as a script, this folder is first on sys.path, and its routers.py would hide the routers package
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import uvicorn.server

    out = Path(os.environ["LOOPSTATS_OUT"])
    gc.callbacks.append(_on_gc)
    serve = uvicorn.server.Server.serve

    async def serve_watched(self: uvicorn.server.Server, sockets: Any = None) -> None:
        task = asyncio.get_running_loop().create_task(_watch(out))
        try:
            await serve(self, sockets)
        finally:
            task.cancel()

    uvicorn.server.Server.serve = serve_watched  # type: ignore[method-assign]
    sys.argv = ["poolgate", *sys.argv[1:]]
    runpy.run_module("gateway.cli", run_name="__main__")


if __name__ == "__main__":
    main()
