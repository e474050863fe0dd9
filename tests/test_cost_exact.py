"""Exact cost: cached, cache-write and reasoning tokens priced at the backend's own prices, in the log row, the
``x-poolgate-cost-usd`` header, the key's budget spend, ``/metrics`` and the drop-in APIs' usage; a real gateway
over a real fake backend on loopback (tests/costfakes.py), with the real openai and anthropic SDKs."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import anthropic
import httpx
import openai
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.metrics import iter_samples
from tests.conftest import backend_yaml, wait_until
from tests.costfakes import DetailedOpenAI
from tests.dbutil import wait_rows
from tests.servers import ServerThread

MASTER = "mk-cost"
ADMIN = {"authorization": f"Bearer {MASTER}"}
PRICES = {"input_price": 2.0, "output_price": 8.0, "cached_input_price": 0.5, "cache_write_price": 2.5,
          "reasoning_price": 4.0}


def usd(prompt: int, cached: int, written: int, completion: int, reasoning: int, prices: dict[str, float]) -> float:
    """The bill as a provider writes it, term by term (USD per 1M tokens)."""
    return ((prompt - cached - written) * prices["input_price"] + cached * prices["cached_input_price"]
            + written * prices["cache_write_price"] + (completion - reasoning) * prices["output_price"]
            + reasoning * prices["reasoning_price"]) / 1e6


@pytest.fixture
def serve(gateway: Any, tmp_path: Any) -> Any:
    with ExitStack() as stack:
        def start(fake: DetailedOpenAI, prices: dict[str, float], db: str | None = None) -> Any:
            upstream = stack.enter_context(ServerThread(fake.app))
            pool = f"""
backends:
{backend_yaml("det", upstream.url, retries=0, **prices)}
pools:
  - name: auto
    members: [det]
"""
            gw = gateway(pool, auth_enabled=True, master_key=MASTER, **({"database_url": db} if db else {}))
            gw.db = db or f"sqlite+aiosqlite:///{tmp_path}/gw.db"
            gw.pool_path = tmp_path / "pool.yaml"
            gw.pool_path.write_text(pool)
            return gw

        yield start


def new_key(gw: Any, **params: Any) -> dict[str, Any]:
    resp = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", **params}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def spent(gw: Any, key: dict[str, Any]) -> float:
    return float(httpx.get(f"{gw.url}/admin/keys/{key['id']}", headers=ADMIN).json()["usage"]["spent_usd"])


def test_cached_and_reasoning_tokens_give_the_exact_dollars_in_row_header_budget_and_metrics(
        serve: Any, db_url: str) -> None:  # the log store on SQLite and on PostgreSQL
    gw = serve(DetailedOpenAI(prompt=100, cached=60, completion=40, reasoning=25), PRICES, db_url)
    exact = usd(100, 60, 0, 40, 25, PRICES)
    assert exact == pytest.approx(330e-6)  # 40x2 + 60x0.5 + 15x8 + 25x4, per 1M
    key = new_key(gw, budget_usd=1.0, period="day")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["secret"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto",
                                                           messages=[{"role": "user", "content": "2+2?"}])
    assert raw.headers["x-poolgate-cost-usd"] == f"{exact:.8f}" and "x-poolgate-cost-estimated" not in raw.headers
    assert raw.parse().usage.prompt_tokens_details.cached_tokens == 60  # the backend's usage reaches the client
    stream = client.chat.completions.create(model="auto", stream=True, messages=[{"role": "user", "content": "2+2?"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "four"
    rows = wait_rows(gw.db, 2)
    assert len(rows) == 2
    for row in rows:
        assert (row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"], row["completion_tokens"],
                row["reasoning_tokens"]) == (100, 60, 0, 40, 25), row
        assert row["usage_estimated"] is False and row["cost_usd"] == pytest.approx(exact, rel=1e-9)
    assert sorted(r["stream"] for r in rows) == [False, True]
    wait_until(lambda: spent(gw, key) == pytest.approx(2 * exact, rel=1e-6), 10, "the budget to settle both")
    text = httpx.get(f"{gw.url}/metrics").text
    tokens = {s["kind"]: v for s, v in iter_samples(text, "poolgate_tokens_total") if s["backend"] == "det"}
    assert tokens == {"prompt": 200, "completion": 80, "cached": 120, "reasoning": 50}
    cost = [v for s, v in iter_samples(text, "poolgate_cost_usd_total") if s["backend"] == "det"]
    assert cost == [pytest.approx(2 * exact, rel=1e-9)]
    # the report: the same tokens, and their share of the cost (60 cached x 0.5 and 25 reasoning x 4 per 1M, each
    # of 330 per 1M: 9.1 % and 30.3 %)
    out = CliRunner().invoke(main, ["report", "--since", "1d", "--json", "--pool-file", str(gw.pool_path)],
                             env={"POOLGATE_DATABASE_URL": gw.db})
    assert out.exit_code == 0, out.output
    total = json.loads(out.output)["total"]
    assert (total["cached_tokens"], total["cache_write_tokens"], total["reasoning_tokens"]) == (120, 0, 50)
    assert total["cached_cost_usd"] == pytest.approx(120 * 0.5e-6) and total["reasoning_cost_usd"] == \
        pytest.approx(50 * 4e-6)
    totals = httpx.get(f"{gw.url}/admin/report", headers=ADMIN).json()
    det = next(r for r in totals["rows"] if r["backend"] == "det")
    assert (det["cached_tokens"], det["reasoning_tokens"]) == (120, 50) and totals["totals"]["cached_tokens"] == 120
    table = CliRunner().invoke(main, ["report", "--since", "1d", "--pool-file", str(gw.pool_path)],
                               env={"POOLGATE_DATABASE_URL": gw.db, "COLUMNS": "250"})
    assert table.exit_code == 0 and "120 (9.1%)" in table.output and "50 (30.3%)" in table.output, table.output


def test_cache_writes_are_priced_and_translated_to_messages_and_responses_usage(serve: Any) -> None:
    gw = serve(DetailedOpenAI(prompt=100, cached=60, written=10, completion=40, reasoning=25), PRICES)
    exact = usd(100, 60, 10, 40, 25, PRICES)
    assert exact == pytest.approx(335e-6)
    key = new_key(gw)
    claude = anthropic.Anthropic(base_url=gw.url, api_key=key["secret"], max_retries=0)
    raw = claude.messages.with_raw_response.create(model="auto", max_tokens=20,
                                                   messages=[{"role": "user", "content": "2+2?"}])
    assert raw.headers["x-poolgate-cost-usd"] == f"{exact:.8f}"
    u = raw.parse().usage  # Anthropic counts input_tokens without the cache reads and writes
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == \
        (30, 60, 10, 40)
    with claude.messages.stream(model="auto", max_tokens=20, messages=[{"role": "user", "content": "2+2?"}]) as s:
        final = s.get_final_message()
    assert (final.usage.cache_read_input_tokens, final.usage.cache_creation_input_tokens,
            final.usage.output_tokens) == (60, 10, 40)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["secret"], max_retries=0)
    resp = client.responses.create(model="auto", input="2+2?")
    assert (resp.usage.input_tokens, resp.usage.input_tokens_details.cached_tokens, resp.usage.output_tokens,
            resp.usage.output_tokens_details.reasoning_tokens) == (100, 60, 40, 25)
    rows = wait_rows(gw.db, 3)
    assert len(rows) == 3
    assert all(r["cost_usd"] == pytest.approx(exact, rel=1e-9) and r["cache_write_tokens"] == 10
               and r["usage_estimated"] is False for r in rows), rows


def test_detail_prices_default_to_the_input_and_output_prices(serve: Any) -> None:
    plain = {"input_price": 2.0, "output_price": 8.0}
    gw = serve(DetailedOpenAI(prompt=100, cached=60, completion=40, reasoning=25), plain)
    key = new_key(gw)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key['secret']}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "2+2?"}]})
    assert resp.headers["x-poolgate-cost-usd"] == f"{(100 * 2.0 + 40 * 8.0) / 1e6:.8f}"
    row = wait_rows(gw.db, 1)[0]
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (60, 25)  # counted even when not discounted


@pytest.mark.parametrize("usage, cached, reasoning", [
    ({"prompt_tokens": 100, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 150}}, 0, 0),
    ({"prompt_tokens": 100, "completion_tokens": 40, "completion_tokens_details": {"reasoning_tokens": -5}}, 0, 0),
    ({"prompt_tokens": 100, "completion_tokens": 40, "completion_tokens_details": {"reasoning_tokens": "25"},
      "prompt_tokens_details": {"cached_tokens": 60}}, 60, 0),
    ({"prompt_tokens": 100, "completion_tokens": 40, "completion_tokens_details": {"reasoning_tokens": 41}}, 0, 0),
    ({"prompt_tokens": 100, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 10**12}}, 0, 0),
])
def test_implausible_details_are_dropped_and_the_row_is_marked_estimated(serve: Any, usage: Any, cached: int,
                                                                         reasoning: int) -> None:
    gw = serve(DetailedOpenAI(usage=usage), PRICES)
    key = new_key(gw)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key['secret']}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "2+2?"}]})
    assert resp.status_code == 200 and resp.headers["x-poolgate-cost-estimated"] == "true"
    row = wait_rows(gw.db, 1)[0]
    assert row["usage_estimated"] is True and (row["prompt_tokens"], row["completion_tokens"]) == (100, 40)
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (cached, reasoning)
    assert row["cost_usd"] == pytest.approx(usd(100, cached, 0, 40, reasoning, PRICES), rel=1e-9)
