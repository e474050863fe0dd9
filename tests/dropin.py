"""What the Anthropic Messages and Responses tests share: a two-backend pool with tool-calling fake backends,
a gateway with auth on, and a tenant key."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import backend_yaml

MASTER = "sk-master-" + uuid.uuid4().hex


def pool(cheap_url: str, strong_url: str) -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=0.5, output_price=1.0, retries=0)}
{backend_yaml("strong", strong_url, input_price=10, output_price=30, retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
  - name: smart
    members: [cheap, strong]
    router: strongest
    objective: quality-first
"""


def tool_calling_gateway(fake_backends: Any, gateway: Any, tmp_path: Any) -> Any:
    """A gateway (auth on, ``MASTER``) over fake backends ``cheap`` and ``strong`` that answer tool calls;
    ``.fakes`` holds the fakes by name and ``.db`` the log store URL."""
    cheap, cs = fake_backends("cheap", tool_calls=True)
    strong, ss = fake_backends("strong", tool_calls=True)
    server = gateway(pool(cs.url, ss.url), auth_enabled=True, master_key=MASTER)
    server.fakes = {"cheap": cheap, "strong": strong}
    server.db = f"sqlite+aiosqlite:///{tmp_path}/gw.db"
    return server


def new_key(gw: Any) -> str:
    r = httpx.post(f"{gw.url}/admin/keys", json={"name": "team"}, headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 201, r.text
    return str(r.json()["secret"])
