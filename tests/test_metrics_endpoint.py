"""GET /metrics: Prometheus text with request, latency, token, cost, routing, breaker and limit series."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from gateway.metrics import iter_samples
from tests.conftest import backend_yaml

MASTER = "mk-metrics"


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in iter_samples(text, name) if all(lab.get(k) == x for k, x in labels.items()))


def scrape_until(url: str, name: str, expected: float, **labels: str) -> str:
    """Scrape until ``name{labels}`` reaches ``expected`` (streams finish their row after the last byte)."""
    deadline = time.monotonic() + 5
    while True:
        text = httpx.get(f"{url}/metrics").text
        if value(text, name, **labels) >= expected or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


@pytest.fixture
def gw(fake_backends: Any, gateway: Any) -> Any:
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    _, bs = fake_backends("broken", mode="500")
    pool = f"""
backends:
{backend_yaml("cheap", cs.url, input_price=0.5, output_price=1.0, retries=0)}
{backend_yaml("strong", ss.url, input_price=10, output_price=30, retries=0)}
{backend_yaml("broken", bs.url, retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
breaker:
  failure_threshold: 1
  reset_after_s: 60
"""
    return gateway(pool, auth_enabled=True, master_key=MASTER)


def test_metrics_count_requests_tokens_cost_latency_decisions_breakers_and_rejections(gw: Any) -> None:
    key = httpx.post(f"{gw.url}/admin/keys", json={"name": "m", "rpm": 4},
                     headers={"authorization": f"Bearer {MASTER}"}).json()
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["secret"], max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        client.chat.completions.create(model="auto", messages=msgs)  # type: ignore[arg-type]
    for _ in client.chat.completions.create(model="auto", messages=msgs, stream=True):  # type: ignore[arg-type]
        pass
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):  # the 5th request in the minute, rpm 4
        client.chat.completions.create(model="auto", messages=msgs)  # type: ignore[arg-type]
    assert httpx.post(f"{gw.url}/v1/chat/completions", json={}).status_code == 401

    text = scrape_until(gw.url, "poolgate_ttft_seconds_count", 1, pool="auto", backend="cheap")
    assert value(text, "poolgate_requests_total", pool="auto", backend="cheap", status="200") == 3
    assert value(text, "poolgate_requests_total", backend="broken", status="502") == 1
    assert value(text, "poolgate_requests_total", status="429") == 1
    assert value(text, "poolgate_tokens_total", pool="auto", backend="cheap", kind="prompt") == 3 * 7
    assert value(text, "poolgate_tokens_total", pool="auto", backend="cheap", kind="completion") == 3 * 3
    assert value(text, "poolgate_cost_usd_total", pool="auto", backend="cheap") == pytest.approx(
        3 * (7 * 0.5 + 3 * 1.0) / 1e6)
    assert value(text, "poolgate_ttft_seconds_count", pool="auto", backend="cheap") == 1
    assert value(text, "poolgate_upstream_seconds_count", backend="cheap") == 3
    assert value(text, "poolgate_upstream_seconds_count", backend="broken") == 1
    assert value(text, "poolgate_overhead_seconds_count") == 4  # every request that reached a backend
    # the gateway's own time, not the backend's: well under a second a request even on a loaded machine
    assert 0 < value(text, "poolgate_overhead_seconds_sum") < 4 * 1.0
    assert value(text, "poolgate_routing_decisions_total", pool="auto", router="cheapest", backend="cheap") == 3
    assert value(text, "poolgate_routing_decisions_total", router="direct", backend="broken") == 1
    assert value(text, "poolgate_breaker_state", backend="broken", state="open") == 1
    assert value(text, "poolgate_breaker_state", backend="strong", state="closed") == 1
    assert value(text, "poolgate_limit_rejections_total", limit="rpm") == 1
    assert value(text, "poolgate_auth_failures_total", reason="missing") == 1
    assert list(iter_samples(text, "poolgate_log_queue_depth"))
    for reason in ("not_journaled", "spool_full_dropped", "rejected_by_database"):  # nothing at risk here
        assert value(text, "poolgate_log_rows_at_risk_total", reason=reason) == 0


def test_metrics_are_served_in_prometheus_text_format_without_a_key(gw: Any) -> None:
    resp = httpx.get(f"{gw.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE poolgate_requests_total counter" in resp.text
