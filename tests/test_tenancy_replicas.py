"""Two real gateway processes sharing one Redis and one PostgreSQL: limits hold exactly across replicas.

A third process points at a dead Redis port to show the outage policy (rpm fails open, budget fails closed).
Each run uses a fresh PostgreSQL database (migrated with ``poolgate db upgrade``, dropped afterwards) and a unique
Redis key prefix (deleted afterwards). The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from tests.conftest import (
    _admin,
    backend_yaml,
    drop_redis_prefix,
    hammer,
    postgres_url,
    redis_url,
    requires_postgres,
    requires_redis,
)
from tests.servers import FakeBackend, ServerThread, free_port

pytestmark = [requires_postgres, requires_redis]

MASTER = "mk-replicas"
STRONG = (10.0, 30.0)  # USD per 1M tokens; the fake backend always reports 7 prompt + 3 completion tokens
REAL_COST = (7 * STRONG[0] + 3 * STRONG[1]) / 1e6


@dataclass
class Cluster:
    replicas: list[str]  # base URLs of the two replicas sharing Redis
    dead_redis: str  # base URL of the gateway whose Redis is unreachable
    env: dict[str, str]
    database_url: str
    tmp: Path


def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _start(env: dict[str, str], cwd: Path, pool: Path, port: int) -> subprocess.Popen[bytes]:
    log = (cwd / f"gateway-{port}.log").open("wb")  # a file, not a pipe nobody drains
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--pool-file", str(pool), "--port",
                             str(port)], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    base_pg, base_redis = str(postgres_url()), str(redis_url())
    db_name = f"poolgate_replicas_{uuid.uuid4().hex[:10]}"
    prefix = f"pgtest-replicas:{uuid.uuid4().hex[:10]}:"
    database_url = make_url(base_pg).set(database=db_name).render_as_string(hide_password=False)
    _admin(base_pg, f'CREATE DATABASE "{db_name}"')
    procs: list[subprocess.Popen[bytes]] = []
    fake = FakeBackend("strong")
    with ServerThread(fake.app) as backend:
        pool = tmp / "pool.yaml"
        pool.write_text(f"""
backends:
{backend_yaml("strong", backend.url, input_price=STRONG[0], output_price=STRONG[1], retries=0)}
pools:
  - name: premium
    members: [strong]
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_")}
        env.update(POOLGATE_DATABASE_URL=database_url, POOLGATE_REDIS_URL=base_redis, POOLGATE_REDIS_KEY_PREFIX=prefix,
                   POOLGATE_AUTH_ENABLED="true", POOLGATE_MASTER_KEY=MASTER, POOLGATE_LOG_FLUSH_INTERVAL_S="0.05",
                   # a limit check stalled on a loaded CI machine waits instead of failing open (rpm), which would
                   # admit requests beyond the exact counts asserted here
                   POOLGATE_REDIS_TIMEOUT_S="5",
                   POOLGATE_SPOOL_DIR=str(tmp / "spool"), HF_HUB_OFFLINE="1")
        try:
            _cli(env, tmp, "db", "upgrade")
            dead_env = {**env, "POOLGATE_REDIS_URL": "redis://127.0.0.1:1/0", "POOLGATE_REDIS_FAILURE_RPM": "open",
                        "POOLGATE_REDIS_FAILURE_BUDGET": "closed"}
            ports = [free_port() for _ in range(3)]
            procs = [_start(env, tmp, pool, ports[0]), _start(env, tmp, pool, ports[1]),
                     _start(dead_env, tmp, pool, ports[2])]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for port, url, proc in zip(ports, urls, procs, strict=True):
                _wait_up(url, proc, tmp / f"gateway-{port}.log")
            yield Cluster(urls[:2], urls[2], env, database_url, tmp)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=20)
            _admin(base_pg, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            drop_redis_prefix(base_redis, prefix)


def create_key(c: Cluster, **params: Any) -> dict[str, Any]:
    """A new key through the admin API of the first replica (the CLI path is in the revocation test)."""
    resp = httpx.post(f"{c.replicas[0]}/admin/keys", json=params, headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _logged_cost(c: Cluster, key_id: str, n_rows: int) -> tuple[int, float]:
    """(rows, summed cost_usd) of the key's log rows in the shared PostgreSQL, once ``n_rows`` are written."""
    from tests.dbutil import fetch_rows

    deadline = time.monotonic() + 15
    while True:
        rows = [r for r in fetch_rows(c.database_url) if r["key_id"] == key_id]
        if len(rows) >= n_rows or time.monotonic() > deadline:
            return len(rows), sum(r["cost_usd"] for r in rows if r["status"] == "ok")
        time.sleep(0.1)


def test_rpm_n_gives_exactly_n_successes_across_both_replicas(cluster: Cluster) -> None:
    n = 20
    key = create_key(cluster, name="rpm-team", rpm=n)
    statuses = asyncio.run(hammer(cluster.replicas, key["secret"], 3 * n))
    print(f"\nrpm={n}: {3 * n} concurrent requests over 2 replicas -> {statuses.count(200)} x 200, "
          f"{statuses.count(429)} x 429")
    assert statuses.count(200) == n and statuses.count(429) == 2 * n


def test_budget_is_never_overspent_by_more_than_one_requests_estimate(cluster: Cluster) -> None:
    budget = 0.0041
    key = create_key(cluster, name="budget-team", budget_usd=budget, period="day")
    first = asyncio.run(hammer(cluster.replicas, key["secret"], 60))
    statuses = list(first)
    while True:  # then one at a time, alternating replicas, until a refusal with nothing else in flight
        time.sleep(0.05)  # let the previous request's settle land, so only spent money can refuse
        statuses += asyncio.run(hammer(cluster.replicas[len(statuses) % 2:], key["secret"], 1))
        if statuses[-1] == 429 or len(statuses) > 500:
            break
    rows, spent = _logged_cost(cluster, key["id"], len(statuses))
    from routers.pricing import count_prompt_tokens

    estimate = ((count_prompt_tokens([{"role": "user", "content": "2+2?"}])) * STRONG[0] + 3 * STRONG[1]) / 1e6
    print(f"\nbudget ${budget}: {statuses.count(200)} answered ({first.count(200)} of 60 concurrent), "
          f"spent ${spent:.6f} per the PostgreSQL log ({rows} rows), overspend ${spent - budget:.6f}, "
          f"one request's estimate ${estimate:.6f}, real cost per request ${REAL_COST:.6f}")
    assert rows == len(statuses)
    assert spent == pytest.approx(statuses.count(200) * REAL_COST)
    assert spent >= budget  # refused only once the money is gone ...
    assert spent - budget <= estimate  # ... and never more than one estimate beyond it
    usage = httpx.get(f"{cluster.replicas[1]}/admin/keys/{key['id']}",
                      headers={"authorization": f"Bearer {MASTER}"}).json()["usage"]
    assert usage["spent_usd"] == pytest.approx(spent) and usage["reserved_usd"] == 0


def test_a_revoked_key_stops_working_on_both_replicas_at_once(cluster: Cluster) -> None:
    key = json.loads(_cli(cluster.env, cluster.tmp, "keys", "create", "--name", "to-revoke", "--json"))
    assert asyncio.run(hammer(cluster.replicas, key["secret"], 4)) == [200] * 4
    out = _cli(cluster.env, cluster.tmp, "keys", "revoke", key["id"])
    assert "all replicas refuse it now" in out
    assert asyncio.run(hammer(cluster.replicas, key["secret"], 4)) == [401] * 4


def test_unreachable_redis_follows_the_configured_policy_per_limit(cluster: Cluster) -> None:
    rpm_key = create_key(cluster, name="dead-rpm", rpm=2)
    budget_key = create_key(cluster, name="dead-budget", budget_usd=1.0)
    dead = [cluster.dead_redis]
    assert asyncio.run(hammer(dead, rpm_key["secret"], 6)) == [200] * 6  # rpm fails open: unlimited
    budget_statuses = asyncio.run(hammer(dead, budget_key["secret"], 3))
    assert budget_statuses == [503] * 3  # budget fails closed
    resp = httpx.post(f"{cluster.dead_redis}/v1/chat/completions", headers={"authorization":
                      f"Bearer {budget_key['secret']}"}, json={"model": "premium", "messages": [
                          {"role": "user", "content": "hi"}]})
    assert resp.json()["error"]["code"] == "limits_unavailable" and int(resp.headers["retry-after"]) >= 1
    # the healthy replicas still enforce the same rpm key through Redis
    assert asyncio.run(hammer(cluster.replicas, rpm_key["secret"], 4)).count(200) == 2
    limits = httpx.get(f"{cluster.dead_redis}/admin/limits", headers={"authorization": f"Bearer {MASTER}"}).json()
    assert limits["store"] == "redis" and limits["available"] is False
    print(f"\ndead Redis: rpm=2 key got 6/6 x 200 (fail open); budget key got {budget_statuses} (fail closed)")
