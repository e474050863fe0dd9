"""Limiters: the same behaviour in-process and in Redis (real Redis on loopback), and Redis outage policies."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.limits import InProcessLimiter, KeyRevoked, Limiter, LimitExceeded, LimitSpec, LimitsUnavailable
from gateway.limits.base import period_window, pressured_quality_target
from tests.conftest import redis_url

REDIS_SKIP = "POOLGATE_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0): Redis limiter tests skipped"


def _redis_limiter(url: str, prefix: str, **kw: Any) -> Any:
    """A RedisLimiter with a 5 s timeout unless given: under a burst on a loaded machine the event loop itself can
    take longer than the production 0.5 s to see a connect complete, and rpm would fail open (not what is tested)."""
    from gateway.limits.redis_limiter import RedisLimiter

    return RedisLimiter(url, prefix=prefix, **{"timeout_s": 5.0, **kw})


async def _drop_prefix(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["in-process", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """``make(window_ms=...)`` -> a fresh limiter of the parametrized kind (Redis keys under a unique prefix)."""
    url = redis_url()
    if request.param == "redis" and url is None:
        pytest.skip(REDIS_SKIP)
    prefix = f"pgtest:{uuid.uuid4().hex[:10]}:"
    made: list[Limiter] = []

    def factory(window_ms: int = 60_000) -> Limiter:
        lim: Limiter = InProcessLimiter(window_ms=window_ms) if request.param == "in-process" else \
            _redis_limiter(str(url), prefix, window_ms=window_ms)
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        await lim.close()
    if url is not None and request.param == "redis":
        await _drop_prefix(url, prefix)


def rid() -> str:
    return uuid.uuid4().hex


async def test_rpm_admits_exactly_n_then_refuses_with_retry_after(make: Any) -> None:
    lim = make()
    spec = LimitSpec("k1", rpm=5)
    for _ in range(5):
        assert (await lim.reserve(spec, rid(), 10, 0)).held
    with pytest.raises(LimitExceeded) as info:
        await lim.reserve(spec, rid(), 10, 0)
    assert info.value.limit == "rpm"
    assert 50 < info.value.retry_after_s <= 60


async def test_the_window_slides_requests_are_admitted_again_once_old_ones_leave_it(make: Any) -> None:
    lim = make(window_ms=400)
    spec = LimitSpec("k1", rpm=2)
    await lim.reserve(spec, rid(), 1, 0)
    await lim.reserve(spec, rid(), 1, 0)
    with pytest.raises(LimitExceeded) as info:
        await lim.reserve(spec, rid(), 1, 0)
    assert info.value.retry_after_s <= 0.4
    await asyncio.sleep(0.45)
    assert (await lim.reserve(spec, rid(), 1, 0)).held
    assert (await lim.usage(spec)).requests_in_window == 1


async def test_tpm_holds_the_estimate_until_settled_with_real_tokens(make: Any) -> None:
    lim = make()
    spec = LimitSpec("k1", tpm=100)
    first = await lim.reserve(spec, rid(), 60, 0)
    with pytest.raises(LimitExceeded) as info:
        await lim.reserve(spec, rid(), 60, 0)
    assert info.value.limit == "tpm"
    await lim.settle(first, 20, 0)  # the request really used 20 tokens: 80 free now
    await lim.reserve(spec, rid(), 60, 0)
    assert (await lim.usage(spec)).tokens_in_window == 80


async def test_a_request_larger_than_the_tpm_is_refused_as_too_large(make: Any) -> None:
    lim = make()
    with pytest.raises(LimitExceeded) as info:
        await lim.reserve(LimitSpec("k1", tpm=100), rid(), 101, 0)
    assert info.value.limit == "tpm_request"


async def test_budget_admits_while_money_is_left_and_never_overspends_by_more_than_one_estimate(make: Any) -> None:
    lim = make()
    spec = LimitSpec("k1", budget_nano=1000, period="day")
    results = await asyncio.gather(*(lim.reserve(spec, rid(), 1, 300) for _ in range(20)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(admitted) == 4 and len(refused) == 16  # admitted at 0, 300, 600 and 900 nano-USD held
    assert all(r.limit == "budget" for r in refused)
    assert sorted(r.budget_left_nano for r in admitted) == [100, 400, 700, 1000]
    for r in admitted:
        await lim.settle(r, 1, 300)
    usage = await lim.usage(spec)
    assert usage.spent_nano == 1200 and usage.reserved_nano == 0
    assert usage.spent_nano <= 1000 + 300
    assert usage.period_id == period_window("day")[0]


async def test_settle_replaces_the_reserved_estimate_with_the_real_cost(make: Any) -> None:
    lim = make()
    spec = LimitSpec("k1", budget_nano=10_000, period="month")
    r = await lim.reserve(spec, rid(), 1, 3000)
    assert (await lim.usage(spec)).reserved_nano == 3000
    await lim.settle(r, 1, 1234)
    usage = await lim.usage(spec)
    assert (usage.spent_nano, usage.reserved_nano) == (1234, 0)
    assert (await lim.reserve(spec, rid(), 1, 1)).budget_left_fraction == pytest.approx(1 - 1234 / 10_000)


async def test_a_key_marked_revoked_is_refused_even_without_limits(make: Any) -> None:
    lim = make()
    spec = LimitSpec("k-revoked")
    assert not (await lim.reserve(spec, rid(), 1, 0)).held  # nothing to hold, but admitted
    await lim.mark_revoked("k-revoked")
    with pytest.raises(KeyRevoked):
        await lim.reserve(spec, rid(), 1, 0)


@pytest.mark.skipif(redis_url() is None, reason=REDIS_SKIP)
async def test_two_redis_limiters_sharing_redis_admit_exactly_rpm_under_concurrency() -> None:
    prefix = f"pgtest:{uuid.uuid4().hex[:10]}:"
    a, b = _redis_limiter(str(redis_url()), prefix), _redis_limiter(str(redis_url()), prefix)
    spec = LimitSpec("shared", rpm=37)
    try:
        calls = [(a if i % 2 else b).reserve(spec, rid(), 5, 0) for i in range(200)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 37
        assert all(isinstance(r, LimitExceeded) for r in results if isinstance(r, BaseException))
    finally:
        await a.close()
        await b.close()
        await _drop_prefix(str(redis_url()), prefix)


# -- Redis outages: a TCP proxy in front of the real Redis that the test can cut ---------------------------


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to Redis; ``cut()`` closes every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[CuttableProxy, Any, str]]:
    url = redis_url()
    if url is None:
        pytest.skip(REDIS_SKIP)
    from redis.asyncio import Redis

    pool = Redis.from_url(url).connection_pool
    host, port = pool.connection_kwargs.get("host", "127.0.0.1"), int(pool.connection_kwargs.get("port", 6379))
    db = pool.connection_kwargs.get("db", 0)
    proxy = CuttableProxy(host, port)
    await proxy.start()
    prefix = f"pgtest:{uuid.uuid4().hex[:10]}:"
    lim = _redis_limiter(f"redis://127.0.0.1:{proxy.port}/{db}", prefix,
                         policy={"rpm": "open", "tpm": "closed", "budget": "closed"}, retry_s=0.3, timeout_s=1.0)
    yield proxy, lim, prefix
    await lim.close()
    await proxy.cut() if proxy.server and proxy.server.is_serving() else None
    await _drop_prefix(url, prefix)


async def test_redis_unreachable_follows_the_policy_per_limit_and_recovers(
    proxied: tuple[CuttableProxy, Any, str],
) -> None:
    proxy, lim, _ = proxied
    rpm_key, budget_key = LimitSpec("rpm-only", rpm=1), LimitSpec("budgeted", budget_nano=10**9, period="day")
    wide = LimitSpec("wide", rpm=1000)
    assert all(r.held for r in await asyncio.gather(*(lim.reserve(wide, rid(), 1, 0) for _ in range(10))))
    held = await lim.reserve(budget_key, rid(), 1, 500)
    await lim.reserve(rpm_key, rid(), 1, 0)
    with pytest.raises(LimitExceeded):
        await lim.reserve(rpm_key, rid(), 1, 0)

    await proxy.cut()
    started = time.perf_counter()
    let_through = await lim.reserve(rpm_key, rid(), 1, 0)  # rpm fails open: admitted although over its rpm
    assert not let_through.held
    assert time.perf_counter() - started < 5.0  # connection refused or timeout_s (1 s), never a hang
    with pytest.raises(LimitsUnavailable) as info:  # budget fails closed
        await lim.reserve(budget_key, rid(), 1, 500)
    assert info.value.limits == ["budget"]
    await lim.settle(held, 1, 200)  # kept for replay while Redis is away

    await proxy.start(proxy.port)
    await asyncio.sleep(0.35)  # retry_s
    # the pool's connections all died with the cut; each is replaced on first use, none fails a request
    assert all(r.held for r in await asyncio.gather(*(lim.reserve(wide, rid(), 1, 0) for _ in range(10))))
    with pytest.raises(LimitExceeded):  # back on Redis: the window still holds the earlier request
        await lim.reserve(rpm_key, rid(), 1, 0)
    await lim.reserve(budget_key, rid(), 1, 500)
    deadline = time.monotonic() + 20.0
    while True:  # the pending settle is replayed in the background
        usage = await lim.usage(budget_key)
        if usage.spent_nano == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert (usage.spent_nano, usage.reserved_nano) == (200, 500)


async def test_a_dead_redis_port_with_every_limit_open_admits_everything() -> None:
    lim = _redis_limiter("redis://127.0.0.1:1/0", "pgtest:", policy={"rpm": "open", "tpm": "open", "budget": "open"})
    try:
        spec = LimitSpec("k", rpm=1, tpm=1, budget_nano=1)
        for _ in range(3):
            assert not (await lim.reserve(spec, rid(), 1000, 1000)).held
        assert not await lim.ping()
    finally:
        await lim.close()


# -- pure rules --------------------------------------------------------------------------------------------


def test_budget_pressure_lowers_the_quality_target_linearly_after_the_start_share() -> None:
    assert pressured_quality_target(left_fraction=0.8, start=0.5, floor=0.8) == 1.0  # 20% spent: untouched
    assert pressured_quality_target(left_fraction=0.5, start=0.5, floor=0.8) == 1.0
    assert pressured_quality_target(left_fraction=0.25, start=0.5, floor=0.8) == pytest.approx(0.9)
    assert pressured_quality_target(left_fraction=0.0, start=0.5, floor=0.8) == pytest.approx(0.8)


def test_budget_pressure_only_ever_raises_lambda() -> None:
    import numpy as np

    from routers.objective import NO_CALIBRATION, Flags, resolve_lambda

    cost = np.asarray([[0.001, 0.01]])
    explicit = Flags(cost=500.0)
    assert resolve_lambda(replace(explicit, budget_quality_target=0.9), NO_CALIBRATION, cost)[0] == 500.0
    assert resolve_lambda(replace(Flags(cost=0.0), budget_quality_target=0.9), NO_CALIBRATION, cost)[0] == \
        pytest.approx(0.1 / 0.01)


def test_budget_periods_follow_the_utc_calendar() -> None:
    now = datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    assert period_window("day", now) == ("d2025-12-31", 3600.0)
    assert period_window("month", now) == ("m2025-12", 3600.0)
    assert period_window("week", now) == ("w2026-01", 3600.0 + 4 * 86400)  # Wednesday of ISO week 2026-W01
    assert period_window("total", now) == ("total", None)
    with pytest.raises(ValueError, match="period"):
        period_window("year", now)

