"""The in-process cache store's bounds: entries, bytes, TTL, least recently used first, and the vector lists."""

from __future__ import annotations

import uuid

import numpy as np

from gateway.cache.store import MemoryKV, RedisKV, Vector
from tests.conftest import drop_redis_prefix, redis_url, requires_redis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_entries_are_bounded_by_count_and_bytes_least_recently_used_first():
    kv = MemoryKV(max_entries=3, max_bytes=100)
    for k in "abc":
        await kv.put(k, b"x" * 10, 60)
    assert await kv.get("a") == b"x" * 10  # a is now the most recently used
    await kv.put("d", b"x" * 10, 60)
    assert await kv.get("b") is None and len(kv) == 3  # b was the least recently used
    await kv.put("big", b"y" * 80, 60)  # 30 + 80 bytes > 100: the oldest go until it fits
    assert kv.size_bytes <= 100 and await kv.get("big") == b"y" * 80
    await kv.put("huge", b"z" * 101, 60)  # larger than the whole store: never kept
    assert await kv.get("huge") is None and await kv.get("big") is not None


async def test_an_expired_entry_is_never_returned():
    clock = Clock()
    kv = MemoryKV(10, 1000, clock=clock)
    await kv.put("k", b"v", 5)
    clock.now += 4.9
    assert await kv.get("k") == b"v"
    clock.now += 0.2
    assert await kv.get("k") is None and len(kv) == 0 and kv.size_bytes == 0


async def test_vector_lists_are_bounded_per_list_and_in_all_and_drop_expired_vectors():
    clock = Clock()
    kv = MemoryKV(10, 1000, max_vectors=4, clock=clock)

    def vec(i: int, ttl: float = 60) -> Vector:
        return Vector(f"{i:064d}", np.full(3, i, dtype=np.float32), clock.now + ttl)

    for i in range(3):
        await kv.push_vector("ctx-a", vec(i), 60, max_scan=2)
    assert [v.key for v in await kv.vectors("ctx-a", 10)] == [f"{2:064d}", f"{1:064d}"]  # newest first, 2 kept
    for i in range(3, 6):
        await kv.push_vector("ctx-b", vec(i), 60, max_scan=10)
    # 2 + 3 = 5 > 4 in all: the oldest list loses its oldest vector
    assert len(await kv.vectors("ctx-a", 10)) == 1 and len(await kv.vectors("ctx-b", 10)) == 3
    await kv.push_vector("ctx-c", vec(9, ttl=1), 60, max_scan=10)
    clock.now += 2
    assert await kv.vectors("ctx-c", 10) == []


@requires_redis
async def test_redis_entries_of_one_tenant_and_pool_are_trimmed_to_max_entries_oldest_first():
    url, prefix = redis_url(), f"pgtest-kv-{uuid.uuid4().hex[:8]}:"
    assert url is not None
    clock = Clock()
    kv = RedisKV(url, prefix=prefix, clock=clock)
    try:
        for i in range(5):
            clock.now += 1  # insertion order is the index's score
            await kv.put(f"e{i}", b"v%d" % i, 60, index="idx", max_entries=3)
        assert [await kv.get(f"e{i}") for i in range(5)] == [None, None, b"v2", b"v3", b"v4"]
        item = Vector("k" * 64, np.arange(3, dtype=np.float32), clock.now + 60)
        for _ in range(4):
            await kv.push_vector("vec", item, 60, max_scan=2)
        found = await kv.vectors("vec", 10)
        assert len(found) == 2 and found[0].key == "k" * 64 and found[0].vector.tolist() == [0.0, 1.0, 2.0]
    finally:
        await kv.close()
        drop_redis_prefix(url, prefix)
