"""The judge in the gateway, on loopback: a share of answers scored off the request path by the replay judge,
labels written as source=judge, their cost logged as rows of their own, the human label winning, and the pool's
online router learning from the labels and saving versions."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from gateway.store.models import Feedback, RouterVersion
from gateway.store.repository import LogRepository
from routers.base import Router
from tests.conftest import wait_until
from tests.dbutil import fetch_rows
from tests.servers import ServerThread, free_port


def judged_pool(replay_url: str, judge_url: str, router: str = "linucb", share: float = 1.0) -> str:
    return f"""
backends:
  - {{name: mixtral-8x7b, base_url: "{replay_url}/mixtral-8x7b/v1", model: mixtral-8x7b,
     input_price: 0.6, output_price: 0.6}}
  - {{name: gpt-4-1106, base_url: "{replay_url}/gpt-4-1106/v1", model: gpt-4-1106,
     input_price: 10.0, output_price: 30.0}}
  - {{name: judge, base_url: "{judge_url}/judge/v1", model: replay-judge, input_price: 1.0, output_price: 2.0,
     retries: 0, connect_timeout_s: 1}}
pools:
  - name: auto
    members: [mixtral-8x7b, gpt-4-1106]
    router: {router}
    judge: {{backend: judge, share: {share}}}
"""


def send_recorded(url: str, records: Any) -> dict[str, str]:
    """Send each recorded prompt to pool ``auto`` through the gateway at ``url``: request id -> backend."""
    served: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for rec in records:
            resp = client.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": rec.prompt}]})
            assert resp.status_code == 200, resp.text
            served[resp.headers["x-poolgate-request-id"]] = resp.headers["x-poolgate-backend"]
    return served


def _query(url: str, statement: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(statement)]
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def _labelled(url: str) -> dict[str, float]:
    async def run() -> Any:
        engine = create_async_engine(url)
        try:
            return await LogRepository(engine).labelled("auto", None, None)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        rows, _ = pool.submit(asyncio.run, run()).result()
    return {r.text: r.score for r in rows}


def test_judge_labels_answers_logs_its_cost_and_the_online_router_learns(gateway, tmp_path: Path) -> None:
    store = ReplayStore.load()
    with ServerThread(create_replay_app(store)) as replay:
        gw = gateway(judged_pool(replay.url, replay.url), store_prompts=True, online_save_every=5,
                     artifacts_dir=tmp_path / "artifacts", router_reload_interval_s=600.0)
        db = gw.settings.database_url
        records = store.records[:12]
        served = send_recorded(gw.url, records)
        wait_until(lambda: len(_query(db, select(Feedback.__table__))) >= len(records), 60.0, "judge labels")
        online = gw.server.config.app.state.services.online  # each label's update (and any save it starts) is done
        wait_until(lambda: online.counts["updates"] >= len(records), 60.0, "online updates")

        # the judge's cost rows go through the log writer, which may flush them after the labels are in
        wait_until(lambda: sum(r["router"] == "judge" for r in fetch_rows(db)) >= len(records)
                   and set(served) <= {r["id"] for r in fetch_rows(db)}, 60.0, "judge cost rows")
        labels = {r["request_id"]: r for r in _query(db, select(Feedback.__table__))}
        by_id = {r["id"]: r for r in fetch_rows(db)}
        for rid, backend in served.items():  # each label is the source's real grading of the served answer
            rec = next(r for r in records if r.prompt == by_id[rid]["prompt_text"])
            assert labels[rid]["source"] == "judge" and labels[rid]["labeler"] == "judge"
            assert labels[rid]["score"] == (1.0 if rec.correct[backend] else 0.0)
        cost_rows = [r for r in by_id.values() if r["router"] == "judge"]
        assert len(cost_rows) == len(records)
        assert all(r["policy"] == "judge" and r["backend"] == "judge" and r["cost_usd"] > 0 and r["pool"] == "auto"
                   for r in cost_rows)

        # the online router learned from the labels and saved them as promoted versions
        versions = _query(db, select(RouterVersion.__table__).where(RouterVersion.router == "linucb"))
        assert len(versions) >= 2 and sum(v["status"] == "live" for v in versions) == 1
        live = next(v for v in versions if v["status"] == "live")
        router = Router.load(live["path"], live["sha256"])
        assert sum(router.n_) > 9  # 10 updates, decayed  # type: ignore[attr-defined]
        models = httpx.get(f"{gw.url}/v1/models").json()["data"]
        assert next(m for m in models if m["id"] == "auto")["poolgate"]["router_version"] == live["version"]

        # a human's label wins over the judge's wherever labels are read for training
        rid = next(iter(served))
        judge_score = labels[rid]["score"]
        fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 1.0 - judge_score})
        assert fb.status_code == 201, fb.text
        assert _labelled(db)[by_id[rid]["prompt_text"]] == 1.0 - judge_score
        assert httpx.get(f"{gw.url}/v1/feedback/{rid}").json()["score"] == 1.0 - judge_score


def test_a_dead_judge_never_delays_or_fails_a_request(gateway, tmp_path: Path) -> None:
    store = ReplayStore.load()
    dead = f"http://127.0.0.1:{free_port()}"
    with ServerThread(create_replay_app(store)) as replay:
        gw = gateway(judged_pool(replay.url, dead, router="cheapest"), store_prompts=True)
        with httpx.Client(base_url=gw.url, timeout=60) as client:
            for rec in store.records[:5]:
                resp = client.post("/v1/chat/completions", json={
                    "model": "auto", "messages": [{"role": "user", "content": rec.prompt}]})
                assert resp.status_code == 200, resp.text
        db = gw.settings.database_url
        wait_until(lambda: sum(r["router"] == "judge" for r in fetch_rows(db)) >= 5, 60.0, "judge error rows")
        rows = fetch_rows(db)
        assert all(r["status"] == "error" and r["cost_usd"] == 0 for r in rows if r["router"] == "judge")
        assert all(r["status"] == "ok" for r in rows if r["router"] != "judge")
        assert _query(db, select(Feedback.__table__)) == []


def test_a_user_label_updates_the_served_online_router(gateway, tmp_path: Path) -> None:
    store = ReplayStore.load()
    with ServerThread(create_replay_app(store)) as replay:
        pool = judged_pool(replay.url, replay.url, share=0.0)  # the judge judges nothing: only the user labels
        gw = gateway(pool, store_prompts=True, online_save_every=1000, artifacts_dir=tmp_path / "artifacts")
        served = gw.server.config.app.state.services.routing.runtimes["auto"].router
        assert served.name == "linucb" and served.models_ == []
        rec = store.records[0]
        resp = httpx.post(f"{gw.url}/v1/chat/completions", timeout=60, json={
            "model": "auto", "messages": [{"role": "user", "content": rec.prompt}]})
        assert resp.status_code == 200, resp.text
        fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": resp.headers["x-poolgate-request-id"],
                                                       "score": 1.0})
        assert fb.status_code == 201, fb.text
        live = gw.server.config.app.state.services.routing.runtimes["auto"].router
        assert live is served and live.models_ == [resp.headers["x-poolgate-backend"]]
        assert live.n_.tolist() == [1.0]
