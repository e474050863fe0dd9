"""Admin API of the closed loop (master key only, :func:`gateway.limits.keys.require_master`).

- ``POST /admin/routers/reload``: poll the artifact table now (instead of waiting for the next poll) and answer
  what every pool serves afterwards, with any load error.
- ``GET /admin/routers/versions[?pool=]``: every registered router version and what this gateway serves.
- ``GET /admin/report/routing?since=7d&until=&by=pool&pool=``: the numbers of ``poolgate report`` as JSON.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Query
from starlette.responses import JSONResponse

from gateway.api.deps import Services, get_services
from gateway.errors import GatewayError
from gateway.limits.keys import require_master
from gateway.routing.artifacts import ArtifactStore

router = APIRouter(prefix="/admin", dependencies=[Depends(require_master)], tags=["admin"])


def _reloader_status(services: Services) -> dict[str, object]:
    if services.reloader is None:
        raise GatewayError(503, "router reloading is not running in this gateway", code="reload_unavailable")
    return services.reloader.status()


@router.post("/routers/reload")
async def reload_routers(services: Services = Depends(get_services)) -> JSONResponse:
    """Poll for promoted versions now; 200 with the serving status (errors are in it, per pool)."""
    _reloader_status(services)
    assert services.reloader is not None
    return JSONResponse(await services.reloader.poll_once())


@router.get("/routers/versions")
async def router_versions(pool: str | None = None, services: Services = Depends(get_services)) -> JSONResponse:
    store = ArtifactStore(services.engine, services.settings.artifacts_dir)
    records = await store.versions(pool)
    return JSONResponse({"object": "list", "data": [r.as_dict() for r in records],
                         "serving": _reloader_status(services)})


def parse_since(value: str | None, param: str) -> datetime | None:
    """``7d``-style durations (before now) or ISO datetimes; 400 naming ``param`` otherwise."""
    from training.from_logs import parse_when

    try:
        return parse_when(value)
    except ValueError as exc:
        raise GatewayError(400, f"{param}: {exc}", param=param) from None


@router.get("/report/routing")
async def routing_report(
    since: str | None = Query(default="7d"), until: str | None = Query(default=None),
    by: str = Query(default="pool"), pool: str | None = Query(default=None),
    services: Services = Depends(get_services),
) -> JSONResponse:
    """Requests, tokens, cost, feedback, latency, TEP, savings and shadow costs per group (gateway.loop.report)."""
    from gateway.loop.report import GROUPINGS, build_report, fetch_rows, report_json

    if by not in GROUPINGS:
        raise GatewayError(400, f"by must be one of {', '.join(GROUPINGS)}; got {by!r}", param="by")
    start, end = parse_since(since, "since"), parse_since(until, "until")
    rows = await fetch_rows(services.engine, start, end, pool)
    report = await asyncio.to_thread(build_report, rows, services.pool_file, by, start, end)
    return JSONResponse(report_json(report))
