"""The deploy/ topology on loopback: three ``poolgate serve`` processes sharing the real PostgreSQL and Redis.

- migrations: three upgrades started at once on an empty database apply each revision exactly once;
- limits: an rpm limit and a budget hold exactly across the three replicas;
- a replica stopped mid-load (SIGTERM, as Kubernetes and compose do) loses no row: every answered request,
  on any replica, has exactly one row; nor does one killed with SIGKILL (an OOM kill), once it is restarted on
  its spool directory: the rows it held in memory are replayed from its write-ahead journal.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from gateway.settings import Settings
from tests.conftest import (
    _admin,
    backend_yaml,
    drop_redis_prefix,
    hammer,
    journaled_ids,
    postgres_url,
    redis_url,
    requires_postgres,
    requires_redis,
    wait_until,
)
from tests.dbutil import fetch_rows
from tests.procs import GatewayProcess
from tests.servers import FakeBackend, ServerThread

pytestmark = [requires_postgres, requires_redis]

MASTER = "sk-master-scaleout"
PRICES = (10.0, 30.0)  # USD per 1M tokens; the fake backend reports 7 prompt + 3 completion tokens
REAL_COST = (7 * PRICES[0] + 3 * PRICES[1]) / 1e6
UPGRADE = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s'); "
           "from gateway.store import upgrade; upgrade(sys.argv[1])")


@dataclass
class Cluster:
    replicas: list[GatewayProcess]
    db: str
    upgrade_logs: list[str]
    redis_prefix: str
    keys: list[str] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas if r.alive()]

    def new_key(self, **params: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.urls[0]}/admin/keys", json=params, headers={"authorization": f"Bearer {MASTER}"})
        assert r.status_code == 201, r.text
        return dict(r.json())


def concurrent_upgrades(db: str, n: int, cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """``n`` schema upgrades of ``db`` started at the same moment (init containers of pods starting together)."""
    procs = [subprocess.Popen([sys.executable, "-c", UPGRADE, db], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(n)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), p.stdout.read() if p.stdout else "", "")
            for p in procs]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("scaleout")
    base_pg, base_redis = str(postgres_url()), str(redis_url())
    name = f"poolgate_scaleout_{uuid.uuid4().hex[:10]}"
    prefix = f"pgtest-scaleout:{uuid.uuid4().hex[:10]}:"
    db = make_url(base_pg).set(database=name).render_as_string(hide_password=False)
    _admin(base_pg, f'CREATE DATABASE "{name}"')
    replicas: list[GatewayProcess] = []
    try:
        results = concurrent_upgrades(db, 3, tmp)
        with ServerThread(FakeBackend("strong").app) as backend:
            pool = tmp / "pool.yaml"
            strong = backend_yaml("strong", backend.url, input_price=PRICES[0], output_price=PRICES[1], retries=0)
            pool.write_text(f"backends:\n{strong}\npools:\n  - name: premium\n    members: [strong]\n")
            # redis_timeout_s: a limit check stalled on a loaded CI machine waits instead of failing open (rpm),
            # which would admit requests beyond the exact counts the tests assert
            settings = {"database_url": db, "redis_url": base_redis, "redis_key_prefix": prefix,
                        "redis_timeout_s": 5.0, "auth_enabled": True, "master_key": MASTER}
            replicas = [GatewayProcess(pool, tmp / f"replica-{i}", **settings) for i in range(3)]
            with ThreadPoolExecutor(3) as pool_exec:  # started together, as a Deployment's pods are
                list(pool_exec.map(lambda r: r.start(), replicas))
            yield Cluster(replicas, db, [f"rc={r.returncode}\n{r.stdout}" for r in results], prefix)
    finally:
        for replica in replicas:
            replica.terminate()
        _admin(base_pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        drop_redis_prefix(base_redis, prefix)


def test_concurrent_upgrades_apply_each_migration_exactly_once(cluster):
    from gateway.store.db import current_revision, head_revision

    logs = cluster.upgrade_logs
    assert len(logs) == 3 and all(log.startswith("rc=0") for log in logs), logs
    applied = Counter(m for log in logs for m in re.findall(r"Running upgrade (\S* ?-> \S+?),", log))
    print(f"\n3 concurrent upgrades: revisions applied {dict(applied)}")
    assert applied and set(applied.values()) == {1}  # every revision ran once, in one of the three
    assert sum(1 for log in logs if "Running upgrade" in log) == 1  # the other two found the schema at head
    assert current_revision(cluster.db) == head_revision()


def rows_of_key(db: str, key_id: str, n: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in fetch_rows(db) if r["key_id"] == key_id]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def wait_nothing_reserved(cluster: Cluster, key_id: str, timeout_s: float = 30.0) -> None:
    """Until the key's usage (in the shared Redis) holds no reservation: no request of the key is in flight."""

    def settled() -> bool:
        usage = httpx.get(f"{cluster.urls[0]}/admin/keys/{key_id}", headers={"authorization": f"Bearer {MASTER}"},
                          timeout=30).json()["usage"]
        return usage is not None and usage["reserved_usd"] == 0

    wait_until(settled, timeout_s, f"key {key_id} to hold no reservation")


def test_rpm_limit_is_exact_across_three_replicas(cluster):
    n = 15
    key = cluster.new_key(name="rpm-3", rpm=n)
    statuses = asyncio.run(hammer(cluster.urls, key["secret"], 4 * n))
    print(f"\nrpm={n}: {4 * n} concurrent requests over 3 replicas -> {statuses.count(200)} x 200, "
          f"{statuses.count(429)} x 429")
    assert statuses.count(200) == n and statuses.count(429) == 3 * n
    assert len(rows_of_key(cluster.db, key["id"], 4 * n)) == 4 * n  # refusals are logged too


def test_budget_holds_across_three_replicas_and_the_log_agrees_with_redis(cluster):
    budget = 0.0035
    key = cluster.new_key(name="budget-3", budget_usd=budget, period="day")
    statuses = asyncio.run(hammer(cluster.urls, key["secret"], 90))
    while True:  # then one at a time, rotating replicas, until a refusal with nothing else in flight
        wait_nothing_reserved(cluster, key["id"])  # every earlier request settled: only spent money can refuse
        statuses += asyncio.run(hammer(cluster.urls[len(statuses) % 3:][:1], key["secret"], 1))
        if statuses[-1] == 429 or len(statuses) > 400:
            break
    rows = rows_of_key(cluster.db, key["id"], len(statuses))
    spent = sum(r["cost_usd"] for r in rows if r["status"] == "ok")
    print(f"\nbudget ${budget}: {statuses.count(200)} answered over 3 replicas, logged spend ${spent:.6f} "
          f"({len(rows)} rows), overspend ${spent - budget:.6f}")
    assert len(rows) == len(statuses)
    assert spent == pytest.approx(statuses.count(200) * REAL_COST)
    assert budget <= spent <= budget + 2 * REAL_COST  # within one request's estimate of the budget
    usage = httpx.get(f"{cluster.urls[2]}/admin/keys/{key['id']}", headers={"authorization": f"Bearer {MASTER}"})
    assert usage.json()["usage"]["spent_usd"] == pytest.approx(spent)


@dataclass
class Load:
    key_id: str = ""
    answered: dict[str, str] = field(default_factory=dict)  # request id -> replica URL that answered it
    retried: int = 0
    failed: list[str] = field(default_factory=list)


async def load_until(cluster: Cluster, secret: str, total: int, load: Load, clients: int = 24) -> None:
    """``clients`` loops of chat requests (every other one streamed), spread over the replicas alive; a
    connection refused or cut is retried on the next replica, as a load balancer would."""
    body = {"model": "premium", "messages": [{"role": "user", "content": "q"}]}
    urls = [r.url for r in cluster.replicas]

    async def one(client: httpx.AsyncClient, k: int) -> None:
        for attempt in range(len(urls) * 2):
            url = urls[(k + attempt) % len(urls)]
            try:
                r = await client.post(f"{url}/v1/chat/completions", json={**body, "stream": k % 2 == 0})
            except httpx.TransportError:
                load.retried += 1
                continue
            if r.status_code != 200 or (k % 2 == 0 and not r.text.rstrip().endswith("data: [DONE]")):
                load.failed.append(f"{url} {r.status_code} {r.text[-200:]}")
                return
            load.answered[r.headers["x-poolgate-request-id"]] = url
            return
        load.failed.append("no replica answered")

    async def client_loop(client: httpx.AsyncClient, start: int) -> None:
        k = start
        while len(load.answered) + len(load.failed) < total:
            await one(client, k)
            k += clients

    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {secret}"}) as client:
        await asyncio.gather(*(client_loop(client, i) for i in range(clients)))


def run_load_with_kill(cluster: Cluster, victim: GatewayProcess, how: str, total: int) -> Load:
    key = cluster.new_key(name=f"kill-{how}")
    load = Load(key_id=key["id"])

    async def scenario() -> None:
        async def killer() -> None:
            while len(load.answered) < total // 3:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(victim.terminate if how == "sigterm" else victim.kill)

        await asyncio.gather(load_until(cluster, key["secret"], total, load), killer())

    asyncio.run(scenario())
    assert not victim.alive()
    return load


def stored_ids(db: str, ids: set[str], timeout_s: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        stored = {r["id"] for r in fetch_rows(db)}
        if ids <= stored or time.monotonic() > deadline:
            return stored
        time.sleep(0.2)


def test_replica_stopped_mid_load_loses_no_row(cluster):
    victim = cluster.replicas[1]
    load = run_load_with_kill(cluster, victim, "sigterm", total=600)
    ids = set(load.answered)
    stored = stored_ids(cluster.db, ids)
    by_replica = Counter(load.answered.values())
    print(f"\nSIGTERM mid-load: {len(ids)} answered ({dict(by_replica)}), {load.retried} retried on another "
          f"replica, {len(load.failed)} failed, {len(ids - stored)} rows missing")
    assert not load.failed, load.failed[:3]
    assert by_replica[victim.url] > 0  # it did serve before it was stopped
    assert ids <= stored  # every answered request, including those the stopped replica answered, has its row
    assert not (victim.workdir / "spool").exists() or not list((victim.workdir / "spool").glob("segment-*"))
    victim.start()  # a replacement pod comes back on the same port


def test_replica_killed_with_sigkill_loses_no_row_once_restarted_on_its_spool(cluster):
    """SIGKILL runs no shutdown code: requests in flight on the replica are cut (the client retries elsewhere),
    and the rows it still held in memory are only in its journal. Restarted on the same workdir and spool (a
    Kubernetes container restart keeps the pod's emptyDir), it replays them: every answered request has its
    row, once. A request the replica finished but whose answer the kill cut has a row too (it was served)."""
    victim = cluster.replicas[2]
    spool = victim.workdir / "spool"
    victim.terminate()  # back with the production flush interval: up to 0.5 s of rows in memory, not 50 ms
    victim.settings["log_flush_interval_s"] = Settings().log_flush_interval_s
    victim.start()
    load = run_load_with_kill(cluster, victim, "sigkill", total=600)
    ids = set(load.answered)
    elsewhere = {i for i, url in load.answered.items() if url != victim.url}
    before = stored_ids(cluster.db, elsewhere, timeout_s=30)  # the live replicas' rows are all in by then
    missing = ids - before
    in_journal = set(journaled_ids(spool))  # as the killed replica left them
    victim.start()  # the container restart: same port, same workdir and spool directory
    stored = stored_ids(cluster.db, ids, timeout_s=30)
    lost = ids - stored
    rows = [r for r in fetch_rows(cluster.db) if r["key_id"] == load.key_id]
    cut = {r["id"] for r in rows} - ids
    print(f"\nSIGKILL mid-load: {len(ids)} answered ({len(ids) - len(elsewhere)} by the killed replica), "
          f"{load.retried} retried, {len(load.failed)} failed; {len(missing)} rows missing after the kill, "
          f"{len(in_journal)} rows in its journal, {len(missing - lost)} recovered from it on restart, "
          f"{len(lost)} rows lost; {len(rows)} rows in all, {len(cut)} of them for requests the kill cut")
    assert not load.failed, load.failed[:3]
    assert not (elsewhere - before)  # the other replicas lose nothing
    assert missing <= in_journal  # what the kill left unwritten was on disk
    assert not lost  # every answered request has its row...
    assert len(rows) == len({r["id"] for r in rows})  # ...once
    assert all(load.answered.get(i, victim.url) == victim.url for i in cut | missing)  # all on the killed one
    deadline = time.monotonic() + 10
    while list(spool.glob("*.jsonl")) and time.monotonic() < deadline:  # the replay deletes what it wrote
        time.sleep(0.1)
    assert not list(spool.glob("*.jsonl"))
