"""Engines, schema migrations and health checks for the log store (SQLite or PostgreSQL, both async).

``upgrade``/``downgrade`` run Alembic with the packaged ``migrations`` environment and the URL given by the
caller (never a URL from ``alembic.ini``), so they work from a non-editable install too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
from collections.abc import Callable
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a /health/ready ping may take before the store counts as down.
PING_TIMEOUT_S = 2.0
#: SQLite waits this long for a lock held by another connection before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: asyncpg connect timeout: a blackholed host must not stall the writer for asyncpg's default 60 s.
PG_CONNECT_TIMEOUT_S = 5.0

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


class StoreError(RuntimeError):
    """A database URL that cannot be used, a database that cannot be reached, or a failed migration."""


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for values log rows may carry: datetimes, numpy scalars/arrays, paths, sets."""
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return obj.tolist()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/infinite floats replaced by None, recursively (JSON and PostgreSQL JSONB reject them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def dumps_json(obj: Any) -> str:
    """Serialize a JSON column value (the engine's ``json_serializer`` and the spool's line format).

    Strict JSON: NaN and infinities (a router may score a candidate NaN) become ``null``.
    """
    try:
        return json.dumps(obj, default=json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a non-finite float somewhere (the only ValueError json.dumps raises besides cycles)
        return json.dumps(_finite(obj), default=json_default, ensure_ascii=False, separators=(",", ":"))


def parse_url(url: str) -> URL:
    """Parse a database URL and pick the async driver when none is named (``postgresql://`` -> asyncpg).

    Raises ``StoreError`` for text that is not a URL or names a database other than SQLite/PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # ArgumentError, ValueError: both mean "not a URL"
        raise StoreError(f"invalid database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise StoreError(f"unsupported database {backend!r} in URL: use sqlite+aiosqlite:// or postgresql+asyncpg://")
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=_ASYNC_DRIVERS[backend])
    return parsed


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except StoreError:
        return "<invalid URL>"


def _sqlite_file(parsed: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers (reports, feedback) run while the writer inserts; NORMAL is durable in WAL mode.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # PostgreSQL always enforces foreign keys; make SQLite behave the same.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create the async engine for ``url`` (SQLite via aiosqlite, PostgreSQL via asyncpg).

    SQLite: creates the database file's parent directory and sets WAL, ``synchronous=NORMAL``, a busy timeout
    and foreign-key enforcement on every connection. PostgreSQL: a small pre-pinged pool with a connect timeout.
    No connection is opened here; an unreachable database shows up on first use.
    """
    parsed = parse_url(url)
    common: dict[str, Any] = {"echo": echo, "json_serializer": dumps_json}
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            try:
                path.expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # reported again, precisely, when a connection is attempted
                log.warning("cannot create directory for SQLite database %s: %s", path, exc)
        engine = create_async_engine(parsed, **common)
        _install_sqlite_pragmas(engine)
        return engine
    return create_async_engine(
        parsed,
        pool_size=5,
        max_overflow=10,
        pool_timeout=10,
        pool_recycle=1800,
        pool_pre_ping=True,
        connect_args={"timeout": PG_CONNECT_TIMEOUT_S, "server_settings": {"application_name": "poolgate"}},
        **common,
    )


async def ping(engine: AsyncEngine, timeout_s: float = PING_TIMEOUT_S) -> bool:
    """True when ``SELECT 1`` succeeds within ``timeout_s``; never raises (for /health/ready)."""

    async def _select_one() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(_select_one(), timeout=timeout_s)
    except Exception as exc:
        log.debug("database ping failed: %s", exc)
        return False
    return True


# -- migrations -------------------------------------------------------------------------------------------


def migrations_dir() -> Path:
    """Directory of the packaged Alembic environment (``env.py``, ``versions/``)."""
    return Path(str(resources.files("migrations")))


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for ``url`` built in code: no ini file, so the caller's logging stays untouched."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = parse_url(url).render_as_string(hide_password=False)
    return config


def head_revision() -> str:
    """The newest revision in the packaged migrations (what ``upgrade(url)`` migrates to)."""
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None, "the migrations package has no revisions"
    return head


def _off_the_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` here, or in a worker thread when this thread runs an event loop (Alembic's async env.py
    calls ``asyncio.run``, which cannot nest). Blocks the caller either way; from async code prefer
    ``await asyncio.to_thread(upgrade, url)``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="alembic") as pool:
        return pool.submit(fn).result()


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: its type and the first line of its message (drivers add multi-line detail)."""
    inner = getattr(exc, "orig", None) or exc
    message = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {message}" if message else type(inner).__name__


def _run_alembic(action: str, url: str, revision: str) -> None:
    config = alembic_config(url)
    run = command.upgrade if action == "upgrade" else command.downgrade
    try:
        _off_the_loop(lambda: run(config, revision))
    except Exception as exc:  # driver, network and Alembic errors all become one clear line
        raise StoreError(f"{action} of {redact(url)} to {revision!r} failed: {_one_line(exc)}") from exc


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``. Raises ``StoreError`` with a one-line reason."""
    _run_alembic("upgrade", url, revision)


def upgrade_embedded(url: str) -> None:
    """Migrate ``url`` to head if it is an embedded SQLite store: that schema is ours to create, so every
    command that opens it (``serve``, ``keys``, ``train``, ...) works in a fresh folder. PostgreSQL is left to
    ``poolgate db upgrade`` (an operator's step, one migration for many replicas)."""
    if url.startswith("sqlite"):
        upgrade(url)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` drops every table)."""
    _run_alembic("downgrade", url, revision)


def current_revision(url: str) -> str | None:
    """The Alembic revision the database at ``url`` is at (None when unversioned). Raises ``StoreError``."""
    async def _read() -> str | None:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
        finally:
            await engine.dispose()

    try:
        return _off_the_loop(lambda: asyncio.run(_read()))
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot read the revision of {redact(url)}: {_one_line(exc)}") from exc
