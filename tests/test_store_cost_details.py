"""Migration 0006: token details, response-cache hits and session affinity on ``requests``.

Up and down on SQLite and PostgreSQL with rows and labels in the tables: older rows read as no cached or
reasoning tokens, no cache hit and no session; the downgrade keeps every request row and every label.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from gateway.store import LogWriter, current_revision, downgrade, make_engine, upgrade
from tests.test_store_propensity import _execute, _plain_request
from tests.test_store_writer import fetch, make_row, migrated, settings_for

NEW_COLUMNS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens", "cache", "cache_saved_usd", "session_id",
               "affinity")


async def test_0006_gives_older_rows_zero_details_and_its_downgrade_keeps_rows_and_labels(db_url: str) -> None:
    await asyncio.to_thread(upgrade, db_url, "0005")
    rid = "c" * 32
    await _execute(db_url, _plain_request(rid), text(
        f"INSERT INTO feedback (request_id, source, score, created_at, updated_at) VALUES ('{rid}', 'user', 0.5, "
        "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    await asyncio.to_thread(upgrade, db_url, "0006")
    assert current_revision(db_url) == "0006"
    [old] = await _execute(db_url, text(f"SELECT {', '.join(NEW_COLUMNS)} FROM requests"))
    assert old == {"cached_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "cache": None,
                   "cache_saved_usd": 0.0, "session_id": None, "affinity": False}

    await asyncio.to_thread(downgrade, db_url, "0005")
    assert current_revision(db_url) == "0005"
    [row] = await _execute(db_url, text("SELECT * FROM requests"))
    assert row["id"] == rid and not set(NEW_COLUMNS) & set(row)
    assert await _execute(db_url, text("SELECT request_id, score FROM feedback")) == [{"request_id": rid,
                                                                                        "score": 0.5}]
    await asyncio.to_thread(upgrade, db_url)
    assert current_revision(db_url) == "0006"


async def test_a_row_with_token_details_and_a_session_survives_the_journal(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    killed = LogWriter(engine, settings_for(tmp_path, url))
    row = make_row(5, cached_tokens=9, cache_write_tokens=2, reasoning_tokens=17, cache="semantic",
                   cache_saved_usd=0.0042, session_id="s" * 64, affinity=True)
    killed.submit(row)  # journaled, never written: the process dies here
    second = LogWriter(engine, settings_for(tmp_path, url))
    await second.start()
    await second.flush()
    await second.stop()
    await engine.dispose()
    assert await fetch(url) == [row]
