"""The request path's tenancy step: who is calling, may they use this pool, are they within their limits.

``admit`` runs before routing (pool access, then one ``reserve`` against the limiter) and returns what routing
needs from the key: its default flags and, when the key has a budget, the budget-pressure adjustment of the
cost weight. ``settle`` runs once per request with its finished ``RequestRecord`` (from ``gateway.finish``, the
request-finished step): it settles the reservation with the real tokens and cost, off the response path.
With auth off neither step touches Redis or the database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.errors import GatewayError
from gateway.limits.base import (
    KeyRevoked,
    LimitCheckFailed,
    Limiter,
    LimitExceeded,
    LimitsUnavailable,
    Reservation,
    pressured_quality_target,
    to_nano,
)
from gateway.limits.keys import KeyRecord
from gateway.metrics import Metrics
from gateway.pools import BackendConfig, PoolFile
from gateway.record import RequestRecord
from gateway.settings import Settings
from routers.objective import Flags
from routers.pricing import worst_cost_usd

log = logging.getLogger("poolgate.tenancy")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: Reservations whose request never finished (a crash between admit and finish) are settled at their estimate
#: after this long, so the table of open reservations cannot grow without bound.
STALE_RESERVATION_S = 3600.0
SWEEP_EVERY_S = 60.0

#: OpenAI's error type and code for each refusing limit; x-should-retry tells the openai SDK not to retry in vain.
_REFUSALS = {
    "rpm": ("requests", "rate_limit_exceeded", True),
    "tpm": ("tokens", "rate_limit_exceeded", True),
    "tpm_request": ("tokens", "request_too_large", False),
    "budget": ("insufficient_quota", "insufficient_quota", False),
}


@dataclass(frozen=True)
class Admission:
    """What ``admit`` decided: the key (None with auth off) and what routing should take from it."""

    key: KeyRecord | None = None
    key_flags: Mapping[str, Any] | None = None
    adjust_flags: Callable[[Flags], Flags] | None = None
    reservation: Reservation | None = None


NO_KEY = Admission()


class Tenancy:
    """A key's pool access and limits around one request. Built once per app (see ``gateway/services.py``)."""

    def __init__(self, settings: Settings, pool_file: PoolFile, limiter: Limiter, metrics: Metrics) -> None:
        self.settings = settings
        self.limiter = limiter
        self.metrics = metrics
        self._pool_backends = {p.name: [pool_file.backend(m) for m in p.members] for p in pool_file.pools}
        self._backends = {b.name: b for b in pool_file.backends}
        self._pools_of_backend: dict[str, set[str]] = {}
        for pool, members in self._pool_backends.items():
            for b in members:
                self._pools_of_backend.setdefault(b.name, set()).add(pool)
        self._open: dict[str, tuple[float, Reservation]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._swept_at = time.monotonic()
        if not settings.auth_enabled and settings.host not in LOOPBACK_HOSTS:
            log.warning("POOLGATE_AUTH_ENABLED is off while serving on %s: anyone who reaches the port can spend "
                        "money; auth off is meant for the local demo only", settings.host)

    # -- before routing -------------------------------------------------------------------------------

    async def admit(self, key: KeyRecord | None, model: str, payload: Mapping[str, Any], prompt_tokens: int,
                    record: RequestRecord) -> Admission:
        """Check pool access and reserve against the key's limits; raises ``GatewayError`` (403/401/429/503)."""
        if key is None:
            return NO_KEY
        record.key_id = key.id
        self._check_pool(key, model)
        if key.is_master:
            return Admission(key)
        spec = key.limits()
        tokens, cost = self.estimate(model, payload, prompt_tokens)
        try:
            reservation = await self.limiter.reserve(spec, record.id, tokens, to_nano(cost))
        except LimitExceeded as exc:
            raise self._refused(exc) from None
        except LimitsUnavailable as exc:
            self.metrics.limit_store_failures.labels("fail_closed").inc()
            self.metrics.limit_rejection("unavailable")
            raise GatewayError(503, f"limits for {', '.join(exc.limits)} cannot be checked: {exc.reason}",
                               code="limits_unavailable",
                               headers={"retry-after": str(max(1, math.ceil(exc.retry_after_s)))}) from None
        except LimitCheckFailed as exc:  # this request only: every other key is still checked as usual
            self.metrics.limit_rejection("check_failed")
            raise GatewayError(400, f"the limits of this request cannot be checked ({exc.reason})",
                               code="limit_check_failed", headers={"x-should-retry": "false"}) from None
        except KeyRevoked:
            self.metrics.auth_failure("revoked")
            raise GatewayError(401, f"API key {key.id} was revoked", code="revoked_api_key",
                               headers={"www-authenticate": "Bearer"}) from None
        if reservation.held:
            self._hold(reservation)
        elif spec.any:
            self.metrics.limit_store_failures.labels("fail_open").inc()
        return Admission(key, key.default_flags, self._pressure(reservation), reservation)

    def _check_pool(self, key: KeyRecord, model: str) -> None:
        if key.pools is None:
            return
        if model in self._pool_backends:
            allowed = model in key.pools
        elif model in self._backends:  # a backend by name: allowed when it belongs to an allowed pool
            allowed = bool(self._pools_of_backend.get(model, set()) & key.pools)
        else:
            return  # unknown model: routing answers 404
        if not allowed:
            self.metrics.limit_rejection("pool_forbidden")
            raise GatewayError(403, f"API key {key.id} may not use {model!r}; allowed pools: "
                               f"{', '.join(sorted(key.pools)) or '(none)'}", param="model", code="pool_forbidden")

    def _refused(self, exc: LimitExceeded) -> GatewayError:
        self.metrics.limit_rejection(exc.limit)
        etype, code, retry = _REFUSALS.get(exc.limit, ("requests", "rate_limit_exceeded", True))
        headers = {"retry-after": str(max(1, math.ceil(exc.retry_after_s)))}
        if not retry:
            headers["x-should-retry"] = "false"
        return GatewayError(429, exc.message, type=etype, code=code, headers=headers)

    def estimate(self, model: str, payload: Mapping[str, Any], prompt_tokens: int) -> tuple[int, float]:
        """(tokens, USD) reserved before dispatch: prompt tokens + max_tokens (or ``default_output_tokens``) per
        choice, priced at the most expensive backend the request could reach, at its dearest token prices (a cache
        write or a reasoning token may cost more than a plain one: ``routers.pricing.worst_cost_usd``)."""
        out = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if isinstance(out, bool) or not isinstance(out, int) or out <= 0:
            out = self.settings.default_output_tokens
        n = payload.get("n")
        choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        out_tokens = out * choices
        backends: list[BackendConfig] = self._pool_backends.get(model) or (
            [self._backends[model]] if model in self._backends else [])
        cost = max(worst_cost_usd(b, prompt_tokens, out_tokens) for b in backends) if backends else 0.0
        return prompt_tokens + out_tokens, cost

    def _pressure(self, reservation: Reservation) -> Callable[[Flags], Flags] | None:
        """Budget pressure on the quality target (rule: ``gateway.limits.base.pressured_quality_target``)."""
        left = reservation.budget_left_fraction
        start = self.settings.budget_pressure_start
        if left is None or 1.0 - left <= start:
            return None
        target = pressured_quality_target(left, start, self.settings.budget_min_quality_target)

        def adjust(flags: Flags) -> Flags:
            return flags if target >= 1.0 else replace(flags, budget_quality_target=target)

        return adjust

    def _hold(self, reservation: Reservation) -> None:
        now = time.monotonic()
        self._open[reservation.request_id] = (now, reservation)
        if now - self._swept_at > SWEEP_EVERY_S:
            self._swept_at = now
            for rid, (at, stale) in list(self._open.items()):
                if now - at > STALE_RESERVATION_S:
                    del self._open[rid]
                    self._spawn(self.limiter.settle(stale, stale.tokens, stale.cost_nano))

    # -- after the response ---------------------------------------------------------------------------

    def settle(self, record: RequestRecord) -> None:
        """Settle the request's reservation (if it holds one) with its real usage."""
        held = self._open.pop(record.id, None)
        if held is not None:
            tokens = record.prompt_tokens + record.completion_tokens
            self._spawn(self.limiter.settle(held[1], tokens, to_nano(record.cost_usd)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for pending settles (the limiter, a service of its own, is closed by its owner)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
