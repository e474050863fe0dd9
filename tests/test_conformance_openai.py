"""OpenAI spec conformance: poolgate checked against OpenAI's own OpenAPI document (a pinned subset, see
tests/conformance/README.md), over real HTTP to ``poolgate serve`` (the demo pool over the replay backend, auth on).

- schemathesis, stateless: positive and negative cases of every served operation, seeded and derandomized,
  each response put through every per-response check (plus our own on streamed chunks); the totals are printed
  (``-s``) and every failure must be explained by an entry of the allow-list (``tests/conformance/deviations.py``).
- jsonschema: real answers to a fixed set of requests (tools, response_format, stop, logprobs, system/developer,
  multi-turn; plain and streamed) validated against the spec's response schemas, and every error body against
  ``ErrorResponse``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis

from tests.conformance import deviations, harness, spec
from tests.procs import wait_until_healthy
from tests.servers import free_port

MASTER = "sk-conform-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {MASTER}"}
#: Cases per operation and generation mode (the whole suite stays within about a minute on two cores).
MAX_EXAMPLES = int(os.environ.get("POOLGATE_CONFORMANCE_EXAMPLES", "50"))
#: What the demo serves: the pool and its two backends.
DEMO_MODELS = ["auto", "mixtral-8x7b", "gpt-4-1106"]
SERVED = ["POST /chat/completions", "GET /models", "GET /models/{model}"]  # the last with its own constraint
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
           "How many clips did Natalia sell altogether in April and May?"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``poolgate serve`` with its embedded defaults (demo pool, replay backend, SQLite), auth on."""
    workdir = tmp_path_factory.mktemp("conform")
    port, replay_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_") or k.startswith("POOLGATE_TEST_")}
    env.update({"POOLGATE_REPLAY_PORT": str(replay_port), "POOLGATE_AUTH_ENABLED": "true",
                "POOLGATE_MASTER_KEY": MASTER, "POOLGATE_LOG_FLUSH_INTERVAL_S": "0.05"})
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=workdir,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url, lambda: (workdir / "serve.log").read_text())
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def constrain_to_demo(doc: dict[str, Any]) -> None:
    """The request's ``model`` drawn from what the demo serves (the spec's is any string or OpenAI's model ids)."""
    request = doc["components"]["schemas"]["CreateChatCompletionRequest"]["allOf"][1]
    request["properties"]["model"] = {"type": "string", "enum": DEMO_MODELS}


def constrain_model_ids(doc: dict[str, Any]) -> None:
    """GET /models/{model}'s id drawn from the demo's names too (only for that operation's run: a document edited
    anywhere else changes the cases generated for every operation)."""
    constrain_to_demo(doc)
    for param in doc["paths"]["/models/{model}"]["get"]["parameters"]:
        if param["name"] == "model":
            param["schema"] = {"type": "string", "enum": DEMO_MODELS}


def with_question(case: Any) -> Any:
    """A positive case ends with a user question in text, which the replay backend needs to answer at all
    (otherwise it answers 400, and most generated cases would never reach a 200 to check)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        last_user = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), None)
        if last_user is None or not isinstance(last_user.get("content"), str):
            body["messages"].append({"role": "user", "content": QUESTION})
    return case


def test_schemathesis_cases_of_every_served_operation_conform_or_are_allowed_deviations(demo):
    tally = harness.Tally()
    for mode, with_security in ((schemathesis.GenerationMode.POSITIVE, True),
                                (schemathesis.GenerationMode.NEGATIVE, False)):  # see READINGS
        ops = harness.operations(harness.load_schema(constrain_to_demo, with_security), SERVED[:2])
        ops += harness.operations(harness.load_schema(constrain_model_ids, with_security), SERVED[2:])
        assert sorted(op.label for op in ops) == sorted(SERVED)
        prepare = with_question if mode is schemathesis.GenerationMode.POSITIVE else None
        for op in ops:
            harness.run_operation(op, mode, f"{demo}/v1", AUTH, MAX_EXAMPLES, tally, deviations.allowed, prepare)
    print(f"\nOpenAI conformance (spec commit {spec.source_commit()[:7]}):\n{tally.summary()}")
    if tally.findings:
        print(tally.examples())
    assert tally.cases["POST /chat/completions positive"] >= min(MAX_EXAMPLES, 20)
    assert tally.cases["POST /chat/completions negative"] >= min(MAX_EXAMPLES, 20)
    assert tally.statuses["POST /chat/completions 200"] > 0  # some cases got answers to check
    assert tally.statuses["GET /models/{model} 200"] > 0
    assert not tally.failed, f"unexplained failures {dict(tally.failed)}:\n{tally.examples()}"


def user(text: str = QUESTION) -> dict[str, Any]:
    return {"role": "user", "content": text}


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
#: Requests whose real answers (plain and streamed) must be valid by the spec's response schemas.
REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [user()]},
    "system-and-developer": {"messages": [{"role": "system", "content": "Answer briefly."},
                                          {"role": "developer", "content": "Show the arithmetic."}, user()]},
    "multi-turn": {"messages": [user("What is 2 + 2?"), {"role": "assistant", "content": "4"}, user()]},
    "content-parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]},
    "tools": {"messages": [user()], "tools": [WEATHER_TOOL], "tool_choice": "auto", "parallel_tool_calls": False},
    "tool-result-turn": {"messages": [user("Weather in Oslo?"),
                                      {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                                      {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"}, user()],
                         "tools": [WEATHER_TOOL]},
    "response-format-json-object": {"messages": [user()], "response_format": {"type": "json_object"}},
    "response-format-json-schema": {"messages": [user()], "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                                     "required": ["n"], "additionalProperties": False}}}},
    "stop": {"messages": [user()], "stop": ["\n\n", "Answer:"]},
    "logprobs": {"messages": [user()], "logprobs": True, "top_logprobs": 2},
    "sampling": {"messages": [user()], "temperature": 0.2, "top_p": 0.9, "seed": 7, "presence_penalty": 0.5,
                 "frequency_penalty": -0.5, "max_completion_tokens": 400, "n": 1, "user": "conformance"},
    "length-cut": {"messages": [user()], "max_tokens": 5},
    "nulls-mean-default": {"messages": [user()], "temperature": None, "top_p": None, "n": None, "stream": None,
                           "max_tokens": None, "stop": None, "presence_penalty": None, "logprobs": None},
    "direct-backend": {"messages": [user()], "model": "mixtral-8x7b"},
}


def chat(demo: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{demo}/v1/chat/completions", json={"model": "auto", **body},
                      headers=AUTH if headers is None else headers, timeout=30)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_plain_answer_is_a_valid_create_chat_completion_response(demo, name):
    r = chat(demo, REQUESTS[name])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert spec.violations("CreateChatCompletionResponse", r.json()) == []
    if name == "length-cut":
        assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("include_usage", [True, False], ids=["with-usage", "without-usage"])
@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_streamed_chunks_are_valid_create_chat_completion_stream_responses(demo, name, include_usage):
    body = {**REQUESTS[name], "stream": True, "stream_options": {"include_usage": include_usage}}
    r = chat(demo, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert harness.stream_problems(r.content) == []
    chunks, _ = spec.sse_events(r.content)
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:  # one last chunk with the usage and no choices, as the spec describes
        assert usage_chunks == [chunks[-1]] and chunks[-1]["choices"] == []
    else:
        assert usage_chunks == []
    assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)


def test_model_list_and_every_model_are_valid(demo):
    r = httpx.get(f"{demo}/v1/models", headers=AUTH)
    assert r.status_code == 200
    assert spec.violations("ListModelsResponse", r.json()) == []
    assert {m["id"] for m in r.json()["data"]} == set(DEMO_MODELS)


BAD_REQUESTS: list[tuple[str, dict[str, Any] | bytes, dict[str, str] | None, int, str | None]] = [
    ("no-key", {"messages": [user()]}, {}, 401, None),
    ("wrong-key", {"messages": [user()]}, {"authorization": "Bearer sk-wrong"}, 401, None),
    ("unknown-model", {"messages": [user()], "model": "gpt-7"}, None, 404, "model"),
    ("not-json", b'{"model": "auto", "messages": [', None, 400, None),
    ("no-messages", {}, None, 400, "messages"),
    ("bad-role", {"messages": [{"role": "wizard", "content": "x"}]}, None, 400, "messages[0].role"),
    ("temperature-not-a-number", {"messages": [user()], "temperature": "hot"}, None, 400, "temperature"),
    ("include-usage-not-a-boolean", {"messages": [user()], "stream": True, "stream_options": {"include_usage": "x"}},
     None, 400, "stream_options.include_usage"),
    ("max-tokens-not-an-integer", {"messages": [user()], "max_tokens": "x"}, None, 400, "max_tokens"),
]


@pytest.mark.parametrize(("body", "headers", "status", "param"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_error_answers_are_valid_error_responses_naming_the_param(demo, body, headers, status, param):
    if isinstance(body, bytes):
        r = httpx.post(f"{demo}/v1/chat/completions", content=body,
                       headers={**AUTH, "content-type": "application/json"}, timeout=30)
    else:
        r = chat(demo, body, headers)
    assert r.status_code == status, r.text
    assert spec.violations("ErrorResponse", r.json()) == []
    assert r.json()["error"]["param"] == param


def test_backend_error_is_relayed_with_its_own_type_param_and_code(demo):
    """The replay backend refuses n=2 as invalid_request_error naming param n: the client gets exactly that, and
    the backend's name in a header (not an invented type, a dropped param and the status as the code)."""
    r = chat(demo, {"messages": [user()], "n": 2})
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "this replay backend returns exactly one choice (n=1)",
                                 "type": "invalid_request_error", "param": "n", "code": None}
    assert r.headers["x-poolgate-backend"] in DEMO_MODELS


def test_every_model_retrieves_as_a_valid_model_and_an_unknown_one_is_an_openai_404(demo):
    for model in DEMO_MODELS:
        r = httpx.get(f"{demo}/v1/models/{model}", headers=AUTH)
        assert r.status_code == 200, r.text
        assert spec.violations("Model", r.json()) == [] and r.json()["id"] == model
    r = httpx.get(f"{demo}/v1/models/gpt-9", headers=AUTH)
    assert r.status_code == 404
    assert spec.violations("ErrorResponse", r.json()) == [] and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["/v1/audio/speech", "/v1/images/generations", "/v1/batches"])
def test_unserved_operations_answer_an_openai_404_that_names_them(demo, path):
    r = httpx.post(f"{demo}{path}", json={}, headers=AUTH)
    assert r.status_code == 404
    assert spec.violations("ErrorResponse", r.json()) == []
    assert f"POST {path} is not supported" in r.json()["error"]["message"]
