"""Every kind of bad request gets OpenAI error JSON with the right 4xx and names the parameter."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows


@pytest.fixture
def gw(fake_backends, gateway):
    _, cs = fake_backends("cheap")
    pool = f"backends:\n{backend_yaml('cheap', cs.url)}\npools:\n  - name: auto\n    members: [cheap]\n"
    return gateway(pool, max_body_bytes=10_000)


def post(gw, content: bytes | str, ctype: str = "application/json") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", content=content, headers={"content-type": ctype})


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ('{"model": "auto", "messages": [', 400, None),
        ('{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        ('{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        ('{"model": "auto", "messages": []}', 400, "messages"),
        ('{"model": "auto", "messages": "hi"}', 400, "messages"),
        ('{"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
        ('{"model": "auto", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
        ('{"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
        ('[1, 2]', 400, "body"),
        ('{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        ('{"model": "auto", "messages": [{"role": "user", "content": "x"}], "poolgate": {"flags": {"speed": 1}}}',
         400, "poolgate.flags.speed"),
        ('{"model": "auto", "messages": [{"role": "user", "content": "x"}], "poolgate": {"flags": {"cost": -1}}}',
         400, "poolgate.flags.cost"),
    ],
)
def test_bad_body_gets_openai_error(gw, body, status, param):
    assert_error(post(gw, body), status, param)


def test_invalid_utf8_is_400(gw):
    assert_error(post(gw, b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}'), 400)


def test_body_over_limit_is_413(gw):
    big = '{"model": "auto", "messages": [{"role": "user", "content": "' + "x" * 20_000 + '"}]}'
    assert_error(post(gw, big), 413)


def test_wrong_content_type_is_415(gw):
    assert_error(post(gw, "model=auto", "application/x-www-form-urlencoded"), 415)


def test_malformed_flags_header_is_400(gw):
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "x"}]}, headers={"x-poolgate-flags": "{not json"})
    assert_error(r, 400, "X-Poolgate-Flags")


def test_unknown_path_and_method_are_openai_errors(gw):
    assert_error(httpx.get(f"{gw.url}/v1/nothing"), 404)
    assert_error(httpx.get(f"{gw.url}/v1/chat/completions"), 405)


def test_requests_that_reached_routing_have_exactly_one_row_each(gw):
    ok = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    for _ in range(3):
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=ok).status_code == 200
    assert httpx.post(f"{gw.url}/v1/chat/completions", json={**ok, "model": "nope"}).status_code == 404
    rows = wait_rows(gw.settings.database_url, 4)
    assert len(rows) == 4
    assert sorted(r["http_status"] for r in rows) == [200, 200, 200, 404]
