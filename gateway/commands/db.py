"""``poolgate db``: create and migrate the log store schema (Alembic) at ``POOLGATE_DATABASE_URL``."""

from __future__ import annotations

import click


def _database_url() -> str:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from pydantic import ValidationError

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.settings import Settings

    try:
        return Settings().database_url
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc.errors()[0].get('msg', exc)}") from exc


def _migrate(action: str, revision: str) -> None:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.store import db as store_db

    url = _database_url()
    try:
        before = store_db.current_revision(url)
        store_db.upgrade(url, revision) if action == "upgrade" else store_db.downgrade(url, revision)
        after = store_db.current_revision(url)
    except store_db.StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{action}: {store_db.redact(url)}: revision {before or 'base'} -> {after or 'base'}")


@click.group()
def db() -> None:
    """Create or migrate the log store schema (database from POOLGATE_DATABASE_URL)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (creates the tables on a new database)."""
    _migrate("upgrade", revision)


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION ("base" drops all log store tables)."""
    _migrate("downgrade", revision)
