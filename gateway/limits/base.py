"""What every limiter shares: a key's limits, reservations, the errors, budget periods and budget pressure.

Money is counted in integer nano-USD (1e-9 USD) everywhere a limiter stores it, so Redis (``HINCRBY``) and the
in-process limiter add and subtract exactly, with no floating-point drift over millions of requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

#: Budget periods a key may have; "total" never resets.
PERIODS: tuple[str, ...] = ("day", "week", "month", "total")
Period = Literal["day", "week", "month", "total"]
#: Sliding window of the rpm/tpm limits.
WINDOW_MS = 60_000
#: Retry-After sent for an exhausted "total" budget (it never resets by itself).
TOTAL_BUDGET_RETRY_S = 86_400
NANO = 1_000_000_000

#: Bounds of every figure a limiter stores. Redis runs the limit scripts with Lua numbers (doubles: integers are
#: exact up to 2**53) and writes a Lua number of 1e17 or more as "1e+17", which INCRBY refuses: a request's figures
#: are clamped far below both, so sums over a window (rpm <= MAX_RPM requests) and a period stay exact.
MAX_REQUEST_TOKENS = 100_000_000
#: nano-USD: $1,000,000, the largest request cost and the largest budget of one period.
MAX_NANO = 10**15
MAX_BUDGET_USD = MAX_NANO / NANO
#: Largest rpm / tpm of a key (the database stores them as 32-bit integers).
MAX_RPM = 1_000_000
MAX_TPM = 1_000_000_000


def to_nano(usd: float) -> int:
    """USD as integer nano-USD in [0, MAX_NANO], rounded up (estimates and budgets err on the side of caution);
    NaN, infinity and anything from MAX_BUDGET_USD up count as MAX_NANO, nothing counts below 0."""
    if math.isnan(usd) or usd >= MAX_BUDGET_USD:  # before multiplying: 1e308 * NANO is infinite
        return MAX_NANO
    return 0 if usd <= 0 else math.ceil(round(usd * NANO, 3))


def bounded(tokens: int, cost_nano: int) -> tuple[int, int]:
    """A request's (tokens, cost_nano) clamped to what a limiter stores exactly (see MAX_REQUEST_TOKENS)."""
    return min(MAX_REQUEST_TOKENS, max(0, int(tokens))), min(MAX_NANO, max(0, int(cost_nano)))


def from_nano(nano: int) -> float:
    return nano / NANO


@dataclass(frozen=True)
class LimitSpec:
    """The limits of one API key. ``None`` = unlimited. ``budget_nano`` is per ``period``."""

    key_id: str
    rpm: int | None = None
    tpm: int | None = None
    budget_nano: int | None = None
    period: Period = "month"

    @property
    def windowed(self) -> bool:
        return bool(self.rpm or self.tpm)

    @property
    def any(self) -> bool:
        return self.windowed or self.budget_nano is not None


@dataclass
class Reservation:
    """What ``reserve`` took for one request; ``settle`` replaces the estimates with the real figures.

    ``held`` is False when nothing was taken (no limits, or Redis was down and the policy let it through).
    ``budget_left_nano`` is what remained of the budget *before* this request (None: no budget).
    """

    spec: LimitSpec
    request_id: str
    tokens: int
    cost_nano: int
    period_id: str | None
    held: bool
    budget_left_nano: int | None = None

    @property
    def budget_left_fraction(self) -> float | None:
        """Share of the period's budget left before this request, in [0, 1] (None: no budget)."""
        budget = self.spec.budget_nano
        if budget is None or self.budget_left_nano is None:
            return None
        if budget <= 0:
            return 0.0
        return min(1.0, max(0.0, self.budget_left_nano / budget))


class LimitExceeded(Exception):
    """Over a limit: the client gets 429 with ``Retry-After``. ``limit`` is rpm, tpm, tpm_request or budget."""

    def __init__(self, limit: str, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.message = message


class LimitsUnavailable(Exception):
    """The shared limit store is down and a limit this key has fails closed: the client gets 503."""

    def __init__(self, limits: list[str], retry_after_s: float, reason: str) -> None:
        super().__init__(reason)
        self.limits = limits
        self.retry_after_s = retry_after_s
        self.reason = reason


class LimitCheckFailed(Exception):
    """The limit store refused to check this one request (its figures or its key's stored data), while it still
    serves every other key: the client gets 400, and nothing else is affected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeyUsage:
    """A key's usage right now: requests and tokens in the sliding window, money in the current period."""

    requests_in_window: int
    tokens_in_window: int
    spent_nano: int
    reserved_nano: int
    period_id: str | None


class Limiter(Protocol):
    """Rate limits and budgets. Implementations: in-process (one replica) and Redis (any number of replicas)."""

    #: "in-process" or "redis"
    name: str
    #: why the store last failed ("" when it never did)
    last_error: str

    async def ping(self) -> bool:
        """Is the limit store reachable now? Never raises."""
        ...

    async def reserve(self, spec: LimitSpec, request_id: str, tokens: int, cost_nano: int) -> Reservation:
        """Admit one request or raise :class:`LimitExceeded` / :class:`LimitsUnavailable`; also raises
        :class:`KeyRevoked` when the key was revoked since it was cached."""
        ...

    async def settle(self, reservation: Reservation, tokens: int, cost_nano: int) -> None:
        """Replace the reservation's estimates by what the request really used. Never raises."""
        ...

    async def usage(self, spec: LimitSpec) -> KeyUsage: ...

    async def mark_revoked(self, key_id: str) -> None:
        """Make every replica refuse ``key_id`` from its next request on."""
        ...

    async def close(self) -> None: ...


class KeyRevoked(Exception):
    """The key was revoked (seen through the limit store's revocation marker)."""


def period_window(period: str, now: datetime | None = None) -> tuple[str, float | None]:
    """(id of the budget period containing ``now``, seconds until it ends; None for "total"). UTC calendar."""
    now = now or datetime.now(UTC)
    if period == "total":
        return "total", None
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
        pid = f"d{start:%Y-%m-%d}"
    elif period == "week":  # ISO weeks start on Monday
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
        iso = start.isocalendar()
        pid = f"w{iso.year}-{iso.week:02d}"
    elif period == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        pid = f"m{start:%Y-%m}"
    else:
        raise ValueError(f"unknown budget period {period!r}; known: {', '.join(PERIODS)}")
    return pid, (end - now).total_seconds()


def budget_retry_after(period: str) -> float:
    _, left = period_window(period)
    return TOTAL_BUDGET_RETRY_S if left is None else max(1.0, left)


def pressured_quality_target(left_fraction: float, start: float, floor: float) -> float:
    """The quality target a key's request is routed with once ``1 - left_fraction`` of its budget is gone.

    Rule: pressure p = clamp((spent_fraction - start) / (1 - start), 0, 1) where spent_fraction = 1 - left_fraction;
    the target moves linearly from 1 (p = 0: no pressure) to ``floor`` (p = 1). The objective then uses at least the
    lambda of that target (:func:`routers.objective.resolve_lambda`), so pressure only ever makes routing cheaper.
    """
    spent = 1.0 - min(1.0, max(0.0, left_fraction))
    p = 0.0 if start >= 1.0 else min(1.0, max(0.0, (spent - start) / (1.0 - start)))
    return 1.0 - (1.0 - floor) * p
