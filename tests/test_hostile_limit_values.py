"""Figures one tenant sends cannot switch off the limits of every other key (real Redis and PostgreSQL on loopback).

``max_tokens`` of 1e17 once made Redis' reserve script fail ("value is not an integer or out of range"); the limiter
took that for an outage, so rpm/tpm failed open and budgets failed closed for every key of the replica. Now absurd
counts get a 400 naming the field, every figure reaches Redis clamped to what its Lua numbers hold exactly, and an
error of the script itself is that one request's error.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.limits import LimitCheckFailed, LimitExceeded, LimitSpec
from gateway.limits.base import MAX_NANO, MAX_REQUEST_TOKENS, to_nano
from tests.conftest import backend_yaml, drop_redis_prefix, redis_url, requires_postgres, requires_redis
from tests.dbutil import wait_rows

pytestmark = requires_redis

MASTER = "mk-hostile-limits"
ADMIN = {"authorization": f"Bearer {MASTER}"}

#: (field, value) pairs a client may send; each must get 400 naming the field. 10**30 reaches the gateway as a
#: float (orjson), 10**17 as an exact integer.
ABSURD = [("max_tokens", 10**17), ("max_tokens", 10**30), ("max_tokens", 1e17), ("max_tokens", 1.5),
          ("max_tokens", -5), ("max_tokens", 0), ("max_tokens", "100"), ("max_tokens", True),
          ("max_tokens", 1_000_001), ("max_completion_tokens", 10**17), ("n", 10**17), ("n", 0)]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"pgtest-hostile:{uuid.uuid4().hex[:10]}:"
    yield prefix
    drop_redis_prefix(str(redis_url()), prefix)


@requires_postgres
def test_absurd_token_counts_get_400_naming_the_field_and_another_keys_rpm_still_holds(
    fake_backends: Any, gateway: Any, pg_database: str, redis_prefix: str,
) -> None:
    _, backend = fake_backends("strong")
    pool = (f"backends:\n{backend_yaml('strong', backend.url, input_price=10.0, output_price=30.0, retries=0)}\n"
            "pools:\n  - name: premium\n    members: [strong]\n")
    # Redis is skipped for 30 s after a failure: if one request could make Redis look down, the victim's
    # rpm would fail open for the rest of the test
    gw = gateway(pool, database_url=pg_database, auth_enabled=True, master_key=MASTER, redis_url=redis_url(),
                 redis_key_prefix=redis_prefix, redis_retry_s=30.0, redis_timeout_s=5.0)

    def new_key(**limits: Any) -> tuple[str, str]:
        resp = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", **limits}, headers=ADMIN)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"]), str(resp.json()["secret"])

    (attacker_id, attacker), (victim_id, victim) = new_key(rpm=1000, budget_usd=5.0), new_key(rpm=5)

    def chat(secret: str, **extra: Any) -> httpx.Response:
        body = {"model": "premium", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 3, **extra}
        return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"})

    victim_statuses = []
    for field, value in ABSURD:
        resp = chat(attacker, **{field: value})
        assert resp.status_code == 400, (field, value, resp.text)
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", field, "invalid_value")
        assert field in error["message"]
        victim_statuses.append(chat(victim).status_code)
    assert victim_statuses == [200] * 5 + [429] * (len(ABSURD) - 5)
    assert chat(attacker, max_tokens=1_000_000).status_code == 200  # the bound itself is allowed
    limits = httpx.get(f"{gw.url}/admin/limits", headers=ADMIN).json()
    assert limits["available"] is True and limits["last_error"] is None
    # one row per request that reached routing: the victim's 5 answers and its 429s, the attacker's bound request
    # (a 400 from the request check comes before routing and leaves no row, like any malformed request)
    rows = wait_rows(pg_database, len(ABSURD) + 1)
    assert sorted(r["http_status"] for r in rows if r["key_id"] == victim_id) == victim_statuses
    assert [r["http_status"] for r in rows if r["key_id"] == attacker_id] == [200]


# -- the limiter on its own, against the real Redis ----------------------------------------------------------


@pytest.fixture
async def limiter(redis_prefix: str) -> AsyncIterator[Any]:
    from gateway.limits.redis_limiter import RedisLimiter

    lim = RedisLimiter(str(redis_url()), prefix=redis_prefix, retry_s=30.0, timeout_s=5.0,
                       policy={"rpm": "open", "tpm": "open", "budget": "closed"})
    yield lim
    await lim.close()


def rid() -> str:
    return uuid.uuid4().hex


async def _victim_is_limited(lim: Any) -> None:
    """A fresh rpm=2 key is admitted twice and then refused: Redis is in use, not failing open."""
    victim = LimitSpec(f"victim-{rid()}", rpm=2)
    assert (await lim.reserve(victim, rid(), 1, 0)).held and (await lim.reserve(victim, rid(), 1, 0)).held
    with pytest.raises(LimitExceeded):
        await lim.reserve(victim, rid(), 1, 0)
    assert lim.available


async def test_figures_too_large_for_redis_are_clamped_and_admitted_exactly(limiter: Any) -> None:
    spec = LimitSpec("big", rpm=5, budget_nano=10**12, period="day")
    held = await limiter.reserve(spec, rid(), 10**17, 10**30)
    assert held.held and (held.tokens, held.cost_nano) == (MAX_REQUEST_TOKENS, MAX_NANO)
    usage = await limiter.usage(spec)
    assert (usage.tokens_in_window, usage.reserved_nano) == (MAX_REQUEST_TOKENS, MAX_NANO)
    await limiter.settle(held, 10**18, 10**25)
    usage = await limiter.usage(spec)
    assert (usage.tokens_in_window, usage.spent_nano, usage.reserved_nano) == (MAX_REQUEST_TOKENS, MAX_NANO, 0)
    with pytest.raises(LimitExceeded) as info:  # over a tpm it is simply too large, as any big request
        await limiter.reserve(LimitSpec("big-tpm", tpm=1000), rid(), 10**17, 0)
    assert info.value.limit == "tpm_request"
    await _victim_is_limited(limiter)


async def test_a_script_error_on_one_keys_data_refuses_that_request_only(limiter: Any, redis_prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(str(redis_url()))
    try:
        await client.set(f"{redis_prefix}{{broken}}:win", "not a sorted set")  # WRONGTYPE inside reserve.lua
    finally:
        await client.aclose()
    with pytest.raises(LimitCheckFailed, match="WRONGTYPE"):
        await limiter.reserve(LimitSpec("broken", rpm=5), rid(), 1, 0)
    await _victim_is_limited(limiter)


async def test_a_settle_redis_refuses_is_dropped_without_calling_redis_down(limiter: Any, redis_prefix: str) -> None:
    from redis.asyncio import Redis

    held = await limiter.reserve(LimitSpec("corrupt", rpm=5), rid(), 5, 0)
    client = Redis.from_url(str(redis_url()))
    try:
        await client.set(f"{redis_prefix}{{corrupt}}:tok", "x")  # settle.lua's INCRBY fails on it
    finally:
        await client.aclose()
    await limiter.settle(held, 3, 0)
    assert limiter.available and not limiter._pending  # not kept for a replay that would fail forever
    await _victim_is_limited(limiter)


def test_usd_amounts_become_bounded_nano_usd() -> None:
    assert to_nano(0.25) == 250_000_000
    assert to_nano(1e308) == to_nano(float("inf")) == to_nano(float("nan")) == MAX_NANO
    assert to_nano(-1.0) == to_nano(float("-inf")) == 0
