"""``poolgate routers list|promote|rollback|register-descriptions``: the versioned routers of each pool (artifact
store), and the model descriptions a graph artifact knows.

Gateways pick a promotion or rollback up at their next poll (``POOLGATE_ROUTER_RELOAD_INTERVAL_S``); ``--notify
URL`` (repeatable) also asks those gateways to reload now (``POST URL/admin/routers/reload`` with the master key).
The helpers here (settings, pool file, database) are shared by ``train``, ``report`` and ``feedback``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.pools import PoolFile
    from gateway.routing.artifacts import VersionRecord
    from gateway.settings import Settings

T = TypeVar("T")


def load_context(pool_file: Path | None = None) -> tuple[Settings, PoolFile, Path]:
    """Settings, the pool file (``--pool-file``, else POOLGATE_POOL_FILE, else the demo pool) and its folder."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from pydantic import ValidationError

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.app import resolve_pool_file
    from gateway.pools import PoolFileError, load_pool_file
    from gateway.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc.errors()[0].get('msg', exc)}") from None
    try:
        if pool_file is not None:
            return settings, load_pool_file(pool_file), pool_file.resolve().parent
        pools, base = resolve_pool_file(settings)
    except PoolFileError as exc:
        raise click.ClickException(str(exc)) from None
    return settings, pools, base


def with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Migrate an embedded SQLite store (as ``serve`` does), then run ``work(engine)`` and dispose the engine.

    Database errors become one-line ClickExceptions (a PostgreSQL store must be migrated: poolgate db upgrade).
    """
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.store import StoreError, make_engine, upgrade_embedded

    try:
        upgrade_embedded(settings.database_url)
        engine = make_engine(settings.database_url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> T:
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (OperationalError, ProgrammingError, DBAPIError) as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise click.ClickException(f"log store error ({first}); is the schema current? run: poolgate db upgrade") \
            from None


def notify(urls: tuple[str, ...], master_key: str | None) -> None:
    """Ask each gateway at ``urls`` to reload its routers now; report each outcome, never fail the command."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import httpx

    for url in urls:
        headers = {"authorization": f"Bearer {master_key}"} if master_key else {}
        try:
            resp = httpx.post(f"{url.rstrip('/')}/admin/routers/reload", headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            click.echo(f"notify {url}: failed ({exc})", err=True)
            continue
        if resp.status_code != 200:
            click.echo(f"notify {url}: HTTP {resp.status_code} {resp.text[:200]}", err=True)
            continue
        pools = resp.json().get("pools", {})
        serving = ", ".join(f"{p} -> {s['router']} {s['version']}" + (f" (error: {s['last_error']})"
                                                                       if s.get("last_error") else "")
                            for p, s in pools.items())
        click.echo(f"notify {url}: {serving}")


def version_line(r: VersionRecord) -> str:
    heldout = r.metrics.get("heldout") or {}
    serving = r.metrics.get("serving") or {}
    util = heldout.get("utility")
    base = serving.get("utility")
    score = "-" if util is None else f"{util:.4f}" + ("" if base is None else f" (serving then {base:.4f})")
    encoder = f" on {r.metrics['encoder']}" if r.metrics.get("encoder") else ""
    return (f"{r.pool:<12} {r.version:<6} {r.router + encoder:<26} {r.status:<12} rows {r.n_rows:<6} "
            f"held-out utility {score:<28} created {r.created_at:%Y-%m-%d %H:%M:%S}{preset_text(r.metrics)}")


def preset_text(metrics: dict[str, Any]) -> str:
    """``  presets: balanced lambda 41.2 (oof 97.1% quality, 38.0% cost), ...`` from a version's calibration."""
    presets = metrics.get("presets") or {}
    parts = [f"{name} lambda {p['lambda']:.4g} (oof {100 * p['oof_quality_fraction']:.1f}% quality, "
             f"{100 * p['oof_cost_fraction']:.1f}% cost)"
             for name, p in presets.items() if isinstance(p, dict) and name != "quality-first"]
    if not parts:
        return "\n    presets: uncalibrated (quality_target resolves by the price-ratio rule)"
    return f"\n    presets: {'; '.join(parts)}; caution {presets.get('caution', 0):g}"


notify_option = click.option("--notify", "notify_urls", multiple=True, metavar="URL",
                             help="gateway base URL to reload now (POST /admin/routers/reload); repeatable")


@click.group()
def routers() -> None:
    """List, promote and roll back the trained router versions of each pool."""


@routers.command("list")
@click.option("--pool", default=None, help="only this pool")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def list_versions(pool: str | None, as_json: bool) -> None:
    """Every registered version (oldest first) with its status and held-out numbers."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.routing.artifacts import ArtifactStore

    settings, _, _ = load_context()
    records = with_engine(settings, lambda e: ArtifactStore(e, settings.artifacts_dir).versions(pool))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no router versions yet (train one: poolgate train --router knn --pool POOL)")
    for r in records:
        click.echo(version_line(r))


def _store_call(fn: Callable[[Any], Awaitable[T]]) -> T:
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.routing.artifacts import ArtifactError, ArtifactStore

    settings, _, _ = load_context()
    try:
        return with_engine(settings, lambda e: fn(ArtifactStore(e, settings.artifacts_dir)))
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from None


@routers.command()
@click.argument("pool")
@click.argument("version")
@notify_option
def promote(pool: str, version: str, notify_urls: tuple[str, ...]) -> None:
    """Make VERSION (e.g. v3) the live router of POOL; the previous live version is retired."""
    record = _store_call(lambda store: store.promote(pool, version))
    click.echo(f"promoted: {version_line(record)}")
    notify(notify_urls, load_context()[0].master_key)


@routers.command()
@click.argument("pool")
@notify_option
def rollback(pool: str, notify_urls: tuple[str, ...]) -> None:
    """Take POOL's live version down; the previously promoted one (else the pool file's router) serves again."""
    down, up = _store_call(lambda store: store.rollback(pool))
    click.echo(f"rolled back: {version_line(down)}")
    click.echo(f"now live:    {version_line(up)}" if up else "now live:    the pool file's router (no version left)")
    notify(notify_urls, load_context()[0].master_key)


@routers.command("register-descriptions")
@click.option("--artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="the graph router artifact to add descriptions to (rewritten in place)")
@click.option("--pool-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the pool YAML whose backends' descriptions to embed (default: POOLGATE_POOL_FILE, else the demo)")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".poolgate/embeddings"),
              help="embedding cache folder")
def register_descriptions(artifact: Path, pool_file: Path | None, cache_dir: Path) -> None:
    """Embed every backend description of the pool file into a graph ARTIFACT, so the gateway scores models the
    graph never saw from their real descriptions, without retraining."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from routers.base import RouterError
    from training.features import Featurizer  # why: loads the sentence model (torch) only for this command
    from training.graph_eval import register_descriptions as register

    _, pools, _ = load_context(pool_file)
    cards = [b.card() for b in pools.backends]
    try:
        registered, unseen = register(artifact, cards, Featurizer(cache_dir=cache_dir, encoder="minilm").embed)
    except (RouterError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{artifact}: {registered} registered descriptions; models not in the graph: {unseen}")
