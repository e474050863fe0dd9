"""The dashboard's numbers on SQLite and PostgreSQL: a few logged requests, a key with a budget, an open breaker
and a promoted version, read back as the dashboard shows them (totals, per pool, per backend, per key, the
routing mix over time, versions)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from gateway.limits.keys import KeyStore
from gateway.limits.local import InProcessLimiter
from gateway.proxy.breaker import BreakerRegistry
from gateway.routing.artifacts import ArtifactStore
from gateway.routing.reload import RouterReloader
from gateway.routing.service import RoutingService
from gateway.store import Request, make_engine, upgrade
from gateway.store.repository import LogRepository
from gateway.ui.data import Sources, load_dashboard
from gateway.ui.render import pct, render
from gateway.ui.views import build_charts
from tests.test_loop_artifacts import fitted
from tests.test_loop_report import POOL, row

NOW = datetime.now(UTC).replace(microsecond=0)


async def test_the_dashboard_reads_every_panel_from_the_store(db_url: str, tmp_path: Path) -> None:
    await asyncio.to_thread(upgrade, db_url)
    engine = make_engine(db_url)
    try:
        keys = KeyStore(engine, 0.0)
        key, _ = await keys.create("team-a", budget_usd=1.0)
        rows = [row(1, "cheap", 100, 10, None, latency=10, key=key.id, minutes=0),
                row(2, "strong", 100, 30, None, latency=20, key=key.id, minutes=2),
                row(3, "cheap", 50, 20, None, latency=30, minutes=4),
                row(4, "strong", 0, 0, None, status="error", latency=100, minutes=4)]
        rows = [dataclasses.replace(r, created_at=NOW - timedelta(minutes=10) + (r.created_at - rows[0].created_at))
                for r in rows]
        async with engine.begin() as conn:
            await conn.execute(insert(Request), [{
                "id": r.id, "created_at": r.created_at, "pool": r.pool, "model_requested": r.pool,
                "router": r.router, "router_version": r.router_version, "key_id": r.key_id, "backend": r.backend,
                "candidates": [{"backend": c, "utility": 0.5} for c in r.candidates], "attempts": [],
                "status": r.status, "http_status": 200 if r.status == "ok" else 502, "stream": False,
                "latency_ms": r.latency_ms, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "cost_usd": r.cost_usd, "shadow": None,
                # routed with a known propensity: the overview's savings are the off-policy estimates of these
                "propensity": 0.5 if r.status == "ok" else None, "policy": "router"} for r in rows])
        breakers = BreakerRegistry(failure_threshold=1, reset_after_s=60)
        breakers.get("strong").record_failure()
        artifacts = ArtifactStore(engine, tmp_path / "artifacts")
        version = await artifacts.register("auto", fitted("cheap"), metrics={}, n_rows=2)
        await artifacts.promote("auto", version.version)
        routing = RoutingService(POOL)
        routing.load()
        src = Sources(LogRepository(engine), POOL, breakers, keys, InProcessLimiter(), artifacts,
                      RouterReloader(routing, artifacts))
        d = await load_dashboard(src, "1h", now=NOW)
    finally:
        await engine.dispose()

    assert (d.total.requests, d.total.errors) == (4, 1)
    assert d.total.cost_usd == pytest.approx(sum(r.cost_usd for r in rows))
    assert [g.key for g in d.pools] == ["auto"]
    by_name = {b.name: b for b in d.backends}
    assert by_name["strong"].breaker == "open" and by_name["strong"].open_for_s > 0
    assert by_name["cheap"].breaker == "closed" and by_name["cheap"].stats.latency_p50 == pytest.approx(20.0)
    (team,) = d.keys
    assert (team.name, team.budget_usd, team.logged_requests) == ("team-a", 1.0, 2)
    assert team.logged_cost_usd == pytest.approx(rows[0].cost_usd + rows[1].cost_usd)
    assert team.spent_usd == 0.0  # the in-process limiter counts spend it settled itself: none here
    est = d.estimate  # the overview cards read the report's off-policy estimate of every pool together
    assert est is not None and est.events == 3 and est.savings_vs_strongest is not None
    html = render("panels.html", d=d, c=build_charts(d), windows=["1h"])
    assert f'id="stat-savings">{pct(est.savings_vs_strongest["value"])}</p>' in html
    assert "off-policy estimate" in html and "95% interval" in html
    (mix,) = d.mix
    assert mix.pool == "auto" and mix.backends == ["cheap", "strong"]
    assert [sum(col) for col in zip(*mix.counts, strict=True)] == [2, 1]  # successful requests only
    assert [v.status for v in d.versions["auto"]] == ["live"]
    assert d.window == "1h" and d.since == NOW - timedelta(hours=1)
