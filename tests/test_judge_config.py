"""The pool file's ``judge:`` setting and the judge's request-path side (sampling, budget, bounded queue)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import insert

from gateway.judge.rubric import VerdictError, judge_prompt, parse_judge_prompt, parse_verdict
from gateway.judge.service import JudgeService
from gateway.pools import PoolFileError, parse_pool_file
from gateway.record import RequestRecord
from gateway.store import Request, make_engine, upgrade
from gateway.store.repository import LogRepository


def pool_file(judge: str) -> str:
    return f"""backends:
  - {{name: a, base_url: "http://127.0.0.1:9/v1", model: a}}
  - {{name: j, base_url: "http://127.0.0.1:9/v1", model: j}}
pools:
  - name: p
    members: [a]
    judge:
{judge}
"""


def test_judge_setting_is_read_with_its_defaults() -> None:
    judge = parse_pool_file(pool_file("      backend: j\n      share: 0.25")).pools[0].judge
    assert judge is not None and judge.backend == "j" and judge.share == 0.25 and judge.max_usd_per_day is None


@pytest.mark.parametrize(("judge", "line", "words"), [
    ("      backend: nope", 8, "judge backend 'nope' is not a backend"),
    ("      backend: j\n      share: 1.5", 9, "pools.0.judge.share"),
    ("      backend: j\n      max_usd_per_day: -1", 9, "pools.0.judge.max_usd_per_day"),
    ("      backend: j\n      sharee: 0.1", 9, "pools.0.judge.sharee"),
])
def test_a_bad_judge_setting_names_its_line(judge: str, line: int, words: str) -> None:
    with pytest.raises(PoolFileError) as err:
        parse_pool_file(pool_file(judge), "pool.yaml")
    assert f"pool.yaml:{line}:" in str(err.value) and words in str(err.value), str(err.value)


def _service(judge: str) -> JudgeService:
    unused = cast(Any, None)  # offer() touches neither the dispatcher, the writer nor the database
    return JudgeService(parse_pool_file(pool_file(judge)), unused, unused, unused, rng=random.Random(0))


def _record(i: int) -> RequestRecord:
    record = RequestRecord(id=f"r{i}", model_requested="p", stream=False, pool="p", backend="a")
    record.finish(status="ok", http_status=200, latency_ms=1.0)
    return record


async def test_offer_samples_the_share_and_drops_what_the_queue_cannot_hold() -> None:
    judge = _service("      backend: j\n      share: 0.5\n      queue_size: 10")
    for i in range(200):
        judge.offer(_record(i), "q", "a")
    assert judge.counts["offered"] == 200
    assert 60 < judge.counts["sampled_out"] < 140  # about half
    assert judge.queue.qsize() == 10 and judge.counts["dropped"] == 200 - judge.counts["sampled_out"] - 10


async def test_offer_stops_at_the_daily_budget_and_skips_failed_or_empty_answers() -> None:
    judge = _service("      backend: j\n      share: 1.0\n      max_usd_per_day: 0.01")
    judge.spend[("p", datetime.now(UTC).date())] = 0.01
    judge.offer(_record(1), "q", "a")
    assert judge.counts["over_budget"] == 1 and judge.queue.qsize() == 0
    failed = RequestRecord(id="x", model_requested="p", stream=False, pool="p", backend="a")
    failed.finish(status="error", http_status=502, latency_ms=1.0)
    judge.offer(failed, "q", "a")
    judge.offer(_record(2), "q", "")
    assert judge.counts["offered"] == 1


async def test_todays_judge_spend_is_restored_from_the_database_at_start(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)

    def row(i: int, at: datetime, cost: float, router: str = "judge", pool: str = "p") -> dict[str, Any]:
        return {"id": f"j{i}", "created_at": at, "pool": pool, "model_requested": f"judge:{pool}", "router": router,
                "policy": router, "backend": "j", "candidates": [], "attempts": [], "status": "ok",
                "http_status": 200, "stream": False, "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": cost}
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Request), [
                row(1, midnight + timedelta(seconds=1), 0.004), row(2, now, 0.003),  # today: counts
                row(3, midnight - timedelta(seconds=1), 0.5),  # yesterday's: not today's budget
                row(4, now, 0.2, router="knn"),  # a routed request, not a judge call
                row(5, now, 0.1, pool="other")])  # another pool's judge
        pools = parse_pool_file(pool_file("      backend: j\n      share: 1.0\n      max_usd_per_day: 0.007"))
        judge = JudgeService(pools, cast(Any, None), cast(Any, None), LogRepository(engine), rng=random.Random(0))
        await judge.restore_spend()
    finally:
        await engine.dispose()
    assert judge.spent_today("p") == pytest.approx(0.007)
    judge.offer(_record(1), "q", "a")  # the budget is spent already: a restart does not reset it
    assert judge.counts["over_budget"] == 1 and judge.queue.qsize() == 0


async def test_restore_spend_without_a_database_counts_from_zero() -> None:
    class Broken:
        @property
        def engine(self) -> Any:
            raise OSError("database down")

    judge = JudgeService(parse_pool_file(pool_file("      backend: j")), cast(Any, None), cast(Any, None),
                         cast(Any, Broken()))
    await judge.restore_spend()
    assert judge.spent_today("p") == 0.0


def test_rubric_round_trips_and_verdicts_are_checked() -> None:
    assert parse_judge_prompt(judge_prompt("Q?\nline two", "A.")) == ("Q?\nline two", "A.")
    assert parse_verdict('Sure: {"score": 0.5, "reason": "slip"}').score == 0.5
    assert parse_verdict('{"score": null, "reason": "unknown"}').score is None
    for bad in ("no json", '{"score": 2}', '{"score": true}', '{"reason": "x"}'):
        with pytest.raises(VerdictError):
            parse_verdict(bad)
