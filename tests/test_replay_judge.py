"""The replay backend's judge model: the rubric prompt in, a score from the record's real correctness out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway.judge.rubric import judge_prompt, parse_verdict
from gateway.replay.data import CHEAP_MODEL, STRONG_MODEL, ReplayStore
from gateway.replay.server import create_replay_app


@pytest.fixture(scope="module")
def store() -> ReplayStore:
    return ReplayStore.load()


@pytest.fixture
async def client(store: ReplayStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_replay_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://replay") as c:
        yield c


async def _judge(client: httpx.AsyncClient, question: str, answer: str, path: str = "/judge/v1") -> httpx.Response:
    body = {"model": "replay-judge", "messages": [{"role": "user", "content": judge_prompt(question, answer)}]}
    return await client.post(f"{path}/chat/completions", json=body)


async def test_judge_scores_each_recorded_answer_by_its_real_correctness(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    # one record where the models disagree, so a judge that ignored the answer could not pass
    rec = next(r for r in store.records if r.correct[CHEAP_MODEL] != r.correct[STRONG_MODEL])
    for model in (CHEAP_MODEL, STRONG_MODEL):
        r = await _judge(client, rec.prompt, rec.answers[model])
        assert r.status_code == 200, r.text
        assert r.headers["x-replay-judge"] == "scored"
        verdict = parse_verdict(r.json()["choices"][0]["message"]["content"])
        assert verdict.score == (1.0 if rec.correct[model] else 0.0), verdict
        assert r.json()["usage"]["prompt_tokens"] > 0


async def test_judge_agrees_with_the_source_on_every_recorded_answer(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    scored = 0
    for rec in store.records[:40]:
        r = await _judge(client, rec.prompt, rec.answers[STRONG_MODEL], path="/v1")
        scored += parse_verdict(r.json()["choices"][0]["message"]["content"]).score == float(rec.correct[STRONG_MODEL])
    assert scored == 40


async def test_judge_cannot_judge_an_unknown_answer_or_question(client: httpx.AsyncClient, store: ReplayStore) -> None:
    rec = store.records[0]
    for question, answer in [(rec.prompt, "The answer is 42."),
                             ("What is the capital of Peru?", rec.answers[CHEAP_MODEL]),
                             (rec.prompt, rec.answers[CHEAP_MODEL][:20])]:  # truncated: not the recorded text
        r = await _judge(client, question, answer)
        assert r.status_code == 200 and r.headers["x-replay-judge"] == "unknown"
        assert parse_verdict(r.json()["choices"][0]["message"]["content"]).score is None


async def test_judge_without_the_rubric_says_so(client: httpx.AsyncClient) -> None:
    body = {"model": "replay-judge", "messages": [{"role": "user", "content": "is 2+2=4?"}]}
    r = await client.post("/v1/chat/completions", json=body)
    content = orjson.loads(r.json()["choices"][0]["message"]["content"])
    assert content["score"] is None and "rubric" in content["reason"]
