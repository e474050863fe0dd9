"""Backends that answer badly, through a real gateway and the real ``openai`` client: every bad answer still
gives the client a clear outcome and leaves exactly one log row.

- a backend that echoes its API key (in a streamed error event, in a content delta, in a plain answer): the key
  never reaches the client or the row (issue 19, item 3);
- ``usage`` that is a string, a list, a dict, negative, or over int32, plain and streamed, on SQLite and
  PostgreSQL: the client gets its answer, the row is written with the gateway's own counts and
  ``usage_estimated``, and ``/metrics`` stays sane (item 5);
- a 200 whose body is not a JSON completion (HTML, empty, malformed, an array, an error object), or a stream
  request answered by something that is not an event stream: a failed attempt, so the next backend answers
  before the client has a byte, and the row says what happened ("Also").
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.metrics import iter_samples
from routers.pricing import count_prompt_tokens, count_tokens
from tests.conftest import backend_yaml
from tests.dbutil import wait_rows
from tests.rawbackend import RawBackend, head
from tests.servers import FakeBackend, ServerThread

KEY_ENV = "POOLGATE_TEST_HOSTILE_KEY"


def chunk(content: str | None = None, usage: Any = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                            "choices": [] if content is None else [{"index": 0, "delta": {"content": content}}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps({**body, **extra}) + b"\n\n"


def completion(content: str, usage: Any = None) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def one_backend_pool(url: str, **attrs: Any) -> str:
    return f"backends:\n{backend_yaml('only', url, retries=0, **attrs)}\npools:\n  - name: auto\n    members: [only]\n"


def two_backend_pool(bad_url: str, good_url: str) -> str:
    return f"""backends:
{backend_yaml("bad", bad_url, retries=0, input_price=0.1, output_price=0.1)}
{backend_yaml("good", good_url, retries=0, input_price=1, output_price=1, read_timeout_s=30)}
pools:
  - name: auto
    members: [bad, good]
    router: cheapest
"""


def client(gw: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30)


# -- item 3: the backend's key never reaches the client -----------------------------------------------------------


def echoing_backend(key: str) -> Callable[..., Any]:
    """Streams the key in a content delta, then an error event with 'Bearer <key>' and another bearer token;
    a plain request gets the key inside its answer."""

    async def script(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if not body.get("stream"):
            answer = completion(f"my key is {key}", {"prompt_tokens": 3, "completion_tokens": 4})
            writer.write(head(length=len(answer)) + answer)
            return
        writer.write(head(ctype="text/event-stream"))
        writer.write(chunk(f"the key is {key} "))
        err = {"error": {"message": f"invalid key 'Bearer {key}' (also tried Bearer other-token-123456)",
                         "type": "auth", "code": None}}
        writer.write(b"event: error\ndata: " + orjson.dumps(err) + b"\n\n")

    return script


def test_backend_key_echoed_in_streamed_error_events_and_answers_never_reaches_the_client(
    gateway: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-" + secrets.token_urlsafe(24)
    monkeypatch.setenv(KEY_ENV, key)
    with RawBackend(echoing_backend(key)) as backend:
        gw = gateway(one_backend_pool(backend.url, api_key_env=KEY_ENV), store_responses=True)
        body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
            raw = b"".join(r.iter_bytes())
        with pytest.raises(openai.APIError) as caught:
            for _ in client(gw).chat.completions.create(model="auto", stream=True,
                                                        messages=[{"role": "user", "content": "hi"}]):
                pass
        plain = client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert backend.requests == 3
        rows = wait_rows(gw.settings.database_url, 3)
    assert b"the key is *** " in raw and b"Bearer ***" in raw and b"error" in raw  # relayed, scrubbed
    assert key.encode() not in raw and b"other-token-123456" not in raw
    assert key not in str(caught.value) and "Bearer ***" in str(caught.value)
    assert plain.choices[0].message.content == "my key is ***"
    assert len(rows) == 3 and not any(key in json.dumps(row, default=str) for row in rows)
    assert sorted(str(row["response_text"]) for row in rows) == ["my key is ***", "the key is *** ",
                                                                  "the key is *** "]


# -- item 5: malformed usage --------------------------------------------------------------------------------------

#: usage values as a backend may send them; the request's user message names the case (the backend reads it)
BAD_USAGE: dict[str, Any] = {
    "string": "12",
    "list": [12, 3],
    "counts-are-strings": {"prompt_tokens": "12", "completion_tokens": "3"},
    "counts-are-dicts": {"prompt_tokens": {"n": 12}, "completion_tokens": [3]},
    "negative": {"prompt_tokens": -12, "completion_tokens": -3},
    "over-int32": {"prompt_tokens": 10**12, "completion_tokens": 3 * 10**12},
    "bool-and-float": {"prompt_tokens": True, "completion_tokens": 1e300},
}
ANSWER = "four, as the sum of two and two"


async def usage_backend(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    usage = BAD_USAGE[body["messages"][-1]["content"]]
    if not body.get("stream"):
        answer = completion(ANSWER, usage)
        writer.write(head(length=len(answer)) + answer)
        return
    writer.write(head(ctype="text/event-stream"))
    writer.write(chunk("four, ") + chunk("as the sum of two and two") + chunk(usage=usage) + b"data: [DONE]\n\n")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_malformed_usage_keeps_the_answer_and_its_row_with_estimated_counts(
    gateway: Callable[..., ServerThread], db_url: str, stream: bool
) -> None:
    with RawBackend(usage_backend) as backend:
        gw = gateway(one_backend_pool(backend.url, input_price=1, output_price=2), database_url=db_url,
                     store_prompts=True)
        answers = []
        for case in BAD_USAGE:
            messages = [{"role": "user", "content": case}]
            if stream:
                parts = client(gw).chat.completions.create(model="auto", stream=True, messages=messages)
                answers.append("".join(p.choices[0].delta.content or "" for p in parts if p.choices))
            else:
                answers.append(client(gw).chat.completions.create(model="auto", messages=messages)
                               .choices[0].message.content)
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        rows = wait_rows(gw.settings.database_url, len(BAD_USAGE))
    assert answers == [ANSWER] * len(BAD_USAGE)
    assert len(rows) == len(BAD_USAGE)
    for row in rows:
        assert row["status"] == "ok" and row["usage_estimated"] is True, row
        assert row["prompt_tokens"] == count_prompt_tokens([{"role": "user", "content": row["prompt_text"]}])
        assert row["completion_tokens"] == count_tokens(ANSWER)
        assert 0 < row["cost_usd"] < 1e-3
    cost = sum(v for _, v in iter_samples(metrics, "poolgate_cost_usd_total"))
    tokens = sum(v for _, v in iter_samples(metrics, "poolgate_tokens_total"))
    assert 0 < cost < 1e-2 and 0 < tokens < 10_000


def test_token_counts_over_int32_are_stored(db_url: str, tmp_path: Any) -> None:
    """Token columns are 64-bit on both databases (migration 0004): such a row is stored, not rejected."""
    from gateway.settings import Settings
    from gateway.store import LogWriter, make_engine, upgrade

    upgrade(db_url)

    async def write() -> int:
        engine = make_engine(db_url)
        writer = LogWriter(engine, Settings(database_url=db_url, spool_dir=tmp_path / "spool"))
        await writer.start()
        writer.submit({"id": "a" * 32, "model_requested": "auto", "prompt_tokens": 3 * 2**31,
                       "completion_tokens": 2**40})
        await writer.stop()
        await engine.dispose()
        return writer.rejected_rows

    assert asyncio.run(write()) == 0
    [row] = wait_rows(db_url, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3 * 2**31, 2**40)


# -- "Also": a 200 that is not an answer --------------------------------------------------------------------------

NOT_ANSWERS = {
    "html": (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "text/html"),
    "empty": (b"", "application/json"),
    "malformed": (b'{"choices": [{"message": ', "application/json"),
    "array": (b"[1, 2, 3]", "application/json"),
    "error-object": (b'{"error": {"message": "model overloaded", "type": "server_error"}}', "application/json"),
}


def not_an_answer(kind: str) -> Callable[..., Any]:
    body, ctype = NOT_ANSWERS[kind]

    async def script(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(head(ctype=ctype, length=len(body)) + body)  # to stream requests too: not an event stream

    return script


@pytest.mark.parametrize("kind", list(NOT_ANSWERS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_200_that_is_not_an_answer_falls_back_before_the_first_byte(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any], kind: str, stream: bool
) -> None:
    good: FakeBackend
    good, good_server = fake_backends("good")
    with RawBackend(not_an_answer(kind)) as bad:
        gw = gateway(two_backend_pool(bad.url, good_server.url))
        messages = [{"role": "user", "content": "2+2?"}]
        if stream:
            parts = client(gw).chat.completions.create(model="auto", stream=True, messages=messages)
            text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        else:
            text = client(gw).chat.completions.create(model="auto", messages=messages).choices[0].message.content
        [row] = wait_rows(gw.settings.database_url, 1)
    assert text == "answer from good" and bad.requests == 1
    assert row["status"] == "ok" and row["backend"] == "good"
    failed, answered = row["attempts"]
    assert failed["backend"] == "bad"
    if stream and kind == "empty":  # no first byte at all: as before this change
        assert failed["status"] is None and "closed the stream before sending anything" in failed["error"]
    else:
        assert failed["status"] == 200, failed
        assert ("is not an event stream" if stream else "is not a JSON completion") in failed["error"], failed
    assert answered == {**answered, "backend": "good", "status": 200, "error": None}


def test_200_that_is_not_an_answer_with_no_fallback_is_a_502_and_an_error_row(
    gateway: Callable[..., ServerThread]
) -> None:
    with RawBackend(not_an_answer("html")) as bad:
        gw = gateway(one_backend_pool(bad.url))
        with pytest.raises(openai.APIStatusError) as caught:
            client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": "2+2?"}])
        [row] = wait_rows(gw.settings.database_url, 1)
    assert caught.value.status_code == 502 and "not a JSON completion" in caught.value.message
    assert row["status"] == "error" and row["http_status"] == 502 and row["error_type"] == "upstream_error"
    assert "502 Bad Gateway" in row["attempts"][0]["error"] and row["attempts"][0]["status"] == 200
