"""Unbounded upstream answers (issue 19, item 6) and the transport's limits, through a real gateway and the real
``openai`` client: a plain answer over ``max_response_bytes``, a stream over ``max_stream_bytes``, a stream with
no event separator, answers that trickle past the backend's ``timeout_s``, 20 000 response headers, and a stalled
backend holding its per-host slots. Each ends with an OpenAI error (or the fallback's answer) and one row."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows
from tests.rawbackend import RawBackend, head
from tests.servers import ServerThread
from tests.test_hostile_backend_answers import chunk, client, completion

MIB = 1024 * 1024
MESSAGES = [{"role": "user", "content": "2+2?"}]


def pool(bad_url: str, good_url: str, **bad: Any) -> str:
    bad = {"retries": 0, "input_price": 0.1, "output_price": 0.1, **bad}
    return f"""backends:
{backend_yaml("bad", bad_url, **bad)}
{backend_yaml("good", good_url, retries=0, input_price=1, output_price=1, read_timeout_s=30)}
pools:
  - name: auto
    members: [bad, good]
    router: cheapest
"""


async def big_answer(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    if body.get("stream"):
        writer.write(head(ctype="text/event-stream"))
        for _ in range(2 * MIB // 4096):  # 2 MiB of content events, no usage
            writer.write(chunk("x" * 4000))
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        return
    answer = completion("x" * 3 * MIB, {"prompt_tokens": 1, "completion_tokens": 1})
    writer.write(head(length=len(answer)) + answer)


async def no_separator(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    writer.write(head(ctype="text/event-stream") + b"data: ")
    for _ in range(3 * MIB // 65536):
        writer.write(b"x" * 65536)
        await writer.drain()


async def trickle(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    if body.get("stream"):
        writer.write(head(ctype="text/event-stream") + chunk("first"))
        filler = b": keep-alive\n\n"  # SSE comments: bytes, never an event
    else:
        writer.write(head(length=150))
        filler = b" "
    for _ in range(150):  # one every 0.1 s: 15 s in all, never silent for the 3 s read timeout
        writer.write(filler)
        await writer.drain()
        await asyncio.sleep(0.1)


async def header_flood(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    answer = completion("from bad", {"prompt_tokens": 1, "completion_tokens": 2})
    extra = b"".join(b"x-flood-%d: %s\r\n" % (i, b"v" * 90) for i in range(20_000))  # ~2 MB of head
    writer.write(head(length=len(answer), extra=extra) + answer)


async def hang(body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(60)


def stream_text(gw: ServerThread, model: str = "auto") -> tuple[str, openai.APIError | None]:
    text, error = "", None
    try:
        for part in client(gw).chat.completions.create(model=model, stream=True, messages=MESSAGES):
            if part.choices:
                text += part.choices[0].delta.content or ""
    except openai.APIError as exc:
        error = exc
    return text, error


def test_plain_answer_over_the_size_cap_falls_back_and_alone_is_a_502_with_its_row(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any]
) -> None:
    _, good = fake_backends("good")
    with RawBackend(big_answer) as bad:
        gw = gateway(pool(bad.url, good.url), max_response_bytes=MIB)
        reply = client(gw).chat.completions.create(model="auto", messages=MESSAGES)
        with pytest.raises(openai.APIStatusError) as caught:
            client(gw).chat.completions.create(model="bad", messages=MESSAGES)  # a backend by name: no fallback
        rows = sorted(wait_rows(gw.settings.database_url, 2), key=lambda r: r["created_at"])
    assert reply.choices[0].message.content == "answer from good"
    assert caught.value.status_code == 502 and "over the limit of 1048576 bytes" in caught.value.message
    fell_back, refused = rows
    assert fell_back["status"] == "ok" and fell_back["backend"] == "good"
    assert fell_back["attempts"][0]["error"].startswith("ResponseTooLarge")
    assert refused["status"] == "error" and refused["http_status"] == 502 and refused["backend"] == "bad"


def test_stream_over_the_size_cap_is_cut_with_an_error_event_and_an_error_row(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any]
) -> None:
    _, good = fake_backends("good")
    with RawBackend(big_answer) as bad:
        gw = gateway(pool(bad.url, good.url), max_stream_bytes=MIB)
        text, error = stream_text(gw)
        [row] = wait_rows(gw.settings.database_url, 1)
    print(f"stream over the cap: {len(text)} content characters relayed, then {error}")
    assert error is not None and "over the limit of 1048576 bytes" in error.message
    assert 0.5 * MIB < len(text) <= MIB  # what came before the cap was relayed
    assert row["status"] == "error" and row["error_type"] == "upstream_response_too_large"
    assert row["usage_estimated"] is True and row["completion_tokens"] > 0


def test_stream_without_event_separators_is_cut_at_the_event_bound(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any]
) -> None:
    _, good = fake_backends("good")
    with RawBackend(no_separator) as bad:
        gw = gateway(pool(bad.url, good.url))
        body = {"model": "auto", "stream": True, "messages": MESSAGES}
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
            raw = b"".join(r.iter_bytes())
        [row] = wait_rows(gw.settings.database_url, 1)
    assert len(raw) < 4096 and raw.count(b"data: ") == 1  # only the error event
    error = orjson.loads(raw.removeprefix(b"data: "))["error"]
    assert "without an event separator" in error["message"] and error["code"] == "upstream_response_too_large"
    assert row["status"] == "error" and row["error_type"] == "upstream_response_too_large"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_answer_trickling_past_the_total_deadline_ends_within_it(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any], stream: bool
) -> None:
    _, good = fake_backends("good")
    with RawBackend(trickle) as bad:
        gw = gateway(pool(bad.url, good.url, read_timeout_s=3, timeout_s=2))
        started = time.monotonic()
        if stream:
            text, error = stream_text(gw)
        else:
            text, error = client(gw).chat.completions.create(model="auto", messages=MESSAGES) \
                .choices[0].message.content or "", None
        elapsed = time.monotonic() - started
        [row] = wait_rows(gw.settings.database_url, 1)
    print(f"trickle ({'stream' if stream else 'plain'}): {elapsed:.1f} s, row {row['status']}, "
          f"attempts {[(a['backend'], a['error']) for a in row['attempts']]}")
    assert elapsed < 12  # the trickle lasts 15 s; the deadline is 2 s (loose: a loaded machine is slow)
    if stream:  # bytes had reached the client: no fallback, an error event
        assert text == "first" and error is not None and "TotalTimeout" in error.message
        assert row["status"] == "error" and "took over 2 s" in row["error_message"]
    else:  # nothing had reached the client: the next backend answers
        assert text == "answer from good" and row["status"] == "ok"
        assert row["attempts"][0]["error"] == "TotalTimeout: upstream exchange took over 2 s"


def test_response_with_20000_headers_is_a_failed_attempt(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any]
) -> None:
    _, good = fake_backends("good")
    with RawBackend(header_flood) as bad:
        gw = gateway(pool(bad.url, good.url))
        reply = client(gw).chat.completions.create(model="auto", messages=MESSAGES)
        [row] = wait_rows(gw.settings.database_url, 1)
    assert reply.choices[0].message.content == "answer from good"
    assert row["attempts"][0]["error"] == "RemoteProtocolError: upstream response has more than 100 headers"


def test_stalled_backend_holds_only_its_per_host_slots_and_the_next_request_falls_back(
    gateway: Callable[..., ServerThread], fake_backends: Callable[..., Any]
) -> None:
    _, good = fake_backends("good")
    with RawBackend(hang) as bad:
        gw = gateway(pool(bad.url, good.url, read_timeout_s=5), upstream_max_connections_per_host=2,
                     upstream_pool_timeout_s=0.5)
        body = {"model": "bad", "messages": MESSAGES}
        held = [threading.Thread(target=httpx.post, args=(f"{gw.url}/v1/chat/completions",),
                                 kwargs={"json": body, "timeout": 30}) for _ in range(2)]
        for thread in held:
            thread.start()
        deadline = time.monotonic() + 10
        while bad.requests < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        reply = client(gw).chat.completions.create(model="auto", messages=MESSAGES)
        assert reply.choices[0].message.content == "answer from good"
        for thread in held:
            thread.join(30)
        rows = wait_rows(gw.settings.database_url, 3)
    [fell_back] = [r for r in rows if r["status"] == "ok"]
    assert fell_back["attempts"][0]["error"].startswith("PoolTimeout: no free upstream connection")
    assert bad.requests == 2  # the third request never reached the stalled backend
