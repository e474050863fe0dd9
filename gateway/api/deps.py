"""What routes receive: the app's services (``gateway.services``) and the caller's key, as FastAPI dependencies.

Each is an ``Annotated`` type (FastAPI's full-stack template habit): a route parameter ``keys: KeysDep`` gets the
key store, ``key: CallerKey`` the authenticated caller. :func:`get_services` is the only reader of ``app.state``.
Every dependency is async on purpose: FastAPI runs a sync dependency in a worker thread, a thread hop per request.

``authenticate`` (inference routes): with ``auth_enabled`` off it returns None at once (the local demo); on, it
maps ``Authorization: Bearer`` (or Anthropic's ``x-api-key``) to a :class:`~gateway.limits.keys.KeyRecord` or
answers 401 as error JSON; the master key is accepted too. ``require_master`` (admin routes): the master key
only, else 401 (403 with no master key configured).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.limits.base import Limiter
from gateway.limits.keys import MASTER, KeyRecord, KeyStore, is_master
from gateway.loop.online import OnlineLearner
from gateway.metrics import Metrics
from gateway.pools import PoolFile
from gateway.proxy.breaker import BreakerRegistry
from gateway.proxy.upstream import Transport
from gateway.routing.artifacts import ArtifactStore
from gateway.routing.reload import RouterReloader
from gateway.routing.service import RoutingService
from gateway.services import Services
from gateway.settings import Settings
from gateway.store import LogWriter
from gateway.store.repository import LogRepository
from gateway.ui.session import DashboardSessions


async def get_services(request: Request) -> Services:
    """The process's services, built by the app factory."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _service(name: str) -> Callable[..., Awaitable[Any]]:
    """The dependency that gives ``services.<name>`` (a name that is not a ``Services`` field fails at import)."""
    if name not in {f.name for f in dataclasses.fields(Services)}:
        raise AttributeError(f"Services has no field {name!r}")

    async def dependency(services: ServicesDep) -> Any:
        return getattr(services, name)

    dependency.__name__ = f"get_{name}"
    return dependency


EngineDep = Annotated[AsyncEngine, Depends(_service("engine"))]
RepositoryDep = Annotated[LogRepository, Depends(_service("repository"))]
SettingsDep = Annotated[Settings, Depends(_service("settings"))]
PoolFileDep = Annotated[PoolFile, Depends(_service("pool_file"))]
RoutingDep = Annotated[RoutingService, Depends(_service("routing"))]
ArtifactsDep = Annotated[ArtifactStore, Depends(_service("artifacts"))]
ReloaderDep = Annotated[RouterReloader, Depends(_service("reloader"))]
UpstreamDep = Annotated[Transport, Depends(_service("upstream"))]
BreakersDep = Annotated[BreakerRegistry, Depends(_service("breakers"))]
WriterDep = Annotated[LogWriter, Depends(_service("writer"))]
MetricsDep = Annotated[Metrics, Depends(_service("metrics"))]
KeysDep = Annotated[KeyStore, Depends(_service("keys"))]
LimiterDep = Annotated[Limiter, Depends(_service("limiter"))]
OnlineDep = Annotated[OnlineLearner, Depends(_service("online"))]
SessionsDep = Annotated[DashboardSessions, Depends(_service("sessions"))]


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def api_key_of(request: Request) -> str | None:
    """The caller's key: ``Authorization: Bearer`` (OpenAI clients), else ``x-api-key`` (Anthropic clients)."""
    return bearer_token(request) or (request.headers.get("x-api-key") or "").strip() or None


def _unauthorized(message: str, code: str) -> GatewayError:
    return GatewayError(401, message, code=code, headers={"www-authenticate": "Bearer"})


async def authenticate(
    request: Request, settings: SettingsDep, keys: KeysDep, metrics: MetricsDep
) -> KeyRecord | None:
    """The caller's key (None when auth is off); 401 when missing, unknown or revoked."""
    if not settings.auth_enabled:
        return None
    secret = api_key_of(request)
    if secret is None:
        metrics.auth_failure("missing")
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
    if is_master(secret, settings.master_key):
        return MASTER
    record = await keys.by_secret(secret)
    if record is None:
        metrics.auth_failure("invalid")
        raise _unauthorized(f"invalid API key {secret[:6]}...", "invalid_api_key")
    if record.revoked:
        metrics.auth_failure("revoked")
        raise _unauthorized(f"API key {record.id} was revoked", "revoked_api_key")
    return record


async def require_master(request: Request, settings: SettingsDep) -> None:
    """The master key (settings.master_key) or 401/403."""
    master_key = settings.master_key
    if not master_key:
        raise GatewayError(403, "the admin API is disabled: set POOLGATE_MASTER_KEY", code="admin_disabled")
    secret = bearer_token(request)
    if secret is None:
        raise _unauthorized("missing master key: send 'Authorization: Bearer <master key>'", "missing_api_key")
    if not is_master(secret, master_key):
        raise _unauthorized("the admin API needs the master key", "invalid_api_key")


CallerKey = Annotated[KeyRecord | None, Depends(authenticate)]
