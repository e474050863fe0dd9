"""The services one gateway process holds: built whole by :func:`build_services`, started and stopped in order.

Every service is constructed here, once, from the settings and the pool file, and handed the services it uses; none
is attached to another after construction. Routes receive them through FastAPI dependencies
(``gateway.api.deps``); the app factory (``gateway.app``) only calls :func:`build_services`, :meth:`Services.start`
and :meth:`Services.stop` around the app's lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.cache.service import ResponseCache
from gateway.cache.store import RedisKV
from gateway.finish import RequestFinisher
from gateway.judge.service import JudgeService
from gateway.limits import make_limiter
from gateway.limits.base import Limiter
from gateway.limits.keys import KeyStore
from gateway.limits.tenancy import Tenancy
from gateway.loop.online import OnlineLearner
from gateway.metrics import Gauges, Metrics
from gateway.pools import PoolFile
from gateway.proxy.breaker import BreakerRegistry
from gateway.proxy.dispatch import Dispatcher
from gateway.proxy.http1 import Http1Transport
from gateway.proxy.upstream import Transport, limits_from
from gateway.routing.affinity import SessionAffinity
from gateway.routing.artifacts import ArtifactStore
from gateway.routing.embedding import Embedders
from gateway.routing.reload import RouterReloader
from gateway.routing.service import RoutingService
from gateway.routing.shadow import ShadowRecorder
from gateway.settings import Settings
from gateway.startup import startup_note, startup_step
from gateway.store import LogWriter, make_engine
from gateway.store.db import redact
from gateway.store.repository import LogRepository
from gateway.tracing import Tracing, make_tracing
from gateway.translate.store import ResponseStore
from gateway.ui.session import DashboardSessions


@dataclass(frozen=True)
class Services:
    """Everything the routes use; see the module docstring."""

    settings: Settings
    pool_file: PoolFile
    engine: AsyncEngine
    writer: LogWriter  # the log store's batched writer (gateway.store.writer)
    repository: LogRepository  # every read of the log store, reports aggregated in SQL (gateway.store.repository)
    embedders: Embedders
    routing: RoutingService
    shadow: ShadowRecorder
    artifacts: ArtifactStore
    reloader: RouterReloader
    upstream: Transport  # every backend call goes through it (gateway.proxy.upstream)
    breakers: BreakerRegistry
    dispatcher: Dispatcher
    metrics: Metrics
    keys: KeyStore
    limiter: Limiter
    tenancy: Tenancy
    finish: RequestFinisher  # the one "request finished" step: metrics, limits, log row
    responses: ResponseStore  # conversations behind /v1/responses' previous_response_id (per replica)
    tracing: Tracing  # OpenTelemetry spans (inert unless POOLGATE_OTEL_ENDPOINT is set; gateway.tracing)
    online: OnlineLearner  # labels update the live online router (gateway.loop.online)
    judge: JudgeService  # a share of answers scored by the pool's judge, off the request path (gateway.judge)
    sessions: DashboardSessions  # the dashboard's login sessions (gateway.ui.session)
    cache: ResponseCache  # pools' response caches (gateway.cache.service), in Redis when the gateway has it
    affinity: SessionAffinity  # conversations stick to their backend (gateway.routing.affinity), same Redis

    async def start(self) -> None:
        """Open the writer, load the live router versions, then start polling for new ones (before serving)."""
        # encoders load when first needed; those of the pools' routers start loading now, in the background
        encoders = sorted(self.routing.encoders_needed())
        self.embedders.preload(encoders)
        if "minilm-static" in encoders:  # a fraction of a second: ready before the first request
            with startup_step("loading the minilm-static encoder (packaged Model2Vec table)"):
                await self.embedders.ready("minilm-static")
        if "minilm" in encoders:
            startup_note("loading the minilm encoder in the background (the first requests wait for it)")
        with startup_step(f"opening the log store ({redact(self.settings.database_url)})"):
            await self.writer.start()
        with startup_step("loading promoted router versions"):
            await self.reloader.poll_once()
        self.reloader.start()
        await self.judge.restore_spend()  # the day's judge budget survives a restart
        judged = [p.name for p in self.pool_file.pools if p.judge is not None]
        if judged:
            startup_note(f"judge on for pool{'s' if len(judged) > 1 else ''} {', '.join(judged)}")
        self.judge.start()

    async def stop(self) -> None:
        """Stop polling, let rows waiting on shadow choices and pending settles through, then close in order."""
        await self.judge.stop()
        await self.online.save_all()  # what the online router learned since its last save survives the restart
        await self.reloader.stop()
        await self.shadow.drain()
        await self.tenancy.close()
        await self.affinity.drain()
        await self.cache.close()  # after affinity's writes: it owns the Redis client both use
        await self.limiter.close()
        await self.writer.stop()
        await self.upstream.aclose()
        await self.engine.dispose()
        self.embedders.close()
        self.tracing.close()


def load_routing(pool_file: PoolFile, base_dir: Path | None) -> RoutingService:
    """Every pool's router, loaded (:class:`RouterError` naming a bad artifact or a missing extra)."""
    routing = RoutingService(pool_file, base_dir=base_dir)
    with startup_step(f"loading routers ({', '.join(f'{p.name}: {p.router}' for p in pool_file.pools)})"):
        routing.load()
    return routing


def build_services(
    settings: Settings, pool_file: PoolFile, base_dir: Path | None, transport: Transport | None = None,
    tracer_provider: Any = None, routing: RoutingService | None = None,
) -> Services:
    """Construct every service (nothing starts yet). ``transport`` replaces the upstream transport and
    ``tracer_provider`` the OTLP exporter's (tests); ``routing``: the pools' routers, already loaded
    (:func:`load_routing`; ``poolgate serve`` loads them before uvicorn starts, so a bad one is a message, not a
    lifespan traceback)."""
    tracing = make_tracing(settings.otel_endpoint, tracer_provider)
    embedders = Embedders(settings.embedding_batch_window_ms, settings.static_model_dir)
    routing = routing or load_routing(pool_file, base_dir)
    routing.embedder = embedders.embed
    engine = make_engine(settings.database_url)
    writer = LogWriter(engine, settings)
    upstream = transport or Http1Transport(limits_from(settings))
    breakers = BreakerRegistry(pool_file.breaker.failure_threshold, pool_file.breaker.reset_after_s)
    metrics = Metrics(Gauges(
        breaker_states=breakers.states, backends=[b.name for b in pool_file.backends],
        queue_depth=lambda: writer.queue_depth, spool_bytes=lambda: writer.spool.size_bytes,
        rows_at_risk=lambda: {
            "not_journaled": writer.journal.unjournaled_rows if writer.journal is not None else 0,
            "spool_full_dropped": writer.spool.dropped, "rejected_by_database": writer.rejected_rows},
        journal_pinned_files=lambda: writer.journal.pinned_files if writer.journal is not None else 0,
        spool_error=lambda: writer.spool.error,
    ))
    limiter = make_limiter(settings)
    tenancy = Tenancy(settings, pool_file, limiter, metrics)
    shadow = ShadowRecorder(routing, writer=writer)  # rows waiting on shadow choices are journaled by the writer
    artifacts = ArtifactStore(engine, settings.artifacts_dir)
    reloader = RouterReloader(routing, artifacts, settings.router_reload_interval_s)
    repository = LogRepository(engine)
    dispatcher = Dispatcher(upstream, breakers, max_response_bytes=settings.max_response_bytes,
                            max_stream_bytes=settings.max_stream_bytes,
                            pool_timeout_s=settings.upstream_pool_timeout_s, tracing=tracing)
    online = OnlineLearner(routing, artifacts, reloader, settings.online_save_every)
    cache_redis = RedisKV(settings.redis_url, prefix=settings.redis_key_prefix, timeout_s=settings.redis_timeout_s,
                          retry_s=settings.redis_retry_s, max_connections=settings.redis_max_connections
                          ) if settings.redis_url else None
    return Services(
        settings=settings, pool_file=pool_file, engine=engine, writer=writer, repository=repository,
        embedders=embedders, routing=routing, shadow=shadow, artifacts=artifacts, reloader=reloader,
        upstream=upstream, breakers=breakers, dispatcher=dispatcher, metrics=metrics,
        keys=KeyStore(engine, settings.key_cache_ttl_s), limiter=limiter, tenancy=tenancy,
        finish=RequestFinisher(shadow, metrics, tenancy, writer, tracing), tracing=tracing, online=online,
        sessions=DashboardSessions(), responses=ResponseStore(settings.response_store_entries),
        judge=JudgeService(pool_file, dispatcher, writer, repository, on_label=online.learn),
        cache=ResponseCache(pool_file, embedders.embed, routing.encoder_of, metrics.registry, cache_redis),
        affinity=SessionAffinity(pool_file, breakers, cache_redis),
    )
