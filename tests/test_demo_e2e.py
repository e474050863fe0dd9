"""The README's first command, for real: `poolgate serve` in a subprocess with its embedded defaults
(SQLite in the working directory, the demo pool `auto` over the replay backend it starts itself),
called with the official openai client, sync and async, streaming and not."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

import gateway.replay
from tests.conftest import wait_until
from tests.dbutil import fetch_rows
from tests.procs import wait_until_healthy
from tests.servers import free_port

SAMPLE = [orjson.loads(line) for line in (Path(gateway.replay.__file__).parent / "sample" / "gsm8k_sample.jsonl")
          .read_text().splitlines()]
RECORD = SAMPLE[0]  # a recorded prompt: the replay backend answers it with the model's real answer
QUESTION = RECORD["prompt"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("demo")
    port, replay_port = free_port(), free_port()
    env = {**os.environ, "POOLGATE_REPLAY_PORT": str(replay_port), "POOLGATE_LOG_FLUSH_INTERVAL_S": "0.05"}
    env.pop("POOLGATE_DATABASE_URL", None)
    env.pop("POOLGATE_POOL_FILE", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url, lambda: proc.stdout.read().decode() if proc.stdout else "")
    try:
        yield url, f"sqlite+aiosqlite:///{Path(workdir) / 'poolgate.db'}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_sync_client_gets_recorded_real_answer_from_pool_auto(demo):
    url, _ = demo
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    messages = [{"role": "user", "content": QUESTION}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    answer = raw.parse()
    # the demo pool routes with a learned router: whichever backend it picked, the answer is that model's
    # real recorded answer to this very prompt
    backend = raw.headers["x-poolgate-backend"]
    assert backend in RECORD["answers"]
    assert answer.choices[0].message.content == RECORD["answers"][backend]
    assert answer.usage is not None and answer.usage.completion_tokens > 10


async def test_async_streaming_client_and_direct_backend(demo):
    url, _ = demo
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none")
    stream = await client.chat.completions.create(
        model="gpt-4-1106", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == RECORD["answers"]["gpt-4-1106"] and usage is not None and usage.completion_tokens > 10


def test_every_demo_request_is_logged_with_tokens_and_cost(demo):
    url, db = demo
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    ids = set()
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "What is 12 * 7?"}])
        ids.add(raw.headers["x-poolgate-request-id"])
    wait_until(lambda: ids <= {r["id"] for r in fetch_rows(db)}, 30, "the three requests' rows")
    mine = [r for r in fetch_rows(db) if r["id"] in ids]
    assert len(mine) == 3
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["cost_usd"] > 0 for r in mine)
    assert {r["pool"] for r in mine} == {"auto"}
