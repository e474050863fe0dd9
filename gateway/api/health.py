"""Liveness and readiness."""

from __future__ import annotations

import os

from fastapi import APIRouter
from starlette.responses import JSONResponse

from gateway.api.deps import BreakersDep, EngineDep, WriterDep
from gateway.store import ping

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """Liveness: the process serves HTTP. ``pid`` tells the workers of ``poolgate serve --workers N`` apart."""
    return JSONResponse({"status": "ok", "pid": os.getpid()})


@router.get("/health/ready")
async def ready(engine: EngineDep, writer: WriterDep, breakers: BreakersDep) -> JSONResponse:
    """Readiness: 200 while this replica serves requests, 503 when it refuses them.

    The log database being down does not make a replica unready: rows go to the local spool and are written
    when it returns (status ``degraded``). Were it otherwise, a database outage would take every replica out
    of its load balancer at once. Only a replica refusing requests (``spool_full_policy=refuse`` with a full
    spool, or a spool whose disk fails) is unready, so traffic moves to replicas that still have room.

    ``spool_error`` names why the spool cannot take rows (``"ENOSPC"``, ``"EROFS"``...; null when it can): rows
    then wait in memory, and are dropped (``spool_dropped_rows``) or requests refused, by ``spool_full_policy``.
    A failing spool is ``degraded`` even with the database up: the journal, on the same disk, fails too.
    """
    db_ok = await ping(engine)
    refusing = writer.refusing
    spool_error = writer.spool.error
    status = "ok" if db_ok and spool_error is None else ("unavailable" if refusing else "degraded")
    body = {"status": status, "database": db_ok, "log_queue_depth": writer.queue_depth,
            "spool_bytes": writer.spool.size_bytes, "spool_dropped_rows": writer.spool.dropped,
            "spool_error": spool_error, "breakers": breakers.states()}
    return JSONResponse(body, status_code=503 if refusing else 200)
