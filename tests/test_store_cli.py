"""``poolgate db upgrade`` / ``downgrade`` through the real CLI entry point (click's CliRunner)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.store.db import head_revision
from tests.test_store_migrations import DEAD_PG_URL


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_db_upgrade_then_downgrade_on_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_file = tmp_path / "state" / "poolgate.db"
    monkeypatch.setenv("POOLGATE_DATABASE_URL", f"sqlite+aiosqlite:///{db_file}")
    runner = CliRunner()

    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"revision base -> {head_revision()}" in result.output
    assert {"requests", "feedback", "alembic_version"} <= tables(db_file)

    again = runner.invoke(main, ["db", "upgrade", "--revision", "head"])
    assert again.exit_code == 0 and f"revision {head_revision()} -> {head_revision()}" in again.output

    down = runner.invoke(main, ["db", "downgrade", "base"])
    assert down.exit_code == 0 and f"revision {head_revision()} -> base" in down.output
    assert tables(db_file) == {"alembic_version"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (DEAD_PG_URL.replace("postgres@", "postgres:hunter2@"), "ConnectionRefusedError"),
        ("::not a url::", "invalid database URL"),
    ],
)
def test_db_upgrade_of_unusable_database_is_one_line_and_exit_1(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLGATE_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and expected in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "hunter2" not in result.output  # passwords never printed
