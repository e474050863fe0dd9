"""The offline demo routes with a learned router out of the box: on GSM8K prompts *outside* the packaged sample
(from shared/data), its default preset splits traffic and sends GPT-4 the prompts Mixtral gets wrong more often;
``strongest`` always answers with GPT-4. Through the real ``openai`` client, a real gateway and the replay backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from gateway.pools import DEMO_POOL_PATH, load_pool_file
from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from routers.base import Router
from tests.servers import ServerThread
from training.load_file import load_replay_sample
from training.loaders import DatasetError, default_data_dir, load_dataset
from training.train_router import train_router

SAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "replay" / "sample" / "gsm8k_sample.jsonl"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _unseen_prompts(n: int) -> list[tuple[str, bool]]:
    """``n`` GSM8K prompts that are not in the packaged sample, with whether Mixtral answered them right."""
    try:
        default_data_dir()
    except DatasetError:
        pytest.skip("no shared/data beside the repo")
    full = load_dataset("routellm-gsm8k")
    seen = set(load_replay_sample(SAMPLE).queries)
    col = full.models.index(MIXTRAL)
    rows = [(q, bool(full.quality[i, col])) for i, q in enumerate(full.queries) if q not in seen]
    pick = np.random.default_rng(0).choice(len(rows), size=n, replace=False)
    return [rows[i] for i in sorted(pick)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from gateway.app import create_app
    from gateway.settings import Settings
    from gateway.store import upgrade

    folder = tmp_path_factory.mktemp("demo")
    with ServerThread(create_replay_app(ReplayStore.load())) as replay, pytest.MonkeyPatch.context() as mp:
        mp.setenv("POOLGATE_REPLAY_PORT", str(replay.port))
        settings = Settings(database_url=f"sqlite+aiosqlite:///{folder}/gw.db", spool_dir=folder / "spool",
                            log_flush_interval_s=0.05)
        upgrade(settings.database_url)
        with ServerThread(create_app(settings)) as gw:
            yield openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def _backend(client: openai.OpenAI, prompt: str, **extra: Any) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}], **extra)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-poolgate-backend"]


def test_the_demo_pool_routes_unseen_prompts_between_both_models_by_difficulty(demo: openai.OpenAI) -> None:
    assert load_pool_file(DEMO_POOL_PATH).pool("auto").router == "knn"  # type: ignore[union-attr]
    prompts = _unseen_prompts(200)
    chosen = [_backend(demo, p) for p, _ in prompts]
    gpt4 = np.asarray([c == "gpt-4-1106" for c in chosen])
    mixtral_right = np.asarray([right for _, right in prompts])
    assert 0.10 <= gpt4.mean() <= 0.90, f"GPT-4 share {gpt4.mean():.2f}"
    assert gpt4[~mixtral_right].mean() > gpt4[mixtral_right].mean()  # the router routes, it does not flip coins


def test_strongest_always_answers_with_gpt4(demo: openai.OpenAI) -> None:
    for prompt, _ in _unseen_prompts(20):
        assert _backend(demo, prompt, extra_body={"poolgate": {"router": "strongest"}}) == "gpt-4-1106"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def test_the_shipped_demo_artifact_is_what_train_offline_builds_from_the_sample(tmp_path: Path) -> None:
    shipped = Router.load(DEMO_POOL_PATH.parent / "auto-knn.router")
    rebuilt = train_router("knn", str(SAMPLE)).router
    # equal up to float rounding: a refactor may sum the same costs in another order
    assert _rounded(shipped.calibration_) == _rounded(rebuilt.calibration_)
    sample = load_replay_sample(SAMPLE)
    from training.train_router import attach_features

    feats = attach_features(sample, True).features
    assert feats is not None
    cards = sample.cards
    np.testing.assert_allclose(shipped.predict(feats, cards).quality, rebuilt.predict(feats, cards).quality)
