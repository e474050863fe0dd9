"""User flags through the real openai client change the chosen backend the way the flags say.

Four fake backends with different price, size and release date; the pool's router is ``strongest`` with the
``quality-first`` preset, so with no flags the dearest backend wins and every change of choice below comes
from the flags alone (the shared objective: utility = quality - lambda * cost_usd - size * size_b
- recency * age_years - ..., each in its own unit). ``strongest`` is a policy (the top candidate 1.0, the others
at most 0.01), so a flag moves it only when its weight makes the attribute gap worth more than 0.99.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import backend_yaml
from tests.dbutil import wait_rows

# name -> (input price, output price, size in billions, release date, context window)
BACKENDS = {
    "strong": (10.0, 30.0, 400, "2023-03-01", 128000),  # dearest, biggest, oldest: the default choice
    "cheap": (0.1, 0.1, 70, "2024-01-01", 32000),
    "small": (1.0, 2.0, 3, "2023-06-01", 8000),
    "new": (3.0, 6.0, 100, "2025-01-01", 32000),
}
MESSAGES = [{"role": "user", "content": "What is 17 * 23?"}]


@pytest.fixture
def gw(fake_backends, gateway):
    blocks = []
    for name, (p_in, p_out, size, released, ctx) in BACKENDS.items():
        _, server = fake_backends(name)
        blocks.append(backend_yaml(name, server.url, input_price=p_in, output_price=p_out, size_b=size,
                                   release_date=released, context_window=ctx, retries=0))
    pool = "backends:\n" + "\n".join(blocks) + f"""
pools:
  - name: auto
    members: [{", ".join(BACKENDS)}]
    router: strongest
    objective: quality-first
  - name: frugal
    members: [{", ".join(BACKENDS)}]
    router: strongest
    objective: quality-first
    flags: {{cost: 1000}}
"""
    return gateway(pool)


@pytest.fixture
def client(gw):
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def chosen(client, model: str = "auto", **kw) -> tuple[str, dict]:
    """(x-poolgate-backend, parsed x-poolgate-flags) of one non-streaming request."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)
    answer = raw.parse().choices[0].message.content
    backend = raw.headers["x-poolgate-backend"]
    assert answer == f"answer from {backend}"  # the backend named in the header really answered
    return backend, json.loads(raw.headers["x-poolgate-flags"])


def test_without_flags_the_strongest_backend_is_chosen(client):
    assert chosen(client)[0] == "strong"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"cost": 1000}, "cheap"), ({"size": 0.01}, "small"), ({"recency": 1}, "new")],
)
def test_a_weight_in_extra_body_moves_the_choice_to_the_backend_it_favours(client, flags, expected):
    backend, echoed = chosen(client, extra_body={"poolgate": {"flags": flags}})
    assert backend == expected
    for key, value in flags.items():
        assert echoed[key] == value


def test_flags_in_the_x_poolgate_flags_header_apply(client):
    backend, echoed = chosen(client, extra_headers={"X-Poolgate-Flags": json.dumps({"size": 0.01})})
    assert backend == "small" and echoed["size"] == 0.01


def test_body_flags_override_header_flags_key_by_key(client):
    backend, echoed = chosen(
        client, extra_headers={"X-Poolgate-Flags": json.dumps({"cost": 1000, "size": 0.0001})},
        extra_body={"poolgate": {"flags": {"cost": 0, "recency": 1}}},
    )
    assert backend == "new"
    assert echoed["cost"] == 0 and echoed["recency"] == 1 and echoed["size"] == 0.0001


def test_request_flags_override_the_pool_preset(client):
    assert chosen(client, model="frugal")[0] == "cheap"
    backend, echoed = chosen(client, model="frugal", extra_body={"poolgate": {"flags": {"cost": 0}}})
    assert backend == "strong" and echoed["cost"] == 0


def test_a_constraint_filters_before_the_weights_decide(client):
    # only "strong" has a 128k window: the cost weight cannot pick "cheap" any more
    flags = {"cost": 1000, "min_context": 100000}
    assert chosen(client, extra_body={"poolgate": {"flags": flags}})[0] == "strong"
    # under a budget that rules out "strong", quality-first takes the next strongest
    budget = {"max_cost_usd": 0.005}
    assert chosen(client, extra_body={"poolgate": {"flags": budget}})[0] == "new"


@pytest.mark.parametrize(
    ("flags", "constraint"),
    [
        ({"max_cost_usd": 0}, "max_cost_usd"),
        ({"min_context": 10**9}, "min_context"),
        ({"capabilities": ["vision"]}, "capabilities"),
    ],
)
def test_a_constraint_no_backend_satisfies_is_a_400_naming_it(client, gw, flags, constraint):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES, extra_body={"poolgate": {"flags": flags}})
    err = info.value.body
    assert info.value.status_code == 400
    assert err["param"] == f"poolgate.flags.{constraint}"
    assert err["code"] == "unsatisfiable"
    assert constraint in err["message"]


@pytest.mark.parametrize(
    ("flags", "param"),
    [({"cost": "high"}, "cost"), ({"size": True}, "size"), ({"recency": -0.5}, "recency"),
     ({"speed": 1}, "speed"), ({"min_context": 1.5}, "min_context"), ({"capabilities": "vision"}, "capabilities")],
)
def test_a_bad_flag_is_a_400_naming_the_flag(client, flags, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES, extra_body={"poolgate": {"flags": flags}})
    assert info.value.body["param"] == f"poolgate.flags.{param}"
    assert param in info.value.body["message"]


def test_a_bad_flag_in_the_header_names_the_flag(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES,
                                       extra_headers={"X-Poolgate-Flags": json.dumps({"latency": "fast"})})
    assert info.value.body["param"] == "poolgate.flags.latency"


def test_the_flags_used_are_logged_with_the_decision(client, gw):
    backend, _ = chosen(client, extra_body={"poolgate": {"flags": {"cost": 1000, "verbosity": 0.5}}})
    rows = wait_rows(gw.settings.database_url, 1)
    assert len(rows) == 1
    row = rows[0]
    assert row["backend"] == backend == "cheap"
    assert row["flags"]["cost"] == 1000 and row["flags"]["verbosity"] == 0.5 and row["flags"]["quality"] == 1.0
    by_name = {c["backend"]: c for c in row["candidates"]}
    assert set(by_name) == set(BACKENDS)
    assert max(by_name.values(), key=lambda c: c["utility"])["backend"] == "cheap"


def test_streaming_requests_echo_the_flags_too(client):
    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=MESSAGES, stream=True, extra_body={"poolgate": {"flags": {"recency": 1}}},
    ) as resp:
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        assert resp.headers["x-poolgate-backend"] == "new"
        assert json.loads(resp.headers["x-poolgate-flags"])["recency"] == 1
    assert text == "answer from new"


def test_quality_target_is_echoed_and_a_bad_one_is_a_400_naming_it(client):
    _, echoed = chosen(client, extra_body={"poolgate": {"flags": {"quality_target": 0.9}}})
    assert echoed["quality_target"] == 0.9 and echoed["cost"] is None
    for bad in (0, 1.5, "most"):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="auto", messages=MESSAGES,
                                           extra_body={"poolgate": {"flags": {"quality_target": bad}}})
        assert info.value.body["param"] == "poolgate.flags.quality_target"
        assert "quality_target" in info.value.body["message"]
