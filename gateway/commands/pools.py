"""``poolgate pools``: check pool files."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def pools() -> None:
    """Pool files: validate."""


@pools.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
def validate(file: Path) -> None:
    """Validate a pool FILE; errors name the key and line (exit 2)."""
    from gateway.pools import PoolFileError, load_pool_file

    try:
        pf = load_pool_file(file)
    except PoolFileError as exc:
        click.echo(f"invalid pool file:\n{exc}", err=True)
        raise SystemExit(2) from None
    click.echo(f"{file}: ok — {len(pf.backends)} backends, {len(pf.pools)} pools")
    for p in pf.pools:
        click.echo(f"  pool {p.name}: {', '.join(p.members)} (router {p.router}, objective {p.objective})")
