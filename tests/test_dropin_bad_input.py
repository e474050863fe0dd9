"""Bad bodies to the drop-in endpoints: a 4xx in the endpoint's own error shape naming what is wrong, never a 500,
and the gateway keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import backend_yaml

BAD: list[tuple[str, Any]] = [
    ("/v1/messages", []),
    ("/v1/messages", {"model": "auto", "max_tokens": 5, "messages": [{"role": "wizard", "content": "x"}]}),
    ("/v1/messages", {"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [7, None]}]}),
    ("/v1/messages", {"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}]}]}),
    ("/v1/messages", {"model": "auto", "max_tokens": 5, "system": [{"type": "x"}],
                      "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/messages", {"model": "auto", "max_tokens": 5, "tool_choice": "auto",
                      "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/messages", {"model": "auto", "max_tokens": 5, "tools": [{"type": "web_search_20250305"}],
                      "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/responses", {"model": "auto"}),
    ("/v1/responses", {"model": "auto", "input": [{"type": "reasoning"}]}),
    ("/v1/responses", {"model": "auto", "input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
    ("/v1/responses", {"model": "auto", "input": "x", "text": {"format": {"type": "yaml"}}}),
    ("/v1/responses", {"model": "auto", "input": "x", "tool_choice": 3}),
    ("/v1/responses", {"model": "auto", "input": "x", "previous_response_id": {"id": 1}}),
    ("/v1/completions", {"model": "auto", "prompt": ["a", "b"]}),
    ("/v1/completions", {"model": "auto", "prompt": 5}),
    ("/v1/embeddings", {"model": "auto", "input": []}),
    ("/v1/embeddings", {"model": "auto", "input": [1, "x"]}),
    ("/v1/embeddings", {"input": "x"}),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gateway.app import create_app
    from gateway.pools import parse_pool_file
    from gateway.settings import Settings
    from gateway.store import upgrade
    from tests.servers import FakeBackend, ServerThread

    tmp = tmp_path_factory.mktemp("dropin-bad")
    fake = FakeBackend("cheap")
    with ServerThread(fake.app) as backend:
        pool = f"backends:\n{backend_yaml('cheap', backend.url)}\npools:\n  - name: auto\n    members: [cheap]\n"
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/gw.db", spool_dir=tmp / "spool")
        upgrade(settings.database_url)
        with ServerThread(create_app(settings, parse_pool_file(pool))) as server:
            yield server


@pytest.mark.parametrize(("path", "body"), BAD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD)])
def test_bad_bodies_get_a_400_in_the_endpoints_error_shape(gw, path, body):
    r = httpx.post(f"{gw.url}{path}", json=body, timeout=10)
    assert r.status_code == 400, r.text
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert set(r.json()["error"]) == {"type", "message"}
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["param"]
    ok = httpx.post(f"{gw.url}/v1/completions", json={"model": "auto", "prompt": "x"}, timeout=10)
    assert ok.status_code == 200
