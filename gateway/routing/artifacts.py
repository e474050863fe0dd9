"""The artifact store: versioned router artifacts of each pool, as files on disk plus ``router_versions`` rows.

A version is written file first (``<artifacts_dir>/<pool>/<router>-<id>.router``, via :meth:`Router.save`),
then registered as a row holding its path and SHA-256. Promotion is one transaction that makes the chosen
version the pool's only ``live`` row; every gateway polls for that row (``gateway.routing.reload``) and swaps it in.
Rollback takes the live version down (``rolled_back``) and makes the most recently promoted ``retired`` one
live again; with none left the pool serves what its pool file says.

Paths are stored absolute, so every process that reads the table must see the same file system path
(one host, or a shared volume mounted at the same place).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.models import RouterVersion
from routers.base import Router, RouterError

_TABLE = cast(Table, RouterVersion.__table__)
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class ArtifactError(Exception):
    """A version that does not exist, cannot be promoted or rolled back, or a file that fails its checks."""


@dataclass(frozen=True)
class VersionRecord:
    """One ``router_versions`` row."""

    id: int
    pool: str
    router: str
    version: str
    status: str
    path: str
    sha256: str
    params: dict[str, Any] | None
    metrics: dict[str, Any]
    datasets: list[str] | None
    data_since: datetime | None
    data_until: datetime | None
    n_rows: int
    created_at: datetime
    promoted_at: datetime | None
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON view (datetimes as ISO strings) for the admin API and ``poolgate routers list --json``."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _record(row: Any) -> VersionRecord:
    data = dict(row._mapping)
    data["metrics"] = data.get("metrics") or {}
    return VersionRecord(**data)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _next_version(versions: Sequence[str]) -> str:
    numbers = [int(v[1:]) for v in versions if re.fullmatch(r"v\d+", v)]
    return f"v{max(numbers, default=0) + 1}"


class ArtifactStore:
    """Router versions of every pool: files under ``root`` and rows in ``router_versions`` (see the module doc)."""

    def __init__(self, engine: AsyncEngine, root: Path) -> None:
        self.engine = engine
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------------------
    async def register(
        self,
        pool: str,
        router: Router,
        *,
        metrics: dict[str, Any],
        n_rows: int,
        params: dict[str, Any] | None = None,
        datasets: list[str] | None = None,
        data_since: datetime | None = None,
        data_until: datetime | None = None,
        note: str | None = None,
    ) -> VersionRecord:
        """Save ``router`` as a new ``candidate`` version of ``pool`` (``v<n+1>``) and return its row."""
        folder = (self.root / _SAFE.sub("_", pool)).resolve()
        path = folder / f"{router.name}-{uuid.uuid4().hex[:12]}.router"
        try:
            router.save(path)
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot write artifact ({exc.strerror or exc})") from None
        values = {
            "pool": pool, "router": router.name, "status": "candidate", "path": str(path),
            "sha256": file_sha256(path), "params": params, "metrics": metrics, "datasets": datasets,
            "data_since": data_since, "data_until": data_until, "n_rows": n_rows,
            "created_at": datetime.now(UTC), "promoted_at": None, "note": note,
        }
        for _ in range(5):  # another trainer may take the same version number: take the next one
            try:
                async with self.engine.begin() as conn:
                    taken = (await conn.execute(select(_TABLE.c.version).where(_TABLE.c.pool == pool))).scalars()
                    values["version"] = _next_version(list(taken))
                    await conn.execute(_TABLE.insert().values(**values))
                break
            except IntegrityError:
                continue
        else:
            raise ArtifactError(f"pool {pool!r}: could not allocate a version number (concurrent trainers?)")
        record = await self.get(pool, str(values["version"]))
        assert record is not None
        return record

    async def promote(self, pool: str, version: str) -> VersionRecord:
        """Make ``version`` the live version of ``pool`` (the previous live one becomes ``retired``)."""
        async with self.engine.begin() as conn:
            target = await self._locked(conn, pool, version)
            if target is None:
                raise ArtifactError(f"pool {pool!r} has no router version {version!r} (see: poolgate routers list)")
            now = datetime.now(UTC)
            await conn.execute(
                update(_TABLE).where(_TABLE.c.pool == pool, _TABLE.c.status == "live", _TABLE.c.id != target.id)
                .values(status="retired")
            )
            await conn.execute(update(_TABLE).where(_TABLE.c.id == target.id).values(status="live", promoted_at=now))
        record = await self.get(pool, version)
        assert record is not None
        return record

    async def rollback(self, pool: str) -> tuple[VersionRecord, VersionRecord | None]:
        """Take ``pool``'s live version down; the most recently promoted retired version (if any) goes live.

        Returns (version taken down, version now live or None: the pool file's router then serves).
        """
        async with self.engine.begin() as conn:
            await self._locked(conn, pool, None)
            rows = (await conn.execute(select(_TABLE).where(_TABLE.c.pool == pool))).all()
            records = [_record(r) for r in rows]
            live = next((r for r in records if r.status == "live"), None)
            if live is None:
                raise ArtifactError(f"pool {pool!r} has no live router version to roll back")
            retired = [r for r in records if r.status == "retired" and r.promoted_at is not None]
            previous = max(retired, key=lambda r: (r.promoted_at or live.created_at, r.id), default=None)
            await conn.execute(update(_TABLE).where(_TABLE.c.id == live.id).values(status="rolled_back"))
            if previous is not None:
                await conn.execute(
                    update(_TABLE).where(_TABLE.c.id == previous.id)
                    .values(status="live", promoted_at=datetime.now(UTC))
                )
        down = await self.get(pool, live.version)
        up = await self.get(pool, previous.version) if previous is not None else None
        assert down is not None
        return down, up

    async def _locked(self, conn: AsyncConnection, pool: str, version: str | None) -> VersionRecord | None:
        """Lock ``pool``'s rows for this transaction (PostgreSQL; SQLite serializes writers anyway)."""
        query = select(_TABLE).where(_TABLE.c.pool == pool)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        rows = [_record(r) for r in (await conn.execute(query)).all()]
        return next((r for r in rows if r.version == version), None)

    # -- reading -------------------------------------------------------------------------------------
    async def get(self, pool: str, version: str) -> VersionRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(_TABLE).where(_TABLE.c.pool == pool, _TABLE.c.version == version)
            )).first()
        return _record(row) if row is not None else None

    async def versions(self, pool: str | None = None) -> list[VersionRecord]:
        """Every version (of ``pool``, or of all pools), oldest first."""
        query = select(_TABLE).order_by(_TABLE.c.pool, _TABLE.c.id)
        if pool is not None:
            query = query.where(_TABLE.c.pool == pool)
        async with self.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(query)).all()]

    async def live(self) -> dict[str, VersionRecord]:
        """The live version of each pool that has one."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(_TABLE).where(_TABLE.c.status == "live"))).all()
        return {r.pool: r for r in map(_record, rows)}

    async def newest(self, pool: str, router: str) -> VersionRecord | None:
        """The newest version of ``router`` for ``pool`` that was not rolled back (shadow routers run it)."""
        query = (
            select(_TABLE)
            .where(_TABLE.c.pool == pool, _TABLE.c.router == router, _TABLE.c.status != "rolled_back")
            .order_by(_TABLE.c.id.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(_TABLE))).scalar_one())


def load_version(record: VersionRecord) -> Router:
    """Read a version's artifact, refusing a file whose SHA-256 or router differs from the row (blocking I/O).

    The digest is checked on the very bytes that are parsed (one read), so swapping the file cannot slip past it."""
    path = Path(record.path)
    try:
        router = Router.load(path, sha256=record.sha256)
    except RouterError as exc:
        raise ArtifactError(f"{record.pool} {record.version}: {exc}") from None
    if router.name != record.router:
        raise ArtifactError(
            f"{record.pool} {record.version}: artifact holds {router.name!r}, the row says {record.router!r}"
        )
    if router.evaluation_only:
        raise ArtifactError(f"{record.pool} {record.version}: router {router.name!r} is for evaluation only")
    return router
