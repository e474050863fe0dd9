"""The access log: one line per request (text, or JSON lines), with what routing did and never the prompt, the
answer or the API key; quiet unless configured."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from gateway.access_log import ACCESS_LOGGER, configure_access_log
from tests.conftest import backend_yaml

SECRET_PROMPT = "my-secret-prompt-text-4471"
MASTER = "access-log-master-key-9931"


@pytest.fixture
def gw(fake_backends, gateway):
    _, backend = fake_backends("cheap")
    return gateway(f"backends:\n{backend_yaml('cheap', backend.url)}\npools:\n  - name: auto\n    members: [cheap]\n",
                   auth_enabled=True, master_key=MASTER)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    yield from _capture("text")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    yield from _capture("json")


def _capture(fmt: str) -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = configure_access_log(fmt, out)  # type: ignore[arg-type]
    try:
        yield out
    finally:
        ACCESS_LOGGER.removeHandler(handler)
        ACCESS_LOGGER.setLevel(logging.NOTSET)


def chat(url: str, stream: bool = False) -> httpx.Response:
    body = {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER}"},
                      timeout=30)


def test_each_request_is_one_json_line_with_routing_and_no_prompt_or_key(gw, json_lines) -> None:
    plain, streamed = chat(gw.url), chat(gw.url, stream=True)
    missing = httpx.get(f"{gw.url}/nope?token=abc", timeout=10)
    assert plain.status_code == streamed.status_code == 200 and missing.status_code == 404
    text = json_lines.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert first["request_id"] == plain.headers["x-poolgate-request-id"]
    assert first["method"] == "POST" and first["path"] == "/v1/chat/completions" and first["status"] == 200
    assert first["pool"] == "auto" and first["backend"] == "cheap" and first["router"] == "cheapest"
    assert first["prompt_tokens"] > 0 and first["completion_tokens"] > 0 and first["attempts"] == 1
    assert second["stream"] is True and second["request_id"] == streamed.headers["x-poolgate-request-id"]
    assert second["completion_tokens"] > 0  # finished with the stream, not at its first byte
    assert third["path"] == "/nope" and third["status"] == 404 and "request_id" not in third
    assert SECRET_PROMPT not in text and MASTER not in text and "token=abc" not in text


def test_the_text_format_is_one_line_per_request(gw, log_lines) -> None:
    resp = chat(gw.url)
    line, = log_lines.getvalue().splitlines()
    assert " POST /v1/chat/completions 200 " in line
    assert f"request_id={resp.headers['x-poolgate-request-id']}" in line and "backend=cheap" in line
    assert SECRET_PROMPT not in line and MASTER not in line


def test_without_configuration_nothing_is_logged(gw, capsys) -> None:
    assert chat(gw.url).status_code == 200
    captured = capsys.readouterr()
    assert "/v1/chat/completions" not in captured.out + captured.err


def test_poolgate_serve_writes_json_lines_to_stderr(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.procs import wait_until_healthy
    from tests.servers import free_port

    root = str(Path(__file__).resolve().parents[1])
    port, replay_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_")}
    env.update(PYTHONPATH=root, POOLGATE_PORT=str(port), POOLGATE_REPLAY_PORT=str(replay_port), HF_HUB_OFFLINE="1")
    err = (tmp_path / "err.txt").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--log-format", "json"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}", lambda: (tmp_path / "err.txt").read_text())
        resp = chat(f"http://127.0.0.1:{port}")
        assert resp.status_code == 200
        request_id = resp.headers["x-poolgate-request-id"]

        def logged() -> list[dict]:
            lines = (tmp_path / "err.txt").read_text().splitlines()
            return [row for row in map(json.loads, (ln for ln in lines if ln.startswith("{")))
                    if row.get("request_id") == request_id]

        from tests.conftest import wait_until

        wait_until(logged, 10, "the request's access line")
        row, = logged()
        assert row["pool"] == "auto" and row["status"] == 200 and row["backend"] in ("mixtral-8x7b", "gpt-4-1106")
        assert SECRET_PROMPT not in (tmp_path / "err.txt").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
