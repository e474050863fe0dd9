"""A spool whose disk fails (full, read-only, no permission) counts as full: nothing is lost silently.

Unit level: the ``OSError`` is injected at the file-write seam (``os.write`` / ``os.open``, which the spool and the
journal call), so these run anywhere, also without root. ``test_reliability_spool_disk.py`` does the same with a
real full and a real read-only filesystem behind a served gateway.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.store import LogWriter, make_engine
from gateway.store.spool import Spool, encode_row, read_segment
from tests.test_store_writer import DEAD_PG_URL, fetch, make_row, migrated, settings_for

_real_write = os.write
_real_open = os.open


def disk_full_after(budget: int) -> Callable[[int, Any], int]:
    """An ``os.write`` that writes ``budget`` bytes in all (a short write at the boundary), then ENOSPC."""
    left = [budget]

    def write(fd: int, data: Any) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = _real_write(fd, bytes(data)[: left[0]])
        left[0] -= n
        return n

    return write


def read_only_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
    if flags & (os.O_WRONLY | os.O_RDWR):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    return _real_open(path, flags, *args, **kwargs)


def test_disk_full_part_way_leaves_no_torn_line_and_hands_the_rows_back(tmp_path: Path, monkeypatch) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert spool.append([make_row(0)]) == 1
    [segment] = list((tmp_path / "s").glob("segment-*"))
    size = segment.stat().st_size
    monkeypatch.setattr(os, "write", disk_full_after(len(encode_row(make_row(1))) + 10))  # 1 row and a bit
    rows = [make_row(i) for i in range(1, 4)]
    assert spool.append_rows(rows) == rows  # none written: the disk took a row and a half, then refused
    assert spool.error == "ENOSPC" and spool.dropped == 0  # handed back, not counted: the caller decides
    assert segment.stat().st_size == size and spool.size_bytes == size  # the partial write was truncated away
    assert spool.append([make_row(9)]) == 0 and spool.dropped == 1  # append() has no caller to keep it: counted
    monkeypatch.setattr(os, "write", _real_write)  # space again
    assert spool.append_rows(rows) == [] and spool.error is None
    spool.seal()
    assert [r["id"] for r in read_segment(segment)] == [make_row(i)["id"] for i in range(4)]


def test_read_only_disk_is_an_error_a_probe_clears_once_writable(tmp_path: Path, monkeypatch) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    monkeypatch.setattr(os, "open", read_only_open)
    assert spool.append_rows([make_row(1)]) == [make_row(1)] and spool.error == "EROFS"
    assert not spool.probe() and spool.error == "EROFS"
    monkeypatch.setattr(os, "open", _real_open)
    assert spool.probe() and spool.error is None and spool.size_bytes == 0
    assert not list((tmp_path / "s").iterdir())  # the probe leaves nothing behind


async def test_rows_the_failing_spool_refused_stay_in_memory_and_reach_the_database_later(
    tmp_path: Path, monkeypatch
) -> None:
    """Database not migrated (inserts fail like an outage) and the disk full: the writer keeps the batch, policy
    refuse refuses, readiness can say why; once the database works every row is stored, none dropped."""
    url = f"sqlite+aiosqlite:///{tmp_path}/late.db"
    engine = make_engine(url)
    writer = LogWriter(engine, settings_for(tmp_path, url, spool_full_policy="refuse", log_batch_size=5),
                       retry_interval_s=0.05)
    monkeypatch.setattr(os, "write", disk_full_after(0))
    for i in range(12):
        writer.submit(make_row(i))
    await writer.flush()
    assert writer.spool.error == "ENOSPC" and writer.refusing  # full disk = full spool: refuse new requests
    assert writer.queue_depth == 12 and writer.spool.dropped == 0  # the refused batch is kept, the rest queued
    await writer.flush()
    assert writer.queue_depth == 12  # retried, still kept
    await migrated(url)
    await writer.flush()  # the database is back (the disk is still full)
    await writer.stop()
    await engine.dispose()
    assert [r["id"] for r in await fetch(url)] == [make_row(i)["id"] for i in range(12)]
    assert writer.spool.dropped == 0 and not writer.refusing


async def test_queue_full_and_spool_failing_drops_are_counted_and_the_queue_is_kept(
    tmp_path: Path, monkeypatch
) -> None:
    dead = make_engine(DEAD_PG_URL)
    writer = LogWriter(dead, settings_for(tmp_path, DEAD_PG_URL, log_queue_size=10, log_batch_size=5))
    monkeypatch.setattr(os, "open", read_only_open)
    for i in range(30):  # 10 fit in the queue; the 20 others find the spool read-only
        writer.submit(make_row(i))
    await writer.flush()
    assert writer.spool.error == "EROFS" and not writer.refusing  # policy drop: keeps serving
    assert writer.queue_depth == 10 and writer.spool.dropped == 20  # every row accounted for
    monkeypatch.setattr(os, "open", _real_open)  # writable again, database still down
    await writer.flush()
    assert writer.queue_depth == 0 and writer.spool.error is None
    assert len([r for s in (tmp_path / "spool").glob("segment-*") for r in read_segment(s)]) == 10
    await writer.stop()
    await dead.dispose()


@pytest.mark.parametrize("journal", [True, False])
async def test_stop_with_a_failing_spool_counts_the_rows_it_cannot_keep(tmp_path: Path, monkeypatch, journal) -> None:
    """Shutdown with the database down and the disk refusing everything: the rows are lost, and counted. With a
    journal written before the disk failed, its file is handed to the spool (a rename needs no space) and its
    rows are not counted as lost: the next start replays them."""
    dead = make_engine(DEAD_PG_URL)
    writer = LogWriter(dead, settings_for(tmp_path, DEAD_PG_URL, log_journal=journal))
    for i in range(4):
        writer.submit(make_row(i))  # journaled while the disk works
    monkeypatch.setattr(os, "write", disk_full_after(0))
    for i in range(4, 10):
        writer.submit(make_row(i))
    await writer.stop()
    await dead.dispose()
    monkeypatch.setattr(os, "write", _real_write)
    saved = sorted(r["id"] for s in (tmp_path / "spool").glob("segment-*") for r in read_segment(s))
    assert saved == ([make_row(i)["id"] for i in range(4)] if journal else [])
    assert writer.spool.dropped == 10 - len(saved)
