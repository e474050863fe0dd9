"""Flag precedence in the routing service: request > API key defaults > pool preset, merged key by key."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.pools import parse_pool_file
from gateway.routing.service import RoutingService

POOL = """
backends:
  - {name: strong, base_url: "http://127.0.0.1:9/v1", model: s, input_price: 10, output_price: 30,
     size_b: 400, release_date: 2023-03-01}
  - {name: cheap, base_url: "http://127.0.0.1:9/v1", model: c, input_price: 0.1, output_price: 0.1,
     size_b: 70, release_date: 2024-01-01}
  - {name: small, base_url: "http://127.0.0.1:9/v1", model: m, input_price: 1, output_price: 2,
     size_b: 3, release_date: 2023-06-01}
pools:
  - {name: auto, members: [strong, cheap, small], router: strongest, objective: quality-first,
     flags: {size: 20}}
"""


@pytest.fixture
def routing() -> RoutingService:
    service = RoutingService(parse_pool_file(POOL))
    service.load()
    return service


async def top(routing: RoutingService, **kw) -> tuple[str, dict]:
    decision = await routing.route("auto", "hello", 5, **kw)
    assert decision.flags is not None
    return decision.ranking[0].name, decision.flags.as_dict()


async def test_pool_flags_apply_on_top_of_the_pool_preset(routing):
    backend, flags = await top(routing)
    assert backend == "small"
    assert flags["size"] == 20 and flags["quality"] == 1.0 and flags["cost"] == 0.0


async def test_key_defaults_override_the_pool_and_the_request_overrides_the_key(routing):
    backend, flags = await top(routing, key_flags={"size": 0, "cost": 1000})
    assert backend == "cheap" and flags["size"] == 0 and flags["cost"] == 1000
    backend, flags = await top(routing, key_flags={"size": 0, "cost": 1000}, request_flags={"cost": 0})
    assert backend == "strong" and flags["size"] == 0 and flags["cost"] == 0


async def test_a_bad_key_default_is_reported_like_a_bad_request_flag(routing):
    with pytest.raises(GatewayError) as info:
        await top(routing, key_flags={"cost": -1})
    assert info.value.status == 400 and info.value.param == "poolgate.flags.cost"


async def test_cost_and_quality_target_are_one_setting_a_layer_that_sets_one_clears_the_other(routing):
    _, flags = await top(routing, key_flags={"quality_target": 0.9})
    assert flags["quality_target"] == 0.9 and flags["cost"] is None
    _, flags = await top(routing, key_flags={"quality_target": 0.9}, request_flags={"cost": 5})
    assert flags["quality_target"] is None and flags["cost"] == 5
    _, flags = await top(routing, key_flags={"cost": 5}, request_flags={"quality_target": 0.95})
    assert flags["quality_target"] == 0.95 and flags["cost"] is None


@pytest.mark.parametrize(
    ("flags", "param"),
    [({"quality_target": 0}, "quality_target"), ({"quality_target": 1.5}, "quality_target"),
     ({"quality_target": "most"}, "quality_target"), ({"quality_target": 0.9, "cost": 3}, "cost"),
     ({"cost": float("inf")}, "cost"), ({"budget_quality_target": 0.5}, "budget_quality_target")],
)
async def test_a_bad_quality_target_or_lambda_is_a_400_naming_it(routing, flags, param):
    with pytest.raises(GatewayError) as info:
        await top(routing, request_flags=flags)
    assert info.value.status == 400 and info.value.param == f"poolgate.flags.{param}"
