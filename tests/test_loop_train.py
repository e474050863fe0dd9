"""Training from logs: the dataset built from labelled requests, the refusal with too few rows, the off-policy gate
on promotion over a time-ordered holdout (and --force), and offline data sets mixed in by matching their models to
the pool's backends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from gateway.cli import main
from gateway.loop.train import TrainRequest, train_from_logs
from gateway.pools import parse_pool_file
from gateway.routing.artifacts import ArtifactStore
from gateway.store import Feedback, Request, make_engine, upgrade
from training.from_logs import (
    LabelledRow,
    TrainingDataError,
    column_means,
    impute,
    log_rows_to_data,
    match_models,
    offline_rows,
    parse_duration,
)

NOW = datetime.now(UTC)
POOL = """
backends:
  - {name: mixtral-8x7b, base_url: "http://127.0.0.1:9/v1", model: mixtral-8x7b, input_price: 0.6, output_price: 0.6}
  - {name: gpt-4-1106, base_url: "http://127.0.0.1:9/v1", model: gpt-4-1106, input_price: 10, output_price: 30}
pools:
  - {name: auto, members: [mixtral-8x7b, gpt-4-1106], router: ROUTER, objective: quality-first}
"""


def pool_file(router: str = "strongest"):
    return parse_pool_file(POOL.replace("ROUTER", router))


def lrow(text: str, backend: str, score: float, comp: int = 10) -> LabelledRow:
    return LabelledRow(text, backend, 20, comp, score, NOW)


def test_log_rows_become_one_query_per_prompt_with_mean_scores_and_a_mask() -> None:
    rows = [lrow("a", "mixtral-8x7b", 1.0, 10), lrow("a", "mixtral-8x7b", 0.0, 30), lrow("a", "gpt-4-1106", 1.0, 50),
            lrow("b", "gpt-4-1106", 0.0, 70), lrow("c", "not-in-pool", 1.0)]
    backends = pool_file().backends
    data = log_rows_to_data(rows, backends, 256, "auto")
    ds = data.dataset
    assert ds.queries == ["a", "b"] and ds.models == ["mixtral-8x7b", "gpt-4-1106"]
    assert ds.quality[0].tolist() == [0.5, 1.0] and np.isnan(ds.quality[1, 0]) and ds.quality[1, 1] == 0.0
    assert data.observed.tolist() == [[True, True], [False, True]]
    # unobserved completion tokens: the backend's mean over observed cells (mixtral: only cell "a", mean 20)
    assert ds.completion_tokens.tolist() == [[20.0, 50.0], [20.0, 70.0]]
    assert ds.cost_usd[1, 0] == pytest.approx((20 * 0.6 + 20 * 0.6) / 1e6)
    means = column_means(data)
    assert means.tolist() == [0.5, 0.5]
    assert impute(data, means).quality[1].tolist() == [0.5, 0.0]


def test_offline_dataset_models_match_pool_backends_by_name() -> None:
    from training.loaders import load_dataset

    backends = pool_file().backends
    ds = load_dataset("routellm-gsm8k", limit=40)
    assert match_models(ds.models, backends) == {"mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
                                                 "gpt-4-1106": "gpt-4-1106-preview"}
    data = offline_rows(ds, backends)
    assert data.observed.all() and len(data.dataset) == 40
    k = ds.models.index("gpt-4-1106-preview")
    assert data.dataset.quality[:, 1].tolist() == ds.quality[:, k].tolist()


def test_durations() -> None:
    assert parse_duration("7d") == timedelta(days=7) and parse_duration("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("7 days")


async def seed_logs(url: str, n_prompts: int, strong_score: float = 1.0, weak_score: float = 0.0,
                    store_text: bool = True) -> None:
    """Every prompt answered by both backends, each answer labelled: as if a uniform explorer logged each with
    propensity 0.5; prompt i is logged i seconds after prompt i-1 (the holdout is the newest prompts)."""
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    reqs, labels = [], []
    for i in range(n_prompts):
        for backend, score in (("mixtral-8x7b", weak_score), ("gpt-4-1106", strong_score)):
            rid = f"{i:04d}{backend[:3]}".ljust(32, "0")
            reqs.append({"id": rid, "created_at": NOW - timedelta(minutes=5) + timedelta(seconds=i), "pool": "auto",
                         "model_requested": "auto", "propensity": 0.5, "policy": "explore:epsilon",
                         "backend": backend, "status": "ok", "http_status": 200, "prompt_tokens": 20,
                         "completion_tokens": 40, "cost_usd": 0.0, "candidates": [], "attempts": [],
                         "prompt_text": f"question number {i}: what is {i} + {i}?" if store_text else None})
            labels.append({"request_id": rid, "score": score, "created_at": NOW, "updated_at": NOW})
    async with engine.begin() as conn:
        await conn.execute(insert(Request), reqs)
        await conn.execute(insert(Feedback), labels)
    await engine.dispose()


async def run_train(url: str, tmp_path: Path, req: TrainRequest, router: str = "strongest"):
    engine = make_engine(url)
    try:
        return await train_from_logs(engine, ArtifactStore(engine, tmp_path / "art"), pool_file(router), req)
    finally:
        await engine.dispose()


async def test_too_few_labelled_rows_is_refused_with_the_count_needed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    await seed_logs(url, 3)
    need = r"6 labelled rows in the window, training needs at least 20 \(14 more\)"
    with pytest.raises(TrainingDataError, match=need):
        await run_train(url, tmp_path, TrainRequest("best-single", "auto"))


async def test_rows_without_prompt_text_point_at_store_prompts(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    await seed_logs(url, 15, store_text=False)
    with pytest.raises(TrainingDataError, match="30 labelled requests have no prompt text.*POOLGATE_STORE_PROMPTS"):
        await run_train(url, tmp_path, TrainRequest("best-single", "auto"))


async def test_a_worse_candidate_is_registered_but_not_promoted_unless_forced(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    await seed_logs(url, 30)  # gpt-4 always right, mixtral always wrong; the pool serves strongest
    worse = await run_train(url, tmp_path, TrainRequest("random", "auto", promote=True, seed=3))
    assert not worse.promoted and worse.record.status == "candidate"
    assert worse.serving["utility"] == pytest.approx(1.0)
    diff = worse.record.metrics["vs_serving"]  # paired: candidate - serving on the same events
    assert diff["utility_diff_low"] <= 0 and diff["utility_diff"] < 0 < diff["disagreement"]
    assert "not promoted: the difference's lower bound is not above 0" in worse.reason
    assert "--force" in worse.reason
    forced = await run_train(url, tmp_path, TrainRequest("random", "auto", promote=True, force=True, seed=3))
    assert forced.promoted and forced.record.status == "live" and forced.record.version == "v2"
    assert forced.reason.startswith("forced (--force)")


async def test_a_candidate_whose_lower_bound_beats_the_serving_estimate_is_promoted(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    await seed_logs(url, 30)  # the pool serves cheapest: mixtral, always wrong
    out = await run_train(url, tmp_path, TrainRequest("best-single", "auto", promote=True, since=NOW - timedelta(1)),
                          router="cheapest")
    assert out.promoted and out.not_worse and out.serving_label == "cheapest builtin (pool file)"
    assert out.candidate["quality"] == pytest.approx(1.0) and out.candidate["mix"]["gpt-4-1106"] == 1.0
    assert out.candidate["utility_low"] > out.serving["utility"]
    diff = out.record.metrics["vs_serving"]
    assert diff["utility_diff_low"] > 0 and diff["disagreement"] == 1.0
    assert diff["utility_diff"] == pytest.approx(out.candidate["utility"] - out.serving["utility"])
    assert "the difference's lower bound is above 0" in out.reason
    m = out.record.metrics
    # the split is by time, fixed and recorded: the newest 15 of 60 rows (the last prompts) judge
    assert m["split"]["kind"] == "time-ordered" and m["split"]["holdout_events"] == 15 == out.n_test
    assert m["split"]["fit_rows"] == 45 and out.log_rows == 60
    assert m["references"]["always-cheapest"]["quality"] == pytest.approx(0.0) and m["flags"]["quality"] == 1.0
    again = await run_train(url, tmp_path, TrainRequest("best-single", "auto", promote=True))
    # the same policy again: the paired difference is exactly 0 on every event, so the live version stays
    assert again.serving_label == "best-single v1 (live)" and not again.promoted and again.record.version == "v2"
    assert again.record.metrics["vs_serving"]["utility_diff_low"] == 0.0
    assert "is not above 0" in again.reason


async def test_rows_without_propensity_are_left_out_of_the_holdout_and_block_promotion(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    await seed_logs(url, 30)
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(Request.__table__.update().values(propensity=None))
    await engine.dispose()
    out = await run_train(url, tmp_path, TrainRequest("best-single", "auto", promote=True), router="cheapest")
    assert not out.promoted and "no holdout events with a known propensity" in out.reason
    assert out.record.metrics["split"]["holdout_without_propensity"] == 15


async def test_window_excludes_older_requests(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    await seed_logs(url, 30)
    with pytest.raises(TrainingDataError, match="0 labelled rows"):
        await run_train(url, tmp_path, TrainRequest("best-single", "auto", since=NOW - timedelta(minutes=1)))


def test_train_cli_states_the_count_needed_without_a_traceback(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/c.db"
    asyncio.run(seed_logs(url, 4))
    (tmp_path / "pool.yaml").write_text(POOL.replace("ROUTER", "cheapest"))
    env = {"POOLGATE_DATABASE_URL": url, "POOLGATE_POOL_FILE": str(tmp_path / "pool.yaml"),
           "POOLGATE_ARTIFACTS_DIR": str(tmp_path / "art")}
    out = CliRunner().invoke(main, ["train", "--router", "knn", "--pool", "auto"], env=env)
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "8 labelled rows in the window, training needs at least 20 (12 more)" in out.output
    out = CliRunner().invoke(main, ["train", "--router", "knn", "--pool", "nope"], env=env)
    assert out.exit_code == 1 and "no pool 'nope'" in out.output
    out = CliRunner().invoke(main, ["routers", "list"], env=env)
    assert out.exit_code == 0 and "no router versions yet" in out.output
    out = CliRunner().invoke(main, ["train", "--router", "knn", "--pool", "auto", "--since", "soon"], env=env)
    assert out.exit_code == 2 and "bad time 'soon'" in out.output
