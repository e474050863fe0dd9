"""API keys, limits and the admin API through a real gateway on loopback (auth on, in-process limits, SQLite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import backend_yaml

MASTER = "mk-test-master"
ADMIN = {"authorization": f"Bearer {MASTER}"}
CHEAP = (0.5, 1.0)  # USD per 1M tokens, in / out
STRONG = (10.0, 30.0)


def pool_yaml(cheap_url: str, strong_url: str) -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=CHEAP[0], output_price=CHEAP[1], retries=0)}
{backend_yaml("strong", strong_url, input_price=STRONG[0], output_price=STRONG[1], retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
  - name: smart
    members: [cheap, strong]
    router: strongest
    objective: quality-first
  - name: premium
    members: [strong]
"""


@pytest.fixture
def gw(fake_backends: Any, gateway: Any) -> Any:
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    return gateway(pool_yaml(cs.url, ss.url), auth_enabled=True, master_key=MASTER)


def new_key(gw: Any, **params: Any) -> dict[str, Any]:
    resp = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", **params}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def chat(gw: Any, secret: str | None, model: str = "auto", **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    payload = {"model": model, "messages": [{"role": "user", "content": "2+2?"}], **body}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, headers=headers)


def assert_openai_error(resp: httpx.Response, status: int, etype: str, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"]) == (etype, code)
    return dict(err)


def test_missing_wrong_and_revoked_keys_get_401_as_openai_error_json(gw: Any) -> None:
    assert_openai_error(chat(gw, None), 401, "authentication_error", "missing_api_key")
    assert_openai_error(chat(gw, "pg-not-a-real-key"), 401, "authentication_error", "invalid_api_key")
    key = new_key(gw)
    assert chat(gw, key["secret"]).status_code == 200
    assert httpx.post(f"{gw.url}/admin/keys/{key['id']}/revoke", headers=ADMIN).json()["revoked_at"]
    assert_openai_error(chat(gw, key["secret"]), 401, "authentication_error", "revoked_api_key")
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401


def test_a_pool_outside_the_keys_list_gets_403_and_its_backends_too(gw: Any) -> None:
    key = new_key(gw, pools=["auto"])
    assert chat(gw, key["secret"], "auto").status_code == 200
    assert chat(gw, key["secret"], "cheap").status_code == 200  # a member of an allowed pool
    err = assert_openai_error(chat(gw, key["secret"], "premium"), 403, "permission_error", "pool_forbidden")
    assert "premium" in err["message"] and err["param"] == "model"
    only_premium = new_key(gw, pools=["premium"])
    assert_openai_error(chat(gw, only_premium["secret"], "cheap"), 403, "permission_error", "pool_forbidden")


def test_the_master_key_calls_any_pool_without_limits(gw: Any) -> None:
    for _ in range(3):
        assert chat(gw, MASTER, "premium").status_code == 200


def test_rpm_gives_429_with_retry_after_and_openai_type(gw: Any) -> None:
    key = new_key(gw, rpm=3)
    assert [chat(gw, key["secret"]).status_code for _ in range(3)] == [200, 200, 200]
    resp = chat(gw, key["secret"])
    assert_openai_error(resp, 429, "requests", "rate_limit_exceeded")
    assert 55 <= int(resp.headers["retry-after"]) <= 60
    usage = httpx.get(f"{gw.url}/admin/keys/{key['id']}", headers=ADMIN).json()["usage"]
    assert usage["requests_in_window"] == 3


def test_tpm_refuses_once_the_window_holds_the_tokens(gw: Any) -> None:
    key = new_key(gw, tpm=200)
    ok = chat(gw, key["secret"], max_tokens=150)  # reserves ~165, settles to the 10 the backend reports
    assert ok.status_code == 200
    assert chat(gw, key["secret"], max_tokens=150).status_code == 200  # 10 + ~165 <= 200
    resp = chat(gw, key["secret"], max_tokens=170)  # ~182 alone fits, not beside the 20 held
    assert_openai_error(resp, 429, "tokens", "rate_limit_exceeded")
    too_big = chat(gw, key["secret"], max_tokens=500)
    assert_openai_error(too_big, 429, "tokens", "request_too_large")
    assert too_big.headers["x-should-retry"] == "false"


def test_budget_is_refused_at_zero_with_insufficient_quota(gw: Any) -> None:
    strong_cost = (7 * STRONG[0] + 3 * STRONG[1]) / 1e6  # the fake backend reports 7 + 3 tokens
    key = new_key(gw, budget_usd=strong_cost * 2.5, period="day")
    statuses = [chat(gw, key["secret"], "premium", max_tokens=3).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]  # 0, 1 and 2 spent: money left; after 3, none
    resp = chat(gw, key["secret"], "premium", max_tokens=3)
    assert_openai_error(resp, 429, "insufficient_quota", "insufficient_quota")
    assert int(resp.headers["retry-after"]) >= 1 and resp.headers["x-should-retry"] == "false"
    usage = httpx.get(f"{gw.url}/admin/keys/{key['id']}", headers=ADMIN).json()["usage"]
    assert usage["spent_usd"] == pytest.approx(3 * strong_cost, rel=1e-6)
    assert usage["spent_usd"] - key["budget_usd"] <= strong_cost  # over by less than one request


def _best_single_artifact(folder: Path) -> Path:
    """A best-single router that learned cheap 0.6 and strong 0.9 mean quality (no calibration: the objective's
    price-ratio rule then turns a quality target into lambda)."""
    import numpy as np

    from routers.base import ModelCard
    from routers.baselines import BestSingleRouter
    from routers.dataset import RoutingDataset

    quality = np.asarray([[1.0, 1.0]] * 6 + [[0.0, 1.0]] * 3 + [[0.0, 0.0]] * 1)
    cards = [ModelCard("cheap", *CHEAP), ModelCard("strong", *STRONG)]
    ds = RoutingDataset("toy", [f"q{i}" for i in range(10)], ["cheap", "strong"], quality, np.ones(10),
                        np.ones((10, 2)), np.ones((10, 2)), cards)
    return BestSingleRouter().fit(ds).save(folder / "best-single.router")


def test_budget_pressure_lowers_the_quality_target_until_routing_prefers_the_cheap_model(
        fake_backends: Any, gateway: Any, tmp_path: Path) -> None:
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    pool = pool_yaml(cs.url, ss.url) + f"""
  - name: judged
    members: [cheap, strong]
    router: best-single
    artifact: {_best_single_artifact(tmp_path)}
    objective: quality-first
"""
    gw = gateway(pool, auth_enabled=True, master_key=MASTER, budget_min_quality_target=0.2)
    strong_cost = (7 * STRONG[0] + 3 * STRONG[1]) / 1e6
    key = new_key(gw, budget_usd=strong_cost * 6.2, period="day")
    seen: list[tuple[str, float | None]] = []
    for _ in range(7):
        resp = chat(gw, key["secret"], "judged", max_tokens=3)
        assert resp.status_code == 200, resp.text
        seen.append((resp.headers["x-poolgate-backend"],
                     json.loads(resp.headers["x-poolgate-flags"])["budget_quality_target"]))
    backends = [b for b, _ in seen]
    targets = [1.0 if t is None else t for _, t in seen]
    # quality-first (lambda 0) while at most half the budget is spent; then the target falls linearly towards 0.2
    # and lambda = (1 - t) / cost(strong): strong (0.9) loses to cheap (0.6) once (1 - t)(1 - price ratio) > 0.3
    assert targets[:3] == [1.0, 1.0, 1.0] and targets == sorted(targets, reverse=True) and targets[-1] > 0.2
    k = backends.index("cheap")
    assert 3 <= k <= 6 and backends == ["strong"] * k + ["cheap"] * (7 - k)
    assert 1 - targets[k] > 0.3 > (1 - targets[k - 1]) * (1 - (CHEAP[0] + CHEAP[1]) / (STRONG[0] + STRONG[1]))


def test_key_default_flags_apply_and_the_request_overrides_them(gw: Any) -> None:
    key = new_key(gw, default_flags={"cost": 0.9, "latency": 0.1})
    flags = json.loads(chat(gw, key["secret"]).headers["x-poolgate-flags"])
    assert (flags["cost"], flags["latency"]) == (0.9, 0.1)
    flags = json.loads(chat(gw, key["secret"], poolgate={"flags": {"cost": 0.2}}).headers["x-poolgate-flags"])
    assert (flags["cost"], flags["latency"]) == (0.2, 0.1)


def test_admin_api_needs_the_master_key(gw: Any) -> None:
    key = new_key(gw)
    assert httpx.get(f"{gw.url}/admin/keys").status_code == 401
    resp = httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {key['secret']}"})
    assert_openai_error(resp, 401, "authentication_error", "invalid_api_key")


def test_admin_api_lists_keys_without_secrets_and_reports_pools_routers_and_usage(gw: Any) -> None:
    key = new_key(gw, rpm=10, pools=["auto"])
    assert chat(gw, key["secret"]).status_code == 200
    listed = httpx.get(f"{gw.url}/admin/keys", headers=ADMIN).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert "secret" not in listed[0] and key["secret"].startswith(listed[0]["key_prefix"])
    bad = httpx.post(f"{gw.url}/admin/keys", json={"name": "x", "pools": ["nope"]}, headers=ADMIN)
    assert_openai_error(bad, 400, "invalid_request_error", None)  # type: ignore[arg-type]

    pools = {p["name"]: p for p in httpx.get(f"{gw.url}/admin/pools", headers=ADMIN).json()["data"]}
    assert [b["name"] for b in pools["auto"]["backends"]] == ["cheap", "strong"]
    assert pools["auto"]["backends"][0]["breaker"] == "closed"
    routers = httpx.get(f"{gw.url}/admin/routers", headers=ADMIN).json()["data"]
    assert {(r["pool"], r["router"], r["version"]) for r in routers} >= {("auto", "cheapest", "builtin")}
    health = httpx.get(f"{gw.url}/admin/pools/health", headers=ADMIN)
    assert health.status_code == 200 and all(b["ok"] and b["probe"] == "chat" for b in health.json()["backends"])
    limits = httpx.get(f"{gw.url}/admin/limits", headers=ADMIN).json()
    assert limits["store"] == "in-process" and limits["available"]


def test_admin_report_totals_requests_per_key_from_the_log_including_rows_not_yet_flushed(
    fake_backends: Any, gateway: Any
) -> None:
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    # rows would sit in the writer's queue for an hour: the report must write them before it reads the log
    gw = gateway(pool_yaml(cs.url, ss.url), auth_enabled=True, master_key=MASTER, log_flush_interval_s=3600)
    key = new_key(gw)
    for _ in range(2):
        assert chat(gw, key["secret"], "cheap").status_code == 200
    report = httpx.get(f"{gw.url}/admin/report", params={"key_id": key["id"]}, headers=ADMIN).json()
    assert report["totals"]["requests"] == 2 and report["totals"]["errors"] == 0
    assert report["rows"][0]["backend"] == "cheap" and report["rows"][0]["prompt_tokens"] == 14
    assert report["totals"]["cost_usd"] == pytest.approx(2 * (7 * CHEAP[0] + 3 * CHEAP[1]) / 1e6)


def test_with_auth_off_no_key_is_needed(fake_backends: Any, gateway: Any) -> None:
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    gw = gateway(pool_yaml(cs.url, ss.url))
    assert chat(gw, None).status_code == 200
    assert httpx.get(f"{gw.url}/admin/keys").status_code == 403  # no master key configured: admin API off
