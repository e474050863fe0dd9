"""A row waiting for its shadow routers is on disk before they finish: a real gateway whose shadow router blocks.

The row of a request whose shadow choices are still being computed (after its response went out) is journaled
in a provisional version and its journal file outlives the writer's cycles; once the shadows finish, exactly one
row, the final one with their choices, reaches the database and the journal is gone. (What a restart does with a
held row after a SIGKILL is in ``test_store_journal.py``.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.store.writer import PENDING_SHADOW
from routers import registry
from routers.base import ModelCard, Prediction, QueryFeatures, Router
from tests.conftest import backend_yaml, journaled_rows, wait_until
from tests.dbutil import fetch_rows, wait_rows

#: Opened by the test when the shadow may answer (and at teardown, so no worker thread outlives the gateway).
GATE = threading.Event()


class BlockingShadowRouter(Router):
    """Prefers the last candidate, once ``GATE`` opens. Registered only in this file's tests."""

    name = "blocking-shadow"
    slow_predict = True  # runs in a worker thread, so waiting there leaves the gateway's event loop free

    def predict(self, features: QueryFeatures, candidates: Sequence[ModelCard]) -> Prediction:
        GATE.wait(timeout=60)  # bounded only so a broken test cannot hang the run
        return Prediction(quality=np.tile(np.linspace(0.1, 0.9, len(candidates)), (len(features), 1)))


@pytest.fixture
def gw(monkeypatch: pytest.MonkeyPatch, fake_backends: Any, gateway: Any) -> Iterator[Any]:
    monkeypatch.setitem(registry.ROUTERS, BlockingShadowRouter.name, f"{__name__}:BlockingShadowRouter")
    _, cheap = fake_backends("cheap")
    _, strong = fake_backends("strong")
    pool = f"""
backends:
{backend_yaml("cheap", cheap.url, input_price=0.5, output_price=1.0)}
{backend_yaml("strong", strong.url, input_price=10, output_price=30)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
    objective: quality-first
    shadow_routers: [{BlockingShadowRouter.name}]
"""
    GATE.clear()
    try:
        yield gateway(pool)
    finally:
        GATE.set()  # before the gateway stops (this fixture's teardown runs first)


def test_row_waiting_for_a_slow_shadow_is_journaled_and_only_its_final_version_is_stored(gw: Any) -> None:
    resp = httpx.post(f"{gw.url}/v1/chat/completions",
                      json={"model": "auto", "messages": [{"role": "user", "content": "2+2?"}]})
    assert resp.status_code == 200  # answered while the shadow router is still blocked
    rid = resp.headers["x-poolgate-request-id"]
    spool_dir = gw.settings.spool_dir
    [held] = [r for r in journaled_rows(spool_dir) if r["id"] == rid]
    assert held["shadow"] == PENDING_SHADOW and held["backend"] == "cheap"  # on disk before the shadow finished

    # feedback flushes the writer (a whole cycle) before it answers 404: the row is not in the database yet,
    # and the file holding it outlived the cycle that would have deleted it
    assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 1}).status_code == 404
    assert [r["shadow"] for r in journaled_rows(spool_dir) if r["id"] == rid] == [PENDING_SHADOW]
    assert fetch_rows(gw.settings.database_url) == []
    assert pinned_files_gauge(gw.url) == 1  # what an operator sees of it

    GATE.set()
    rows = wait_rows(gw.settings.database_url, 1)
    assert [r["id"] for r in rows] == [rid]  # exactly one row
    assert rows[0]["shadow"][BlockingShadowRouter.name]["backend"] == "strong"
    assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 1}).status_code == 201
    # the final row's file goes with the cycle that wrote it
    wait_until(lambda: journaled_rows(spool_dir) == [], 10, "the journal to be deleted")
    assert len(fetch_rows(gw.settings.database_url)) == 1
    assert pinned_files_gauge(gw.url) == 0


def pinned_files_gauge(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    [line] = [ln for ln in text.splitlines() if ln.startswith("poolgate_log_journal_pinned_files ")]
    return float(line.split()[1])
