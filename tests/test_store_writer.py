"""LogWriter and its disk spool: batching, idempotency by request id, outages, restarts, bounds."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gateway.settings import Settings
from gateway.store import LogWriter, Request, make_engine, upgrade
from gateway.store.db import dumps_json
from gateway.store.spool import Spool, decode_row, encode_row, read_segment
from tests import test_store_migrations

DEAD_PG_URL = test_store_migrations.DEAD_PG_URL


def make_row(i: int, **overrides: Any) -> dict[str, Any]:
    """A request row like the gateway submits (every column the gateway fills)."""
    row: dict[str, Any] = {
        "id": f"{i:032x}",
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(seconds=i),
        "pool": "demo",
        "model_requested": "auto",
        "router": "knn",
        "router_version": "v1",
        "key_id": "k1",
        "flags": {"cost": 0.5},
        "candidates": [
            {"backend": "cheap", "quality": 0.6, "utility": 0.55, "expected_cost_usd": 1.5e-6},
            {"backend": "strong", "quality": 0.9, "utility": 0.4, "expected_cost_usd": 3e-4},
        ],
        "backend": "cheap",
        "attempts": [{"backend": "cheap", "status": 200, "error": None, "latency_ms": 41.5}],
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "error_message": None,
        "stream": i % 2 == 0,
        "latency_ms": 42.25,
        "ttft_ms": 10.5,
        "prompt_tokens": 11,
        "completion_tokens": 22,
        "usage_estimated": False,
        "cost_usd": 0.000123,
        "prompt_text": "what is 2+2?",
        "response_text": "4",
        "shadow": {"graph": "strong"},
        "propensity": 0.4375,  # an explored row's probability
        "policy": "explore:epsilon",
        "cached_tokens": 4,  # of the 11 prompt tokens
        "cache_write_tokens": 0,
        "reasoning_tokens": 6,  # of the 22 completion tokens
        "cache": None,
        "cache_saved_usd": 0.0,
        "session_id": "conv-1",
        "affinity": False,
    }
    row.update(overrides)
    return row


def settings_for(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "spool_dir": tmp_path / "spool",
        "log_flush_interval_s": 0.05,
        "log_batch_size": 200,
        "store_prompts": True,
        "store_responses": True,
    }
    values.update(overrides)
    return Settings(**values)


async def fetch(url: str) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(Request.__table__).order_by(Request.id))]
    finally:
        await engine.dispose()


async def count(url: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(Request))).scalar_one())
    finally:
        await engine.dispose()


async def migrated(url: str) -> str:
    await asyncio.to_thread(upgrade, url)
    return url


async def test_n_submitted_rows_become_exactly_n_rows(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    await writer.start()
    for i in range(450):  # three batches of at most 200
        writer.submit(make_row(i))
    deadline = time.monotonic() + 10
    while await count(url) < 450 and time.monotonic() < deadline:  # the background task alone writes them
        await asyncio.sleep(0.05)
    await writer.stop()
    await engine.dispose()
    rows = await fetch(url)
    assert len(rows) == 450 and writer.queue_depth == 0
    assert rows[7] == make_row(7)


async def test_resubmitting_a_request_id_does_not_duplicate_it(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(10):
        writer.submit(make_row(i))
    await writer.flush()
    for i in range(5, 15):  # 5 already stored, 5 new; plus a duplicate inside one batch
        writer.submit(make_row(i, backend="changed"))
    writer.submit(make_row(14))
    await writer.flush()
    await writer.stop()
    await engine.dispose()
    rows = await fetch(url)
    assert len(rows) == 15
    assert [r["backend"] for r in rows[:10]] == ["cheap"] * 10  # the first write wins


async def test_rows_spooled_while_db_is_down_are_written_once_by_a_restarted_writer(
    db_url: str, tmp_path: Path
) -> None:
    dead = make_engine(DEAD_PG_URL)
    first = LogWriter(dead, settings_for(tmp_path, DEAD_PG_URL))
    await first.start()
    for i in range(30):
        first.submit(make_row(i))
    await first.stop()  # the gateway shuts down during the outage
    submitted_after_stop = make_row(30)
    first.submit(submitted_after_stop)  # late rows after stop go to the spool too
    await dead.dispose()
    assert first.spool.has_rows() and first.spool.size_bytes > 0

    url = await migrated(db_url)
    engine = make_engine(url)
    second = LogWriter(engine, settings_for(tmp_path, url))  # the next process, same spool dir
    await second.start()
    deadline = time.monotonic() + 10
    while await count(url) < 31 and time.monotonic() < deadline:  # replayed at start, no flush needed
        await asyncio.sleep(0.05)
    await second.stop()
    third = LogWriter(engine, settings_for(tmp_path, url))  # a further restart must not write them again
    await third.flush()
    await engine.dispose()

    rows = await fetch(url)
    assert len(rows) == 31
    assert rows[3] == make_row(3)  # datetimes and JSON survived the spool round trip
    assert not second.spool.has_rows() and not list((tmp_path / "spool").glob("segment-*"))


async def test_same_writer_writes_spooled_rows_when_the_database_comes_back(db_url: str, tmp_path: Path) -> None:
    # The database exists but is not migrated yet: inserts fail like an outage, not as bad rows.
    engine = make_engine(db_url)
    writer = LogWriter(engine, settings_for(tmp_path, db_url), retry_interval_s=0.1)
    await writer.start()
    for i in range(25):
        writer.submit(make_row(i))
    await writer.flush()
    assert writer.spool.has_rows() and writer.rejected_rows == 0

    await migrated(db_url)  # the database is back
    deadline = time.monotonic() + 10
    while await count(db_url) < 25 and time.monotonic() < deadline:  # periodic replay, no flush
        await asyncio.sleep(0.05)
    for i in range(25, 30):
        writer.submit(make_row(i))
    await writer.stop()
    await engine.dispose()
    assert len(await fetch(db_url)) == 30
    assert not writer.spool.has_rows()


async def test_full_queue_spills_to_the_spool_and_nothing_is_lost(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/q.db")
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url, log_queue_size=5))
    for i in range(20):  # not started: the queue fills after 5 rows
        writer.submit(make_row(i))
    assert writer.queue_depth == 5 and writer.spool.has_rows()
    await writer.flush()
    await engine.dispose()
    assert len(await fetch(url)) == 20 and writer.queue_depth == 0


async def test_invalid_row_is_rejected_without_blocking_the_rest(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(6):
        writer.submit(make_row(i, model_requested=None) if i == 2 else make_row(i))  # NOT NULL violation
    await writer.flush()
    await writer.stop()
    await engine.dispose()
    assert [r["id"] for r in await fetch(url)] == [make_row(i)["id"] for i in (0, 1, 3, 4, 5)]
    assert writer.rejected_rows == 1
    rejected = read_segment(tmp_path / "spool" / "rejected.jsonl")
    assert [r["id"] for r in rejected] == [make_row(2)["id"]]


async def test_prompt_and_response_text_are_blanked_unless_enabled(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url, store_prompts=False, store_responses=False))
    writer.submit(make_row(1))
    await writer.stop()  # stop without start still writes what was queued
    await engine.dispose()
    [row] = await fetch(url)
    assert row["prompt_text"] is None and row["response_text"] is None and row["backend"] == "cheap"


async def test_partial_rows_get_defaults_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    before = datetime.now(UTC)
    writer.submit(
        {
            "id": "ab" * 16,
            "model_requested": "auto",
            "status": "error",
            "http_status": 503,
            "created_at": "2025-05-05T10:00:00",
            "not_a_column": 1,
        }
    )
    writer.submit({"model_requested": "auto", "status": "ok", "http_status": 200})
    await writer.stop()
    await engine.dispose()
    rows = {r["id"]: r for r in await fetch(url)}
    assert len(rows) == 2
    explicit = rows["ab" * 16]
    assert explicit["created_at"] == datetime(2025, 5, 5, 10, tzinfo=UTC)  # naive ISO taken as UTC
    assert explicit["candidates"] == [] and explicit["prompt_tokens"] == 0 and explicit["flags"] is None
    [generated] = [r for key, r in rows.items() if key != "ab" * 16]
    assert len(generated["id"]) == 32 and generated["created_at"] >= before - timedelta(seconds=1)


def test_spool_line_round_trip_keeps_datetimes_and_nested_json() -> None:
    row = make_row(5, created_at=datetime(2025, 1, 1, 23, 0, tzinfo=timezone(timedelta(hours=-5))))
    back = decode_row(encode_row(row))
    assert back == row and back["created_at"].utcoffset() == timedelta(hours=-5)


def test_spool_line_is_the_same_json_whichever_encoder_writes_it() -> None:
    """encode_row tries orjson first (it runs on the request path, for the journal), json when orjson refuses."""
    odd = {"nan": float("nan"), 3: {"set"}, "big": 1.5e-06}
    fast = make_row(6, flags=odd)
    assert json.loads(encode_row(fast)) == json.loads(dumps_json(fast))  # orjson's line, as json would write it
    refused = make_row(7, flags={**odd, "huge": 2**70})  # past 64 bits: orjson refuses, json takes it
    assert decode_row(encode_row(refused))["flags"] == {"nan": None, "3": ["set"], "big": 1.5e-06, "huge": 2**70}


def test_full_spool_keeps_the_oldest_rows_and_counts_the_dropped(tmp_path: Path) -> None:
    rows = [make_row(i, stream=True) for i in range(14)]  # equal-length lines
    line_bytes = len(encode_row(rows[0]))
    spool = Spool(tmp_path / "s", max_bytes=10 * line_bytes + 5, segment_bytes=3 * line_bytes)
    kept = sum(spool.append([row]) for row in rows[:8]) + spool.append(rows[8:])
    assert kept == 10 and spool.dropped == 4 and spool.size_bytes == 10 * line_bytes
    spool.seal()
    segments = spool.segments()
    assert [r["id"] for seg in segments for r in read_segment(seg)] == [r["id"] for r in rows[:10]]  # oldest kept
    assert [len(read_segment(seg)) for seg in segments] == [3, 3, 4]  # rotated once a segment reached 3 rows

    reopened = Spool(tmp_path / "s", max_bytes=spool.max_bytes)  # a restart sees the same usage
    assert reopened.size_bytes == spool.size_bytes and reopened.append([make_row(99)]) == 0


def test_torn_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    segment = tmp_path / "segment-1.jsonl"
    segment.write_bytes(encode_row(make_row(1)) + encode_row(make_row(2))[:40])
    assert [r["id"] for r in read_segment(segment)] == [make_row(1)["id"]]


async def test_non_finite_scores_in_json_are_stored_as_null(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    nan_candidate = {"backend": "x", "quality": float("nan"), "utility": float("-inf"), "expected_cost_usd": 0.1}
    writer.submit(make_row(1, candidates=[nan_candidate]))
    await writer.stop()
    await engine.dispose()
    [row] = await fetch(url)
    assert row["candidates"] == [{"backend": "x", "quality": None, "utility": None, "expected_cost_usd": 0.1}]
    assert writer.rejected_rows == 0
