"""No lost log rows: the real PostgreSQL goes away during load (through a TCP proxy the test cuts, so the
machine's PostgreSQL service keeps running for everyone else), requests keep being served, rows wait in the
local disk spool and reach the database exactly once when it returns, across gateway restarts too; a gateway
killed with SIGKILL while it holds rows in memory loses none of them (its write-ahead journal is replayed).

Every test counts: N answered requests -> N rows, and the set of row ids equals the set of
``x-poolgate-request-id`` headers the clients received (none lost, none doubled, none invented).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from tests.conftest import backend_yaml, journaled_ids, wait_until
from tests.dbutil import fetch_rows, wait_rows
from tests.procs import GatewayProcess
from tests.servers import ServerThread, free_port

BODY = {"model": "auto", "messages": [{"role": "user", "content": "what is 2+2?"}]}


def pool_yaml(backend_url: str) -> str:
    return f"backends:\n{backend_yaml('cheap', backend_url)}\npools:\n  - name: auto\n    members: [cheap]\n"


def spooled_rows(spool_dir: Path) -> list[dict[str, Any]]:
    """Rows waiting in the spool's segments (what a restart would replay).

    Only complete lines count: the gateway may be appending to a segment while a test reads it, and a line without
    its newline yet is a write in progress, not a row (reading it would fail on half a JSON object). A segment
    the gateway deletes between the glob and the read (replayed meanwhile) is skipped."""
    rows = []
    for segment in sorted(spool_dir.glob("segment-*.jsonl")):
        try:
            data = segment.read_bytes()
        except FileNotFoundError:
            continue
        *complete, _in_progress = data.split(b"\n")
        rows += [json.loads(line) for line in complete if line.strip()]
    return rows


def writer_of(gw: ServerThread) -> Any:
    return gw.server.config.app.state.services.writer


def send(client: httpx.Client, n: int, stream_every: int = 2) -> list[str]:
    """``n`` requests, every ``stream_every``-th streamed; all must succeed; returns their request ids."""
    ids = []
    for i in range(n):
        r = client.post("/v1/chat/completions", json={**BODY, "stream": i % stream_every == 0})
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-poolgate-request-id"])
    return ids


async def test_database_cut_during_concurrent_load_loses_and_doubles_no_row(fake_backends, gateway, pg, tmp_path):
    direct, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=via_proxy, log_write_timeout_s=2.0)
    spool = gw.settings.spool_dir
    ids: list[str] = []
    seen_spooled: list[int] = []

    async def worker(client: httpx.AsyncClient, k: int) -> None:
        while len(ids) < 300:
            r = await client.post("/v1/chat/completions", json={**BODY, "stream": k % 2 == 0})
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-poolgate-request-id"])

    async def outage() -> None:
        while len(ids) < 100:
            await asyncio.sleep(0.01)
        proxy.cut()
        while len(ids) < 200 or not spooled_rows(spool):
            await asyncio.sleep(0.01)
        seen_spooled.append(len(spooled_rows(spool)))
        proxy.restore()

    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        await asyncio.gather(outage(), *(worker(client, k) for k in range(16)))
    assert seen_spooled and seen_spooled[0] > 0  # the outage really sent rows to the spool
    rows = wait_rows(direct, len(ids), timeout_s=30)
    assert len(ids) >= 300 and len(set(ids)) == len(ids)
    assert sorted(r["id"] for r in rows) == sorted(ids)  # N answers -> N rows, none lost, none doubled
    wait_until(lambda: not spooled_rows(spool), 10, "the spool to drain")
    print(f"\ncut during load: {len(ids)} answered by 16 clients, {seen_spooled[0]} rows in the spool during "
          f"the outage, {len(rows)} rows after it")


def test_silent_database_costs_no_latency_spools_within_the_write_timeout_and_never_hangs_shutdown(
    fake_backends, pg, tmp_path
):
    """A network partition (the database accepts nothing and closes nothing): requests stay fast, rows reach
    the spool within ``log_write_timeout_s``, graceful shutdown finishes, and a restarted gateway writes them."""
    from gateway.app import create_app
    from gateway.pools import parse_pool_file
    from gateway.settings import Settings

    direct, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    settings = Settings(database_url=via_proxy, spool_dir=tmp_path / "spool", log_flush_interval_s=0.05,
                        log_write_timeout_s=1.5)
    first = ServerThread(create_app(settings, parse_pool_file(pool_yaml(cs.url)))).__enter__()
    client = httpx.Client(base_url=first.url, timeout=30)
    ids = send(client, 10)
    wait_rows(direct, 10)
    proxy.blackhole()
    started = time.monotonic()
    ids += send(client, 40)
    assert time.monotonic() - started < 10  # the log store's silence never reaches the request path
    wait_until(lambda: len(spooled_rows(settings.spool_dir)) >= 1, 1.5 + 5, "rows to reach the spool")
    started = time.monotonic()
    first.__exit__(None, None, None)
    shutdown_s = time.monotonic() - started
    assert not first.thread.is_alive() and shutdown_s < 10
    assert len(spooled_rows(settings.spool_dir)) + len(fetch_rows(direct)) >= 50
    proxy.restore()
    with ServerThread(create_app(settings, parse_pool_file(pool_yaml(cs.url)))) as second:
        ids += send(httpx.Client(base_url=second.url, timeout=30), 5)
        rows = wait_rows(direct, 55, timeout_s=30)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    print(f"\nsilent database: 40 requests during it, graceful shutdown in {shutdown_s:.1f} s, "
          f"{len(rows)}/{len(ids)} rows after restart")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_gateway_restart_while_rows_are_spooled_writes_each_row_once(fake_backends, pg, tmp_path, stop):
    """A gateway pointed at a dead database port serves 40 requests; it is stopped (SIGTERM: it spools what it
    still holds; SIGKILL: after the rows reached the spool) and started again against the live database."""
    direct, _, _ = pg
    _, cs = fake_backends("cheap")
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(pool_yaml(cs.url))
    spool = tmp_path / "spool"
    dead = make_url(direct).set(port=free_port()).render_as_string(hide_password=False)
    first = GatewayProcess(pool_file, tmp_path, database_url=dead, spool_dir=spool).start()
    ids = send(httpx.Client(base_url=first.url, timeout=30), 40)
    if stop == "sigkill":  # only rows on disk survive SIGKILL: wait until the writer has spooled all of them
        wait_until(lambda: len(spooled_rows(spool)) == 40, 15, "40 spooled rows")
        first.kill()
    else:
        assert first.terminate() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert sorted(r["id"] for r in spooled_rows(spool)) == sorted(ids)
    assert fetch_rows(direct) == []
    with GatewayProcess(pool_file, tmp_path, database_url=direct, spool_dir=spool) as second:
        ids += send(httpx.Client(base_url=second.url, timeout=30), 10)
        rows = wait_rows(direct, 50, timeout_s=30)
        time.sleep(0.5)  # a replay repeated by mistake would show up as extra rows by now
        rows = fetch_rows(direct)
    assert len(rows) == 50 and sorted(r["id"] for r in rows) == sorted(ids)
    assert spooled_rows(spool) == []
    print(f"\nrestart ({stop}) with 40 rows spooled + 10 after: {len(rows)}/50 rows, spool empty")


@pytest.mark.parametrize("journal", [True, False])
def test_sigkill_with_rows_only_in_memory_loses_none_once_restarted_thanks_to_the_journal(
    fake_backends, pg, tmp_path, journal
):
    """The database is up, but the writer still holds the 40 rows (a flush interval of an hour): SIGKILL runs no
    shutdown code. With the journal, the restarted gateway (same spool dir) writes each row once; without it
    (the control), every one is lost."""
    direct, _, _ = pg
    _, cs = fake_backends("cheap")
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(pool_yaml(cs.url))
    spool = tmp_path / "spool"
    held = {"log_flush_interval_s": 3600, "log_batch_size": 1000, "log_journal": journal}
    first = GatewayProcess(pool_file, tmp_path, database_url=direct, **held).start()
    ids = send(httpx.Client(base_url=first.url, timeout=30), 40)
    assert fetch_rows(direct) == []  # all 40 rows are in the process's memory...
    assert sorted(journaled_ids(spool)) == (sorted(ids) if journal else [])  # ...and, with the journal, on disk
    first.kill()
    with GatewayProcess(pool_file, tmp_path, database_url=direct, log_journal=journal) as second:
        wait_rows(direct, 40, timeout_s=10 if journal else 2)
        time.sleep(0.5)  # a replay repeated by mistake would show up as extra rows by now
        rows = fetch_rows(direct)
        later = send(httpx.Client(base_url=second.url, timeout=30), 5)
    assert sorted(r["id"] for r in rows) == (sorted(ids) if journal else [])
    assert len(wait_rows(direct, len(rows) + 5)) == len(rows) + 5  # the restarted gateway logs as usual
    assert list(spool.glob("*.jsonl")) == []  # journal replayed and deleted; SIGTERM left none
    print(f"\nSIGKILL with 40 rows in memory, journal {'on' if journal else 'off'}: {len(rows)}/40 rows after "
          f"restart, {len(later)} more after it")


def test_full_spool_with_drop_policy_keeps_serving_and_counts_what_it_dropped(fake_backends, gateway, pg):
    direct, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=via_proxy, spool_max_bytes=16_384, spool_full_policy="drop")
    client = httpx.Client(base_url=gw.url, timeout=30)
    proxy.cut()
    ids = send(client, 60, stream_every=3)  # every request is served although its row may not be kept
    writer = writer_of(gw)
    wait_until(lambda: writer.queue_depth == 0 and writer.spool.size_bytes > 0, 10, "the queue to reach the spool")
    assert writer.spool.size_bytes <= 16_384
    kept = len(spooled_rows(gw.settings.spool_dir))
    assert writer.spool.dropped == 60 - kept and 0 < kept < 60
    metrics = client.get("/metrics").text  # the operator sees the loss
    assert f'poolgate_log_rows_at_risk_total{{reason="spool_full_dropped"}} {float(60 - kept)}' in metrics
    proxy.restore()
    rows = wait_rows(direct, kept, timeout_s=30)
    assert len(rows) == kept and {r["id"] for r in rows} <= set(ids)
    assert sorted(r["id"] for r in rows) == sorted(ids[:kept])  # the oldest rows are the ones kept
    print(f"\nspool full, drop: 60 served, {kept} rows kept in 16 KiB, {60 - kept} dropped and counted")


def test_full_spool_with_refuse_policy_answers_503_and_never_serves_an_unlogged_request(fake_backends, gateway, pg):
    direct, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=via_proxy, spool_max_bytes=16_384, spool_full_policy="refuse")
    client = httpx.Client(base_url=gw.url, timeout=30)
    proxy.cut()
    served: list[str] = []
    refused = 0
    for i in range(60):
        r = client.post("/v1/chat/completions", json={**BODY, "stream": i % 3 == 0})
        if r.status_code == 200:
            served.append(r.headers["x-poolgate-request-id"])
        else:
            assert r.status_code == 503 and r.json()["error"]["code"] == "log_store_unavailable"
            assert r.headers["retry-after"] == "5"
            refused += 1
        time.sleep(0.06)  # one flush interval: each row reaches the spool before the next request
    assert served and refused and len(served) + refused == 60
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"  # out of the load balancer
    assert writer_of(gw).spool.dropped == 0  # refusing, not dropping
    proxy.restore()
    rows = wait_rows(direct, len(served), timeout_s=30)
    assert sorted(r["id"] for r in rows) == sorted(served)  # every answered request has its row
    wait_until(lambda: not writer_of(gw).refusing, 10, "the spool to drain")
    assert client.post("/v1/chat/completions", json=BODY).status_code == 200
    print(f"\nspool full, refuse: {len(served)} served (all logged), {refused} refused with 503")


def test_nul_characters_do_not_poison_the_postgresql_log(fake_backends, gateway, pg_database):
    """PostgreSQL cannot store NUL; one such request once failed its whole batch as 'database down', and the
    spooled batch failed again on every replay, so no row reached the database any more."""
    from gateway.store import upgrade

    upgrade(pg_database)
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=pg_database, store_prompts=True, store_responses=True)
    client = httpx.Client(base_url=gw.url, timeout=30)
    bodies = [
        b'{"model": "auto", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
        b'{"model": "au\\u0000to", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "poolgate": {"flags": {"\\u0000": 1}}}',
    ]
    ids = []
    for i in range(9):
        r = client.post("/v1/chat/completions", content=bodies[i % 3], headers={"content-type": "application/json"})
        assert r.status_code in (200, 400, 404)
        ids.append(r.headers.get("x-poolgate-request-id"))
    ids += send(client, 5)
    rows = wait_rows(pg_database, 14, timeout_s=20)
    assert sorted(r["id"] for r in rows) == sorted(i for i in ids if i)
    assert {r["prompt_text"] for r in rows} >= {"a\ufffdb"}
    assert not spooled_rows(gw.settings.spool_dir)


async def test_postgresql_data_errors_count_as_the_rows_fault_not_an_outage(pg_database):
    """A row PostgreSQL refuses (SQLSTATE class 22/23) goes to rejected.jsonl; it must not be taken for an
    outage (spooled and replayed forever). asyncpg's errors arrive as a bare DBAPIError with the SQLSTATE."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from gateway.store import make_engine
    from gateway.store.writer import is_row_fault

    engine = make_engine(pg_database)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as info:
                await conn.execute(text("SELECT CAST(:x AS text)"), {"x": "a\x00b"})
    finally:
        await engine.dispose()
    assert type(info.value) is DBAPIError and is_row_fault(info.value)


def test_database_down_gives_503_on_routes_that_need_it_while_chat_is_still_served(fake_backends, gateway, pg):
    _, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=via_proxy, auth_enabled=True, master_key="mk-test")
    client = httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": "Bearer mk-test"})
    proxy.cut()
    for path in ["/admin/keys", "/admin/report", "/admin/routers/versions", "/v1/feedback/abc"]:
        r = client.get(path)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    # still ready: it serves (rows are spooled), so a load balancer must not take every replica out at once
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json()["status"] == "degraded" and r.json()["database"] is False
    assert send(client, 3)  # the master key is checked without the database; requests are served
