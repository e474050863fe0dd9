"""Migration 0005: a request row's propensity and policy, and feedback labels keyed by (request, source).

Up and down on SQLite and PostgreSQL with data in the tables; a row with a propensity survives the journal of a
killed writer and the spool of a database outage unchanged.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from gateway.store import LogWriter, current_revision, downgrade, make_engine, upgrade
from gateway.store.models import Feedback
from tests.test_store_writer import DEAD_PG_URL, fetch, make_row, migrated, settings_for

NOW = datetime(2026, 1, 2, tzinfo=UTC)


async def _execute(url: str, *statements: Any) -> list[dict[str, Any]]:
    """Run the statements in one transaction; the rows of the last one."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            result = None
            for statement in statements:
                result = await conn.execute(statement)
            return [dict(r._mapping) for r in result] if result is not None and result.returns_rows else []
    finally:
        await engine.dispose()


def _plain_request(rid: str) -> Any:
    # the 0004 schema's columns only, as raw SQL (the models are at head)
    return text(
        "INSERT INTO requests (id, created_at, model_requested, candidates, attempts, status, http_status, stream,"
        " latency_ms, prompt_tokens, completion_tokens, usage_estimated, cost_usd)"
        f" VALUES ('{rid}', '2026-01-01 00:00:00', 'auto', '[]', '[]', 'ok', 200, false, 0, 0, 0, false, 0)"
    )


async def test_0005_keeps_old_labels_as_user_and_lets_a_judge_label_coexist(db_url: str) -> None:
    await asyncio.to_thread(upgrade, db_url, "0004")
    rid = "b" * 32
    await _execute(db_url, _plain_request(rid), text(
        f"INSERT INTO feedback (request_id, score, created_at, updated_at) VALUES ('{rid}', 0.25, "
        "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    await asyncio.to_thread(upgrade, db_url, "0005")
    assert current_revision(db_url) == "0005"

    [old] = await _execute(db_url, text("SELECT propensity, policy FROM requests"))
    assert old == {"propensity": None, "policy": None}  # unknown for rows logged before exploration existed
    judged = {"request_id": rid, "source": "judge", "score": 1.0, "created_at": NOW, "updated_at": NOW}
    await _execute(db_url, insert(Feedback).values(**judged))
    labels = await _execute(db_url, select(Feedback.source, Feedback.score).order_by(Feedback.source))
    assert labels == [{"source": "judge", "score": 1.0}, {"source": "user", "score": 0.25}]

    with pytest.raises(IntegrityError):  # still one label per (request, source)
        await _execute(db_url, insert(Feedback).values(**judged))
    with pytest.raises(IntegrityError):  # and only the two known sources
        await _execute(db_url, insert(Feedback).values(**{**judged, "source": "robot"}))

    await asyncio.to_thread(downgrade, db_url, "0004")
    assert current_revision(db_url) == "0004"
    rows = await _execute(db_url, text("SELECT request_id, score FROM feedback"))
    assert rows == [{"request_id": rid, "score": 0.25}]  # the human label stays, the judge's is dropped
    columns = await _execute(db_url, text("SELECT * FROM requests"))
    assert "propensity" not in columns[0] and "policy" not in columns[0]
    await asyncio.to_thread(upgrade, db_url, "0005")  # and up again
    assert current_revision(db_url) == "0005"


async def test_a_row_with_a_propensity_survives_the_journal_of_a_killed_writer(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    killed = LogWriter(engine, settings_for(tmp_path, url))
    row = make_row(7, propensity=0.05 / 3, policy="explore:softmax")
    killed.submit(row)  # journaled, never written: the process dies here
    second = LogWriter(engine, settings_for(tmp_path, url))
    await second.start()
    await second.flush()
    await second.stop()
    await engine.dispose()
    [stored] = await fetch(url)
    assert stored["propensity"] == 0.05 / 3 and stored["policy"] == "explore:softmax"
    assert stored == row


async def test_a_row_with_a_propensity_survives_the_spool_of_an_outage(db_url: str, tmp_path: Path) -> None:
    dead = make_engine(DEAD_PG_URL)
    writer = LogWriter(dead, settings_for(tmp_path, DEAD_PG_URL))
    await writer.start()
    row = make_row(3, propensity=0.975, policy="router")
    writer.submit(row)
    await writer.stop()  # the database is down: the row is spooled
    await dead.dispose()
    url = await migrated(db_url)
    engine = make_engine(url)
    replayer = LogWriter(engine, settings_for(tmp_path, url))
    await replayer.start()
    await replayer.flush()
    await replayer.stop()
    await engine.dispose()
    assert await fetch(url) == [row]


async def test_a_human_label_wins_over_the_judge_s_and_a_request_counts_once(db_url: str, tmp_path: Path) -> None:
    from gateway.store.repository import LogRepository

    url = await migrated(db_url)
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(2):
        writer.submit(make_row(i, propensity=0.25))
    await writer.flush()
    await writer.stop()
    repo = LogRepository(engine)
    rid0, rid1 = make_row(0)["id"], make_row(1)["id"]
    await repo.upsert_feedback(rid0, 1.0, None, "judge-model", source="judge")
    await repo.upsert_feedback(rid0, 0.0, "wrong", None)  # the human disagrees
    await repo.upsert_feedback(rid1, 0.5, None, "judge-model", source="judge")  # judged only
    rows, _ = await repo.labelled("demo", None, None)
    stored = await repo.feedback(rid0)
    await engine.dispose()
    assert [(r.score, r.propensity) for r in rows] == [(0.0, 0.25), (0.5, 0.25)]  # one row each, time order
    assert stored is not None and stored["source"] == "user" and stored["score"] == 0.0
