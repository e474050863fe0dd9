"""Local, append-only disk spool for log rows the database could not take (DB down, queue full).

Layout of ``spool_dir``: ``segment-<time_ns>-<pid>-<seq>.jsonl`` files, one JSON row per line, replayed oldest
first and deleted once written; ``rejected.jsonl`` holds rows the database refused as invalid (kept for a human,
never replayed). The log writer's write-ahead journal (``gateway/store/journal.py``) lives in the same directory as
``journal-*.jsonl`` files in the same line format; a journal left by a killed process becomes a segment
(``adopt``), so the ordinary replay writes its rows.

Bound: all ``*.jsonl`` files together stay under ``max_bytes``. When a row would cross the bound it is **dropped
and counted** (``dropped``), and an ERROR is logged: the spool keeps the oldest rows and refuses new ones. Journal
files are not counted while their process runs (they copy the in-memory queue, bounded by ``log_queue_size``, and
are deleted every writer cycle); an adopted journal is counted from then on and kept even past the bound (its rows
are already on disk, and are those of answered requests), so new rows are dropped until replay makes room. Why
oldest-first: the spool only fills during a long outage, and a contiguous record of the outage's start (when the
interesting failures happened) is more useful for debugging and for billing reconciliation than a sliding window
of its end; deleting old segments would also make replay progress impossible to reason about.

A disk that fails (ENOSPC, EDQUOT, EROFS, EACCES, any ``OSError`` opening or writing a file) counts as full: the
rows of that call are not written (a torn tail is truncated away), ``error`` names the errno (``"ENOSPC"``) until a
write or a ``probe`` succeeds, and ``append_rows`` hands the rows back, so the caller keeps them in memory or
counts them as dropped (``drop``). ``size_bytes`` knows only this spool's bound, not the disk's free space, so
``error`` is the only sign of a full filesystem.

One process per spool directory: give each gateway replica/worker its own ``spool_dir``. Appends are flushed to
the OS on every call (they survive a crash of the process, not necessarily of the machine).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.store.db import dumps_json, json_default

log = logging.getLogger(__name__)

SEGMENT_GLOB = "segment-*.jsonl"
REJECTED_FILE = "rejected.jsonl"
PROBE_FILE = "probe.tmp"
#: "LOG ROWS LOST" is logged at most this often (a full disk under load would log once per request otherwise).
LOST_LOG_INTERVAL_S = 10.0
#: Columns stored as datetimes; JSON has no datetime, so they are ISO strings on disk and parsed back.
DATETIME_FIELDS = ("created_at",)
#: orjson as ``dumps_json`` would write it: NaN/inf as null (orjson's own rule), non-string keys as strings,
#: numpy values as lists/numbers; anything else goes through ``json_default`` (e.g. sets).
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def ordered_file_name(kind: str, seq: int) -> str:
    """``<kind>-<time_ns>-<pid>-<seq>.jsonl``: sorts by creation time, unique per process. Spool segments and
    journal files share it, so a journal adopted as a segment keeps its place in the replay order (``adopt``)."""
    return f"{kind}-{time.time_ns():020d}-{os.getpid()}-{seq:06d}.jsonl"


def encode_row(row: dict[str, Any]) -> bytes:
    """One spool line for ``row`` (datetimes as ISO 8601 with offset), newline-terminated.

    A value JSON cannot encode is stored as its ``repr`` (logged): a changed value beats a lost row.
    orjson first (about 1 us for a typical row, against 14 us for ``json``; this runs on the request path
    for the journal); whatever it refuses (integers past 64 bits, lone surrogates, unknown types) takes the
    ``json`` path, which decides as before.
    """
    try:
        return orjson.dumps(row, default=json_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        pass
    try:
        text = dumps_json(row)
    except (TypeError, ValueError) as exc:
        log.warning("spooling log row %s with non-JSON values as text: %s", row.get("id"), exc)
        text = json.dumps(row, default=_default_or_repr, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def _default_or_repr(obj: Any) -> Any:
    try:
        return json_default(obj)
    except TypeError:
        return repr(obj)


def decode_row(line: bytes) -> dict[str, Any]:
    """Inverse of ``encode_row``: datetime fields come back as timezone-aware datetimes."""
    row: dict[str, Any] = json.loads(line)
    for name in DATETIME_FIELDS:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return row


def read_segment(path: Path) -> list[dict[str, Any]]:
    """All rows of one segment. A torn or corrupt line (crash mid-write) is skipped with a warning."""
    rows = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(decode_row(line))
            except ValueError as exc:
                log.warning("skipping unreadable line %d of spool segment %s: %s", number, path, exc)
    return rows


class Spool:
    """Bounded append-only JSONL segments under ``directory`` (see the module docstring for the policy).

    Not thread-safe: call ``append``/``seal``/``remove`` from one thread (the event loop). ``read_segment`` on a
    sealed segment may run in a worker thread, as sealed segments never change.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        #: Rotate to a new segment past this size, so replay reads and deletes in bounded steps.
        self.segment_bytes = segment_bytes or max(64 * 1024, min(8 * 1024 * 1024, max_bytes // 16))
        self.dropped = 0
        #: errno name of the last failed write (``"ENOSPC"``, ``"EROFS"``...), None once a write works again.
        self.error: str | None = None
        self._current: Path | None = None
        self._seq = 0
        self._size = sum(p.stat().st_size for p in self._all_files())
        self._undeletable: set[Path] = set()  # replayed segments the disk would not let us delete
        self._lost_logged_at = float("-inf")
        self._lost_unlogged = 0
        # why: once one row did not fit, every later row is dropped until replay frees space, even a smaller one
        # that would fit: otherwise the kept rows are not the oldest ones but a gap-toothed selection by size
        self._full = False

    def _all_files(self) -> list[Path]:
        """The files the bound covers: segments and rejected rows (a journal counts once adopted)."""
        if not self.directory.is_dir():
            return []
        return [*self.directory.glob(SEGMENT_GLOB), *self.directory.glob(REJECTED_FILE)]

    @property
    def size_bytes(self) -> int:
        """Bytes currently used by segments and rejected rows."""
        return self._size

    def has_rows(self) -> bool:
        """True when at least one segment waits for replay."""
        return (self._current is not None and self._current not in self._undeletable) or bool(self.segments())

    def _new_segment(self) -> Path:
        self._seq += 1
        return self.directory / ordered_file_name("segment", self._seq)

    def _write(self, path: Path, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append the rows that fit under the bound to ``path`` (the others are dropped and counted); returns the
        rows the disk refused (none written: see ``_append_bytes``)."""
        chunks, kept, dropped = [], [], 0
        budget = self.max_bytes - self._size
        for row in rows:
            try:
                line = encode_row(row)
            except ValueError as exc:  # e.g. a circular structure: nothing sensible to keep
                self.drop(1, f"cannot encode row {row.get('id')} for the spool: {exc}")
                continue
            if self._full or len(line) > budget:
                self._full = True
                dropped += 1
                continue
            budget -= len(line)
            chunks.append(line)
            kept.append(row)
        if dropped:
            self.drop(dropped, f"spool {self.directory} is full ({self._size} of {self.max_bytes} bytes); raise "
                      "spool_max_bytes or restore the database")
        if not chunks:
            return []
        data = b"".join(chunks)
        try:
            self._append_bytes(path, data)
        except OSError as exc:
            self._failed(exc)
            return kept
        self._size += len(data)
        self._recovered()
        return []

    def _append_bytes(self, path: Path, data: bytes) -> None:
        """Append ``data`` to ``path`` whole or not at all: a write that fails part way (disk full) is truncated
        back, so no torn line is left for later rows to follow. Raises the ``OSError``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                with contextlib.suppress(OSError):  # a read-only disk cannot be truncated either: nothing was written
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def _failed(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        if self.error is None:
            log.error("log spool %s cannot take rows (%s: %s): it counts as full until a write works again",
                      self.directory, name, exc.strerror or exc)
        self.error = name

    def _recovered(self) -> None:
        if self.error is not None:
            log.warning("log spool %s takes rows again (it failed with %s)", self.directory, self.error)
            self.error = None

    def drop(self, count: int, why: str) -> None:
        """Count ``count`` rows as lost (``dropped``) and log it, at most once per ``LOST_LOG_INTERVAL_S``."""
        self.dropped += count
        self._lost_unlogged += count
        now = time.monotonic()
        if now - self._lost_logged_at >= LOST_LOG_INTERVAL_S:
            log.error("LOG ROWS LOST: %s; dropped %d rows (%d dropped in total)", why, self._lost_unlogged,
                      self.dropped)
            self._lost_logged_at, self._lost_unlogged = now, 0

    def probe(self) -> bool:
        """Try a small write in the directory; clears ``error`` when it works (no row needed to find out)."""
        path = self.directory / PROBE_FILE
        try:
            self._append_bytes(path, b"\n" * 512)
            path.unlink()
        except OSError as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def append_rows(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append rows to the open segment (rotating when it is full); rows over the bound are dropped and counted.

        Returns the rows the disk refused (``error`` says why): not written, not counted; the caller keeps them
        or counts them with ``drop``.
        """
        try:
            if self._current is None or self._current.stat().st_size >= self.segment_bytes:
                self._current = self._new_segment()
        except OSError:  # deleted, or unreadable: a new segment (whose write then says what is wrong)
            self._current = self._new_segment()
        return self._write(self._current, rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        """``append_rows`` for callers with no use for refused rows: they are dropped and counted. Returns how
        many rows were kept."""
        rows = list(rows)
        before = self.dropped
        refused = self.append_rows(rows)
        if refused:
            self.drop(len(refused), f"spool {self.directory} cannot be written ({self.error})")
        return len(rows) - (self.dropped - before)

    def reject(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep rows the database refused as invalid in ``rejected.jsonl`` (never replayed); returns the rows the
        disk refused, as ``append_rows``."""
        return self._write(self.directory / REJECTED_FILE, rows)

    def seal(self) -> None:
        """Close the open segment: later appends start a new one, so this one may be replayed and deleted."""
        self._current = None

    def adopt(self, path: Path) -> Path:
        """Make ``path`` (a journal file in this directory, same line format) a sealed segment; count its bytes.

        ``journal-<time_ns>-<pid>-<seq>.jsonl`` becomes ``segment-<time_ns>-<pid>-<seq>-journal.jsonl``: it keeps
        its place in the replay order and cannot collide with a segment this spool writes.
        """
        prefix, _, rest = path.stem.partition("-")
        target = self.directory / f"segment-{rest or prefix}-{prefix}.jsonl"
        size = path.stat().st_size
        path.rename(target)
        self._size += size
        return target

    def segments(self) -> list[Path]:
        """Sealed segments waiting for replay, oldest first (the open segment is excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(SEGMENT_GLOB) if p != self._current and p not in self._undeletable)

    def remove(self, path: Path) -> None:
        """Delete a replayed segment and release its bytes from the bound.

        A segment the disk will not let go (read-only) is not replayed again by this process (a restart does:
        its rows are skipped as stored), and still counts against the bound.
        """
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("could not delete replayed spool segment %s (%s); it is replayed again only after a "
                        "restart", path, exc)
            self._undeletable.add(path)
            return
        self._size = max(0, self._size - size)
        self._full = False  # replay made room: new rows fit again
