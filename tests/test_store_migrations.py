"""Alembic migrations, engines and pings of the log store, on SQLite and (when configured) PostgreSQL.

The ``db_url`` fixture (tests/conftest.py) gives each PostgreSQL test its own
freshly created database, dropped afterwards, so the tests can re-run and run beside other suites.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select, text

from gateway.store import Feedback, Request, StoreError, current_revision, downgrade, make_engine, ping, upgrade
from gateway.store.db import head_revision

DEAD_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"  # port 1: connection refused at once


async def _schema(url: str) -> dict[str, Any]:
    """Tables and, per table, index names of the database at ``url``."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync: Any) -> dict[str, Any]:
                insp = inspect(sync)
                return {t: sorted(i["name"] for i in insp.get_indexes(t)) for t in insp.get_table_names()}

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_upgrade_head_creates_tables_and_downgrade_base_drops_them(db_url: str) -> None:
    # Alembic's async env.py cannot nest in this test's loop, so upgrade must hop to a worker thread itself.
    upgrade(db_url)
    schema = await _schema(db_url)
    assert schema["requests"] == ["ix_requests_created_at", "ix_requests_key_id", "ix_requests_pool"]
    assert "feedback" in schema
    assert current_revision(db_url) == head_revision()

    downgrade(db_url, "base")
    schema = await _schema(db_url)
    assert "requests" not in schema and "feedback" not in schema
    assert current_revision(db_url) is None

    upgrade(db_url, "head")  # and back up again: downgrade left nothing behind that blocks a re-create
    assert "requests" in await _schema(db_url)


async def test_models_match_the_migrated_schema(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from gateway.store.models import Base

    await asyncio.to_thread(upgrade, db_url)
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_datetimes_come_back_timezone_aware_utc_and_json_intact(db_url: str) -> None:
    await asyncio.to_thread(upgrade, db_url)
    plus_two = datetime(2025, 3, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(Request),
                [
                    {
                        "id": "a" * 32,
                        "created_at": plus_two,
                        "model_requested": "auto",
                        "candidates": [{"backend": "x", "quality": 0.5, "utility": 0.25, "expected_cost_usd": 1e-5}],
                        "attempts": [],
                        "status": "ok",
                        "http_status": 200,
                        "stream": True,
                        "latency_ms": 12.5,
                        "prompt_tokens": 3,
                        "completion_tokens": 4,
                        "cost_usd": 0.001,
                        "flags": None,
                        "shadow": {"knn": "strong"},
                    }
                ],
            )
            await conn.execute(
                insert(Feedback),
                [{"request_id": "a" * 32, "score": 1.0, "created_at": plus_two, "updated_at": plus_two}],
            )
        async with engine.connect() as conn:
            row = (await conn.execute(select(Request))).one()._mapping
    finally:
        await engine.dispose()
    assert row["created_at"] == plus_two and row["created_at"].tzinfo == UTC
    assert row["created_at"].hour == 12
    assert row["candidates"][0]["expected_cost_usd"] == 1e-5
    assert row["flags"] is None and row["shadow"] == {"knn": "strong"} and row["stream"] is True


async def test_feedback_needs_an_existing_request_on_both_databases(db_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    await asyncio.to_thread(upgrade, db_url)
    now = datetime.now(UTC)
    engine = make_engine(db_url)
    try:
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    insert(Feedback), [{"request_id": "f" * 32, "score": 0.5, "created_at": now, "updated_at": now}]
                )
    finally:
        await engine.dispose()


async def test_ping_is_true_for_a_live_database_and_false_for_a_dead_one(tmp_path: Path) -> None:
    live = make_engine(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    dead = make_engine(DEAD_PG_URL)
    try:
        assert await ping(live) is True
        assert await ping(dead) is False
    finally:
        await live.dispose()
        await dead.dispose()


async def test_sqlite_engine_creates_parent_dir_and_uses_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/a/b/c.db")
    try:
        async with engine.connect() as conn:
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar()
    finally:
        await engine.dispose()
    assert (tmp_path / "a" / "b" / "c.db").exists()
    assert journal == "wal" and synchronous == 1  # 1 = NORMAL


def test_plain_driver_urls_get_the_async_driver() -> None:
    assert make_engine("postgresql://u@h/db").dialect.driver == "asyncpg"
    assert make_engine("sqlite:///:memory:").dialect.driver == "aiosqlite"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (DEAD_PG_URL, "ConnectionRefusedError"),
        ("not a url", "invalid database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
    ],
)
def test_upgrade_of_unusable_url_raises_one_line_store_error(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as info:
        upgrade(url)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_first_revision_is_0001_and_head_is_reachable_from_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/steps.db"
    upgrade(url, "0001")
    assert current_revision(url) == "0001"
    upgrade(url)
    assert current_revision(url) == head_revision()


def test_unknown_revision_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Can't locate revision"):
        upgrade(f"sqlite+aiosqlite:///{tmp_path}/r.db", "nope")
