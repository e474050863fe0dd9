"""The report's off-policy savings and judge-vs-user agreement: a biased logging policy on simulated traffic whose
truth is known (the estimates find it, the per-backend filled means do not), and the numbers end to end through
the log store on SQLite and PostgreSQL, its JSON and the CLI table."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import insert

from gateway.loop.report import report_json, routing_report
from gateway.loop.report_estimates import agreement, pool_estimate
from gateway.loop.report_html import render_html
from gateway.store import Feedback, Request, make_engine, upgrade
from gateway.store.estimates import Event
from gateway.store.repository import LogRepository
from tests.test_loop_report import POOL, T0

PRICES = {"cheap": (0.5, 1.0), "strong": (10.0, 30.0)}
# true quality and completion tokens per (difficulty, backend): hard prompts make strong verbose
QUALITY = {(0, "cheap"): 0.9, (1, "cheap"): 0.2, (0, "strong"): 0.95, (1, "strong"): 0.8}
TOKENS = {(0, "cheap"): 100, (1, "cheap"): 120, (0, "strong"): 100, (1, "strong"): 300}


def cost(backend: str, prompt: int, completion: int) -> float:
    p_in, p_out = PRICES[backend]
    return (prompt * p_in + completion * p_out) / 1e6


def simulate(n: int, seed: int) -> tuple[list[Event], float, float]:
    """A router that sends 90% of hard prompts to strong and 90% of easy ones to cheap (propensities logged);
    returns the events and always-strongest's true mean quality and cost per request."""
    rng = np.random.default_rng(seed)
    events, true_q, true_c = [], [], []
    for _ in range(n):
        hard = int(rng.random() < 0.5)
        p_strong = 0.9 if hard else 0.1
        backend = "strong" if rng.random() < p_strong else "cheap"
        prop = p_strong if backend == "strong" else 1 - p_strong
        prompt = 50
        label = float(rng.random() < QUALITY[(hard, backend)])
        events.append(Event("auto", backend, prop, cost(backend, prompt, TOKENS[(hard, backend)]), prompt,
                            TOKENS[(hard, backend)], label, "cheap", "strong"))
        true_q.append(QUALITY[(hard, "strong")])
        true_c.append(cost("strong", prompt, TOKENS[(hard, "strong")]))
    return events, float(np.mean(true_q)), float(np.mean(true_c))


def test_off_policy_savings_find_the_truth_that_filled_means_miss() -> None:
    events, true_q, true_c = simulate(4000, seed=1)
    est = pool_estimate("auto", events, PRICES)
    strong = est.references["always-strongest"]
    q, c = strong.quality["dr"], strong.cost_usd["dr"]
    assert q["low"] <= true_q <= q["high"] and abs(q["value"] - true_q) < 0.03
    assert c["low"] <= true_c <= c["high"] and abs(c["value"] - true_c) / true_c < 0.05
    # the old filling: strong's mean label / cost over the requests it answered (mostly the hard ones)
    filled_q = np.mean([e.score for e in events if e.backend == "strong"])
    filled_c = np.mean([e.cost_usd for e in events if e.backend == "strong"])
    assert abs(filled_q - true_q) > 0.05 and not q["low"] <= filled_q <= q["high"]
    assert filled_c > c["high"]  # verbose on hard prompts: filling overstates always-strongest's cost
    served = np.mean([e.cost_usd for e in events])
    true_savings = 1 - served / true_c
    sv = est.savings_vs_strongest
    assert sv is not None and sv["low"] <= true_savings <= sv["high"]
    assert sv["value"] == pytest.approx(1 - served / c["value"], rel=1e-3)  # as_dict rounds to 6 digits
    assert 0 < strong.cost_usd["ess"] < len(events) and est.events == 4000 == est.labelled


def test_agreement_statistics_by_hand() -> None:
    pairs = [(1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.5)]
    a = agreement(pairs)
    # classes at 0.5: user 1,0,1,1,0 / judge 1,0,0,1,1 -> 3 of 5 agree; chance 0.6*0.6 + 0.4*0.4 = 0.52
    assert a.n == 5 and a.mean_abs_diff == pytest.approx(1.5 / 5)
    assert a.agreement == pytest.approx(0.6) and a.kappa == pytest.approx((0.6 - 0.52) / 0.48)
    assert a.correlation == pytest.approx(float(np.corrcoef([1, 0, 1, 1, 0], [1, 0, 0, 1, 0.5])[0, 1]))
    assert agreement([]).n == 0
    assert np.isnan(agreement([(1.0, 1.0), (1.0, 1.0)]).kappa)  # one class only: kappa undefined, not 1


async def test_report_carries_the_estimates_and_the_agreement(db_url: str) -> None:
    events, _, _ = simulate(300, seed=2)
    await asyncio.to_thread(upgrade, db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Request), [{
                "id": f"r{i}", "created_at": T0 + timedelta(seconds=i), "pool": "auto", "model_requested": "auto",
                "router": "knn", "router_version": "v1", "backend": e.backend, "policy": "router",
                "propensity": e.propensity, "candidates": [{"backend": "cheap"}, {"backend": "strong"}],
                "attempts": [], "status": "ok", "http_status": 200, "stream": False, "latency_ms": 5.0,
                "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens, "cost_usd": e.cost_usd}
                for i, e in enumerate(events)])
            await conn.execute(insert(Request), [{  # no propensity (before 0005, or a fallback): left out
                "id": "old", "created_at": T0, "pool": "auto", "model_requested": "auto", "router": "knn",
                "backend": "strong", "propensity": None, "candidates": [{"backend": "cheap"}], "attempts": [],
                "status": "ok", "http_status": 200, "stream": False, "prompt_tokens": 1, "completion_tokens": 1,
                "cost_usd": 1.0}])
            await conn.execute(insert(Feedback), [{"request_id": f"r{i}", "score": e.score, "source": "judge"}
                                                  for i, e in enumerate(events)])
            # a person labelled four of them too: agrees on r0, r1 and r2, not on r3
            await conn.execute(insert(Feedback), [{"request_id": f"r{i}", "source": "user",
                                                   "score": events[i].score if i < 3 else 1 - (events[i].score or 0)}
                                                  for i in range(4)])
        rep = await routing_report(LogRepository(engine), POOL, "pool")
    finally:
        await engine.dispose()
    est = rep.estimates["auto"]
    assert est.events == 300 and rep.estimates["total"] is est and not rep.events_capped
    assert est.served_cost_usd == pytest.approx(np.mean([e.cost_usd for e in events]))
    a = rep.judge_agreement
    assert (a.n, a.agreement, a.mean_abs_diff) == (4, 0.75, 0.25)
    data = report_json(rep)
    strong = data["estimates"]["auto"]["references"]["always-strongest"]
    assert set(strong["cost_usd"]) >= {"ips", "snips", "dr", "ess", "match"}
    assert data["judge_agreement"]["n"] == 4 and data["estimates"]["auto"]["savings_vs_strongest"]["low"] is not None
    assert any("OFF-POLICY ESTIMATES" in line for line in data["assumptions"])
    page = render_html(rep)
    assert "Savings: OFF-POLICY ESTIMATES" in page and "judge vs user on 4 requests labelled by both" in page
