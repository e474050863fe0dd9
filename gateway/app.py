"""The app factory: builds every service once, injects them, and tears them down in order."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from gateway.api import admin, admin_loop, feedback, health, openai
from gateway.api.deps import Services
from gateway.errors import install_error_handlers
from gateway.limits import make_limiter
from gateway.limits.keys import KeyStore
from gateway.limits.tenancy import Tenancy
from gateway.metrics import Metrics
from gateway.metrics import router as metrics_router
from gateway.pools import DEMO_POOL_PATH, PoolFile, load_pool_file
from gateway.proxy.breaker import BreakerRegistry
from gateway.proxy.dispatch import Dispatcher
from gateway.proxy.http1 import Http1Transport
from gateway.proxy.upstream import Transport, limits_from
from gateway.routing.embedding import Embedders
from gateway.routing.reload import start_closed_loop, stop_closed_loop
from gateway.routing.service import RoutingService
from gateway.settings import Settings
from gateway.store import LogWriter, make_engine

log = logging.getLogger("poolgate")


def resolve_pool_file(settings: Settings) -> tuple[PoolFile, Path]:
    """The configured pool file, or the demo pool; and the folder relative artifact paths start from."""
    path = settings.pool_file or DEMO_POOL_PATH
    return load_pool_file(path), Path(path).resolve().parent


def create_app(
    settings: Settings | None = None,
    pool_file: PoolFile | None = None,
    transport: Transport | None = None,
) -> FastAPI:
    """Build the gateway. ``transport`` replaces its one upstream transport (default: ``Http1Transport``)."""
    settings = settings or Settings()
    if pool_file is None:
        pool_file, base_dir = resolve_pool_file(settings)
    else:
        base_dir = Path.cwd()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        routing = RoutingService(pool_file, base_dir=base_dir)
        routing.load()
        # encoders load when first needed; those of the pools' routers start loading now, in the background
        embedders = Embedders(settings.embedding_batch_window_ms, settings.static_table_dir)
        embedders.preload(routing.encoders_needed())
        routing.embedder = embedders.embed
        upstream = transport or Http1Transport(limits_from(settings))  # every backend call goes through it
        breakers = BreakerRegistry(pool_file.breaker.failure_threshold, pool_file.breaker.reset_after_s)
        engine = make_engine(settings.database_url)
        writer = LogWriter(engine, settings)
        await writer.start()
        metrics = Metrics()
        metrics.bind(breaker_states=breakers.states, backends=[b.name for b in pool_file.backends],
                     queue_depth=lambda: writer.queue_depth, spool_bytes=lambda: writer.spool.size_bytes,
                     rows_at_risk=lambda: {
                         "not_journaled": writer.journal.unjournaled_rows if writer.journal is not None else 0,
                         "spool_full_dropped": writer.spool.dropped, "rejected_by_database": writer.rejected_rows},
                     journal_pinned_files=lambda: writer.journal.pinned_files if writer.journal is not None else 0)
        keys = KeyStore(engine, settings.key_cache_ttl_s)
        tenancy = Tenancy(settings, pool_file, keys, make_limiter(settings), metrics, writer)
        app.state.services = Services(
            settings=settings, pool_file=pool_file, routing=routing, upstream=upstream, breakers=breakers,
            dispatcher=Dispatcher(upstream, breakers, max_response_bytes=settings.max_response_bytes,
                                  max_stream_bytes=settings.max_stream_bytes,
                                  pool_timeout_s=settings.upstream_pool_timeout_s),
            engine=engine, writer=writer, metrics=metrics, tenancy=tenancy,
        )

        await start_closed_loop(app.state.services, settings.artifacts_dir, settings.router_reload_interval_s)
        try:
            yield
        finally:
            await stop_closed_loop(app.state.services)
            await tenancy.close()
            await writer.stop()
            await upstream.aclose()
            await engine.dispose()
            embedders.close()

    app = FastAPI(
        title="poolgate",
        version="0.1.0",
        description="OpenAI-compatible gateway that routes each request to a model in a pool.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(feedback.router)
    app.include_router(admin_loop.router)
    app.include_router(metrics_router)
    return app
