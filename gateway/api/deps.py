"""The services one gateway process holds, built by the app factory and injected into routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from gateway.limits.tenancy import Tenancy
from gateway.metrics import Metrics
from gateway.pools import PoolFile
from gateway.proxy.breaker import BreakerRegistry
from gateway.proxy.dispatch import Dispatcher
from gateway.proxy.upstream import Transport
from gateway.routing.service import RoutingService
from gateway.settings import Settings
from gateway.store import LogWriter

if TYPE_CHECKING:
    from gateway.routing.reload import RouterReloader
    from gateway.routing.shadow import ShadowRecorder


@dataclass
class Services:
    settings: Settings
    pool_file: PoolFile
    routing: RoutingService
    upstream: Transport  # every backend call goes through it (gateway.proxy.upstream)
    breakers: BreakerRegistry
    dispatcher: Dispatcher
    engine: AsyncEngine
    writer: LogWriter
    metrics: Metrics
    tenancy: Tenancy
    extras: dict[str, Any] = field(default_factory=dict)
    #: closed loop (gateway.routing.reload.start_closed_loop): shadow choices for log rows, router version polling
    shadow: ShadowRecorder | None = None
    reloader: RouterReloader | None = None


async def get_services(request: Request) -> Services:
    """The process's services. Async on purpose: FastAPI runs a sync dependency in a worker thread, a thread
    hop per request."""
    services: Services = request.app.state.services
    return services
