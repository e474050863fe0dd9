"""``GET /metrics``: the Prometheus text exposition of this process's metrics (``gateway.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from gateway.api.deps import MetricsDep

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
