"""``poolgate pools``: check pool files."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def pools() -> None:
    """Pool files: validate them; check that their backends answer."""


@pools.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="warnings (an unset api_key_env variable) fail too")
def validate(file: Path, strict: bool) -> None:
    """Validate a pool FILE; errors name the key and line (exit 2).

    Errors: what the gateway refuses to load, and what it would load but serve badly (a learned router with no
    artifact, a missing artifact file). Warnings (exit 0 unless --strict): an api_key_env variable unset here."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.pools import PoolFileError, lint_pool_file, load_pool_file

    try:
        pf = load_pool_file(file)
        errors, warnings = lint_pool_file(file)
    except PoolFileError as exc:
        click.echo(f"invalid pool file:\n{exc}", err=True)
        raise SystemExit(2) from None
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    if errors or (strict and warnings):
        click.echo("invalid pool file:\n" + "\n".join(errors or warnings), err=True)
        raise SystemExit(2)
    click.echo(f"{file}: ok — {len(pf.backends)} backends, {len(pf.pools)} pools")
    for p in pf.pools:
        click.echo(f"  pool {p.name}: {', '.join(p.members)} (router {p.router}, objective {p.objective})")
    for b in pf.backends:
        if b.api != "openai":
            click.echo(f"  backend {b.name}: {b.serves()}")


@pools.command("check")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="print the probe results as JSON")
def check(file: Path | None, as_json: bool) -> None:
    """Probe every backend of FILE (default: POOLGATE_POOL_FILE, else the demo pool); exit 1 if any is down.

    Each backend gets ``GET <base_url>/models``, or a 1-token chat completion where that route is missing.
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import asyncio
    import json

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.pools import DEMO_POOL_PATH, PoolFileError, load_pool_file
    from gateway.proxy.http1 import Http1Transport
    from gateway.proxy.probe import probe_all
    from gateway.proxy.upstream import limits_from
    from gateway.settings import Settings

    settings = Settings()
    path = file or settings.pool_file or DEMO_POOL_PATH
    try:
        pf = load_pool_file(path)
    except PoolFileError as exc:
        click.echo(f"invalid pool file:\n{exc}", err=True)
        raise SystemExit(2) from None

    async def probe() -> list[dict[str, object]]:
        upstream = Http1Transport(limits_from(settings))
        try:
            return await probe_all(pf, upstream)
        finally:
            await upstream.aclose()

    results = asyncio.run(probe())
    if as_json:
        click.echo(json.dumps(results))
    else:
        for r in results:
            state = "ok  " if r["ok"] else "DOWN"
            detail = f"HTTP {r['status']}" if r["status"] is not None else ""
            if r["error"]:
                detail = f"{detail} {r['error']}".strip()
            click.echo(f"{state} {r['backend']:<24} {r['latency_ms']:>8.1f} ms  via {r['probe']:<6} {detail}")
    if not all(r["ok"] for r in results):
        raise SystemExit(1)
