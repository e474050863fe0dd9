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
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.pools import PoolFile
from routers.pricing import token_cost_usd
from training.metrics import tep

GROUPINGS: tuple[str, ...] = ("pool", "key", "router", "backend", "day")
NAN = float("nan")


@dataclass(frozen=True)
class LogRow:
    """The columns of one request the report reads, with its feedback score (None when unlabelled)."""

    id: str
    created_at: datetime
    pool: str | None
    router: str | None
    router_version: str | None
    key_id: str | None
    backend: str | None
    status: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    candidates: tuple[str, ...]
    shadow: dict[str, Any] | None
    score: float | None


async def fetch_rows(
    engine: AsyncEngine, since: datetime | None, until: datetime | None, pool: str | None = None
) -> list[LogRow]:
    """Requests in [since, until) (of ``pool``), each with its feedback score."""
    from gateway.store.models import Feedback, Request

    req, fb = Request.__table__, Feedback.__table__
    assert isinstance(req, Table) and isinstance(fb, Table)
    cols = [req.c[n] for n in ("id", "created_at", "pool", "router", "router_version", "key_id", "backend", "status",
                               "latency_ms", "prompt_tokens", "completion_tokens", "cost_usd", "candidates",
                               "shadow")]
    query = select(*cols, fb.c.score).outerjoin(fb, fb.c.request_id == req.c.id).order_by(req.c.created_at)
    if since is not None:
        query = query.where(req.c.created_at >= since)
    if until is not None:
        query = query.where(req.c.created_at < until)
    if pool is not None:
        query = query.where(req.c.pool == pool)
    async with engine.connect() as conn:
        result = (await conn.execute(query)).all()
    return [
        LogRow(r.id, r.created_at, r.pool, r.router, r.router_version, r.key_id, r.backend, r.status,
               float(r.latency_ms or 0.0), int(r.prompt_tokens or 0), int(r.completion_tokens or 0),
               float(r.cost_usd or 0.0),
               tuple(c["backend"] for c in (r.candidates or []) if isinstance(c, dict) and "backend" in c),
               r.shadow if isinstance(r.shadow, dict) else None, None if r.score is None else float(r.score))
        for r in result
    ]


def router_label(row: LogRow) -> str:
    """``router@version`` (``(direct)`` for requests that named a backend)."""
    if not row.router or row.router == "direct":
        return "(direct)"
    return f"{row.router}@{row.router_version}" if row.router_version else row.router


def group_key(row: LogRow, by: str) -> str:
    if by == "pool":
        return row.pool or "(direct)"
    if by == "key":
        return row.key_id or "(no key)"
    if by == "router":
        return router_label(row)
    if by == "backend":
        return row.backend or "(none)"
    if by == "day":
        return row.created_at.date().isoformat()
    raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")


class Counterfactual:
    """Prices, per-backend verbosity and quality estimates of one window (see the module docstring)."""

    def __init__(self, rows: Sequence[LogRow], pool_file: PoolFile) -> None:
        self.prices = {b.name: (b.input_price, b.output_price) for b in pool_file.backends}
        ok = [r for r in rows if r.status == "ok" and r.backend]
        comp: dict[str, list[int]] = defaultdict(list)
        scores: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in ok:
            comp[r.backend or ""].append(r.completion_tokens)
            if r.score is not None and r.pool:
                scores[(r.pool, r.backend or "")].append(r.score)
        self.mean_completion = {b: float(np.mean(v)) for b, v in comp.items()}
        self.quality = {k: float(np.mean(v)) for k, v in scores.items()}
        self.quality_n = {k: len(v) for k, v in scores.items()}

    def eligible(self, row: LogRow) -> bool:
        return (row.status == "ok" and row.pool is not None and row.backend in self.prices
                and bool(self.candidates(row)))

    def candidates(self, row: LogRow) -> list[str]:
        return [c for c in row.candidates if c in self.prices]

    def completion(self, row: LogRow, backend: str) -> float:
        if backend == row.backend:
            return float(row.completion_tokens)
        return self.mean_completion.get(backend, float(row.completion_tokens))

    def cost(self, row: LogRow, backend: str) -> float:
        p_in, p_out = self.prices[backend]
        return token_cost_usd(float(row.prompt_tokens), self.completion(row, backend), p_in, p_out)

    def tokens(self, row: LogRow, backend: str) -> float:
        return row.prompt_tokens + self.completion(row, backend)

    def cheapest(self, row: LogRow) -> str:
        """Lowest input + output price (ties: lower input price), as the ``cheapest`` baseline orders."""
        return min(self.candidates(row), key=lambda b: (sum(self.prices[b]), self.prices[b][0]))

    def strongest(self, row: LogRow) -> str:
        """Highest input + output price, as the ``strongest`` baseline orders (size breaks no ties here)."""
        return max(self.candidates(row), key=lambda b: sum(self.prices[b]))

    def quality_of(self, row: LogRow, backend: str) -> float:
        return self.quality.get((row.pool or "", backend), NAN)


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


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else NAN


def group_stats(key: str, rows: Sequence[LogRow], cf: Counterfactual) -> GroupStats:
    """The numbers of one group of requests (see the module docstring)."""
    g = GroupStats(key, requests=len(rows))
    if not rows:
        return g
    g.errors = sum(r.status != "ok" for r in rows)
    g.error_rate = g.errors / g.requests
    g.prompt_tokens = sum(r.prompt_tokens for r in rows)
    g.completion_tokens = sum(r.completion_tokens for r in rows)
    g.cost_usd = float(sum(r.cost_usd for r in rows))
    labels = [r.score for r in rows if r.score is not None]
    g.labelled, g.mean_feedback = len(labels), _mean(labels)
    g.latency_p50, g.latency_p95, g.latency_p99 = (
        float(v) for v in np.percentile([r.latency_ms for r in rows], [50, 95, 99])
    )
    elig = [r for r in rows if cf.eligible(r)]
    g.eligible = len(elig)
    if not elig:
        return g
    cheap, strong = [cf.cheapest(r) for r in elig], [cf.strongest(r) for r in elig]
    g.eligible_cost_usd = float(sum(r.cost_usd for r in elig))
    g.cheapest_cost_usd = float(sum(cf.cost(r, b) for r, b in zip(elig, cheap, strict=True)))
    g.strongest_cost_usd = float(sum(cf.cost(r, b) for r, b in zip(elig, strong, strict=True)))
    g.cheapest_quality_est = _mean([cf.quality_of(r, b) for r, b in zip(elig, cheap, strict=True)])
    g.strongest_quality_est = _mean([cf.quality_of(r, b) for r, b in zip(elig, strong, strict=True)])
    n = len(elig)
    tokens = sum(cf.tokens(r, r.backend or "") for r in elig) / n
    cheap_tokens = sum(cf.tokens(r, b) for r, b in zip(elig, cheap, strict=True)) / n
    g.tep_tokens = tep(g.mean_feedback, tokens, g.cheapest_quality_est, cheap_tokens)
    g.tep_usd = tep(g.mean_feedback, g.eligible_cost_usd / n, g.cheapest_quality_est, g.cheapest_cost_usd / n)
    if g.strongest_cost_usd > 0:
        g.savings_vs_strongest = 1.0 - g.eligible_cost_usd / g.strongest_cost_usd
    g.shadows = _shadow_stats(elig, cf)
    return g


def _shadow_stats(rows: Sequence[LogRow], cf: Counterfactual) -> dict[str, ShadowStats]:
    picks: dict[str, list[tuple[LogRow, str]]] = defaultdict(list)
    for r in rows:
        for name, entry in (r.shadow or {}).items():
            if isinstance(entry, dict) and entry.get("backend") in cf.prices:
                picks[name].append((r, entry["backend"]))
    out = {}
    for name, pairs in sorted(picks.items()):
        out[name] = ShadowStats(
            n=len(pairs),
            cost_usd=float(sum(cf.cost(r, b) for r, b in pairs)),
            served_cost_usd=float(sum(r.cost_usd for r, _ in pairs)),
            agreement=float(np.mean([b == r.backend for r, b in pairs])),
            quality_est=_mean([cf.quality_of(r, b) for r, b in pairs]),
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


BUCKET_SECONDS: tuple[int, ...] = (10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def _bucket(rows: Sequence[LogRow]) -> tuple[int, str, float]:
    """(bucket width in s, time unit name, seconds per unit): the finest width giving at most 60 buckets."""
    span = (rows[-1].created_at - rows[0].created_at).total_seconds() if rows else 0.0
    width = next((w for w in BUCKET_SECONDS if span / w <= 60), BUCKET_SECONDS[-1])
    unit, per = ("minutes", 60.0) if width < 3600 else ("hours", 3600.0) if width < 86400 else ("days", 86400.0)
    return width, unit, per


def _timeline(rows: Sequence[LogRow], cf: Counterfactual, width: int, per_unit: float) -> list[dict[str, Any]]:
    """Per time bucket: start, x (units since the first bucket), requests, served and counterfactual costs, mix."""
    out: dict[int, dict[str, Any]] = {}
    first = None
    for r in rows:
        key = int(r.created_at.timestamp() // width * width)
        first = key if first is None else first
        b = out.get(key)
        if b is None:
            b = out[key] = {"start": datetime.fromtimestamp(key, UTC), "x": (key - first) / per_unit, "requests": 0,
                            "cost_usd": 0.0, "cheapest_cost_usd": 0.0, "strongest_cost_usd": 0.0, "backends": {}}
        b["requests"] += 1
        b["cost_usd"] += r.cost_usd
        if r.backend and r.status == "ok":
            b["backends"][r.backend] = b["backends"].get(r.backend, 0) + 1
        if cf.eligible(r):
            b["cheapest_cost_usd"] += cf.cost(r, cf.cheapest(r))
            b["strongest_cost_usd"] += cf.cost(r, cf.strongest(r))
    if out and first is not None and (max(out) - first) // width <= 1000:  # quiet buckets are zero, not missing
        for key in range(first, max(out) + 1, width):
            out.setdefault(key, {"start": datetime.fromtimestamp(key, UTC), "x": (key - first) / per_unit,
                                 "requests": 0, "cost_usd": 0.0, "cheapest_cost_usd": 0.0, "strongest_cost_usd": 0.0,
                                 "backends": {}})
    return [out[k] for k in sorted(out)]


def build_report(
    rows: Sequence[LogRow], pool_file: PoolFile, by: str = "pool",
    since: datetime | None = None, until: datetime | None = None,
) -> LogReport:
    """Every number of the report from the rows of one window (sorted by time, as :func:`fetch_rows` gives)."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")
    cf = Counterfactual(rows, pool_file)
    grouped: dict[str, list[LogRow]] = defaultdict(list)
    per_router: dict[str, list[LogRow]] = defaultdict(list)
    mix: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        grouped[group_key(r, by)].append(r)
        per_router[router_label(r)].append(r)
        if r.status == "ok" and r.backend:
            mix[router_label(r)][r.backend] = mix[router_label(r)].get(r.backend, 0) + 1
    quality = {f"{p}/{b}": {"mean_feedback": q, "labelled": cf.quality_n[(p, b)]} for (p, b), q in cf.quality.items()}
    width, unit, per_unit = _bucket(rows)
    return LogReport(
        since, until, by, [group_stats(k, v, cf) for k, v in sorted(grouped.items())], group_stats("total", rows, cf),
        [group_stats(k, v, cf) for k, v in sorted(per_router.items())], _timeline(rows, cf, width, per_unit), width,
        unit, dict(mix), quality, ASSUMPTIONS,
    )


ASSUMPTIONS: list[str] = [
    "cost: logged USD (pool file prices x logged tokens); counterfactual cost: the same prompt tokens, and the "
    "other backend's mean completion tokens in this window, at pool file prices",
    "always-cheapest / always-strongest: each request's cheapest / dearest candidate by input + output price",
    "their quality and the shadows' quality are ESTIMATES: the mean feedback of requests that backend answered "
    "in the pool (biased upward for a backend the router sent only easy requests)",
    "TEP = (dQ/Q_ref)/(dT/T_ref) against always-cheapest (EllieSQL), Q = mean feedback; in tokens and in USD",
    "savings vs always-strongest = 1 - cost / counterfactual always-strongest cost, on eligible requests "
    "(successful, pooled, priced backends)",
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
