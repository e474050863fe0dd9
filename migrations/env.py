"""Alembic environment of the poolgate log store (async engine, SQLite or PostgreSQL).

The database URL comes from the caller: ``config.attributes["url"]`` when run through
``gateway.store.db.upgrade``/``downgrade`` (``poolgate db upgrade``), otherwise ``Settings().database_url``
(``POOLGATE_DATABASE_URL``) when the ``alembic`` tool runs this directly. Never from ``alembic.ini``.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.store.db import make_engine, parse_url
from gateway.store.models import Base

config = context.config
target_metadata = Base.metadata

# Only the standalone alembic tool has an ini file; programmatic runs must not reset the host's logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from gateway.settings import Settings

    return Settings().database_url


def _configure(**kwargs: object) -> None:
    url = parse_url(_database_url())
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=url.get_backend_name() == "sqlite",
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (``alembic upgrade head --sql``) without connecting."""
    _configure(url=parse_url(_database_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


#: pg_advisory_xact_lock key serializing concurrent upgrades (replicas or init containers starting together).
MIGRATION_LOCK_KEY = 0x706F6F6C67617465  # "poolgate"


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until this transaction commits; a second upgrader waits here, then finds the schema at head
            # and does nothing (without it, both run CREATE TABLE and one fails on a duplicate type).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_migrations_online() -> None:
    """Connect with the gateway's own async engine settings and migrate inside one connection."""
    engine = make_engine(_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
