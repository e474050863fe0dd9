"""Session affinity: later turns of a conversation go to the backend that answered its earlier turns.

A provider's prompt cache holds the conversation it has seen; sending turn 2 elsewhere pays for the whole prefix
again. A pool turns affinity on with ``affinity: {ttl_s: 1800}`` (off by default: it overrides the router). A
conversation is named by an ``x-poolgate-session`` header, or (``derive: true``, the default) recognized by the
digest of its messages before the last user message: after each answer the gateway remembers, for ``ttl_s``, the
digest of the conversation *including that answer*, which is the prefix the next turn will send
(``gateway.cache.keys``; per tenant and pool, so never across tenants). First turns (no earlier user or assistant
message) are the router's.

The router still ranks every turn, so the sticky backend is used only where the router's own constraints allow it
(context window, capabilities, ``max_cost_usd``: infeasible members are not in the ranking) and its breaker is not
open; otherwise the router's choice stands and becomes the session's backend. ``poolgate: {affinity: false}`` or a
``poolgate.router`` override lets the router decide that turn. A turn served by affinity has ``affinity`` true,
``policy`` ``affinity`` and no propensity in its row (the router did not choose it, so off-policy estimators skip
it); every turn of a known session has its ``session_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.cache.config import AffinityConfig
from gateway.cache.keys import conversation_prefix, explicit_session_key, session_digest
from gateway.cache.store import MemoryKV, RedisKV
from gateway.pools import PoolFile
from gateway.proxy.breaker import BreakerRegistry, BreakerState
from gateway.record import RequestRecord
from gateway.routing.service import RouteDecision

#: ``x-poolgate-session`` values are cut to this many characters before they are stored in every row
MAX_SESSION_CHARS = 256
#: bytes of one in-process session entry at most (backend name and session id): the byte bound is never the limit
_SESSION_BYTES = 1024


@dataclass
class AffinityPlan:
    """One request's session: the keys it was looked up by and is remembered under."""

    pool: str
    config: AffinityConfig
    scope: str
    session_id: str
    lookup_key: str | None
    derive: bool
    messages: Sequence[Mapping[str, Any]]


class SessionAffinity:
    """Built once per app (``gateway.services``); ``redis`` shares sessions across replicas."""

    def __init__(self, pool_file: PoolFile, breakers: BreakerRegistry, redis: RedisKV | None = None) -> None:
        self.configs = {p.name: p.affinity for p in pool_file.pools if p.affinity is not None}
        self.breakers = breakers
        self.redis = redis
        self.memory = {n: MemoryKV(c.max_sessions, c.max_sessions * _SESSION_BYTES) for n, c in self.configs.items()}
        self._tasks: set[asyncio.Task[None]] = set()

    def _store(self, pool: str) -> MemoryKV | RedisKV:
        return self.redis if self.redis is not None else self.memory[pool]

    async def session(self, pool: str | None, record: RequestRecord, scope: str,
                      messages: Sequence[Mapping[str, Any]], header: str | None) -> tuple[AffinityPlan | None, str]:
        """The request's session (None where ``pool`` has no affinity) and its backend ("" when none is known);
        sets the record's ``session_id``."""
        if header is not None:
            header = header[:MAX_SESSION_CHARS]
            record.session_id = header
        config = self.configs.get(pool or "")
        if config is None or pool is None:
            return None, ""
        if header is not None:
            key: str | None = explicit_session_key(pool, scope, header)
        else:
            prefix = conversation_prefix(messages) if config.derive else None
            key = session_digest(pool, scope, prefix) if prefix is not None else None
        found = await self._store(pool).get(f"aff:{key}") if key is not None else None
        backend, _, session = found.decode("utf-8", "replace").partition("\n") if found else ("", "", "")
        record.session_id = header if header is not None else session or session_digest(pool, scope, messages)[:32]
        return AffinityPlan(pool, config, scope, record.session_id, key, header is None and config.derive,
                            messages), backend

    async def apply(
        self, decision: RouteDecision, record: RequestRecord, scope: str, messages: Sequence[Mapping[str, Any]],
        header: str | None, router_decides: bool,
    ) -> tuple[RouteDecision, AffinityPlan | None]:
        """``decision`` with the session's backend first when it has one and may serve (module docstring)."""
        plan, backend = await self.session(decision.pool, record, scope, messages, header)
        if not backend or router_decides or (decision.ranking and decision.ranking[0].name == backend):
            return decision, plan
        sticky = next((b for b in decision.ranking if b.name == backend), None)
        if sticky is None or self.breakers.get(backend).state is BreakerState.OPEN:
            return decision, plan  # not feasible for this request now: the router's choice stands
        ranking = [sticky, *(b for b in decision.ranking if b.name != backend)]
        record.affinity = True
        return replace(decision, ranking=ranking, policy="affinity"), plan

    def remember(self, plan: AffinityPlan, record: RequestRecord, completion: dict[str, Any] | None) -> None:
        """After a successful turn: its backend is the session's, under the key this turn was found by and (derived
        sessions) the key of the conversation with this answer appended, which the next turn will send."""
        if record.status != "ok" or not record.backend:
            return
        keys = [plan.lookup_key] if plan.lookup_key is not None else []
        if plan.derive and completion is not None:
            message = ((completion.get("choices") or [{}])[0] or {}).get("message") or {}
            turn = {"role": "assistant", "content": message.get("content")}
            keys.append(session_digest(plan.pool, plan.scope, [*plan.messages, turn]))
        value = f"{record.backend}\n{plan.session_id}".encode()
        task = asyncio.get_running_loop().create_task(self._put(plan, keys, value))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _put(self, plan: AffinityPlan, keys: list[str], value: bytes) -> None:
        for key in keys:
            await self._store(plan.pool).put(f"aff:{key}", value, plan.config.ttl_s)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
