"""``poolgate serve --workers 2`` as a real process: both workers answer on one port, every request has exactly one
log row, each worker journals in its own spool directory, and a killed worker is restarted on its spool."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from gateway.commands.workers import fold_spools, worker_spool_dir
from tests.conftest import backend_yaml
from tests.dbutil import fetch_rows, wait_rows
from tests.procs import GatewayProcess
from tests.servers import FakeBackend, ServerThread

MASTER = "sk-master-workers"


def _fresh_client(url: str) -> openai.OpenAI:
    # no keep-alive: each request is a new connection, which the kernel hands to either worker (SO_REUSEPORT)
    http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)
    return openai.OpenAI(base_url=f"{url}/v1", api_key=MASTER, http_client=http, max_retries=0)


def _health_pids(url: str, n: int) -> Counter[int]:
    return Counter(int(httpx.get(f"{url}/health", timeout=10).json()["pid"]) for _ in range(n))


def _chat(client: openai.OpenAI, n: int) -> None:
    for i in range(n):
        answer = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": f"q {i}"}])
        assert answer.choices[0].message.content


def _access_lines(gw: GatewayProcess) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in gw.output().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("path") == "/v1/chat/completions"]


@pytest.fixture
def pool(tmp_path: Path) -> object:
    with ServerThread(FakeBackend("cheap").app) as backend:
        path = tmp_path / "pool.yaml"
        path.write_text(f"backends:\n{backend_yaml('cheap', backend.url)}\npools:\n  - name: bench\n"
                        "    members: [cheap]\n")
        yield path


def test_two_workers_share_the_port_and_log_every_request_once(tmp_path: Path, pool: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/gw.db"
    gw = GatewayProcess(pool, tmp_path / "gw", args=("--workers", "2"), database_url=db, auth_enabled=True,
                        master_key=MASTER, log_format="json")
    with gw:
        assert gw.proc is not None
        pids = _health_pids(gw.url, 40)
        assert len(pids) == 2 and gw.proc.pid not in pids, pids  # two workers, neither is the supervisor
        _chat(_fresh_client(gw.url), 60)
        served = Counter(int(str(x["pid"])) for x in _access_lines(gw))
        assert set(served) == set(pids) and sum(served.values()) == 60, served  # both answered chat requests
        rows = wait_rows(db, 60)
        ids = [str(x["request_id"]) for x in _access_lines(gw)]
        assert sorted(r["id"] for r in rows) == sorted(ids) and len(set(ids)) == 60  # one row per request
        spool = tmp_path / "gw" / "spool"
        assert sorted(p.name for p in spool.iterdir()) == ["worker-0", "worker-1"]

        # a worker killed (an OOM kill) is restarted on its own spool; the other keeps serving meanwhile
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _health_pids(gw.url, 10)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and victim not in now, now
        _chat(_fresh_client(gw.url), 20)
        # rows the killed worker held in memory are in its journal and replayed by its successor
        assert len(wait_rows(db, 80)) == 80
    assert gw.proc.returncode == 0  # SIGTERM: the supervisor stopped both workers and exited cleanly
    assert len(fetch_rows(db)) == 80
    leftovers = [p for d in spool.iterdir() for p in d.glob("journal-*.jsonl")]
    assert leftovers == []  # both workers drained and closed their journals


def test_fold_spools_moves_rows_to_a_directory_that_will_be_served(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "worker-3").mkdir(parents=True)
    (spool / "worker-3" / "journal-1-2-3.jsonl").write_text('{"id": "a"}\n')
    (spool / "segment-4-5-6.jsonl").write_text('{"id": "b"}\n')
    (spool / "rejected.jsonl").write_text('{"id": "c"}\n')
    assert fold_spools(spool, 2) == 2  # the single-process top directory and worker-3 go to worker-0
    assert sorted(p.name for p in worker_spool_dir(spool, 0).iterdir()) == ["journal-1-2-3.jsonl",
                                                                          "segment-4-5-6.jsonl"]
    assert (spool / "rejected.jsonl").exists()  # rows for a human stay put
    assert fold_spools(spool, 1) == 2  # back to one process: worker-0's files go to the top directory
    assert sorted(p.name for p in spool.glob("*-*.jsonl")) == ["journal-1-2-3.jsonl", "segment-4-5-6.jsonl"]
    assert fold_spools(spool, 1) == 0
