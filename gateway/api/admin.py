"""Admin API (master key only): API keys, pools and their health, router versions, usage reports, as JSON.

``GET/POST /admin/keys``, ``GET /admin/keys/{id}`` (with live usage), ``POST /admin/keys/{id}/revoke``,
``GET /admin/pools``, ``GET /admin/pools/health`` (probes every backend now), ``GET /admin/routers``,
``GET /admin/limits``, ``GET /admin/report?since=&until=&key_id=``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from gateway.api.deps import (
    BreakersDep,
    KeysDep,
    LimiterDep,
    PoolFileDep,
    RepositoryDep,
    RoutingDep,
    SettingsDep,
    UpstreamDep,
    WriterDep,
    require_master,
)
from gateway.errors import GatewayError
from gateway.limits.base import MAX_BUDGET_USD, MAX_RPM, MAX_TPM, KeyUsage, LimitsUnavailable, Period, from_nano
from gateway.limits.keys import (
    MAX_KEY_NAME_CHARS,
    MAX_KEY_POOLS,
    MAX_POOL_NAME_CHARS,
    KeyParamError,
    KeyRecord,
    KeyStore,
)
from gateway.proxy.probe import probe_all

router = APIRouter(prefix="/admin", dependencies=[Depends(require_master)], tags=["admin"])


PoolName = Annotated[str, Field(min_length=1, max_length=MAX_POOL_NAME_CHARS)]


class NewKey(BaseModel):
    """Body of ``POST /admin/keys``. Every field is bounded here (a 400 naming it), before the database or a
    limiter sees it: strict numbers (no "5", true or "Infinity"), rpm/tpm within 32 bits, a budget whose nano-USD
    Redis adds exactly (``gateway.limits.base``); ``gateway.limits.keys.validate_key_params`` checks the rest."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_KEY_NAME_CHARS)
    budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD, strict=True, allow_inf_nan=False)
    period: Period = "month"
    rpm: int | None = Field(default=None, ge=1, le=MAX_RPM, strict=True)
    tpm: int | None = Field(default=None, ge=1, le=MAX_TPM, strict=True)
    pools: list[PoolName] | None = Field(default=None, max_length=MAX_KEY_POOLS)
    default_flags: dict[str, Any] | None = Field(default=None, max_length=16)


@router.get("/keys")
async def list_keys(keys: KeysDep, include_revoked: bool = True) -> JSONResponse:
    found = await keys.list(include_revoked=include_revoked)
    return JSONResponse({"object": "list", "data": [k.as_dict() for k in found]})


@router.post("/keys", status_code=201)
async def create_key(body: NewKey, keys: KeysDep, pool_file: PoolFileDep) -> JSONResponse:
    """Create a key; the response holds its secret, which is not stored and cannot be shown again."""
    known = {p.name for p in pool_file.pools}
    unknown = sorted(set(body.pools or ()) - known)
    if unknown:
        raise GatewayError(400, f"unknown pool(s) {unknown}; known: {sorted(known)}", param="pools")
    try:
        record, secret = await keys.create(
            body.name, budget_usd=body.budget_usd, period=body.period, rpm=body.rpm, tpm=body.tpm,
            pools=body.pools, default_flags=body.default_flags,
        )
    except KeyParamError as exc:
        raise GatewayError(400, str(exc), param=exc.param, code="invalid_value") from None
    return JSONResponse({**record.as_dict(), "secret": secret}, status_code=201)


async def _key_or_404(keys: KeyStore, key_id: str) -> KeyRecord:
    record = await keys.get(key_id)
    if record is None:
        raise GatewayError(404, f"no API key {key_id[:80]!r}", param="key_id", code="key_not_found")
    return record


def usage_dict(record: KeyRecord, usage: KeyUsage) -> dict[str, Any]:
    spent, reserved = from_nano(usage.spent_nano), from_nano(usage.reserved_nano)
    left = None if record.budget_usd is None else max(0.0, record.budget_usd - spent - reserved)
    return {"requests_in_window": usage.requests_in_window, "tokens_in_window": usage.tokens_in_window,
            "period": usage.period_id, "spent_usd": spent, "reserved_usd": reserved, "budget_left_usd": left}


@router.get("/keys/{key_id}")
async def get_key(key_id: str, keys: KeysDep, limiter: LimiterDep) -> JSONResponse:
    """A key and its usage now (sliding-window counts, spend in the current budget period)."""
    record = await _key_or_404(keys, key_id)
    try:
        usage: dict[str, Any] | None = usage_dict(record, await limiter.usage(record.limits()))
        error = None
    except LimitsUnavailable as exc:  # the limit store is down: the key itself is still worth showing
        usage, error = None, exc.reason
    return JSONResponse({**record.as_dict(), "usage": usage, "usage_error": error})


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, keys: KeysDep, limiter: LimiterDep) -> JSONResponse:
    """Revoke a key: every replica refuses it from its next request (Redis marker; else ``key_cache_ttl_s``)."""
    await _key_or_404(keys, key_id)
    record = await keys.revoke(key_id)
    try:
        await limiter.mark_revoked(key_id)
        propagated = True
    except LimitsUnavailable:  # stored as revoked anyway; other replicas see it when their cache expires
        propagated = False
    assert record is not None
    return JSONResponse({**record.as_dict(), "revocation_propagated": propagated})


@router.get("/pools")
async def list_pools(routing: RoutingDep, breakers: BreakersDep) -> JSONResponse:
    states = breakers.states()
    data = []
    for name, rt in routing.runtimes.items():
        data.append({
            "name": name, "router": rt.router.name, "router_version": rt.router_version,
            "objective": rt.config.objective, "fallback": rt.config.fallback,
            "backends": [{"name": b.name, "model": b.model, "base_url": b.base_url, "input_price": b.input_price,
                          "output_price": b.output_price, "breaker": states.get(b.name, "closed")}
                         for b in rt.backends],
        })
    return JSONResponse({"object": "list", "data": data})


@router.get("/pools/health")
async def pools_health(pool_file: PoolFileDep, upstream: UpstreamDep) -> JSONResponse:
    """Probe every backend now (``GET /models``, or a 1-token chat completion where that is missing)."""
    results = await probe_all(pool_file, upstream)
    healthy = all(r["ok"] for r in results)
    return JSONResponse({"healthy": healthy, "backends": results}, status_code=200 if healthy else 503)


@router.get("/routers")
async def routers(routing: RoutingDep) -> JSONResponse:
    data = [{"pool": name, "router": rt.router.name, "version": rt.router_version,
             "artifact": str(rt.config.artifact) if rt.config.artifact else None,
             "shadow_routers": sorted(rt.shadows)} for name, rt in routing.runtimes.items()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/limits")
async def limits_status(limiter: LimiterDep, settings: SettingsDep) -> JSONResponse:
    available = await limiter.ping()
    return JSONResponse({"store": limiter.name, "available": available, "last_error": limiter.last_error or None,
                         "policy": {"rpm": settings.redis_failure_rpm,
                                    "tpm": settings.redis_failure_tpm,
                                    "budget": settings.redis_failure_budget}})


def _utc_bound(value: datetime | None, param: str) -> datetime | None:
    """A report bound in UTC; 400 naming ``param`` when it falls outside what datetime holds (years 1..9999)."""
    from training.from_logs import to_utc

    try:
        return None if value is None else to_utc(value)
    except ValueError as exc:
        raise GatewayError(400, f"{param}: {exc}", param=param, code="invalid_value") from None


@router.get("/report")
async def report(
    since: datetime | None = Query(default=None), until: datetime | None = Query(default=None),
    key_id: str | None = None, *, writer: WriterDep, repository: RepositoryDep,
) -> JSONResponse:
    """Totals of the request log per (key, pool, backend): requests, errors, tokens, cost, mean latency.

    Rows this replica still holds in its writer's queue (up to one flush interval) are written first, so a report
    asked right after some requests counts them; other replicas' queued rows appear within their flush interval."""
    since, until = _utc_bound(since, "since"), _utc_bound(until, "until")
    if writer.queue_depth:
        await writer.flush()
    rows = await repository.usage_totals(since, until, key_id)
    totals = {k: sum(r[k] for r in rows) for k in ("requests", "errors", "prompt_tokens", "completion_tokens",
                                                  "cached_tokens", "cache_write_tokens", "reasoning_tokens",
                                                  "cost_usd")}
    return JSONResponse({"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                         "totals": totals, "rows": rows})
