"""The chat pipeline's cache and affinity steps (``gateway.api.pipeline`` calls each in one line).

After admission, :func:`cache_lookup` reads the pool's response cache (``gateway.cache.service``); a hit is answered
by :func:`hit_answer` with no routing and no upstream call (plain, or replayed as a stream; in a pool with affinity
the session goes on with the backend that gave the kept answer). After routing,
:func:`stick` puts the session's backend first (``gateway.routing.affinity``). When the answer is known,
:func:`after_answer` keeps it in the cache and remembers the session's backend: at once for a plain answer, at the
end of the stream for a streamed one (the relayed events are assembled into the completion they spell, bounded).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.api.request import ChatRequest
from gateway.cache.replay import StreamAssembler, replay_stream
from gateway.cache.service import CachePlan
from gateway.limits.keys import KeyRecord
from gateway.record import RequestRecord
from gateway.routing.affinity import AffinityPlan
from gateway.routing.service import RouteDecision
from gateway.services import Services

#: a streamed answer is assembled for the session's next-turn key up to this many relayed bytes when no cache
#: entry bound applies
AFFINITY_STREAM_BYTES = 1024 * 1024
SESSION_HEADER = "x-poolgate-session"


def scope_of(key: KeyRecord | None) -> str:
    """The tenant: its key's id ("" for everyone when auth is off)."""
    return key.id if key is not None else ""


async def cache_lookup(services: Services, key: KeyRecord | None, chat: ChatRequest,
                       headers: Mapping[str, str]) -> CachePlan | None:
    """The request's cache plan, looked up (None when its model is not a pool with a cache)."""
    plan = services.cache.plan(chat.model, scope_of(key), chat.payload, chat.request_flags, chat.router_override,
                               chat.prompt_text, chat.cache_opt, headers.get("cache-control"))
    if plan is not None:
        await services.cache.lookup(plan)
    return plan


def cache_headers(plan: CachePlan | None) -> dict[str, str]:
    if plan is None:
        return {}
    headers: dict[str, str] = {"x-poolgate-cache": plan.status}
    if plan.hit is not None:
        headers["x-poolgate-cache-saved-usd"] = f"{plan.hit.cost_usd:.8f}"
    if plan.similarity is not None:
        headers["x-poolgate-cache-similarity"] = f"{plan.similarity:.4f}"
    return headers


def answer_headers(plan: CachePlan | None, record: RequestRecord) -> dict[str, str]:
    """What the cache and affinity add to an answer's headers (``x-poolgate-affinity: true`` when the session, not
    the router, chose the backend; ``x-poolgate-session`` the session the turn belongs to)."""
    headers = cache_headers(plan)
    if record.session_id is not None:
        headers["x-poolgate-session"] = record.session_id
    if record.affinity:
        headers["x-poolgate-affinity"] = "true"
    return headers


async def hit_answer(services: Services, record: RequestRecord, plan: CachePlan, chat: ChatRequest, started: float,
                     key: KeyRecord | None, headers: Mapping[str, str]) -> dict[str, Any]:
    """Answer from the cache: one row with ``cache`` set, cost 0 and the saving; no routing, no upstream call.
    In a pool with affinity the session goes on with the backend that gave the answer. Returns the pipeline's
    ``ChatAnswer`` fields (headers, and body with parsed, or stream)."""
    session, _ = await services.affinity.session(plan.pool, record, scope_of(key), chat.messages,
                                                 headers.get(SESSION_HEADER))
    entry = plan.hit
    assert entry is not None
    record.pool, record.backend, record.policy, record.propensity = plan.pool, entry.backend, "cache", None
    record.cache = plan.status.removeprefix("hit-")
    record.cache_saved_usd = entry.cost_usd
    latency_ms = (time.perf_counter() - started) * 1000
    text = "\n".join(str(((c or {}).get("message") or {}).get("content") or "")
                     for c in entry.completion.get("choices") or [])
    record.finish(status="ok", http_status=200, latency_ms=latency_ms, ttft_ms=latency_ms if chat.stream else None,
                  response_text=text if services.settings.store_responses else None)
    services.finish(record)
    if session is not None:
        services.affinity.remember(session, record, entry.completion)
    out = {"x-poolgate-request-id": record.id, "x-poolgate-cost-usd": f"{0.0:.8f}", **answer_headers(plan, record)}
    if entry.backend:
        out["x-poolgate-backend"] = entry.backend
    if chat.stream:
        return {"headers": out, "stream": replay_stream(entry.completion, chat.wants_usage)}
    return {"headers": out, "body": orjson.dumps(entry.completion), "parsed": entry.completion}


async def stick(services: Services, decision: RouteDecision, record: RequestRecord, key: KeyRecord | None,
                chat: ChatRequest, headers: Mapping[str, str]) -> tuple[RouteDecision, AffinityPlan | None]:
    """``decision`` with the session's backend first where affinity applies (``gateway.routing.affinity``)."""
    router_decides = chat.affinity_opt is False or chat.router_override is not None
    decision, plan = await services.affinity.apply(decision, record, scope_of(key), chat.messages,
                                                   headers.get(SESSION_HEADER), router_decides)
    if record.affinity:  # the router did not choose this backend: no propensity, and the row says who did
        record.propensity, record.policy = None, decision.policy
    return decision, plan


def after_answer(services: Services, parsed: dict[str, Any] | None, stream: AsyncIterator[bytes] | None,
                 record: RequestRecord, cache: CachePlan | None, affinity: AffinityPlan | None
                 ) -> AsyncIterator[bytes] | None:
    """Keep the answer (``parsed``, or ``stream`` once it ends) and the session's backend; returns the stream to
    send (``stream`` itself, or a reader of it that assembles its events)."""
    keep_cache = cache is not None and cache.write
    if not keep_cache and affinity is None:
        return stream
    if parsed is not None:
        _kept(services, record, cache, affinity, parsed)
    elif stream is not None:
        # the relayed events spell the entry with SSE framing and per-chunk JSON around each delta: 4x its size
        # keeps the streams of answers that fit an entry (a 2k-token answer streams ~0.4 MB), and bounds the rest
        limit = cache.config.max_entry_bytes * 4 if cache is not None and keep_cache else AFFINITY_STREAM_BYTES
        return _tap(services, stream, record, cache if keep_cache else None, affinity, limit)
    return stream


def _kept(services: Services, record: RequestRecord, cache: CachePlan | None, affinity: AffinityPlan | None,
          completion: dict[str, Any] | None) -> None:
    if cache is not None and completion is not None:
        services.cache.keep(cache, record, completion)
    if affinity is not None:
        services.affinity.remember(affinity, record, completion)


async def _tap(services: Services, stream: AsyncIterator[bytes], record: RequestRecord, cache: CachePlan | None,
               affinity: AffinityPlan | None, limit: int) -> AsyncIterator[bytes]:
    """``stream`` unchanged, its events assembled on the way (at most ``limit`` bytes) and kept at its end."""
    assembler = StreamAssembler(limit)
    try:
        async for chunk in stream:
            assembler.feed(chunk)
            yield chunk
    finally:  # a client that leaves closes this reader: the relay under it must close too (upstream, log row)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    if record.finished:
        _kept(services, record, cache, affinity, assembler.completion())
