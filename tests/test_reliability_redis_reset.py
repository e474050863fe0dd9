"""Redis connections reset mid-traffic: a real ``poolgate serve`` process (uvloop, as in production) talks to the real
Redis through a TCP proxy the test cuts (every live connection reset with RST, new ones too) and then restores.

No request may get a 500: each limit a key has follows the outage policy (rpm fails open, budget fails closed with
503 ``limits_unavailable``), keys without limits are served as if nothing happened, the admin API answers, and the
limits hold again once Redis is back. The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import backend_yaml, drop_redis_prefix, redis_url, requires_postgres, requires_redis, wait_until
from tests.dbutil import wait_rows
from tests.procs import GatewayProcess
from tests.servers import FakeBackend, ServerThread
from tests.tcpproxy import TcpProxy

pytestmark = [requires_postgres, requires_redis]

MASTER = "mk-redis-reset"
ADMIN = {"authorization": f"Bearer {MASTER}"}
BODY = {"model": "premium", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 3}


@pytest.fixture
def served(pg_database: str, tmp_path: Path) -> Iterator[tuple[GatewayProcess, TcpProxy]]:
    """A gateway whose Redis is behind a TcpProxy (rpm fails open, budget fails closed). Redis is tried again
    0.02 s after a failure, so nearly every request of a cut meets a reset connection of its own."""
    from redis.asyncio import Redis

    from gateway.store import upgrade

    kwargs = Redis.from_url(str(redis_url())).connection_pool.connection_kwargs
    host, port, db = kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)), kwargs.get("db", 0)
    prefix = f"pgtest-reset:{uuid.uuid4().hex[:10]}:"
    upgrade(pg_database)
    with ServerThread(FakeBackend("strong").app) as backend, TcpProxy(host, port) as proxy:
        pool = tmp_path / "pool.yaml"
        pool.write_text(f"backends:\n{backend_yaml('strong', backend.url, retries=0)}\n"
                        "pools:\n  - name: premium\n    members: [strong]\n")
        # timeout 5 s: on a loaded machine a slow (not failed) Redis answer must not count as an outage
        gw = GatewayProcess(pool, tmp_path, database_url=pg_database, auth_enabled=True, master_key=MASTER,
                            redis_url=f"redis://127.0.0.1:{proxy.port}/{db}", redis_key_prefix=prefix,
                            redis_failure_rpm="open", redis_failure_budget="closed", redis_retry_s=0.02,
                            redis_timeout_s=5)
        try:
            with gw:
                yield gw, proxy
        finally:
            drop_redis_prefix(str(redis_url()), prefix)


def _key(gw: GatewayProcess, **params: Any) -> dict[str, Any]:
    resp = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", **params}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


#: Every chat request the test sent, so the log can be checked for one row each.
SENT: list[int] = []


async def _post(client: httpx.AsyncClient, url: str, secret: str) -> int:
    """One chat request's status; 0 when the gateway dropped the connection instead of answering.
    Every error answer must be OpenAI error JSON."""
    SENT.append(1)
    try:
        r = await client.post(f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {secret}"})
    except httpx.TransportError:
        return 0
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    return r.status_code


async def _traffic(url: str, secrets: dict[str, str], rounds: int) -> dict[str, list[int]]:
    """``rounds`` rounds of one request per key, all keys' requests of a round concurrent; statuses per key."""
    got: dict[str, list[int]] = {name: [] for name in secrets}
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(rounds):
            statuses = await asyncio.gather(*(_post(client, url, s) for s in secrets.values()))
            for name, status in zip(secrets, statuses, strict=True):
                got[name].append(status)
    return got


async def _cut(gw: GatewayProcess, proxy: TcpProxy, secrets: dict[str, str], idle: bool) -> dict[str, list[int]]:
    """Reset every Redis connection, while idle in the gateway's pool or with traffic in flight, and keep sending
    while Redis stays cut; the statuses per key."""
    traffic = None if idle else asyncio.create_task(_traffic(gw.url, secrets, rounds=20))
    if traffic is not None:
        await asyncio.sleep(0.3)
    await asyncio.to_thread(proxy.cut)
    got = await traffic if traffic is not None else {name: [] for name in secrets}
    during = await _traffic(gw.url, secrets, rounds=20)  # Redis is still cut: every limit check fails now
    return {name: got[name] + during[name] for name in got}


def _chat(gw: GatewayProcess, secret: str) -> httpx.Response:
    SENT.append(1)
    return httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {secret}"})


def _recover(gw: GatewayProcess, proxy: TcpProxy, budget_secret: str) -> None:
    proxy.restore()
    wait_until(lambda: _chat(gw, budget_secret).status_code == 200, 30, "the budget key to be served again")


def test_redis_connections_reset_mid_traffic_give_no_500_and_follow_the_outage_policy(
    served: tuple[GatewayProcess, TcpProxy],
) -> None:
    gw, proxy = served
    SENT.clear()
    keys = {"rpm": _key(gw, rpm=100_000), "budget": _key(gw, budget_usd=100.0), "plain": _key(gw)}
    secrets = {name: str(k["secret"]) for name, k in keys.items()}
    after_key = _key(gw, rpm=3)["secret"]  # used only once Redis is back: its window must be enforced again
    warm = asyncio.run(_traffic(gw.url, secrets, rounds=2))
    assert all(s == 200 for statuses in warm.values() for s in statuses)

    statuses: dict[str, Counter[int]] = {name: Counter() for name in secrets}
    for idle in (True, False):
        got = asyncio.run(_cut(gw, proxy, secrets, idle))
        for name in got:
            statuses[name].update(got[name])
        if not idle:  # still cut: what a client and an operator see now
            while_cut = _chat(gw, secrets["budget"])
            assert while_cut.status_code == 503 and while_cut.json()["error"]["code"] == "limits_unavailable"
            limits = httpx.get(f"{gw.url}/admin/limits", headers=ADMIN)
            assert limits.status_code == 200 and limits.json()["available"] is False, limits.text
            assert httpx.get(f"{gw.url}/admin/keys", headers=ADMIN).status_code == 200
            shown = httpx.get(f"{gw.url}/admin/keys/{keys['budget']['id']}", headers=ADMIN)
            assert shown.status_code == 200 and shown.json()["usage"] is None, shown.text  # the key, no usage
            assert "unavailable" in shown.json()["usage_error"]
        _recover(gw, proxy, secrets["budget"])
    print(f"\nRedis reset twice (idle, mid-traffic): {dict((k, dict(v)) for k, v in statuses.items())}")
    assert all(set(c) <= {200, 503} for c in statuses.values()), statuses  # no 500, no dropped connection
    assert set(statuses["plain"]) == {200}  # no limits: a Redis outage is nothing to this key
    assert set(statuses["rpm"]) == {200}  # rpm fails open
    assert statuses["budget"][503] >= 20  # budget fails closed (the 20 rounds sent while cut at least)
    assert httpx.get(f"{gw.url}/admin/limits", headers=ADMIN).json()["available"] is True
    after = asyncio.run(_traffic(gw.url, {"after": after_key}, rounds=6))["after"]
    assert after == [200] * 3 + [429] * 3  # rpm enforced through Redis again
    assert "Traceback" not in gw.output()
    rows = wait_rows(str(gw.settings["database_url"]), len(SENT))  # every request reached routing: one row each
    print(f"{len(SENT)} chat requests, {len(rows)} log rows")
    assert len(rows) == len(SENT)
