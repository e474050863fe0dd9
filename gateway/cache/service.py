"""The response cache: exact and semantic lookup before routing, and keeping successful answers after them.

A pool caches only when its pool file says ``cache:`` (``gateway.cache.config``). Per request,
:meth:`ResponseCache.plan` decides whether the cache is read and written:

- not at all (``bypass``) when the body says ``poolgate: {cache: false}``, the ``Cache-Control`` header says
  ``no-store``, or the request samples (``temperature`` unset or above 0) and neither the pool (``sampled: true``)
  nor the request (``poolgate: {cache: true}``) says its answer may be reused;
- written but not read (``bypass``) on ``Cache-Control: no-cache`` (the fresh answer replaces the old one);
- else read, exact key first (``gateway.cache.keys.exact_key``), then semantic when the pool has ``semantic:``
  (for every request, or with ``requests: marked`` only for those marked ``poolgate: {cache: true}``).

Semantic lookup embeds the last user message with the pool router's own encoder (``Embedders`` caches the
``minilm`` embedding, so the router reuses it on a miss) and compares it, by cosine, with the most recent
``max_scan`` entries of the same tenant, pool and conversation context (``context_key``: everything but that
message's text). Only answers that finished ``ok`` with HTTP 200 are kept, with the backend that gave them and
what they cost: a hit is logged with ``cost_usd`` 0 and ``cache_saved_usd`` that cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter

from gateway.cache.config import CacheConfig
from gateway.cache.keys import context_key, exact_key
from gateway.cache.store import MemoryKV, RedisKV, Vector
from gateway.pools import PoolFile
from gateway.record import RequestRecord

log = logging.getLogger("poolgate.cache")

Embed = Callable[[str, str], Awaitable[np.ndarray]]
Status = Literal["miss", "bypass", "hit-exact", "hit-semantic"]


@dataclass(frozen=True)
class CacheEntry:
    """A kept answer: the chat completion, who answered it and what it cost then."""

    completion: dict[str, Any]
    backend: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int

    def pack(self) -> bytes:
        return orjson.dumps({"completion": self.completion, "backend": self.backend, "cost_usd": self.cost_usd,
                             "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens})

    @classmethod
    def unpack(cls, raw: bytes) -> CacheEntry | None:
        try:
            data = orjson.loads(raw)
            return cls(dict(data["completion"]), data["backend"], float(data["cost_usd"]),
                       int(data["prompt_tokens"]), int(data["completion_tokens"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):  # a foreign or older value: a miss
            return None


@dataclass
class CachePlan:
    """One request's cache decision and, after :meth:`ResponseCache.lookup`, its result."""

    pool: str
    config: CacheConfig
    scope: str
    exact_key: str
    read: bool
    write: bool
    semantic: bool
    text: str = ""
    encoder: str | None = None
    context_key: str | None = None
    vector: np.ndarray | None = field(default=None, repr=False)
    status: Status = "bypass"
    hit: CacheEntry | None = None
    similarity: float | None = None


def _entry(key: str) -> str:
    return f"cache:x:{key}"


def _vectors(context: str) -> str:
    return f"cache:v:{context}"


def _cache_control(value: str | None) -> set[str]:
    return {d.strip().split("=")[0].lower() for d in (value or "").split(",") if d.strip()}


def samples(payload: Mapping[str, Any]) -> bool:
    """Whether the request samples: ``temperature`` unset (every provider's default is above 0) or above 0."""
    temperature = payload.get("temperature")
    return not (isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0)


class ResponseCache:
    """Built once per app (``gateway.services``). ``encoder_of(pool)`` names the encoder the pool's router embeds
    with (None when it embeds nothing); ``redis`` is shared by every replica when the gateway has Redis."""

    def __init__(self, pool_file: PoolFile, embed: Embed, encoder_of: Callable[[str], str | None],
                 registry: CollectorRegistry, redis: RedisKV | None = None) -> None:
        self.configs = {p.name: p.cache for p in pool_file.pools if p.cache is not None}
        self.embed = embed
        self.encoder_of = encoder_of
        self.redis = redis
        self.memory = {name: MemoryKV(c.max_entries, c.max_bytes, c.max_entries) for name, c in self.configs.items()}
        self.results = Counter("poolgate_cache_requests", "requests to pools with a response cache, by result "
                               "(hit-exact, hit-semantic, miss, bypass)", ["pool", "result"], registry=registry)
        self.saved = Counter("poolgate_cache_saved_usd", "USD the cache's hits saved (the cost of the answers they "
                             "replayed)", ["pool", "kind"], registry=registry)
        self._tasks: set[asyncio.Task[None]] = set()

    def _store(self, pool: str) -> MemoryKV | RedisKV:
        return self.redis if self.redis is not None else self.memory[pool]

    def plan(self, pool: str, scope: str, payload: Mapping[str, Any], flags: Any, router: str | None,
             text: str, marked: bool | None, cache_control: str | None) -> CachePlan | None:
        """The request's cache decision (module docstring); None when its model is not a pool with a cache.
        ``marked``: the body's ``poolgate.cache`` (None when absent)."""
        config = self.configs.get(pool)
        if config is None:
            return None
        directives = _cache_control(cache_control)
        key = exact_key(pool, scope, payload, flags, router)
        off = marked is False or "no-store" in directives or (samples(payload) and not config.sampled and not marked)
        semantic = (not off and config.semantic is not None and bool(text.strip())
                    and (config.semantic.requests == "all" or marked is True))
        plan = CachePlan(pool, config, scope, key, read=not off and "no-cache" not in directives, write=not off,
                         semantic=semantic, text=text)
        if semantic:
            assert config.semantic is not None
            plan.encoder = config.semantic.encoder or self.encoder_of(pool) or "minilm-static"
            plan.context_key = context_key(pool, scope, payload, flags, router)
        return plan

    async def lookup(self, plan: CachePlan) -> None:
        """Read the cache for ``plan`` (exact, then semantic); sets ``status``, ``hit`` and ``similarity``."""
        if plan.read:
            plan.status = "miss"
            store = self._store(plan.pool)
            if plan.config.exact:
                plan.hit = CacheEntry.unpack(raw) if (raw := await store.get(_entry(plan.exact_key))) else None
                if plan.hit is not None:
                    plan.status = "hit-exact"
            if plan.hit is None and plan.semantic:
                await self._semantic(plan, store)
        self.results.labels(plan.pool, plan.status).inc()
        if plan.hit is not None:
            self.saved.labels(plan.pool, plan.status.removeprefix("hit-")).inc(plan.hit.cost_usd)

    async def _vector(self, plan: CachePlan) -> np.ndarray | None:
        if plan.vector is None and plan.encoder is not None:
            try:
                plan.vector = np.asarray(await self.embed(plan.text, plan.encoder), dtype=np.float32)
            except Exception as exc:  # an encoder that fails costs the semantic lookup, never the request
                log.warning("cache: embedding with %s failed, no semantic lookup: %s", plan.encoder, exc)
                plan.semantic = False
        return plan.vector

    async def _semantic(self, plan: CachePlan, store: MemoryKV | RedisKV) -> None:
        assert plan.config.semantic is not None and plan.context_key is not None
        vector = await self._vector(plan)
        if vector is None:
            return
        found = [v for v in await store.vectors(_vectors(plan.context_key), plan.config.semantic.max_scan)
                 if v.vector.shape == vector.shape]
        if not found:
            return
        matrix = np.stack([v.vector for v in found])
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(vector) or 1.0)
        sims = matrix @ vector / np.where(norms > 0, norms, 1.0)
        best = int(np.argmax(sims))
        if float(sims[best]) < plan.config.semantic.threshold:
            return
        raw = await store.get(_entry(found[best].key))
        plan.hit = CacheEntry.unpack(raw) if raw else None
        if plan.hit is not None:
            plan.status, plan.similarity = "hit-semantic", float(sims[best])

    def keep(self, plan: CachePlan, record: RequestRecord, completion: dict[str, Any]) -> None:
        """Keep a finished answer for ``plan`` when it succeeded (off the response path)."""
        if not plan.write or plan.hit is not None or record.status != "ok" or record.http_status != 200:
            return
        if not isinstance(completion.get("usage"), dict):  # a stream whose client did not ask for usage
            completion = {**completion, "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens":
                          record.completion_tokens, "total_tokens": record.prompt_tokens + record.completion_tokens}}
        entry = CacheEntry(completion, record.backend, record.cost_usd, record.prompt_tokens,
                           record.completion_tokens).pack()
        if len(entry) > plan.config.max_entry_bytes:
            return
        task = asyncio.get_running_loop().create_task(self._put(plan, entry))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _put(self, plan: CachePlan, entry: bytes) -> None:
        store, ttl = self._store(plan.pool), plan.config.ttl_s
        index = f"cache:idx:{plan.pool}:{hashlib.sha256(plan.scope.encode()).hexdigest()[:16]}"
        await store.put(_entry(plan.exact_key), entry, ttl, index, plan.config.max_entries)
        if plan.semantic and plan.context_key is not None and plan.config.semantic is not None:
            vector = await self._vector(plan)
            if vector is not None:
                item = Vector(plan.exact_key, vector, store.clock() + ttl)
                await store.push_vector(_vectors(plan.context_key), item, ttl, plan.config.semantic.max_scan)

    async def close(self) -> None:
        """Wait for the writes in flight, then close the Redis client (shared with session affinity)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.close()
