"""What routing did and saved, from the request log: numbers per group, JSON, and a terminal view.

Per group (pool, key, router, backend or day) and in total: requests, error rate, tokens, cost, mean feedback,
latency p50/p95/p99, and against counterfactual policies on the same requests:

- counterfactual cost of serving a request with backend b = prompt tokens x b's input price + completion tokens x
  b's output price (pool file prices), where completion tokens are the logged ones when b answered, else b's mean
  completion tokens over the window's successful requests (else the logged ones);
- always-cheapest / always-strongest: the cheapest / dearest candidate of each request (by price, as the
  ``cheapest``/``strongest`` baselines order them);
- their quality is *estimated* as the mean feedback of the window's requests that backend answered in that pool
  (biased when a router sent it only the easy ones: every report says so);
- TEP (training.metrics.tep) of the served policy against always-cheapest, in tokens and in USD, and savings
  vs always-strongest = 1 - cost / counterfactual always-strongest cost;
- each shadow router: its would-be cost on the requests it scored, agreement with the served backend, and its
  estimated quality (same estimate).
Counterfactual numbers cover successful requests of pools whose backends are in the pool file ("eligible").

The database does the counting (``gateway.store.repository``: ``GROUP BY`` cells over the window, the few sorted
latencies around each percentile, time buckets); this module turns those aggregates into the report's numbers.
Every counterfactual is linear in a cell's token sums, so cells give the same numbers as the requests would.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.loop.cache_report import CacheStats, cache_stats
from gateway.loop.report_estimates import Agreement, PoolEstimate, agreement, estimates_by_pool
from gateway.pools import PoolFile
from gateway.store.estimates import MAX_EVENTS, Event, label_pairs, off_policy_events
from gateway.store.repository import GROUPINGS, TOTAL, LogRepository, ReportCell, ShadowCell, TimeCell, Window
from routers.pricing import detail_prices, token_cost_usd
from training.metrics import tep

NAN = float("nan")
#: the latency percentiles every group reports
PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0)

__all__ = ["GROUPINGS", "GroupStats", "LogReport", "ShadowStats", "build_report", "report_json", "routing_report"]


class TokenSums(Protocol):
    """What a counterfactual cost reads of a cell: who answered its ``n`` requests and their token sums."""

    @property
    def backend(self) -> str | None: ...

    @property
    def n(self) -> int: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


class Sums(TokenSums, Protocol):
    """A cell whose eligibility can be told: its pool, status and cheapest priced candidate too."""

    @property
    def pool(self) -> str | None: ...

    @property
    def status(self) -> str: ...

    @property
    def cheapest(self) -> str | None: ...


def router_label(router: str | None, version: str | None) -> str:
    """``router@version`` (``(direct)`` for requests that named a backend)."""
    if not router or router == "direct":
        return "(direct)"
    return f"{router}@{version}" if version else router


def group_key(cell: ReportCell | ShadowCell, by: str) -> str:
    """The group of a cell's requests under grouping ``by`` (``gateway.store.repository`` labels them alike)."""
    if by == "pool":
        return cell.pool or "(direct)"
    if by == "key":
        return cell.key_id or "(no key)"
    if by == "router":
        return router_label(cell.router, cell.router_version)
    if by == "backend":
        return cell.backend or "(none)"
    if by == "day":
        return cell.day
    if by == TOTAL:
        return TOTAL
    raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")


class Counterfactual:
    """Prices, per-backend verbosity and quality estimates of one window (see the module docstring)."""

    def __init__(self, cells: Sequence[ReportCell], pool_file: PoolFile) -> None:
        self.prices = {b.name: (b.input_price, b.output_price) for b in pool_file.backends}
        self.detail_prices = {b.name: detail_prices(b) for b in pool_file.backends}
        comp: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        scores: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for c in cells:
            if c.status != "ok" or not c.backend:
                continue
            comp[c.backend][0] += c.completion_tokens
            comp[c.backend][1] += c.n
            if c.labelled and c.pool:
                scores[(c.pool, c.backend)][0] += c.score_sum
                scores[(c.pool, c.backend)][1] += c.labelled
        self.mean_completion = {b: total / n for b, (total, n) in comp.items()}
        self.quality = {k: total / n for k, (total, n) in scores.items()}
        self.quality_n = {k: int(n) for k, (_, n) in scores.items()}

    def eligible(self, cell: Sums) -> bool:
        """Successful pooled requests answered by a priced backend, with a priced candidate."""
        return (cell.status == "ok" and cell.pool is not None and cell.backend in self.prices
                and cell.cheapest is not None)

    def completion(self, cell: TokenSums, backend: str) -> float:
        """The cell's completion tokens had ``backend`` answered: the logged ones where it did, else its mean."""
        if backend == cell.backend:
            return float(cell.completion_tokens)
        mean = self.mean_completion.get(backend)
        return float(cell.completion_tokens) if mean is None else cell.n * mean

    def cost(self, cell: TokenSums, backend: str) -> float:
        p_in, p_out = self.prices[backend]
        return token_cost_usd(float(cell.prompt_tokens), self.completion(cell, backend), p_in, p_out)

    def detail_costs(self, cell: ReportCell) -> tuple[float, float, float]:
        """USD of the cell's cached, cache-write and reasoning tokens at its backend's pool file prices (0 for a
        backend not in the file): the parts of its logged cost that those tokens make up."""
        cached, write, reasoning = self.detail_prices.get(cell.backend or "", (0.0, 0.0, 0.0))
        return (token_cost_usd(float(cell.cached_tokens), 0.0, cached, 0.0),
                token_cost_usd(float(cell.cache_write_tokens), 0.0, write, 0.0),
                token_cost_usd(0.0, float(cell.reasoning_tokens), 0.0, reasoning))

    def tokens(self, cell: TokenSums, backend: str) -> float:
        return cell.prompt_tokens + self.completion(cell, backend)

    def quality_of(self, pool: str | None, backend: str) -> float:
        return self.quality.get((pool or "", backend), NAN)


@dataclass
class ShadowStats:
    """A shadow router on the eligible requests it scored."""

    n: int = 0
    cost_usd: float = 0.0
    served_cost_usd: float = 0.0
    agreement: float = NAN
    quality_est: float = NAN


@dataclass
class GroupStats:
    """Every number of one group (module docstring); costs in USD, latencies in ms, NaN when undefined."""

    key: str
    requests: int = 0
    errors: int = 0
    error_rate: float = NAN
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached_tokens: int = 0  # of prompt_tokens: read from the providers' prompt caches
    cache_write_tokens: int = 0  # of prompt_tokens: written to them
    reasoning_tokens: int = 0  # of completion_tokens
    cached_cost_usd: float = 0.0  # the part of cost_usd that the cached tokens make up (pool file prices)
    cache_write_cost_usd: float = 0.0
    reasoning_cost_usd: float = 0.0
    labelled: int = 0
    mean_feedback: float = NAN
    latency_p50: float = NAN
    latency_p95: float = NAN
    latency_p99: float = NAN
    eligible: int = 0
    eligible_cost_usd: float = 0.0
    cheapest_cost_usd: float = 0.0
    strongest_cost_usd: float = 0.0
    cheapest_quality_est: float = NAN
    strongest_quality_est: float = NAN
    tep_tokens: float = NAN
    tep_usd: float = NAN
    savings_vs_strongest: float = NAN
    shadows: dict[str, ShadowStats] = field(default_factory=dict)


def _weighted_mean(pairs: Iterable[tuple[float, int]]) -> float:
    """Mean of the finite values, each counted ``n`` times (NaN when there are none)."""
    total = count = 0.0
    for value, n in pairs:
        if math.isfinite(value):
            total, count = total + value * n, count + n
    return total / count if count else NAN


def percentile(n: int, ranked: dict[int, float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation, numpy's default) of ``n`` sorted values of which ``ranked``
    holds those around position ``(n - 1) q / 100`` (``LogRepository.latency_ranks``)."""
    h = (n - 1) * (q / 100.0)
    lo = min(int(math.floor(h)), n - 1)
    hi = min(lo + 1, n - 1)
    a, b = ranked[lo], ranked[hi]
    return a + (b - a) * (h - lo)


def group_stats(key: str, cells: Sequence[ReportCell], shadows: Sequence[ShadowCell],
                latency: tuple[int, dict[int, float]] | None, cf: Counterfactual) -> GroupStats:
    """The numbers of one group of requests (see the module docstring)."""
    g = GroupStats(key, requests=sum(c.n for c in cells))
    if not g.requests:
        return g
    g.errors = sum(c.n for c in cells if c.status != "ok")
    g.error_rate = g.errors / g.requests
    g.prompt_tokens = sum(c.prompt_tokens for c in cells)
    g.completion_tokens = sum(c.completion_tokens for c in cells)
    g.cost_usd = float(sum(c.cost_usd for c in cells))
    g.cached_tokens = sum(c.cached_tokens for c in cells)
    g.cache_write_tokens = sum(c.cache_write_tokens for c in cells)
    g.reasoning_tokens = sum(c.reasoning_tokens for c in cells)
    parts = [cf.detail_costs(c) for c in cells]
    g.cached_cost_usd, g.cache_write_cost_usd, g.reasoning_cost_usd = (float(sum(p[i] for p in parts))
                                                                       for i in range(3))
    g.labelled = sum(c.labelled for c in cells)
    g.mean_feedback = sum(c.score_sum for c in cells) / g.labelled if g.labelled else NAN
    if latency is not None:
        g.latency_p50, g.latency_p95, g.latency_p99 = (percentile(*latency, q) for q in PERCENTILES)
    elig = [c for c in cells if cf.eligible(c)]
    g.eligible = n = sum(c.n for c in elig)
    if not n:
        return g
    g.eligible_cost_usd = float(sum(c.cost_usd for c in elig))
    g.cheapest_cost_usd = float(sum(cf.cost(c, c.cheapest or "") for c in elig))
    g.strongest_cost_usd = float(sum(cf.cost(c, c.strongest or "") for c in elig))
    g.cheapest_quality_est = _weighted_mean((cf.quality_of(c.pool, c.cheapest or ""), c.n) for c in elig)
    g.strongest_quality_est = _weighted_mean((cf.quality_of(c.pool, c.strongest or ""), c.n) for c in elig)
    tokens = sum(cf.tokens(c, c.backend or "") for c in elig) / n
    cheap_tokens = sum(cf.tokens(c, c.cheapest or "") for c in elig) / n
    g.tep_tokens = tep(g.mean_feedback, tokens, g.cheapest_quality_est, cheap_tokens)
    g.tep_usd = tep(g.mean_feedback, g.eligible_cost_usd / n, g.cheapest_quality_est, g.cheapest_cost_usd / n)
    if g.strongest_cost_usd > 0:
        g.savings_vs_strongest = 1.0 - g.eligible_cost_usd / g.strongest_cost_usd
    g.shadows = _shadow_stats(shadows, cf)
    return g


def _shadow_stats(cells: Sequence[ShadowCell], cf: Counterfactual) -> dict[str, ShadowStats]:
    picks: dict[str, list[ShadowCell]] = defaultdict(list)
    for c in cells:
        if c.backend in cf.prices and c.choice in cf.prices:
            picks[c.name].append(c)
    out = {}
    for name, group in sorted(picks.items()):
        n = sum(c.n for c in group)
        out[name] = ShadowStats(
            n=n,
            cost_usd=float(sum(cf.cost(c, c.choice) for c in group)),
            served_cost_usd=float(sum(c.cost_usd for c in group)),
            agreement=sum(c.n for c in group if c.choice == c.backend) / n,
            quality_est=_weighted_mean((cf.quality_of(c.pool, c.choice), c.n) for c in group),
        )
    return out


@dataclass
class LogReport:
    """A whole report: groups, total, a timeline, the model mix per router and the stated assumptions."""

    since: datetime | None
    until: datetime | None
    by: str
    groups: list[GroupStats]
    total: GroupStats
    routers: list[GroupStats]
    timeline: list[dict[str, Any]]
    bucket_seconds: int
    time_unit: str
    mix: dict[str, dict[str, int]]
    quality_by_backend: dict[str, dict[str, Any]]
    assumptions: list[str]
    cache: list[CacheStats] = field(default_factory=list)  # the response cache's hits and savings per pool
    #: per pool (and ``total``): off-policy estimates of the references' cost and quality, and the savings
    estimates: dict[str, PoolEstimate] = field(default_factory=dict)
    #: judge vs user on requests both labelled
    judge_agreement: Agreement = field(default_factory=Agreement)
    #: the estimators read at most this many (newest) events; True when the window held more
    events_capped: bool = False


BUCKET_SECONDS: tuple[int, ...] = (10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def bucket_for(span: tuple[datetime, datetime] | None) -> tuple[int, str, float]:
    """(bucket width in s, time unit name, seconds per unit): the finest width giving at most 60 buckets."""
    seconds = (span[1] - span[0]).total_seconds() if span else 0.0
    width = next((w for w in BUCKET_SECONDS if seconds / w <= 60), BUCKET_SECONDS[-1])
    unit, per = ("minutes", 60.0) if width < 3600 else ("hours", 3600.0) if width < 86400 else ("days", 86400.0)
    return width, unit, per


def _empty_bucket(key: int, first: int, per_unit: float) -> dict[str, Any]:
    return {"start": datetime.fromtimestamp(key, UTC), "x": (key - first) / per_unit, "requests": 0,
            "cost_usd": 0.0, "cheapest_cost_usd": 0.0, "strongest_cost_usd": 0.0, "backends": {}}


def _timeline(cells: Sequence[TimeCell], cf: Counterfactual, width: int, per_unit: float) -> list[dict[str, Any]]:
    """Per time bucket: start, x (units since the first bucket), requests, served and counterfactual costs, mix."""
    if not cells:
        return []
    first = min(c.bucket for c in cells)
    out: dict[int, dict[str, Any]] = {}
    for c in cells:
        b = out.get(c.bucket)
        if b is None:
            b = out[c.bucket] = _empty_bucket(c.bucket, first, per_unit)
        b["requests"] += c.n
        b["cost_usd"] += c.cost_usd
        if c.backend and c.status == "ok":
            b["backends"][c.backend] = b["backends"].get(c.backend, 0) + c.n
        if cf.eligible(c):
            b["cheapest_cost_usd"] += cf.cost(c, c.cheapest or "")
            b["strongest_cost_usd"] += cf.cost(c, c.strongest or "")
    if (max(out) - first) // width <= 1000:  # quiet buckets are zero, not missing
        for key in range(first, max(out) + 1, width):
            out.setdefault(key, _empty_bucket(key, first, per_unit))
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class ReportData:
    """The aggregates of one window that :func:`build_report` turns into a report (from ``LogRepository``)."""

    cells: Sequence[ReportCell]
    shadows: Sequence[ShadowCell] = ()
    time_cells: Sequence[TimeCell] = ()
    #: grouping (or ``total``) -> group key -> (requests, {rank: latency ms}) around each percentile
    latency: dict[str, dict[str, tuple[int, dict[int, float]]]] = field(default_factory=dict)
    span: tuple[datetime, datetime] | None = None
    cache: Sequence[dict[str, Any]] = ()  # LogRepository.cache_totals
    events: Sequence[Event] = ()  # per-request rows for the off-policy estimates (gateway.store.estimates)
    label_pairs: Sequence[tuple[float, float]] = ()  # (user, judge) scores of requests both labelled


async def fetch_report_data(repo: LogRepository, pool_file: PoolFile, by: str, window: Window) -> ReportData:
    """Every aggregate :func:`build_report` reads, each one ``GROUP BY`` query over the window."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")
    prices = {b.name: (b.input_price, b.output_price) for b in pool_file.backends}
    span = await repo.span(window)
    if span is None:
        return ReportData(cells=[])
    width, _, _ = bucket_for(span)
    quantiles = [q / 100.0 for q in PERCENTILES]
    latency = {g: await repo.latency_ranks(window, g, quantiles) for g in dict.fromkeys((by, "router", TOTAL))}
    return ReportData(await repo.report_cells(window, prices), await repo.shadow_cells(window, prices),
                      await repo.time_cells(window, prices, width), latency, span, await repo.cache_totals(window),
                      await off_policy_events(repo, window, prices), await label_pairs(repo, window))


async def routing_report(repo: LogRepository, pool_file: PoolFile, by: str = "pool", since: datetime | None = None,
                         until: datetime | None = None, pool: str | None = None) -> LogReport:
    """The report of the window [since, until) (of ``pool``), computed from the database's aggregates."""
    data = await fetch_report_data(repo, pool_file, by, Window(since, until, pool))
    return build_report(data, pool_file, by, since, until)


def _grouped(data: ReportData, by: str, cf: Counterfactual) -> list[GroupStats]:
    cells: dict[str, list[ReportCell]] = defaultdict(list)
    shadows: dict[str, list[ShadowCell]] = defaultdict(list)
    for c in data.cells:
        cells[group_key(c, by)].append(c)
    for s in data.shadows:
        shadows[group_key(s, by)].append(s)
    latency = data.latency.get(by, {})
    return [group_stats(k, v, shadows.get(k, []), latency.get(k), cf) for k, v in sorted(cells.items())]


def build_report(data: ReportData, pool_file: PoolFile, by: str = "pool",
                 since: datetime | None = None, until: datetime | None = None) -> LogReport:
    """Every number of the report from the aggregates of one window (:func:`fetch_report_data`)."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")
    cf = Counterfactual(data.cells, pool_file)
    mix: dict[str, dict[str, int]] = defaultdict(dict)
    for c in data.cells:
        if c.status == "ok" and c.backend:
            label = router_label(c.router, c.router_version)
            mix[label][c.backend] = mix[label].get(c.backend, 0) + c.n
    quality = {f"{p}/{b}": {"mean_feedback": q, "labelled": cf.quality_n[(p, b)]} for (p, b), q in cf.quality.items()}
    width, unit, per_unit = bucket_for(data.span)
    total = _grouped(data, TOTAL, cf)
    estimates = estimates_by_pool(data.events, cf.prices, total=TOTAL)
    return LogReport(
        since, until, by, _grouped(data, by, cf), total[0] if total else GroupStats(TOTAL),
        _grouped(data, "router", cf), _timeline(data.time_cells, cf, width, per_unit), width, unit, dict(mix),
        quality, ASSUMPTIONS, cache_stats(data.cache, pool_file), estimates, agreement(data.label_pairs),
        len(data.events) >= MAX_EVENTS,
    )


ASSUMPTIONS: list[str] = [
    "cost: logged USD (pool file prices x logged tokens; cached, cache-write and reasoning tokens at the "
    "backend's cached_input_price, cache_write_price and reasoning_price); their cost share = those tokens at "
    "those prices / cost; counterfactual cost: the same prompt tokens, and the "
    "other backend's mean completion tokens in this window, at pool file prices",
    "always-cheapest / always-strongest: each request's cheapest / dearest candidate by input + output price",
    "their quality and the shadows' quality are ESTIMATES: the mean feedback of requests that backend answered "
    "in the pool (biased upward for a backend the router sent only easy requests)",
    "TEP = (dQ/Q_ref)/(dT/T_ref) against always-cheapest (EllieSQL), Q = mean feedback; in tokens and in USD",
    "savings vs always-strongest = 1 - cost / counterfactual always-strongest cost, on eligible requests "
    "(successful, pooled, priced backends)",
    "OFF-POLICY ESTIMATES (estimates): the references' cost and quality from logged outcomes weighted by their "
    "propensities (IPS, SNIPS, doubly robust), bootstrap 95% intervals and effective sample size; only observed "
    "cells count; requests without a propensity (before migration 0005, fallbacks) are left out; quality rests "
    "on the labelled requests, so labels that are not a random share of traffic bias it",
]


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def report_json(report: LogReport) -> dict[str, Any]:
    """The report as JSON-safe data (NaN -> null, datetimes as ISO strings)."""
    data: dict[str, Any] = _clean(asdict(report))
    return data
