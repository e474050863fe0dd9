"""Every kind of bad request gets OpenAI error JSON with the right 4xx and names the parameter."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows


@pytest.fixture
def gw(fake_backends, gateway):
    backend, cs = fake_backends("cheap")
    pool = f"backends:\n{backend_yaml('cheap', cs.url)}\npools:\n  - name: auto\n    members: [cheap]\n"
    server = gateway(pool, max_body_bytes=10_000)
    server.backend = backend
    return server


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


MESSAGE = {"role": "user", "content": "x"}
#: Values that break what poolgate publishes for a field (gateway/api/schema.py), and the param the 400 names.
PUBLISHED_VIOLATIONS = [
    ("temperature", "hot", "temperature"), ("temperature", -0.1, "temperature"), ("temperature", 2.5, "temperature"),
    ("temperature", True, "temperature"), ("top_p", 1.5, "top_p"), ("top_p", "x", "top_p"),
    ("max_tokens", 0, "max_tokens"), ("max_tokens", "x", "max_tokens"), ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", True, "max_tokens"), ("max_tokens", 3.0, "max_tokens"), ("max_tokens", 1_000_001, "max_tokens"),
    ("max_completion_tokens", 0, "max_completion_tokens"),
    ("n", 0, "n"), ("n", "2", "n"), ("n", 129, "n"), ("presence_penalty", 2.5, "presence_penalty"),
    ("frequency_penalty", -3, "frequency_penalty"), ("frequency_penalty", [], "frequency_penalty"),
    ("logprobs", "yes", "logprobs"), ("top_logprobs", 21, "top_logprobs"), ("top_logprobs", -1, "top_logprobs"),
    ("stream", "yes", "stream"), ("stream_options", 5, "stream_options"),
    ("stream_options", {"include_usage": "x"}, "stream_options.include_usage"),
    ("tools", {}, "tools"), ("tools", [1], "tools[0]"), ("response_format", "json", "response_format"),
    ("messages", [{"role": "user", "content": ["text"]}], "messages[0].content[0]"),
    ("messages", [{**MESSAGE, "name": 5}], "messages[0].name"),
    ("messages", [{"role": "assistant", "content": None, "tool_calls": {}}, MESSAGE], "messages[0].tool_calls"),
    ("messages", [{"role": "tool", "content": "r", "tool_call_id": 1}, MESSAGE], "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("field", "value", "param"), PUBLISHED_VIOLATIONS,
                         ids=[f"{f}={v!r}" for f, v, _ in PUBLISHED_VIOLATIONS])
def test_published_constraints_are_enforced_before_the_backend(gw, field, value, param):
    body = {"model": "auto", "messages": [MESSAGE], field: value}
    err = assert_error(httpx.post(f"{gw.url}/v1/chat/completions", json=body), 400, param)
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_value") and f"'{param}'" in err["message"]
    assert gw.backend.requests == []


def test_nulls_bounds_and_unknown_fields_reach_the_backend_untouched(gw):
    """null is each nullable field's default (as in OpenAI's spec); bounds are inclusive; what poolgate does not
    publish is the backend's business."""
    extra = {"temperature": 2, "top_p": 0, "n": None, "stream": None, "max_tokens": None, "presence_penalty": -2,
             "frequency_penalty": None, "top_logprobs": 20, "stream_options": None, "seed": "any", "top_k": 4}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [MESSAGE], **extra})
    assert r.status_code == 200, r.text
    sent = gw.backend.requests[0]
    assert {k: sent[k] for k in extra} == extra


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
