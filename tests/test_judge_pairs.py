"""Pairwise judging on loopback: for explored requests the judge also gets the router's top choice's answer (a
second upstream call off the request path), both are graded, the counterfactual call is a ``judge-pair`` row with
no propensity and its label an observed cell for training, never an event for the estimators or the pool's
feedback in reports."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.loop.report import routing_report
from gateway.pools import parse_pool_file
from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from gateway.store import make_engine
from gateway.store.models import Feedback
from gateway.store.repository import LogRepository
from tests.conftest import wait_until
from tests.dbutil import fetch_rows
from tests.servers import ServerThread
from tests.test_judge_gateway import send_recorded
from training.log_holdout import time_split


def pool_yaml(url: str) -> str:
    return f"""
backends:
  - {{name: mixtral-8x7b, base_url: "{url}/mixtral-8x7b/v1", model: mixtral-8x7b, input_price: 0.6,
     output_price: 0.6}}
  - {{name: gpt-4-1106, base_url: "{url}/gpt-4-1106/v1", model: gpt-4-1106, input_price: 10.0, output_price: 30.0}}
  - {{name: judge, base_url: "{url}/judge/v1", model: replay-judge, input_price: 1.0, output_price: 2.0}}
pools:
  - name: auto
    members: [mixtral-8x7b, gpt-4-1106]
    router: cheapest
    objective: balanced
    exploration: {{policy: epsilon, share: 1.0, seed: 3}}
    judge: {{backend: judge, share: 1.0, pair_share: 1.0}}
"""


def _run(coro: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_explored_requests_get_their_top_choice_judged_as_a_pair_row(gateway, tmp_path: Path) -> None:
    store = ReplayStore.load()
    with ServerThread(create_replay_app(store)) as replay:
        yaml = pool_yaml(replay.url)
        gw = gateway(yaml, store_prompts=True, artifacts_dir=tmp_path / "artifacts")
        db = gw.settings.database_url
        records = store.records[:16]
        served = send_recorded(gw.url, records)
        explored = [rid for rid, b in served.items() if b == "gpt-4-1106"]  # the top choice is cheapest's mixtral
        assert 2 <= len(explored) <= 14  # uniform draws over two members

        def pair_rows() -> list[dict[str, Any]]:
            return [r for r in fetch_rows(db) if r["policy"] == "judge-pair"]

        def labels() -> dict[str, dict[str, Any]]:
            async def run() -> list[Any]:
                engine = make_engine(db)
                try:
                    async with engine.connect() as conn:
                        return list(await conn.execute(select(Feedback.__table__)))
                finally:
                    await engine.dispose()
            return {r.request_id: dict(r._mapping) for r in _run(run())}

        wait_until(lambda: len(pair_rows()) == len(explored) and len(labels()) == len(served) + len(explored),
                   60.0, "pair rows and labels")
        by_prompt = {r.prompt: r for r in records}
        rows = {r["id"]: r for r in fetch_rows(db)}
        for pair in pair_rows():  # the top choice's own answer to the same prompt, graded by its real correctness
            rec = by_prompt[pair["prompt_text"]]
            assert pair["backend"] == "mixtral-8x7b" and pair["propensity"] is None and pair["router"] == "judge"
            assert pair["model_requested"] == "judge-pair:auto" and pair["cost_usd"] > 0
            assert labels()[pair["id"]]["score"] == (1.0 if rec.correct["mixtral-8x7b"] else 0.0)
            assert labels()[pair["id"]]["source"] == "judge"
        assert {rows[rid]["prompt_text"] for rid in explored} == {p["prompt_text"] for p in pair_rows()}
        # every judge call (the served answers' and the pairs') is a judge cost row, the pairs' calls beside them
        wait_until(lambda: sum(r["policy"] == "judge" for r in fetch_rows(db)) == len(served) + len(explored),
                   60.0, "judge cost rows")

        async def read() -> Any:
            engine = make_engine(db)
            try:
                repo = LogRepository(engine)
                labelled, _ = await repo.labelled("auto", None, None)
                return labelled, await routing_report(repo, parse_pool_file(yaml), "pool")
            finally:
                await engine.dispose()
        labelled, rep = _run(read())
    pairs = [r for r in labelled if r.policy == "judge-pair"]
    assert len(pairs) == len(explored) and all(r.propensity is None for r in pairs)
    split = time_split(labelled, 0.25)
    assert not any(r.policy == "judge-pair" for r in split.holdout)  # never an event of the promote gate
    assert all(r.created_at < split.cutoff for r in split.fit if r.policy == "judge-pair")
    # the report: the pool's feedback is its served answers' only, the estimators see the routed requests only
    auto = next(g for g in rep.groups if g.key == "auto")
    assert auto.labelled == len(served)
    assert rep.estimates["auto"].events == len(served)
