"""The spool's disk fails while the log database is down: a real full filesystem (a 64 KiB tmpfs) and a real
read-only one (the same, remounted ``ro``), behind a served gateway whose PostgreSQL goes through a TCP proxy
the test cuts.

Its own bound (``spool_max_bytes``, 256 MiB by default) never fills: only the disk's errors say the spool is
full. Every answered request must end with its row in the database, or be counted as dropped (policy ``drop``:
readiness's ``spool_dropped_rows`` and ``poolgate_log_rows_at_risk_total{reason="spool_full_dropped"}``), or not
be answered (policy ``refuse``: 503). Before this, a full disk lost hundreds of rows uncounted, ``refuse`` never
refused, and readiness said ``degraded`` with ``spool_dropped_rows: 0``.

Needs root (mount); ``test_store_spool_errors.py`` covers the same paths with the error injected.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.metrics import iter_samples
from tests.conftest import wait_until
from tests.dbutil import fetch_rows
from tests.test_reliability_spool import BODY, pool_yaml, spooled_rows, writer_of

FAULTS = {"ENOSPC": "a full disk", "EROFS": "a read-only disk"}


@pytest.fixture(params=sorted(FAULTS))
def spool_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(errno name, spool dir) on a 64 KiB tmpfs; for EROFS, remounted read-only before the gateway starts."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); test_store_spool_errors.py "
                    "injects the same errors at the write seam")
    try:
        (mount / "spool").mkdir()
        if request.param == "EROFS":
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield request.param, mount / "spool"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def at_risk_dropped(client: httpx.Client) -> float:
    samples = iter_samples(client.get("/metrics").text, "poolgate_log_rows_at_risk_total")
    return sum(value for labels, value in samples if labels.get("reason") == "spool_full_dropped")


def test_failing_spool_disk_with_drop_policy_counts_every_row_it_loses(spool_disk, fake_backends, gateway, pg):
    fault, spool_dir = spool_disk
    direct, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=via_proxy, spool_dir=spool_dir, spool_full_policy="drop",
                 log_queue_size=40, log_batch_size=20, log_write_timeout_s=2.0)
    client = httpx.Client(base_url=gw.url, timeout=30)
    proxy.cut()
    ids = []
    for i in range(300):
        r = client.post("/v1/chat/completions", json={**BODY, "stream": i % 3 == 0})
        assert r.status_code == 200, r.text  # drop: served although its row may not be kept
        ids.append(r.headers["x-poolgate-request-id"])
    writer = writer_of(gw)

    def accounted() -> int:  # rows on the spool's disk, in the writer's memory, and counted as dropped
        return len(spooled_rows(spool_dir)) + writer.queue_depth + writer.spool.dropped

    wait_until(lambda: accounted() == len(ids), 15, "every answered request's row to be kept or counted")
    dropped = writer.spool.dropped
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "degraded" and ready.json()["spool_error"] == fault
    assert ready.json()["spool_dropped_rows"] == dropped > 0
    assert at_risk_dropped(client) == dropped  # the operator sees the loss
    assert 'poolgate_log_spool_failing{error="' + fault + '"} 1.0' in client.get("/metrics").text
    in_memory, on_disk = writer.queue_depth, len(spooled_rows(spool_dir))
    assert in_memory >= 40  # the rows the spool refused wait in memory, bounded, rather than vanish
    proxy.restore()
    wait_until(lambda: writer.queue_depth == 0 and not spooled_rows(spool_dir), 30, "the rows to reach the database")
    rows = fetch_rows(direct)
    assert len(rows) == len(ids) - dropped and {r["id"] for r in rows} <= set(ids)  # lost = counted, exactly
    print(f"\nspool on {FAULTS[fault]}, drop: {len(ids)} served, {on_disk} rows on the disk, {in_memory} in memory, "
          f"{dropped} dropped and counted; {len(rows)} rows after the database returned, 0 lost uncounted")


def test_failing_spool_disk_with_refuse_policy_refuses_and_serves_no_unlogged_request(
    spool_disk, fake_backends, gateway, pg
):
    fault, spool_dir = spool_disk
    direct, proxy, via_proxy = pg
    _, cs = fake_backends("cheap")
    gw = gateway(pool_yaml(cs.url), database_url=via_proxy, spool_dir=spool_dir, spool_full_policy="refuse",
                 log_write_timeout_s=2.0)
    client = httpx.Client(base_url=gw.url, timeout=30)
    proxy.cut()
    served: list[str] = []
    refused = 0
    for i in range(200):
        r = client.post("/v1/chat/completions", json={**BODY, "stream": i % 3 == 0})
        if r.status_code == 200:
            served.append(r.headers["x-poolgate-request-id"])
            continue
        assert r.status_code == 503, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["code"] == "log_store_unavailable" and r.headers["retry-after"] == "5"
        refused += 1
    assert served and refused > 100  # refusing from the disk's first error on
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"  # out of the load balancer
    assert ready.json()["spool_error"] == fault
    writer = writer_of(gw)
    assert writer.spool.dropped == 0 and at_risk_dropped(client) == 0  # refusing, not dropping
    proxy.restore()
    wait_until(lambda: writer.queue_depth == 0 and not spooled_rows(spool_dir), 30, "the rows to reach the database")
    rows = fetch_rows(direct)
    assert sorted(r["id"] for r in rows) == sorted(served)  # every answered request has its row
    wait_until(lambda: not writer.refusing, 15, "the gateway to serve again")
    assert client.post("/v1/chat/completions", json=BODY).status_code == 200
    print(f"\nspool on {FAULTS[fault]}, refuse: {len(served)} served (all logged), {refused} refused with 503, "
          "0 dropped")
