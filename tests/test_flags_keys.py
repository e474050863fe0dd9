"""Per-key default flags through a real gateway with auth on: request > key > pool, with the openai client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import backend_yaml

MASTER = "mk-flags-master"
MESSAGES = [{"role": "user", "content": "What is 17 * 23?"}]


@pytest.fixture
def gw(fake_backends: Any, gateway: Any) -> Any:
    _, strong = fake_backends("strong")
    _, cheap = fake_backends("cheap")
    pool = f"""
backends:
{backend_yaml("strong", strong.url, input_price=10, output_price=30, retries=0)}
{backend_yaml("cheap", cheap.url, input_price=0.1, output_price=0.1, retries=0)}
pools:
  - name: auto
    members: [strong, cheap]
    router: strongest
    objective: quality-first
  - name: frugal
    members: [strong, cheap]
    router: strongest
    objective: quality-first
    flags: {{cost: 1000}}
"""
    return gateway(pool, auth_enabled=True, master_key=MASTER)


def client_for(gw: Any, default_flags: dict[str, Any] | None) -> openai.OpenAI:
    resp = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", "default_flags": default_flags},
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 201, resp.text
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=resp.json()["secret"], max_retries=0)


def chosen(client: openai.OpenAI, model: str = "auto", **kw: Any) -> tuple[str, dict[str, Any]]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)
    return raw.headers["x-poolgate-backend"], json.loads(raw.headers["x-poolgate-flags"])


def test_a_key_default_applies_when_the_request_says_nothing(gw: Any) -> None:
    assert chosen(client_for(gw, None))[0] == "strong"
    backend, flags = chosen(client_for(gw, {"cost": 1000}))
    assert backend == "cheap" and flags["cost"] == 1000


def test_the_request_overrides_the_key_and_the_key_overrides_the_pool(gw: Any) -> None:
    frugal_key = client_for(gw, {"cost": 1000})
    assert chosen(frugal_key, extra_body={"poolgate": {"flags": {"cost": 0}}})[0] == "strong"
    lavish_key = client_for(gw, {"cost": 0})
    assert chosen(lavish_key, model="frugal")[0] == "strong"  # the pool says cost 1000, the key says 0
    backend, flags = chosen(lavish_key, model="frugal", extra_headers={"X-Poolgate-Flags": '{"cost": 1000}'})
    assert backend == "cheap" and flags["cost"] == 1000


def test_a_key_with_a_bad_default_flag_is_refused_when_created(gw: Any) -> None:
    resp = httpx.post(f"{gw.url}/admin/keys", json={"name": "bad", "default_flags": {"speed": 1}},
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 400
    assert "speed" in resp.json()["error"]["message"]
