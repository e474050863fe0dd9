"""Admin API of the closed loop (master key only, :func:`gateway.api.deps.require_master`).

- ``POST /admin/routers/reload``: poll the artifact table now (instead of waiting for the next poll) and answer
  what every pool serves afterwards, with any load error.
- ``GET /admin/routers/versions[?pool=]``: every registered router version and what this gateway serves.
- ``GET /admin/report/routing?since=7d&until=&by=pool&pool=``: the numbers of ``poolgate report`` as JSON.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query
from starlette.responses import JSONResponse

from gateway.api.deps import ArtifactsDep, PoolFileDep, ReloaderDep, RepositoryDep, require_master
from gateway.errors import GatewayError
from gateway.loop.report import GROUPINGS, report_json
from gateway.loop.report import routing_report as build_routing_report
from training.from_logs import parse_when

router = APIRouter(prefix="/admin", dependencies=[Depends(require_master)], tags=["admin"])


@router.post("/routers/reload")
async def reload_routers(reloader: ReloaderDep) -> JSONResponse:
    """Poll for promoted versions now; 200 with the serving status (errors are in it, per pool)."""
    return JSONResponse(await reloader.poll_once())


@router.get("/routers/versions")
async def router_versions(artifacts: ArtifactsDep, reloader: ReloaderDep, pool: str | None = None) -> JSONResponse:
    records = await artifacts.versions(pool)
    return JSONResponse({"object": "list", "data": [r.as_dict() for r in records], "serving": reloader.status()})


def parse_since(value: str | None, param: str) -> datetime | None:
    """``7d``-style durations (before now) or ISO datetimes; 400 naming ``param`` otherwise."""
    try:
        return parse_when(value)
    except ValueError as exc:
        raise GatewayError(400, f"{param}: {exc}", param=param) from None


@router.get("/report/routing")
async def routing_report(
    since: str | None = Query(default="7d"), until: str | None = Query(default=None),
    by: str = Query(default="pool"), pool: str | None = Query(default=None),
    *, repository: RepositoryDep, pool_file: PoolFileDep,
) -> JSONResponse:
    """Requests, tokens, cost, feedback, latency, TEP, savings and shadow costs per group (gateway.loop.report),
    aggregated by the database over the window."""
    if by not in GROUPINGS:
        raise GatewayError(400, f"by must be one of {', '.join(GROUPINGS)}; got {by!r}", param="by")
    start, end = parse_since(since, "since"), parse_since(until, "until")
    report = await build_routing_report(repository, pool_file, by, start, end, pool)
    return JSONResponse(report_json(report))
