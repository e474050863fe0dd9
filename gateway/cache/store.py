"""Where cache entries, semantic vectors and sessions live: in process (bounded LRU with TTL) or in Redis.

:class:`MemoryKV` bounds its entries by count and by bytes and drops the least recently used first; an expired entry
is never returned. Its vector lists (for semantic lookup) hold at most ``max_vectors`` vectors in all, the oldest
dropped first, and each list at most ``max_scan``.

:class:`RedisKV` is shared by every replica. An entry is a string with a TTL; the entries of one tenant and pool are
indexed in a sorted set by insertion time, trimmed to ``max_entries`` on insert (the oldest deleted); a vector list
is a Redis list trimmed to ``max_scan`` with the TTL of its newest entry. Redis is never allowed to fail a request:
an error (refused, timed out, ...) is a miss or a skipped write, logged, and Redis is not tried again for
``retry_s`` seconds, so an outage costs one timeout, not one per request.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.asyncio import BlockingConnectionPool, Redis

log = logging.getLogger("poolgate.cache")

_EXPIRY = struct.Struct("<d")


@dataclass(frozen=True)
class Vector:
    """One semantic entry: the embedding of its last user message and the exact key of its answer."""

    key: str
    vector: np.ndarray
    expires_at: float  # wall clock (time.time), comparable across replicas

    def pack(self) -> bytes:
        return self.key.encode() + _EXPIRY.pack(self.expires_at) + self.vector.astype(np.float32).tobytes()

    @classmethod
    def unpack(cls, raw: bytes) -> Vector | None:
        if len(raw) < 64 + _EXPIRY.size:
            return None
        key, (expires,) = raw[:64].decode(errors="replace"), _EXPIRY.unpack_from(raw, 64)
        return cls(key, np.frombuffer(raw[64 + _EXPIRY.size:], dtype=np.float32), expires)


class MemoryKV:
    """In-process store; see the module docstring. ``clock`` is wall time in seconds (tests move it)."""

    def __init__(self, max_entries: int, max_bytes: int, max_vectors: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_entries, self.max_bytes, self.max_vectors = max_entries, max_bytes, max_vectors
        self.clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lists: OrderedDict[str, deque[Vector]] = OrderedDict()
        self._vectors = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    async def put(self, key: str, value: bytes, ttl_s: float, index: str | None = None, max_entries: int = 0) -> None:
        """Keep ``value`` for ``ttl_s`` seconds (``index``/``max_entries``: Redis' per-tenant bound; in process the
        store's own bounds apply to every entry alike)."""
        if len(value) > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (value, self.clock() + ttl_s)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= len(found[0])

    async def push_vector(self, list_key: str, item: Vector, ttl_s: float, max_scan: int) -> None:
        vectors = self._lists.pop(list_key, None)
        if vectors is None:
            vectors = deque()
        self._lists[list_key] = vectors  # most recently pushed list last
        vectors.appendleft(item)
        self._vectors += 1
        while len(vectors) > max_scan:
            vectors.pop()
            self._vectors -= 1
        while self._vectors > self.max_vectors and self._lists:
            oldest_key, oldest = next(iter(self._lists.items()))
            oldest.pop()
            self._vectors -= 1
            if not oldest:
                del self._lists[oldest_key]

    async def vectors(self, list_key: str, max_scan: int) -> list[Vector]:
        now = self.clock()
        return [v for v in list(self._lists.get(list_key, ()))[:max_scan] if v.expires_at > now]


class RedisKV:
    """Redis-backed store at ``url`` (keys under ``prefix``); see the module docstring."""

    def __init__(self, url: str, *, prefix: str = "poolgate:", timeout_s: float = 0.5, retry_s: float = 1.0,
                 max_connections: int = 32, clock: Callable[[], float] = time.time) -> None:
        pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=max(1.0, 4 * timeout_s),
                                               socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.client: Redis = Redis(connection_pool=pool)
        self.prefix = prefix
        self.retry_s = retry_s
        self.clock = clock
        self._down_until = 0.0

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_s
        log.warning("cache store (Redis) failed on %s, skipped for %.1fs: %s: %s", what, self.retry_s,
                    type(exc).__name__, exc)

    async def get(self, key: str) -> bytes | None:
        if not self._usable():
            return None
        try:
            value = await self.client.get(self._k(key))
        except Exception as exc:  # any Redis or socket failure is a miss, never the request's error
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float, index: str | None = None, max_entries: int = 0) -> None:
        """Keep ``value`` for ``ttl_s``; with ``index``, also list it there and keep that index to ``max_entries``
        (the oldest entries deleted)."""
        if not self._usable():
            return
        ttl_ms, now = max(1, int(ttl_s * 1000)), self.clock()
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._k(key), value, px=ttl_ms)
                if index is not None:
                    idx = self._k(index)
                    pipe.zadd(idx, {key: now})
                    pipe.zremrangebyscore(idx, "-inf", now - ttl_s)  # entries expired by now
                    pipe.pexpire(idx, ttl_ms)
                    pipe.zcard(idx)
                results = await pipe.execute()
            if index is not None and max_entries and int(results[-1]) > max_entries:
                extra = await self.client.zpopmin(self._k(index), int(results[-1]) - max_entries)
                popped: list[Any] = list(extra or [])  # (member, score) pairs
                members = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in popped]
                if members:
                    await self.client.delete(*(self._k(m) for m in members))
        except Exception as exc:  # a write that does not happen is a later miss, never the request's error
            self._failed("put", exc)

    async def delete(self, key: str) -> None:
        if not self._usable():
            return
        try:
            await self.client.delete(self._k(key))
        except Exception as exc:
            self._failed("delete", exc)

    async def push_vector(self, list_key: str, item: Vector, ttl_s: float, max_scan: int) -> None:
        if not self._usable():
            return
        k = self._k(list_key)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(k, item.pack())
                pipe.ltrim(k, 0, max_scan - 1)
                pipe.pexpire(k, max(1, int(ttl_s * 1000)))
                await pipe.execute()
        except Exception as exc:
            self._failed("push_vector", exc)

    async def vectors(self, list_key: str, max_scan: int) -> list[Vector]:
        if not self._usable():
            return []
        try:
            raw = await self.client.lrange(self._k(list_key), 0, max_scan - 1)
        except Exception as exc:
            self._failed("vectors", exc)
            return []
        now = self.clock()
        items = (Vector.unpack(r) for r in raw if isinstance(r, bytes))
        return [v for v in items if v is not None and v.expires_at > now]

    async def close(self) -> None:
        await self.client.aclose()
