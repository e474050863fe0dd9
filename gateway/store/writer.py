"""``LogWriter``: request rows go to the database in batches, off the request path, and are never lost silently.

Path of a row: ``submit`` (sync, O(1), never raises) -> bounded in-memory queue -> background task -> one
``INSERT ... ON CONFLICT (id)`` per batch, skipping stored ids (held rows aside, below). When the queue is full
the row goes to the disk spool instead; when the database is unreachable the whole batch goes to the spool, and
the writer stops trying the database for ``retry_interval_s`` (batches go straight to the spool meanwhile). The
spool is replayed at start and then every ``retry_interval_s`` while it holds rows. Inserts ignore ids already
present, so a replay that is interrupted (crash between insert and segment delete) and repeated writes each row
exactly once.

With ``log_journal`` (default on), ``submit`` also appends the row to a write-ahead journal file in the spool
directory (one ``os.write``, no fsync; ``gateway/store/journal.py``), and each cycle deletes the journal of the
rows it made durable. A process killed with SIGKILL (no shutdown code runs) therefore loses no queued row: the
next ``start`` on the same spool directory turns its journal into spool segments and replays them. A journal
write that fails is logged and counted and the row stays queued in memory, as without a journal.

A row whose final version comes later (a pool with shadow routers: ``gateway/routing/shadow.py``) is ``hold``-ed: its
provisional version (``shadow`` = ``PENDING_SHADOW``) is journaled at once, not queued, and its journal file is
kept until the caller ``release``s it after submitting the final row; a SIGKILL in between loses no row, and the
next start replays the provisional one. Inserts skip ids already stored, with one exception so that the final
version wins whatever order the two reach the database in: a stored row whose ``shadow`` is ``PENDING_SHADOW``
takes the ``shadow`` of a later row with its id (the other columns are the same in both versions).

A row the database refuses as invalid (integrity/data error, unserializable value) must not block the rows
around it: the batch is retried row by row and the offending rows are kept in the spool's ``rejected.jsonl``.

Every database write is bounded by ``log_write_timeout_s``: a database that stops answering without closing the
connection (a network partition) counts as down, so its rows reach the spool instead of waiting in memory, and
shutdown never hangs on it. A timed-out insert that did commit is harmless: its replay is ignored as a duplicate.

When the spool is full, ``spool_full_policy`` decides: ``drop`` (default) keeps serving and drops new rows (counted,
logged as ERROR); ``refuse`` makes ``refusing`` true while the database is down and the spool is nearly full, and the
chat route then answers 503 rather than serve a request it cannot log.

A spool whose disk fails (full filesystem, read-only, no permission: ``Spool.error``) counts as full too, whatever
its own bound says. The batch it refused stays in memory (``_unspooled``) and the cycle stops draining the queue,
so what the writer holds stays bounded (``log_queue_size`` plus one batch) and is retried every cycle, against the
database and the spool; the journal files holding those rows are kept until they are durable. Only a row that
finds the queue full too is dropped, and counted. With nothing to retry, a failed spool is probed every
``retry_interval_s``, and so is a database presumed down, so neither state outlives its cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Insert, insert, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.record import RequestRecord
from gateway.settings import Settings
from gateway.store.db import ping
from gateway.store.journal import Journal
from gateway.store.models import REQUEST_COLUMNS, Request
from gateway.store.spool import Spool, read_segment

log = logging.getLogger(__name__)

Row = dict[str, Any]
_COLUMN_SET = frozenset(REQUEST_COLUMNS)

#: Values for columns a row leaves out (non-nullable ones need one; nullable ones become NULL).
ROW_DEFAULTS: dict[str, Any] = {
    "model_requested": "",
    "candidates": [],
    "attempts": [],
    "status": "ok",
    "http_status": 200,
    "stream": False,
    "latency_ms": 0.0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "usage_estimated": False,
    "cost_usd": 0.0,
    "cached_tokens": 0,
    "cache_write_tokens": 0,
    "reasoning_tokens": 0,
    "cache_saved_usd": 0.0,
    "affinity": False,
}


#: ``shadow`` of a held row's provisional version (its shadow choices were not computed yet). Reports ignore it
#: (an entry that is not a dict with a backend), and a later row with the same id replaces it (see the module doc).
PENDING_SHADOW: dict[str, Any] = {"pending": True}

#: "The stored row is provisional", in each dialect's SQL. Exact equality with the marker: no cast that could fail
#: on another shape of ``shadow`` (a failing condition would fail the whole batch).
_PENDING_JSON = json.dumps(PENDING_SHADOW)  # a constant without quotes: safe to inline in the SQL below
_STORED_IS_PENDING = {
    "postgresql": f"requests.shadow = CAST('{_PENDING_JSON}' AS JSONB)",
    "sqlite": f"json(requests.shadow) = json('{_PENDING_JSON}')",
}


def insert_ignoring_duplicates(dialect_name: str) -> Insert:
    """``INSERT INTO requests`` that skips rows whose id is already stored (SQLite and PostgreSQL).

    Except over a stored provisional row (``shadow`` = ``PENDING_SHADOW``): the new row's ``shadow`` replaces
    it, so a held row's final version wins even when its provisional one was replayed first. The statement is
    run with ``executemany`` (one statement per row), so two versions of one id in a batch are no conflict.
    """
    if dialect_name in _STORED_IS_PENDING:
        stmt = sqlite_insert(Request) if dialect_name == "sqlite" else postgresql_insert(Request)
        return stmt.on_conflict_do_update(
            index_elements=["id"], set_={"shadow": stmt.excluded.shadow}, where=text(_STORED_IS_PENDING[dialect_name])
        )
    log.warning("no conflict-ignoring INSERT for %s: resubmitted request ids will fail as duplicates", dialect_name)
    return insert(Request)


def is_row_fault(exc: BaseException) -> bool:
    """True when the rows themselves caused ``exc`` (retrying them cannot help); False for outages and the like.

    A missing table (not migrated yet) or a lost connection is not the rows' fault: those rows are spooled.
    """
    if isinstance(exc, IntegrityError | DataError):
        return True
    # SQLSTATE class 22 (data exception) and 23 (integrity): asyncpg's errors reach SQLAlchemy as a plain
    # DBAPIError, so read the code; treating them as an outage would spool a poison row and replay it forever.
    if isinstance(exc, DBAPIError) and str(getattr(exc.orig, "sqlstate", "") or "")[:2] in ("22", "23"):
        return True
    # Bind-parameter processing (e.g. a value JSON cannot encode) fails before the database is involved.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def strip_nul(value: Any) -> Any:
    """``value`` with NUL characters in its strings (keys too, recursively) replaced by U+FFFD.

    PostgreSQL cannot store NUL in text or JSONB, and a client can put one in any string it sends.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {strip_nul(k): strip_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strip_nul(v) for v in value]
    return value


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"created_at must be a datetime or ISO string, not {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class LogWriter:
    """Batches request rows into the ``requests`` table; spools them to disk when it cannot write.

    Use: ``await start()`` once, ``submit(row)`` per request, ``await stop()`` on shutdown (writes or spools
    everything still queued). The rows' keys are ``Request`` column names; see ``prepare_row``.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings, *, retry_interval_s: float = 5.0) -> None:
        self._engine = engine
        self._settings = settings
        self._retry_interval_s = retry_interval_s
        self._queue: asyncio.Queue[Row] = asyncio.Queue(maxsize=max(1, settings.log_queue_size))
        self._batch_size = max(1, settings.log_batch_size)
        self._spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self._journal = Journal(settings.spool_dir) if settings.log_journal else None
        self._statement = insert_ignoring_duplicates(engine.dialect.name)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._retry_at = 0.0  # monotonic time before which the database is presumed down
        self._db_up = True  # did the last write attempt reach the database?
        self._write_timeout_s = settings.log_write_timeout_s
        # "refuse" starts this far below the bound, so the rows of requests already admitted still fit
        self._refuse_margin = min(1024 * 1024, max(8 * 1024, settings.spool_max_bytes // 20))
        self._unspooled: list[Row] = []  # a batch neither the database nor the spool took (retried first)
        self._journal_backlog: list[Path] = []  # rotated journal files that may hold the only copy of those rows
        self._probe_at = 0.0  # monotonic time of the next spool/database probe while nothing is left to retry
        self.rejected_rows = 0
        self._warned_unknown: set[str] = set()

    # -- request path ---------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Rows waiting in memory for the next batch (the queue, and a batch the spool refused)."""
        return self._queue.qsize() + len(self._unspooled)

    @property
    def refusing(self) -> bool:
        """True when new requests should be refused: policy ``refuse``, database down, and the spool (nearly) full
        or failing (``Spool.error``: its disk is full, read-only, ...)."""
        return (
            self._settings.spool_full_policy == "refuse"
            and not self._db_up
            and (self._spool.error is not None
                 or self._spool.max_bytes - self._spool.size_bytes < self._refuse_margin)
        )

    @property
    def journal(self) -> Journal | None:
        """The write-ahead journal (``unjournaled_rows`` counts rows a failed write left in memory only)."""
        return self._journal

    @property
    def spool(self) -> Spool:
        """The disk spool (``size_bytes``, ``dropped`` and ``has_rows()`` are useful for metrics)."""
        return self._spool

    def prepare_row(self, row: Row) -> Row:
        """A complete, detached copy of ``row`` ready for insert.

        Unknown keys are dropped (logged), missing columns get ``ROW_DEFAULTS`` or NULL, ``created_at``
        defaults to now (UTC), a missing ``id`` gets a fresh one (logged), and ``prompt_text``/``response_text``
        are blanked unless ``store_prompts``/``store_responses`` is on, and NUL characters become U+FFFD.
        """
        unknown = row.keys() - _COLUMN_SET
        if unknown - self._warned_unknown:  # once per key, not once per request
            self._warned_unknown |= unknown
            log.warning("log rows have unknown columns %s; they are not stored", sorted(unknown))
        clean = {name: row.get(name, ROW_DEFAULTS.get(name)) for name in REQUEST_COLUMNS}
        if not clean["id"]:
            clean["id"] = uuid.uuid4().hex
            log.warning("log row without id; stored as %s", clean["id"])
        clean["created_at"] = _as_utc(clean["created_at"]) if clean["created_at"] else datetime.now(UTC)
        if not self._settings.store_prompts:
            clean["prompt_text"] = None
        if not self._settings.store_responses:
            clean["response_text"] = None
        return {name: strip_nul(value) for name, value in clean.items()}

    def submit(self, row: Row | RequestRecord) -> None:
        """Queue one request row (a ``RequestRecord`` from the request path) for writing. Never blocks on I/O to
        the database and never raises.

        With the journal on, the row is on disk (in the kernel's page cache) when this returns: a SIGKILL
        from then on does not lose it. The caller must not mutate nested values (lists/dicts) of ``row``
        afterwards: only the top level is copied.
        """
        try:
            clean = self.prepare_row(row.as_row() if isinstance(row, RequestRecord) else row)
            if self._closed:
                self._spool.append([clean])  # after stop(): kept for replay by the next process (or counted)
                return
            try:
                self._queue.put_nowait(clean)
            except asyncio.QueueFull:
                self._spool.append([clean])  # on disk already: no journal needed; a failing disk drops (counted)
                return
            if self._journal is not None:
                self._journal.append(clean)  # never raises; a failure is logged and counted
            if self._queue.qsize() >= self._batch_size:
                self._wake.set()
        except Exception:  # the request path must survive any logging failure
            log.exception("could not log request row %r", getattr(row, "id", None) or (
                row.get("id") if isinstance(row, dict) else row))

    def hold(self, row: Row) -> Path | None:
        """Journal ``row``, the provisional version of a row to be submitted later, without queueing it.

        Returns a token for ``release`` (None when nothing was journaled: journal off or failing, writer
        stopped). Until released, the journal file holding it outlives its cycle, so a SIGKILL before the final
        row is submitted leaves the provisional one to be replayed. Never raises.
        """
        if self._journal is None or self._closed:
            return None
        try:
            return self._journal.hold(self.prepare_row(row))
        except Exception:  # the request path must survive any logging failure
            log.exception("could not journal held request row %r", row.get("id") if isinstance(row, dict) else row)
            return None

    def release(self, token: Path | None) -> None:
        """End a ``hold``: call it once the final row is submitted (or will never be). Never raises."""
        if token is None or self._journal is None:
            return
        try:
            self._journal.release(token)
        except Exception:
            log.exception("could not release held log journal %s", token)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task; it replays any spool (and journal) left by an earlier run right away."""
        if self._task is None or self._task.done():
            if self._journal is not None:
                self._journal.recover(self._spool)
            self._closed = False
            self._retry_at = 0.0
            self._task = asyncio.create_task(self._run(), name="poolgate-log-writer")
            self._wake.set()

    async def stop(self) -> None:
        """Write (or, if the database is down, spool) every queued row, then end the background task.

        Leaves no journal file behind: rows submitted from now on go straight to the spool.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._wake.set()
            await task
        await self._cycle(force=False, replay=False)
        left = self._unspooled + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        self._unspooled = []
        adopted = self._journal.close(self._spool, self._journal_backlog) if self._journal is not None else []
        self._journal_backlog = []
        if left:  # neither the database nor the spool took them: lost, unless a journal file handed over has them
            saved = {row["id"] for path in adopted for row in _rows_or_none(path)}
            lost = sum(1 for row in left if row["id"] not in saved)
            if lost:
                self._spool.drop(lost, f"the log writer stopped with rows neither the database nor the spool "
                                 f"({self._spool.error}) would take")

    async def flush(self) -> None:
        """Write every queued row now and replay the spool, ignoring the retry timer (for tests and tools)."""
        await self._cycle(force=True, replay=True)

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):  # the flush interval elapsed: write what is queued
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.log_flush_interval_s)
            self._wake.clear()
            if self._closed:
                return  # stop() does the final cycle
            try:
                await self._cycle(force=False, replay=True)
            except Exception:  # keep the writer alive whatever happens; rows stay queued or spooled
                log.exception("log writer cycle failed")

    # -- writing --------------------------------------------------------------------------------------

    def _db_presumed_down(self) -> bool:
        return time.monotonic() < self._retry_at

    def _mark_down(self) -> None:
        self._db_up = False
        self._retry_at = time.monotonic() + self._retry_interval_s

    async def _cycle(self, *, force: bool, replay: bool) -> None:
        async with self._lock:
            # Every row in the rotated files was queued before this point, so it is durable once the queue has
            # been drained (rows submitted meanwhile go to the next file, and may be written now too: harmless).
            journaled = self._journal_backlog + (self._journal.rotate() if self._journal is not None else [])
            self._journal_backlog = []
            try:
                await self._drain(force)
            except BaseException:  # a batch taken from the queue may be neither written nor spooled
                if self._journal is not None:
                    self._journal.hand_over(journaled, self._spool)
                raise
            if self._unspooled:  # those rows are in memory only, and maybe in these files: keep them
                self._journal_backlog = journaled
            elif self._journal is not None:
                self._journal.discard(journaled)
            if replay and not self._unspooled and self._queue.empty():  # not at stop(): shutdown waits on no probe
                await self._probe(force)
            if replay and (force or not self._db_presumed_down()) and self._spool.has_rows():
                await self._replay()

    async def _drain(self, force: bool) -> None:
        """Write or spool the rows in memory, a batch the spool refused first. Stops at the first batch neither
        takes (it stays in ``_unspooled``): the rest stays queued, bounded, rather than in an unbounded list."""
        while self._unspooled or not self._queue.empty():
            if self._unspooled:
                batch, self._unspooled = self._unspooled, []
            else:
                batch = [self._queue.get_nowait() for _ in range(min(self._batch_size, self._queue.qsize()))]
            try:
                unwritten = await self._insert(batch) if force or not self._db_presumed_down() else batch
            except BaseException:
                self._unspooled = batch + self._unspooled  # cancelled mid-insert: kept for stop()'s last cycle
                raise
            self._unspooled = self._spool.append_rows(unwritten) if unwritten else []
            if self._unspooled:
                return

    async def _probe(self, force: bool) -> None:
        """With nothing left to write: every ``retry_interval_s``, see whether a failed spool takes rows again and
        whether a database presumed down is back, so ``refusing`` ends with its cause even when no row comes."""
        if not force and time.monotonic() < self._probe_at:
            return
        self._probe_at = time.monotonic() + self._retry_interval_s
        if self._spool.error is not None:
            self._spool.probe()
        if not self._db_up and (force or not self._db_presumed_down()):
            if await ping(self._engine, min(self._write_timeout_s, 5.0)):
                self._db_up = True
            else:
                self._mark_down()

    async def _replay(self) -> None:
        """Write sealed spool segments oldest first, deleting each once all its rows are in the database."""
        self._spool.seal()
        for segment in self._spool.segments():
            rows = await asyncio.to_thread(read_segment, segment)
            for start in range(0, len(rows), self._batch_size):
                if await self._insert(rows[start : start + self._batch_size]):
                    return  # database down again: keep the segment; rows already written are skipped next time
            self._spool.remove(segment)
            log.info("replayed %d spooled log rows from %s", len(rows), segment.name)

    async def _insert(self, rows: Sequence[Row]) -> list[Row]:
        """Insert ``rows``; returns the rows left unwritten because the database is unavailable."""
        try:
            await self._execute(rows)
            return []
        except Exception as exc:
            if not is_row_fault(exc):
                self._mark_down()
                log.warning("log store unavailable, spooling %d rows: %s", len(rows), _first_line(exc))
                return list(rows)
        return await self._insert_one_by_one(rows)

    async def _insert_one_by_one(self, rows: Sequence[Row]) -> list[Row]:
        for index, row in enumerate(rows):
            try:
                await self._execute([row])
            except Exception as exc:
                if not is_row_fault(exc):
                    self._mark_down()
                    return list(rows[index:])
                self.rejected_rows += 1
                if self._spool.reject([row]):  # nowhere to keep it: the database refuses it, the disk too
                    self._spool.drop(1, f"rejected row {row.get('id')} cannot be kept ({self._spool.error})")
                log.error(
                    "log row %s rejected by the database, kept in rejected.jsonl: %s", row.get("id"), _first_line(exc)
                )
        return []

    async def _execute(self, rows: Sequence[Row]) -> None:
        # TimeoutError is not a row fault: the rows are spooled and the database presumed down
        async with asyncio.timeout(self._write_timeout_s), self._engine.begin() as conn:
            await conn.execute(self._statement, list(rows))
        self._db_up = True


def _rows_or_none(path: Path) -> list[Row]:
    try:
        return read_segment(path)
    except OSError as exc:
        log.warning("could not read back spool segment %s: %s", path, exc)
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
