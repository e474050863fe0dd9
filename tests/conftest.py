"""Shared fixtures: real gateways and fake backends on loopback, databases from the environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.servers import FakeBackend, ServerThread

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
