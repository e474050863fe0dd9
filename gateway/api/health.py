"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from gateway.deps import Services, get_services
from gateway.store import ping

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """Liveness: the process serves HTTP."""
    return JSONResponse({"status": "ok"})


@router.get("/health/ready")
async def ready(services: Services = Depends(get_services)) -> JSONResponse:
    """Readiness: the log database answers."""
    db_ok = await ping(services.engine)
    body = {"status": "ok" if db_ok else "unavailable", "database": db_ok,
            "log_queue_depth": services.writer.queue_depth, "breakers": services.breakers.states()}
    return JSONResponse(body, status_code=200 if db_ok else 503)
