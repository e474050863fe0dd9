"""Property-based hostile input: schemathesis against poolgate's own OpenAPI document, and hypothesis on chat
payloads, over real HTTP to ``poolgate serve`` (in a process, PostgreSQL log store, auth on).

Every generated request, valid or not, must get a non-5xx answer; every error must be OpenAI error JSON;
every chat request answered 200 must have its log row. The number of requests tried is printed (-s) and
asserted to be non-trivial, so a run that silently generated nothing fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from sqlalchemy import make_url

from tests.conftest import _admin, backend_yaml, postgres_url
from tests.dbutil import fetch_rows
from tests.procs import GatewayProcess
from tests.servers import FakeBackend, ServerThread

MASTER = "sk-master-" + uuid.uuid4().hex
#: Examples per operation and generation mode; ~18 operations x 2 modes x 20 = ~720 requests, well under a minute.
EXAMPLES_PER_OPERATION = int(os.environ.get("POOLGATE_FUZZ_EXAMPLES", "20"))
CHAT_EXAMPLES = int(os.environ.get("POOLGATE_FUZZ_CHAT_EXAMPLES", "300"))


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings for HTTP fuzzing: no deadline (the network), fixed seed, no example database."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    from gateway.store import upgrade

    base = postgres_url()
    if base is None:
        pytest.skip("POOLGATE_TEST_POSTGRES_URL is not set (no PostgreSQL to test against)")
    name = f"poolgate_fuzz_{uuid.uuid4().hex[:12]}"
    _admin(base, f'CREATE DATABASE "{name}"')
    db = make_url(base).set(database=name).render_as_string(hide_password=False)
    workdir = tmp_path_factory.mktemp("fuzz")
    try:
        upgrade(db)
        with ServerThread(FakeBackend("cheap").app) as cheap, ServerThread(FakeBackend("strong").app) as strong:
            pool_file = workdir / "pool.yaml"
            backends = f"{backend_yaml('cheap', cheap.url)}\n{backend_yaml('strong', strong.url)}"
            pool_file.write_text(f"backends:\n{backends}\npools:\n  - name: auto\n    members: [cheap, strong]\n")
            with GatewayProcess(pool_file, workdir, database_url=db, auth_enabled=True, master_key=MASTER,
                                store_prompts=True, max_body_bytes=200_000) as proc:
                proc.db = db  # type: ignore[attr-defined]
                yield proc
    finally:
        _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_response(status: int, ctype: str | list[str], body: bytes, what: str) -> None:
    """No 5xx; JSON errors in OpenAI's shape (Anthropic's on /v1/messages, whose clients parse that).
    (schemathesis gives header values as lists.)"""
    ctype = (ctype[0] if ctype else "") if isinstance(ctype, list) else ctype
    assert status < 500, f"{what} -> {status}: {body[:300]!r}"
    if status >= 400 and ctype.startswith("application/json"):
        answer = orjson.loads(body)
        words = what.split(" ")  # "METHOD /path ..." for schemathesis cases
        if len(words) > 1 and words[1].startswith("/v1/messages"):
            assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, (what, answer)
            return
        assert set(answer["error"]) == {"message", "type", "param", "code"}, (what, answer)


def fuzz_operation(gw: GatewayProcess, operation: Any, mode: Any, tried: Counter[str]) -> None:
    """Send ``EXAMPLES_PER_OPERATION`` schemathesis cases of one operation and mode with the master key."""
    session = requests.Session()
    label = f"{operation.label} {mode.value}"

    @fuzz(EXAMPLES_PER_OPERATION)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        headers = {**(case.headers or {}), "authorization": f"Bearer {MASTER}"}
        try:
            response = case.call(base_url=gw.url, session=session, headers=headers, timeout=30)
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
            tried["unsendable"] += 1  # the HTTP client itself refuses such a request
            return
        tried[label] += 1
        check_response(response.status_code, response.headers.get("content-type", ""), response.content,
                       f"{case.method} {case.formatted_path}")

    with contextlib.suppress(Unsatisfiable):  # e.g. no negative case exists for an operation without parameters
        run()


def test_schemathesis_finds_no_server_error_in_any_operation(gw):
    """Positive and negative cases for every operation of /openapi.json, sent with the master key."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    tried: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz_operation(gw, operation, mode, tried)
    total = sum(v for k, v in tried.items() if k != "unsendable")
    print(f"schemathesis: {total} requests over {len(operations)} operations ({tried['unsendable']} unsendable)")
    assert total >= len(operations) * 2 * min(EXAMPLES_PER_OPERATION, 5)
    assert gw.alive()


def with_nul(value: Any) -> Any:
    """``value`` with a NUL character appended to every string in it (PostgreSQL cannot store or compare NUL)."""
    if isinstance(value, str):
        return value + "\x00"
    if isinstance(value, dict):
        return {k: with_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_nul(v) for v in value]
    return value


def test_nul_characters_in_any_parameter_or_body_string_are_a_4xx(gw):
    """Positive schemathesis cases with a NUL put into every path/query parameter and body string: these once
    reached PostgreSQL from the admin and feedback routes and came back as 500s."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    tried = 0
    for operation in [r.ok() for r in schema.get_all_operations()]:

        def poison(case: Any) -> Any:
            case.path_parameters = with_nul(case.path_parameters)
            case.query = with_nul(case.query)
            if isinstance(case.body, dict | list | str):
                case.body = with_nul(case.body)
            return case

        @fuzz(8)
        @given(case=operation.as_strategy().map(poison))
        def run(case: Any) -> None:
            nonlocal tried
            headers = {**(case.headers or {}), "authorization": f"Bearer {MASTER}"}
            response = case.call(base_url=gw.url, headers=headers, timeout=30)
            tried += 1
            check_response(response.status_code, response.headers.get("content-type", ""), response.content,
                           f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}")

        run()
    print(f"NUL injection: {tried} requests, no 5xx")
    assert tried >= 40


def refused_without_master(gw: GatewayProcess, operation: Any, client_key: str) -> int:
    """Send 10 positive cases of one admin operation with anything but the master key; returns how many."""
    tried = 0

    @fuzz(10)
    @given(case=operation.as_strategy(), auth=st.sampled_from([None, "Bearer wrong", f"Bearer {client_key}",
                                                              f"Bearer {MASTER}x", f"Basic {MASTER}"]))
    def run(case: Any, auth: str | None) -> None:
        nonlocal tried
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if auth is not None:
            headers["authorization"] = auth
        response = case.call(base_url=gw.url, headers=headers, timeout=30)
        tried += 1
        assert response.status_code in (401, 403), (operation.label, auth, response.status_code)
        assert MASTER not in response.text and client_key not in response.text

    run()
    return tried


def test_no_admin_operation_answers_without_the_master_key(gw):
    """Schemathesis positive cases for every /admin operation: with no key, a wrong key or a client key."""
    import schemathesis

    client_key = httpx.post(f"{gw.url}/admin/keys", json={"name": "fuzz-client"},
                            headers={"authorization": f"Bearer {MASTER}"}).json()["secret"]
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    admin_ops = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/admin")]
    assert len(admin_ops) >= 8
    tried = sum(refused_without_master(gw, operation, client_key) for operation in admin_ops)
    print(f"admin without master key: {tried} requests over {len(admin_ops)} operations, all 401/403")
    assert tried >= len(admin_ops) * 5


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_value = st.recursive(
    json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4), max_leaves=20
)


def mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] = json_value) -> st.SearchStrategy[Any]:
    """Mostly ``valid`` (about 7 draws in 8), else ``junk``: enough requests get through to exercise routing,
    dispatch, streaming and logging, and enough do not to exercise every error path. (Junk is the *last*
    branch, so shrinking moves toward valid input and a failure is reported with the fewest junk parts.)"""
    return st.integers(0, 7).flatmap(lambda i: junk if i == 7 else valid)


roles = mostly(st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
               st.sampled_from(["function", "wizard", "", "USER"]) | json_value)
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": st.text()}),
                 max_size=3)
message = mostly(st.fixed_dictionaries({"role": roles, "content": mostly(st.text(), parts | json_value)},
                                       optional={"name": json_value, "tool_call_id": json_value}))
flag_names = st.sampled_from(["cost", "latency", "size", "recency", "verbosity", "quality", "max_cost_usd",
                              "min_context", "capabilities", "nonsense"])
flags = st.dictionaries(flag_names, mostly(st.floats(min_value=0, max_value=10), json_value), max_size=3)
chat_body = st.fixed_dictionaries(
    {"model": mostly(st.sampled_from(["auto", "cheap", "strong"]),
                     st.sampled_from(["", "http://127.0.0.1:1/v1", "../auto", "auto\x00"]) | st.text()),
     "messages": mostly(st.lists(message, min_size=1, max_size=3))},
    optional={"stream": mostly(st.booleans()), "stream_options": mostly(st.fixed_dictionaries(
                  {}, optional={"include_usage": st.booleans()})),
              "poolgate": mostly(st.fixed_dictionaries({}, optional={"flags": mostly(flags),
                                                                     "router": mostly(st.just("cheapest"))})),
              "max_tokens": json_value, "temperature": json_value, "tools": json_value, "response_format": json_value,
              "n": json_value, "user": json_value},
)


def test_hypothesis_chat_payloads_never_5xx_and_every_success_is_logged(gw):
    tried: Counter[int] = Counter()
    served: list[str] = []
    client = httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {MASTER}"})

    @fuzz(CHAT_EXAMPLES)
    @given(body=chat_body, header_flags=st.none() | st.text(max_size=50))
    def run(body: dict[str, Any], header_flags: str | None) -> None:
        headers = {"content-type": "application/json"}
        if header_flags is not None and header_flags.isascii() and header_flags.isprintable():
            headers["x-poolgate-flags"] = header_flags
        raw = json.dumps(body, allow_nan=False).encode()  # json, not orjson: big integers too
        r = client.post("/v1/chat/completions", content=raw, headers=headers)
        tried[r.status_code] += 1
        check_response(r.status_code, r.headers.get("content-type", ""), r.content, f"chat {body!r:.300}")
        if r.status_code == 200:
            served.append(r.headers["x-poolgate-request-id"])
            if r.headers["content-type"].startswith("text/event-stream"):
                assert r.text.rstrip().endswith("data: [DONE]")

    run()
    print(f"hypothesis chat payloads: {sum(tried.values())} requests, statuses {dict(sorted(tried.items()))}")
    assert sum(tried.values()) >= min(CHAT_EXAMPLES, 100) and tried[200] > 0 and tried[400] > 0
    deadline = time.monotonic() + 30  # rows are written asynchronously; 404 rows count in the table too
    while not set(served) <= (logged := {row["id"] for row in fetch_rows(gw.db)}):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{len(set(served) - logged)} served requests have no row"
        time.sleep(0.1)
