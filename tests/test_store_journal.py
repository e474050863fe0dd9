"""The log writer's write-ahead journal: every queued row is on disk until it is durable, so a process that
dies without running shutdown code (SIGKILL) loses none; the next start replays its journal exactly once.

A "killed" writer here is one that is simply abandoned: no ``stop``, no further cycle, as after SIGKILL
(the real signal on a real process is in ``test_reliability_spool.py`` and ``test_scaleout_replicas.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.store import LogWriter, make_engine
from gateway.store.journal import Journal
from gateway.store.spool import Spool, encode_row, read_segment
from gateway.store.writer import PENDING_SHADOW
from tests.conftest import journal_files, journaled_ids
from tests.test_store_writer import DEAD_PG_URL, count, fetch, make_row, migrated, settings_for


def ids(numbers: range | list[int]) -> list[str]:
    return [make_row(i)["id"] for i in numbers]


async def test_each_submitted_row_is_in_the_journal_before_any_write(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/j.db")
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(5):
        writer.submit(make_row(i))
        assert journaled_ids(tmp_path / "spool") == ids(range(i + 1))  # on disk when submit returns
    [journal] = journal_files(tmp_path / "spool")
    assert read_segment(journal)[3] == writer.prepare_row(make_row(3))  # the row as it will be inserted
    assert journal.stat().st_mode & 0o777 == 0o600  # rows may carry prompts
    await writer.stop()
    await engine.dispose()


async def test_journal_is_deleted_once_its_rows_are_committed(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(30):
        writer.submit(make_row(i))
    await writer.flush()
    assert await count(url) == 30 and journal_files(tmp_path / "spool") == []
    writer.submit(make_row(30))  # later rows open a new journal file
    assert journaled_ids(tmp_path / "spool") == ids([30])
    await writer.stop()
    await engine.dispose()
    assert await count(url) == 31
    assert list((tmp_path / "spool").glob("*.jsonl")) == []  # stop leaves no journal and no spool behind


async def test_stop_during_an_outage_moves_rows_to_the_spool_and_leaves_no_journal(tmp_path: Path) -> None:
    dead = make_engine(DEAD_PG_URL)
    writer = LogWriter(dead, settings_for(tmp_path, DEAD_PG_URL))
    await writer.start()
    for i in range(20):
        writer.submit(make_row(i))
    await writer.stop()  # SIGTERM while the database is down
    await dead.dispose()
    spool_dir = tmp_path / "spool"
    assert journal_files(spool_dir) == []
    assert sorted(r["id"] for s in spool_dir.glob("segment-*.jsonl") for r in read_segment(s)) == ids(range(20))


async def test_journal_of_a_killed_writer_is_replayed_exactly_once_on_the_next_start(
    db_url: str, tmp_path: Path
) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    killed = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(10):
        killed.submit(make_row(i))
    await killed.flush()  # 0-9 committed, their journal deleted
    for i in range(10, 40):
        killed.submit(make_row(i))  # 10-39 only in memory and in the journal...
    killed.submit(make_row(5))  # ...with a row already committed: a journal may repeat what a cycle wrote
    assert await count(url) == 10 and len(journaled_ids(tmp_path / "spool")) == 31
    # the process dies here: no stop(), no further cycle

    second = LogWriter(engine, settings_for(tmp_path, url))  # the restarted process, same spool dir
    await second.start()
    assert journal_files(tmp_path / "spool") == []  # adopted as spool segments at once
    deadline = asyncio.get_running_loop().time() + 10
    while await count(url) < 40 and asyncio.get_running_loop().time() < deadline:  # replayed, no flush needed
        await asyncio.sleep(0.05)
    await second.stop()
    third = LogWriter(engine, settings_for(tmp_path, url))  # a further restart finds nothing to replay
    await third.start()
    await third.stop()
    await engine.dispose()
    rows = await fetch(url)
    assert [r["id"] for r in rows] == ids(range(40))  # each row once
    assert rows[20] == make_row(20)  # datetimes and JSON survived the journal
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


async def test_failed_journal_write_never_fails_the_request_and_the_row_is_still_written(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/f.db")
    engine = make_engine(url)
    spool_dir = tmp_path / "spool"
    spool_dir.write_text("a file where the spool directory should be")  # every journal write fails (ENOTDIR)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    for i in range(3):
        writer.submit(make_row(i))  # no exception
    assert writer.journal is not None and writer.journal.unjournaled_rows == 3
    assert writer.queue_depth == 3  # kept in memory, as without a journal
    await writer.flush()
    assert await count(url) == 3

    spool_dir.unlink()  # the disk is usable again: the next cycle's rotation retries
    writer.submit(make_row(3))
    assert journaled_ids(spool_dir) == ids([3]) and writer.journal.unjournaled_rows == 3
    await writer.stop()
    await engine.dispose()
    assert await count(url) == 4 and journal_files(spool_dir) == []


async def test_journal_can_be_turned_off(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/o.db")
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url, log_journal=False))
    writer.submit(make_row(1))
    assert writer.journal is None and not (tmp_path / "spool").exists()
    await writer.stop()
    await engine.dispose()
    assert await count(url) == 1


def test_journal_bytes_count_against_the_spool_bound_only_once_adopted(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(4):
        assert journal.append(make_row(i))
    journaled = sum(len(encode_row(make_row(i))) for i in range(4))
    spool = Spool(tmp_path, max_bytes=journaled - 1)  # a journal of a live process is not spool usage
    assert spool.size_bytes == 0 and not spool.has_rows()

    restarted = Spool(tmp_path, max_bytes=journaled - 1)
    assert Journal(tmp_path).recover(restarted) == 1  # the old one is not ours: taken over, kept past the bound
    assert restarted.size_bytes == journaled and [len(read_segment(s)) for s in restarted.segments()] == [4]
    assert restarted.append([make_row(9)]) == 0 and restarted.dropped == 1  # full: new rows are dropped
    [segment] = restarted.segments()
    restarted.remove(segment)
    assert restarted.size_bytes == 0


def test_rotated_journal_of_a_failed_cycle_is_handed_to_the_spool(tmp_path: Path) -> None:
    journal, spool = Journal(tmp_path), Spool(tmp_path, max_bytes=1 << 20)
    journal.append(make_row(1))
    rotated = journal.rotate()
    journal.append(make_row(2))  # the next file, not part of the failed cycle
    journal.hand_over(rotated, spool)
    assert [[r["id"] for r in read_segment(s)] for s in spool.segments()] == [ids([1])]
    assert journaled_ids(tmp_path) == ids([2])
    assert Journal(tmp_path).recover(spool) == 1  # a new process would take the rest


def provisional(i: int) -> dict[str, Any]:
    """The held version of ``make_row(i)``: its shadow choices are not computed yet."""
    return make_row(i, shadow=PENDING_SHADOW)


def test_held_row_keeps_its_journal_file_past_its_cycle_until_the_last_release(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    held = journal.hold(provisional(1))
    journal.append(make_row(2))
    assert held is not None and journal.hold(provisional(3)) == held  # one open file, two pins
    rotated = journal.rotate()
    journal.append(make_row(4))  # the next cycle's file
    journal.discard(rotated)  # row 2 is durable; rows 1 and 3 still wait for their final versions
    assert held.exists() and journal.pinned_files == 1
    assert journal.recover(Spool(tmp_path, 1 << 20)) == 0  # still this journal's: not a dead process's
    journal.release(held)
    assert held.exists()
    journal.release(held)  # the last pin: deleted now
    assert not held.exists() and journal.pinned_files == 0 and journaled_ids(tmp_path) == ids([4])
    journal.release(held)  # a stray release does nothing

    early = journal.hold(provisional(5))
    assert early is not None
    journal.release(early)  # released within its cycle: the file still holds row 4 and goes with its cycle
    assert early.exists()
    journal.discard(journal.rotate())
    assert journal_files(tmp_path) == []


def test_held_files_go_to_the_spool_on_a_failed_cycle_and_at_close(tmp_path: Path) -> None:
    journal, spool = Journal(tmp_path), Spool(tmp_path, max_bytes=1 << 20)
    outlived = journal.hold(provisional(1))  # its shadows outlive shutdown's drain
    journal.discard(journal.rotate())
    failed = journal.hold(provisional(2))
    journal.hand_over(journal.rotate(), spool)  # a failed cycle: the spool owns the file, the pin ends
    assert [[r["id"] for r in read_segment(s)] for s in spool.segments()] == [ids([2])]
    assert failed is not None and outlived is not None
    journal.release(failed)  # nothing left to release
    journal.close(spool)  # stop: the provisional row is replayed by the next process rather than lost
    assert sorted(r["id"] for s in spool.segments() for r in read_segment(s)) == ids([1, 2])
    assert journal_files(tmp_path) == [] and journal.pinned_files == 0
    journal.release(outlived)  # the final row came after stop (and was spooled): nothing to delete
    assert len(spool.segments()) == 2


async def test_held_rows_are_journaled_not_queued_and_hold_is_a_noop_without_journal(tmp_path: Path) -> None:
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path}/h.db")
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url))
    token = writer.hold(provisional(1))
    assert token is not None and writer.queue_depth == 0
    assert [r["shadow"] for f in journal_files(tmp_path / "spool") for r in read_segment(f)] == [PENDING_SHADOW]
    await writer.flush()
    assert await count(url) == 0 and token.exists()  # not written, and its file outlived the cycle
    writer.submit(make_row(1))
    writer.release(token)
    assert not token.exists()
    await writer.stop()
    assert [r["shadow"] for r in await fetch(url)] == [make_row(1)["shadow"]]

    off = LogWriter(engine, settings_for(tmp_path / "off", url, log_journal=False))
    assert off.hold(provisional(2)) is None and not (tmp_path / "off").exists()
    off.release(None)
    await off.stop()
    await engine.dispose()


async def test_held_rows_of_a_killed_writer_are_replayed_and_final_versions_win(db_url: str, tmp_path: Path) -> None:
    url = await migrated(db_url)
    engine = make_engine(url)
    killed = LogWriter(engine, settings_for(tmp_path, url))
    killed.hold(provisional(1))  # 1: its shadows never finished
    t2 = killed.hold(provisional(2))  # 2: its final row was journaled in a later file, not yet written
    t3 = killed.hold(provisional(3))  # 3: its final row was written before the kill
    killed.submit(make_row(3))
    killed.release(t3)
    killed.submit(make_row(10))
    await killed.flush()  # 3 and 10 committed; the held file stays for 1 and 2
    killed.submit(make_row(2))
    killed.release(t2)
    t4 = killed.hold(provisional(4))  # 4: both versions in one file (one segment, one batch on replay)
    killed.submit(make_row(4))
    killed.release(t4)
    assert await count(url) == 2 and len(journal_files(tmp_path / "spool")) == 2
    # the process dies here: no stop(), no further cycle

    second = LogWriter(engine, settings_for(tmp_path, url))
    await second.start()
    await second.flush()  # replays the first file (provisional 2 is stored), then the second (final 2 wins)
    await second.stop()
    await engine.dispose()
    rows = await fetch(url)
    assert [r["id"] for r in rows] == ids([1, 2, 3, 4, 10])  # each once
    assert [r["shadow"] for r in rows] == [PENDING_SHADOW] + [make_row(2)["shadow"]] * 4
    assert rows[1] == make_row(2)  # the final version, every column
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


async def test_streamed_row_is_finished_before_the_done_event_goes_out() -> None:
    """The chat route's row reaches the writer (and the journal) before the client can have the whole answer."""
    from gateway.proxy.streaming import StreamOutcome, relay

    async def upstream() -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"delta":{"content":"4"}}]}\n\n'
        yield b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\ndata: [DONE]\n\n'

    seen: list[bytes] = []
    finished: list[tuple[int, StreamOutcome]] = []
    async for chunk in relay(upstream(), None, 0.0, False, lambda out: finished.append((len(seen), out))):
        seen.append(chunk)
    assert seen[-1] == b"data: [DONE]\n\n"
    [(sent_before, outcome)] = finished  # once, when only the first chunk had gone out
    assert sent_before == 1 and outcome.usage == {"prompt_tokens": 7, "completion_tokens": 1} and not outcome.error
