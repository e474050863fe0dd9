"""What the dashboard shows, read from the services the admin API reads: the routing report's aggregates
(``gateway.loop.report``, one set of ``GROUP BY`` queries per refresh), breaker states, key budgets and usage,
and the registered router versions. Every number here is also in the admin API or ``poolgate report``."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.limits.base import Limiter, LimitsUnavailable, from_nano
from gateway.limits.keys import KeyStore
from gateway.loop.report import (
    PERCENTILES,
    TOTAL,
    GroupStats,
    LogReport,
    ShadowStats,
    bucket_for,
    build_report,
    fetch_report_data,
)
from gateway.loop.report_estimates import PoolEstimate
from gateway.pools import PoolFile
from gateway.proxy.breaker import BreakerRegistry
from gateway.routing.artifacts import ArtifactStore, VersionRecord
from gateway.routing.reload import RouterReloader
from gateway.store.repository import LogRepository, TimeCell, Window

#: the windows the dashboard offers (query parameter ``window``), and their length
WINDOWS: dict[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
                                 "30d": timedelta(days=30)}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class MixSeries:
    """One pool's successful requests per time bucket and backend (the routing mix over time)."""

    pool: str
    starts: list[datetime]
    backends: list[str]
    counts: list[list[int]]  # counts[bucket][backend index]


@dataclass(frozen=True)
class BackendRow:
    name: str
    model: str
    stats: GroupStats
    breaker: str
    open_for_s: float


@dataclass(frozen=True)
class KeyRow:
    id: str
    name: str
    key_prefix: str
    revoked: bool
    budget_usd: float | None
    period: str
    spent_usd: float | None  # in the current budget period (the limiter's count); None when it is unreachable
    reserved_usd: float | None
    logged_cost_usd: float  # the log store's sum over the dashboard's window
    logged_requests: int
    usage_error: str | None


@dataclass(frozen=True)
class ShadowRow:
    pool: str
    name: str
    stats: ShadowStats


@dataclass
class Dashboard:
    window: str
    since: datetime
    now: datetime
    report: LogReport
    pools: list[GroupStats]
    backends: list[BackendRow]
    mix: list[MixSeries]
    bucket_seconds: int
    keys: list[KeyRow]
    versions: dict[str, list[VersionRecord]]
    serving: dict[str, Any]
    shadows: list[ShadowRow]
    percentiles: tuple[float, ...] = field(default=PERCENTILES)

    @property
    def total(self) -> GroupStats:
        return self.report.total

    @property
    def estimate(self) -> PoolEstimate | None:
        """The off-policy savings of every pool together (``poolgate report``'s table), None without events."""
        return self.report.estimates.get(TOTAL)


def mix_series(cells: list[TimeCell], width_s: int, pools: list[str]) -> list[MixSeries]:
    """Per pool (in pool file order, then any other logged pool): successful requests per bucket and backend;
    quiet buckets between the first and the last are zero, so the time axis has no gaps."""
    counts: dict[str, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        if c.status == "ok" and c.backend and c.pool:
            per = counts[c.pool][c.bucket]
            per[c.backend] = per.get(c.backend, 0) + c.n
    if not counts:
        return []
    first = min(min(b) for b in counts.values())
    last = max(max(b) for b in counts.values())
    buckets = list(range(first, last + 1, width_s)) if (last - first) // width_s <= 1000 else sorted(
        {b for per in counts.values() for b in per})
    out = []
    for pool in [*[p for p in pools if p in counts], *sorted(set(counts) - set(pools))]:
        backends = sorted({b for per in counts[pool].values() for b in per})
        rows = [[counts[pool].get(t, {}).get(b, 0) for b in backends] for t in buckets]
        out.append(MixSeries(pool, [datetime.fromtimestamp(t, UTC) for t in buckets], backends, rows))
    return out


async def key_rows(keys: KeyStore, limiter: Limiter, by_key: dict[str, GroupStats]) -> list[KeyRow]:
    """Every key with its budget, its spend in the current period (limiter) and its logged cost in the window."""
    rows = []
    for record in await keys.list(include_revoked=True):
        spent = reserved = None
        error = None
        try:
            usage = await limiter.usage(record.limits())
            spent, reserved = from_nano(usage.spent_nano), from_nano(usage.reserved_nano)
        except LimitsUnavailable as exc:  # the limit store is down: the key and its logged cost still show
            error = str(exc)
        logged = by_key.get(record.id)
        rows.append(KeyRow(record.id, record.name, record.key_prefix, record.revoked_at is not None,
                           record.budget_usd, record.budget_period, spent, reserved,
                           logged.cost_usd if logged else 0.0, logged.requests if logged else 0, error))
    return rows


@dataclass(frozen=True)
class Sources:
    """The services the dashboard reads (handed in by the route)."""

    repository: LogRepository
    pool_file: PoolFile
    breakers: BreakerRegistry
    keys: KeyStore
    limiter: Limiter
    artifacts: ArtifactStore
    reloader: RouterReloader


async def load_dashboard(src: Sources, window: str, now: datetime | None = None) -> Dashboard:
    """Every number of the dashboard over the last ``window`` (a key of :data:`WINDOWS`)."""
    now = now or datetime.now(UTC)
    since = now - WINDOWS[window]
    win = Window(since, None)
    data = await fetch_report_data(src.repository, src.pool_file, "pool", win)
    if data.span is not None:  # the per-backend and per-key latencies: one more sorted query each
        quantiles = [q / 100.0 for q in PERCENTILES]
        extra = {g: await src.repository.latency_ranks(win, g, quantiles) for g in ("backend", "key")}
        data = dataclasses.replace(data, latency={**data.latency, **extra})
    report = build_report(data, src.pool_file, "pool", since, None)
    by_backend = {g.key: g for g in build_report(data, src.pool_file, "backend", since, None).groups}
    by_key = {g.key: g for g in build_report(data, src.pool_file, "key", since, None).groups}
    states = src.breakers.states()
    backends = [BackendRow(b.name, b.model, by_backend.get(b.name, GroupStats(b.name)), states.get(b.name, "closed"),
                           src.breakers.get(b.name).open_for_s() if b.name in states else 0.0)
                for b in src.pool_file.backends]
    width, _, _ = bucket_for(data.span)
    versions: dict[str, list[VersionRecord]] = defaultdict(list)
    for v in await src.artifacts.versions():
        versions[v.pool].append(v)
    shadows = [ShadowRow(g.key, name, s) for g in report.groups for name, s in g.shadows.items()]
    return Dashboard(
        window=window, since=since, now=now, report=report, pools=report.groups, backends=backends,
        mix=mix_series(list(data.time_cells), width, [p.name for p in src.pool_file.pools]), bucket_seconds=width,
        keys=await key_rows(src.keys, src.limiter, by_key), versions=dict(versions),
        serving=src.reloader.status(), shadows=shadows,
    )
