"""Exploration in a real gateway over the demo's replay backend, through the real ``openai`` client: a pool on
``cheapest`` with epsilon-greedy exploration at share 0.5 serves both backends, and every log row carries the
probability its backend was chosen with (0.75 for the exploit choice, 0.25 for the other: 1 - 0.5 + 0.5/2, 0.5/2).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from gateway.pools import DEMO_POOL_PATH, PoolFileError, load_pool_file
from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from gateway.store import make_engine
from gateway.store.models import Request
from tests.servers import ServerThread
from training.load_file import load_replay_sample

SAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "replay" / "sample" / "gsm8k_sample.jsonl"


def _pool_file(folder: Path, exploration: str, objective: str = "balanced") -> Path:
    text = DEMO_POOL_PATH.read_text().split("pools:")[0]
    path = folder / "pool.yaml"
    path.write_text(text + f"""pools:
  - name: explore
    members: [mixtral-8x7b, gpt-4-1106]
    router: cheapest
    objective: {objective}
    exploration: {exploration}
""")
    return path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[openai.OpenAI, str]]:
    from gateway.app import create_app
    from gateway.settings import Settings
    from gateway.store import upgrade

    pool = _pool_file(tmp_path, "{policy: epsilon, share: 0.5, seed: 3}")
    with ServerThread(create_replay_app(ReplayStore.load())) as replay, pytest.MonkeyPatch.context() as mp:
        mp.setenv("POOLGATE_REPLAY_PORT", str(replay.port))
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db", spool_dir=tmp_path / "spool",
                            log_flush_interval_s=0.05, pool_file=pool)
        upgrade(settings.database_url)
        with ServerThread(create_app(settings)) as gw:
            yield openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0), settings.database_url


async def _rows(url: str, n: int) -> list[Any]:
    engine = make_engine(url)
    try:
        for _ in range(200):  # the writer flushes off the request path
            async with engine.connect() as conn:
                rows = (await conn.execute(select(Request.backend, Request.propensity, Request.policy))).all()
            if len(rows) >= n:
                return list(rows)
            await asyncio.sleep(0.05)
        return list(rows)
    finally:
        await engine.dispose()


def test_share_half_serves_both_backends_and_logs_each_choice_s_probability(
    gateway: tuple[openai.OpenAI, str],
) -> None:
    client, url = gateway
    prompts = list(load_replay_sample(SAMPLE).queries)[:60]
    served = Counter()
    for prompt in prompts:
        raw = client.chat.completions.with_raw_response.create(
            model="explore", messages=[{"role": "user", "content": prompt}])
        assert raw.parse().choices[0].message.content
        served[raw.headers["x-poolgate-backend"]] += 1
    assert served["mixtral-8x7b"] > 0 and served["gpt-4-1106"] > 0
    for prompt in prompts[:5]:  # a caller naming a router is never explored, and the row says so
        raw = client.chat.completions.with_raw_response.create(
            model="explore", messages=[{"role": "user", "content": prompt}],
            extra_body={"poolgate": {"router": "strongest"}})
        assert raw.headers["x-poolgate-backend"] == "gpt-4-1106"
    rows = asyncio.run(_rows(url, len(prompts) + 5))
    overridden = [r for r in rows if r.policy == "override:strongest"]
    assert len(overridden) == 5 and all(r.propensity == 1.0 for r in overridden)
    rows = [r for r in rows if r not in overridden]
    assert len(rows) == len(prompts)
    for row in rows:  # cheapest ranks mixtral first: exploit P = 0.75, the explored gpt-4 P = 0.25
        expected = 0.75 if row.backend == "mixtral-8x7b" else 0.25
        assert row.propensity == pytest.approx(expected), row
        assert row.policy in ("router", "explore:epsilon")
    assert all(r.policy == "explore:epsilon" for r in rows if r.backend == "gpt-4-1106")
    # about half explore, and half of those land on gpt-4: roughly a quarter of all requests
    assert 0.1 <= served["gpt-4-1106"] / len(prompts) <= 0.45


def test_exploration_is_refused_under_quality_first(tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="quality-first"):
        load_pool_file(_pool_file(tmp_path, "{share: 0.1}", objective="quality-first"))
