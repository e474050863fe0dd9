"""Reading log rows back in tests (a fresh engine each time, like an operator's query would)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine


def fetch_rows(url: str) -> list[dict[str, Any]]:
    from gateway.store.models import Request

    async def run() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(select(Request.__table__))
                return [dict(r._mapping) for r in result]
        finally:
            await engine.dispose()

    # a thread of its own, so async tests (whose loop is running) can call this too
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def wait_rows(url: str, n: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Poll until at least ``n`` rows exist (the writer is asynchronous; a loaded machine may take seconds);
    return all rows."""
    deadline = time.monotonic() + timeout_s
    rows = fetch_rows(url)
    while len(rows) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = fetch_rows(url)
    return rows
