"""``poolgate keys``: create, list and revoke API keys in the database at POOLGATE_DATABASE_URL.

``revoke`` also sets the key's revocation marker in Redis when POOLGATE_REDIS_URL is set, so every running
replica refuses the key from its next request on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

T = TypeVar("T")


def _run(action: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``action(settings, KeyStore)`` against the configured database; one clear line on failure."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.limits.keys import KeyParamError, KeyStore
    from gateway.settings import Settings
    from gateway.store import StoreError, make_engine, upgrade_embedded
    from gateway.store.db import redact

    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc.errors()[0].get('msg', exc)}") from None

    async def go() -> T:
        await asyncio.to_thread(upgrade_embedded, settings.database_url)  # a fresh folder works, as for serve
        engine = make_engine(settings.database_url)
        try:
            return await action(settings, KeyStore(engine, cache_ttl_s=0))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except KeyParamError as exc:
        raise click.BadParameter(str(exc)) from None
    except (SQLAlchemyError, StoreError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        hint = " (run `poolgate db upgrade` first?)" if "api_keys" in detail else ""
        raise click.ClickException(f"{redact(settings.database_url)}: {detail}{hint}") from None


def _parse_flags(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        flags = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--default-flags") from None
    if not isinstance(flags, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"cost\": 0.8}'", param_hint="--default-flags")
    return flags


@click.group()
def keys() -> None:
    """API keys: create (secret shown once), list, revoke."""


@keys.command("create")
@click.option("--name", required=True, help="who or what the key is for")
@click.option("--budget-usd", type=float, default=None, help="spend limit per period (USD); unset = none")
@click.option("--period", type=click.Choice(["day", "week", "month", "total"]), default="month", show_default=True,
              help="budget period (UTC calendar; 'total' never resets)")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="requests per minute (sliding window)")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="tokens per minute (sliding window)")
@click.option("--pools", default=None, help="comma-separated pools the key may use; unset = all")
@click.option("--default-flags", default=None, help="routing flags as JSON, e.g. '{\"cost\": 0.8}'")
@click.option("--json", "as_json", is_flag=True, help="print the key (and secret) as JSON")
def create(name: str, budget_usd: float | None, period: str, rpm: int | None, tpm: int | None, pools: str | None,
           default_flags: str | None, as_json: bool) -> None:
    """Create a key and print its secret (the only time it is shown)."""
    flags = _parse_flags(default_flags)
    pool_list = [p.strip() for p in pools.split(",") if p.strip()] if pools is not None else None

    async def action(_: Any, store: Any) -> Any:
        return await store.create(name, budget_usd=budget_usd, period=period, rpm=rpm, tpm=tpm, pools=pool_list,
                                  default_flags=flags)

    record, secret = _run(action)
    if as_json:
        click.echo(json.dumps({**record.as_dict(), "secret": secret}))
        return
    click.echo(f"created {record.id} ({record.name})")
    click.echo(f"secret: {secret}")
    click.echo("store the secret now: only its hash is kept, it cannot be shown again")


@keys.command("list")
@click.option("--active", is_flag=True, help="hide revoked keys")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_keys(active: bool, as_json: bool) -> None:
    """List keys (never their secrets)."""

    async def action(_: Any, store: Any) -> Any:
        return await store.list(include_revoked=not active)

    records = _run(action)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records]))
        return
    if not records:
        click.echo("no keys")
        return
    click.echo(f"{'id':<17} {'name':<20} {'prefix':<11} {'budget':>14} {'rpm':>6} {'tpm':>8}  {'pools':<16} status")
    for r in records:
        budget = f"${r.budget_usd:g}/{r.budget_period}" if r.budget_usd is not None else "-"
        pools = ",".join(sorted(r.pools)) if r.pools is not None else "*"
        status = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
        click.echo(f"{r.id:<17} {r.name[:20]:<20} {r.key_prefix:<11} {budget:>14} {r.rpm or '-':>6} "
                   f"{r.tpm or '-':>8}  {pools[:16]:<16} {status}")


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke KEY_ID on every replica (at once with Redis; else within key_cache_ttl_s)."""

    async def action(settings: Any, store: Any) -> Any:
        if await store.get(key_id) is None:
            return None, False
        record = await store.revoke(key_id)
        if not settings.redis_url:
            return record, False
        # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
        from gateway.limits import make_limiter

        limiter = make_limiter(settings)
        try:
            await limiter.mark_revoked(key_id)
            return record, True
        except Exception as exc:  # stored as revoked anyway; say how far it got
            click.echo(f"warning: could not tell Redis ({type(exc).__name__}: {exc})", err=True)
            return record, False
        finally:
            await limiter.close()

    record, propagated = _run(action)
    if record is None:
        raise click.ClickException(f"no key {key_id!r}")
    how = "all replicas refuse it now (Redis)" if propagated else "replicas refuse it within key_cache_ttl_s"
    click.echo(f"revoked {record.id} ({record.name}); {how}")
