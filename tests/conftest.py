"""Shared fixtures: real gateways and fake backends on loopback, databases from the environment."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.servers import FakeBackend, ServerThread

PG_SKIP_REASON = (
    "POOLGATE_TEST_POSTGRES_URL is not set (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test): "
    "PostgreSQL variant of the log store tests skipped"
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def postgres_url() -> str | None:
    return os.environ.get("POOLGATE_TEST_POSTGRES_URL") or None


def redis_url() -> str | None:
    return os.environ.get("POOLGATE_TEST_REDIS_URL") or None


requires_postgres = pytest.mark.skipif(
    postgres_url() is None, reason="POOLGATE_TEST_POSTGRES_URL is not set (no PostgreSQL to test against)"
)
requires_redis = pytest.mark.skipif(
    redis_url() is None, reason="POOLGATE_TEST_REDIS_URL is not set (no Redis to test against)"
)


def backend_yaml(name: str, url: str, **attrs: Any) -> str:
    lines = [f"  - name: {name}", f"    base_url: {url}/v1", f"    model: {name}-upstream"]
    lines += [f"    {k}: {v}" for k, v in attrs.items()]
    return "\n".join(lines)


@pytest.fixture
def fake_backends() -> Iterator[Callable[..., tuple[FakeBackend, ServerThread]]]:
    """Start fake backends: ``start(name, mode="ok")`` -> (backend, server)."""
    with ExitStack() as stack:

        def start(name: str, mode: str = "ok", **kw: Any) -> tuple[FakeBackend, ServerThread]:
            fb = FakeBackend(name, mode, **kw)
            return fb, stack.enter_context(ServerThread(fb.app))

        yield start


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start a real gateway over a pool YAML text: ``gateway(pool_yaml, **settings)`` -> server."""
    from gateway.app import create_app
    from gateway.pools import parse_pool_file
    from gateway.settings import Settings
    from gateway.store import upgrade

    with ExitStack() as stack:

        def start(pool_yaml: str, **overrides: Any) -> ServerThread:
            overrides.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path}/gw.db")
            overrides.setdefault("spool_dir", tmp_path / "spool")
            overrides.setdefault("log_flush_interval_s", 0.05)
            settings = Settings(**overrides)
            upgrade(settings.database_url)
            app = create_app(settings, parse_pool_file(pool_yaml, "test-pool.yaml"))
            server = stack.enter_context(ServerThread(app))
            server.settings = settings  # type: ignore[attr-defined]
            return server

        yield start


def _admin(base_url: str, statement: str) -> None:
    async def run() -> None:
        admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await admin.dispose()

    # a thread of its own, so fixtures of async tests can call it too
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


def journal_files(spool_dir: Path) -> list[Path]:
    """A spool directory's write-ahead journal files, oldest first."""
    from gateway.store.journal import JOURNAL_GLOB

    return sorted(spool_dir.glob(JOURNAL_GLOB))


def journaled_rows(spool_dir: Path) -> list[dict[str, Any]]:
    """The rows in a spool directory's journal files, in journal order.

    A file the gateway deletes between the glob and the read (its rows just written) is skipped."""
    from gateway.store.spool import read_segment

    rows = []
    for path in journal_files(spool_dir):
        try:
            rows += read_segment(path)
        except FileNotFoundError:
            continue
    return rows


def journaled_ids(spool_dir: Path) -> list[str]:
    """Request ids of the rows in a spool directory's journal files, in journal order."""
    return [row["id"] for row in journaled_rows(spool_dir)]


def drop_redis_prefix(url: str, prefix: str) -> None:
    """Delete a test's Redis keys (everything under its ``prefix``)."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


async def hammer(urls: list[str], secret: str, n: int, max_tokens: int = 3) -> list[int]:
    """``n`` concurrent chat requests to pool ``premium``, alternating between ``urls``; their status codes."""
    import httpx

    body = {"model": "premium", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": max_tokens}
    headers = {"authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(timeout=30) as client:
        calls = [client.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body, headers=headers)
                 for i in range(n)]
        return [r.status_code for r in await asyncio.gather(*calls)]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """URL of a new, empty PostgreSQL database (dropped after the test)."""
    base = os.environ.get("POOLGATE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip(PG_SKIP_REASON)
    name = f"poolgate_store_{uuid.uuid4().hex[:12]}"
    _admin(base, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg(pg_database: str) -> Iterator[tuple[str, Any, str]]:
    """(direct URL, proxy, URL through the proxy) of a fresh, migrated PostgreSQL database: a test cuts, resets
    or blackholes the proxy (``tests/tcpproxy.py``) to take the database away without stopping the service."""
    from gateway.store import upgrade
    from tests.tcpproxy import TcpProxy

    upgrade(pg_database)
    url = make_url(pg_database)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield pg_database, proxy, url.set(port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, unmigrated database: a SQLite file under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/logs/store.db"
    return str(request.getfixturevalue("pg_database"))
