"""Prometheus metrics of one gateway process, served at ``GET /metrics`` (``gateway.api.metrics``).

One :class:`Metrics` per app (its own ``CollectorRegistry``, no module globals). Request metrics are recorded
from each finished request record (``observe``, a ``gateway.record.RequestRecord``), so every request that
produced a row is counted exactly once, streams included (their record is finished when the stream ends).
Breaker states and the log queue are read at scrape time.

Series: ``poolgate_requests_total{pool,backend,status}``, ``poolgate_overhead_seconds`` (gateway time before the
client's first byte, minus upstream time), ``poolgate_upstream_seconds{backend}`` (per attempt),
``poolgate_ttft_seconds{pool,backend}`` (streams), ``poolgate_tokens_total{pool,backend,kind}`` (kind: prompt,
completion, and the parts of those the backend reported: cached and cache_write of the prompt, reasoning of the
completion),
``poolgate_cost_usd_total{pool,backend}``, ``poolgate_routing_decisions_total{pool,router,backend}`` (the top-ranked
backend), ``poolgate_breaker_state{backend,state}`` (1 for the current state), ``poolgate_log_queue_depth``,
``poolgate_log_spool_bytes``, ``poolgate_log_rows_at_risk_total{reason}`` (rows not journaled after a failed
journal write, dropped by a full or failing spool, rejected by the database: the signals that log rows may be
missing), ``poolgate_log_spool_failing{error}`` (1 while the spool's disk refuses writes, labelled with the errno
name, e.g. ``ENOSPC``; no sample otherwise), ``poolgate_log_journal_pinned_files`` (journal files kept past their
cycle for rows whose shadow routers have not finished: one that never falls back to 0 means a shadow router that
never returns),
``poolgate_limit_rejections_total{limit}`` (rpm, tpm, tpm_request, budget,
pool_forbidden, unavailable, check_failed), ``poolgate_limit_store_failures_total{outcome}`` (fail_open, fail_closed),
``poolgate_auth_failures_total{reason}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.record import RequestRecord

OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BREAKER_STATES = ("closed", "half_open", "open")


@dataclass(frozen=True)
class Gauges:
    """Where the scrape-time gauges read from: the running services (defaults: nothing to report)."""

    breaker_states: Callable[[], dict[str, str]] = dict
    backends: Sequence[str] = field(default_factory=tuple)
    queue_depth: Callable[[], int] = lambda: 0
    spool_bytes: Callable[[], int] = lambda: 0
    rows_at_risk: Callable[[], dict[str, int]] = dict
    journal_pinned_files: Callable[[], int] = lambda: 0
    spool_error: Callable[[], str | None] = lambda: None


class _LiveCollector(Collector):
    """Gauges read at scrape time from the running services."""

    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        g = self.gauges
        breakers = GaugeMetricFamily("poolgate_breaker_state", "circuit breaker state per backend (1 = current)",
                                     labels=["backend", "state"])
        states = g.breaker_states()
        for backend in sorted({*g.backends, *states}):
            current = states.get(backend, "closed")
            for state in BREAKER_STATES:
                breakers.add_metric([backend, state], 1.0 if state == current else 0.0)
        yield breakers
        yield GaugeMetricFamily("poolgate_log_queue_depth", "log rows waiting in memory", value=g.queue_depth())
        yield GaugeMetricFamily("poolgate_log_spool_bytes", "bytes of log rows spooled to disk",
                                value=g.spool_bytes())
        failing = GaugeMetricFamily("poolgate_log_spool_failing", "1 while the spool's disk refuses writes "
                                    "(full, read-only, ...), by errno name", labels=["error"])
        error = g.spool_error()
        if error is not None:
            failing.add_metric([error], 1.0)
        yield failing
        yield GaugeMetricFamily("poolgate_log_journal_pinned_files", "journal files kept for rows waiting for "
                                "their shadow routers", value=g.journal_pinned_files())
        at_risk = CounterMetricFamily("poolgate_log_rows_at_risk", "log rows that may be missing, by reason",
                                      labels=["reason"])
        for reason, count in sorted(g.rows_at_risk().items()):
            at_risk.add_metric([reason], float(count))
        yield at_risk


class Metrics:
    """The gateway's Prometheus registry and the request-path recording helpers; ``gauges`` are read at scrape time."""

    def __init__(self, gauges: Gauges | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("poolgate_requests", "requests by pool, backend and HTTP status",
                                ["pool", "backend", "status"], registry=r)
        self.overhead = Histogram("poolgate_overhead_seconds", "gateway time before the first byte, minus upstream",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.upstream = Histogram("poolgate_upstream_seconds", "upstream attempt latency (to first byte for streams)",
                                  ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("poolgate_ttft_seconds", "time to first token of streamed answers",
                              ["pool", "backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("poolgate_tokens", "tokens by pool, backend and kind (prompt, completion; "
                              "cached, cache_write: parts of prompt; reasoning: part of completion)",
                              ["pool", "backend", "kind"], registry=r)
        self.cost = Counter("poolgate_cost_usd", "cost in USD by pool and backend", ["pool", "backend"], registry=r)
        self.decisions = Counter("poolgate_routing_decisions", "top-ranked backend per routing decision",
                                 ["pool", "router", "backend"], registry=r)
        self.limit_rejections = Counter("poolgate_limit_rejections", "requests refused by a key's limits",
                                        ["limit"], registry=r)
        self.limit_store_failures = Counter("poolgate_limit_store_failures", "requests decided by the Redis outage "
                                            "policy", ["outcome"], registry=r)
        self.auth_failures = Counter("poolgate_auth_failures", "requests refused with 401", ["reason"], registry=r)
        self.live = _LiveCollector(gauges or Gauges())
        r.register(self.live)

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def limit_rejection(self, limit: str) -> None:
        self.limit_rejections.labels(limit).inc()

    def observe(self, record: RequestRecord) -> None:
        """Record one finished request from its record (counts are checked non-negative by ``finish``)."""
        pool = record.pool or ""
        backend = record.backend or ""
        self.requests.labels(pool, backend, str(record.http_status)).inc()
        upstream_ms = 0.0
        for attempt in record.attempts:
            ms = attempt.get("latency_ms") or 0.0
            upstream_ms += ms
            if attempt.get("status") is not None or attempt.get("error") != "circuit open":
                self.upstream.labels(attempt.get("backend") or "").observe(ms / 1000)
        first_byte_ms = record.ttft_ms if record.stream else record.latency_ms
        if first_byte_ms is not None and record.attempts:
            self.overhead.observe(max(0.0, first_byte_ms - upstream_ms) / 1000)
        if record.stream and record.ttft_ms is not None:
            self.ttft.labels(pool, backend).observe(record.ttft_ms / 1000)
        if record.prompt_tokens:
            self.tokens.labels(pool, backend, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self.tokens.labels(pool, backend, "completion").inc(record.completion_tokens)
        for kind, count in (("cached", record.cached_tokens), ("cache_write", record.cache_write_tokens),
                            ("reasoning", record.reasoning_tokens)):
            if count:
                self.tokens.labels(pool, backend, kind).inc(count)
        if record.cost_usd:
            self.cost.labels(pool, backend).inc(record.cost_usd)
        top = _top_candidate(record.candidates)
        if top is not None:
            self.decisions.labels(pool, record.router or "", top).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _top_candidate(candidates: Iterable[dict[str, Any]]) -> str | None:
    """The backend the objective ranked first: highest utility among feasible candidates (or the only one)."""
    best, best_utility = None, float("-inf")
    for c in candidates:
        utility = c.get("utility")
        if utility is None:
            return c.get("backend") if best is None else best
        if c.get("feasible", True) and utility > best_utility:
            best, best_utility = c.get("backend"), utility
    return best


def iter_samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` in exposition ``text`` (tests and `poolgate` tools)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                yield dict(sample.labels), float(sample.value)
