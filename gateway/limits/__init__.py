"""Rate limits (requests and tokens per minute, sliding window) and spend budgets per API key.

``make_limiter(settings)``: the Redis limiter when ``redis_url`` is set (exact across replicas), else the
in-process one. ``Tenancy`` (``gateway.limits.tenancy``) applies them on the request path.
"""

from __future__ import annotations

from gateway.limits.base import (
    KeyRevoked,
    KeyUsage,
    LimitCheckFailed,
    Limiter,
    LimitExceeded,
    LimitSpec,
    LimitsUnavailable,
    Reservation,
    pressured_quality_target,
)
from gateway.limits.local import InProcessLimiter
from gateway.limits.redis_limiter import RedisLimiter
from gateway.settings import Settings

__all__ = [
    "InProcessLimiter",
    "KeyRevoked",
    "KeyUsage",
    "LimitCheckFailed",
    "LimitExceeded",
    "LimitSpec",
    "Limiter",
    "LimitsUnavailable",
    "Reservation",
    "make_limiter",
    "pressured_quality_target",
]


def make_limiter(settings: Settings) -> Limiter:
    """Redis-backed when ``settings.redis_url`` is set, in-process otherwise. Opens no connection yet."""
    if not settings.redis_url:
        return InProcessLimiter()
    policy = {"rpm": settings.redis_failure_rpm, "tpm": settings.redis_failure_tpm,
              "budget": settings.redis_failure_budget}
    return RedisLimiter(settings.redis_url, prefix=settings.redis_key_prefix, policy=policy,
                        timeout_s=settings.redis_timeout_s, retry_s=settings.redis_retry_s,
                        max_connections=settings.redis_max_connections)
