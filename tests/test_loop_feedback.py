"""POST /v1/feedback on a real gateway: labels land beside the request row, relabeling updates, bad input is clear;
shadow routers' choices are recorded in the row; admin endpoints need the master key."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows

MASTER = "feedback-test-master"


def pool(cheap_url: str, strong_url: str) -> str:
    return f"""
backends:
{backend_yaml("cheap", cheap_url, input_price=0.5, output_price=1.0)}
{backend_yaml("strong", strong_url, input_price=10, output_price=30)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
    objective: quality-first
    shadow_routers: [strongest, knn]
"""


def feedback_rows(url: str) -> list[dict[str, Any]]:
    from gateway.store.models import Feedback

    async def run() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(select(Feedback.__table__))]
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, run()).result()


@pytest.fixture
def gw(fake_backends, gateway):
    _, cs = fake_backends("cheap")
    _, ss = fake_backends("strong")
    # a long flush interval: a label usually arrives while its row still waits in the writer's queue
    return gateway(pool(cs.url, ss.url), log_flush_interval_s=30.0, master_key=MASTER)


def chat(url: str) -> str:
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user",
                                                                                         "content": "2+2?"}]})
    assert resp.status_code == 200
    return resp.headers["x-poolgate-request-id"]


def test_feedback_is_stored_once_and_relabeling_updates_it(gw) -> None:
    rid = chat(gw.url)
    first = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 0.25, "comment": "meh",
                                                       "labeler": "alice"})
    assert first.status_code == 201 and first.json()["created"] is True
    again = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "thumbs": "up"})
    assert again.status_code == 200 and again.json()["created"] is False
    rows = feedback_rows(gw.settings.database_url)
    assert len(rows) == 1
    assert rows[0]["request_id"] == rid and rows[0]["score"] == 1.0
    assert rows[0]["comment"] == "meh" and rows[0]["labeler"] == "alice"  # kept when the update omits them
    assert rows[0]["updated_at"] >= rows[0]["created_at"]
    read = httpx.get(f"{gw.url}/v1/feedback/{rid}").json()
    assert read["score"] == 1.0 and read["object"] == "feedback"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"request_id": "f" * 32, "score": 0.5}, 404, "request_id"),
        ({"request_id": "REAL", "score": 1.5}, 400, "score"),
        ({"request_id": "REAL", "score": -0.1}, 400, "score"),
        ({"request_id": "REAL", "score": True}, 400, "score"),
        ({"request_id": "REAL", "thumbs": "sideways"}, 400, "thumbs"),
        ({"request_id": "REAL", "score": 1, "thumbs": "up"}, 400, "score"),
        ({"request_id": "REAL"}, 400, "score"),
        ({"score": 1}, 400, "request_id"),
        ({"request_id": "REAL", "score": 1, "rating": 5}, 400, "rating"),
    ],
)
def test_bad_feedback_gets_a_clear_openai_error(gw, body: dict[str, Any], status: int, param: str) -> None:
    rid = chat(gw.url)
    if body.get("request_id") == "REAL":
        body = {**body, "request_id": rid}
    resp = httpx.post(f"{gw.url}/v1/feedback", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"]
    assert feedback_rows(gw.settings.database_url) == []


def test_feedback_of_unknown_request_answers_404_with_its_id(gw) -> None:
    resp = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "nope", "thumbs": "down"})
    assert resp.status_code == 404
    assert "'nope'" in resp.json()["error"]["message"] and resp.json()["error"]["code"] == "request_not_found"


def test_shadow_routers_choices_are_in_the_request_row(gw) -> None:
    rid = chat(gw.url)
    httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 1})  # flushes the writer
    row = next(r for r in wait_rows(gw.settings.database_url, 1) if r["id"] == rid)
    assert row["backend"] == "cheap"
    assert row["shadow"]["strongest"]["backend"] == "strong" and row["shadow"]["strongest"]["version"] == "builtin"
    assert row["shadow"]["strongest"]["expected_cost_usd"] > 0
    # an untrained shadow (no knn version for this pool yet) records why; nothing else breaks
    assert "knn router is not fitted" in row["shadow"]["knn"]["error"]


def test_admin_loop_endpoints_need_the_master_key(gw) -> None:
    assert httpx.post(f"{gw.url}/admin/routers/reload").status_code == 401
    assert httpx.get(f"{gw.url}/admin/report/routing", headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(f"{gw.url}/admin/routers/versions", headers={"authorization": f"Bearer {MASTER}"})
    assert ok.status_code == 200 and ok.json()["data"] == []
    assert ok.json()["serving"]["pools"]["auto"]["version"] == "builtin"
    bad = httpx.get(f"{gw.url}/admin/report/routing", params={"since": "yesterday"},
                    headers={"authorization": f"Bearer {MASTER}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


async def test_upsert_keeps_one_row_per_request_on_both_databases(db_url: str) -> None:
    from gateway.store import Request, make_engine, upgrade
    from gateway.store.repository import LogRepository

    await asyncio.to_thread(upgrade, db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Request).values(
                id="a" * 32, model_requested="auto", candidates=[], attempts=[], status="ok", http_status=200,
                stream=False, latency_ms=1.0, prompt_tokens=1, completion_tokens=1, cost_usd=0.0))
        repository = LogRepository(engine)
        created, first = await repository.upsert_feedback("a" * 32, 0.0, "wrong", "bob")
        again, second = await repository.upsert_feedback("a" * 32, 0.75, None, None)
    finally:
        await engine.dispose()
    assert (created, again) == (True, False)
    assert (second["score"], second["comment"], second["labeler"]) == (0.75, "wrong", "bob")
    assert second["created_at"] == first["created_at"] and second["updated_at"] >= first["updated_at"]
