"""The app factory: the routes, and every service built once (``gateway.services``), started before serving and
stopped in order after."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from starlette.staticfiles import StaticFiles

from gateway.access_log import AccessLogMiddleware
from gateway.api import (
    admin,
    admin_loop,
    anthropic,
    completions,
    embeddings,
    feedback,
    health,
    metrics,
    openai,
    responses,
    ui,
)
from gateway.errors import install_error_handlers
from gateway.pools import DEMO_POOL_PATH, PoolFile, load_pool_file
from gateway.proxy.upstream import Transport
from gateway.routing.service import RoutingService
from gateway.services import build_services
from gateway.settings import Settings
from gateway.ui.render import STATIC_DIR

log = logging.getLogger("poolgate")


def resolve_pool_file(settings: Settings) -> tuple[PoolFile, Path]:
    """The configured pool file, or the demo pool; and the folder relative artifact paths start from."""
    path = settings.pool_file or DEMO_POOL_PATH
    return load_pool_file(path), Path(path).resolve().parent


def create_app(
    settings: Settings | None = None,
    pool_file: PoolFile | None = None,
    transport: Transport | None = None,
    tracer_provider: Any = None,
    *,
    base_dir: Path | None = None,
    routing: RoutingService | None = None,
) -> FastAPI:
    """Build the gateway. ``transport`` replaces its one upstream transport (default: ``Http1Transport``);
    ``tracer_provider`` (an OpenTelemetry TracerProvider) receives its spans instead of the OTLP exporter.
    ``base_dir``: where a given ``pool_file``'s relative artifact paths start (default: the cwd); ``routing``:
    its routers already loaded (``poolgate serve``), served by the first start instead of loading them again."""
    settings = settings or Settings()
    if pool_file is None:
        pool_file, base_dir = resolve_pool_file(settings)
    elif base_dir is None:
        base_dir = Path.cwd()
    preloaded = [routing]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        routing, preloaded[0] = preloaded[0], None  # a second start (tests reuse apps) loads its own
        services = build_services(settings, pool_file, base_dir, transport, tracer_provider, routing)
        await services.start()
        app.state.services = services  # read only by gateway.api.deps.get_services
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="poolgate",
        version="0.1.0",
        description="OpenAI-compatible gateway that routes each request to a model in a pool.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware)  # outermost: every request, whatever answers it
    app.include_router(openai.router)
    app.include_router(anthropic.router)
    app.include_router(responses.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(feedback.router)
    app.include_router(admin_loop.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)
    # the dashboard's CSS and JS (no secrets: the login page needs them before anyone signs in)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    return app
