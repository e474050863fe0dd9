"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The route is thin: parse and check the request, route, dispatch, relay, and hand one log row to the
writer (off the response path) for every request that got as far as routing.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.api.request import ChatRequest, parse_chat_request, read_json_body
from gateway.api.schema import CHAT_REQUEST_OPENAPI
from gateway.auth import KeyRecord, authenticate
from gateway.deps import Services, get_services
from gateway.dispatch import AllBackendsFailed, UpstreamResult
from gateway.errors import GatewayError
from gateway.pricing import cost_usd
from gateway.routing import RouteDecision
from gateway.streaming import EventStreamResponse, StreamOutcome, relay

router = APIRouter()


def _headers(
    request_id: str, decision: RouteDecision | None, backend: str | None, cost: float | None
) -> dict[str, str]:
    headers = {"x-poolgate-request-id": request_id}
    if decision is not None:
        headers["x-poolgate-router"] = decision.router
        if decision.router_version:
            headers["x-poolgate-router-version"] = decision.router_version
        if decision.flags is not None:
            headers["x-poolgate-flags"] = orjson.dumps(decision.flags.as_dict()).decode()
    if backend:
        headers["x-poolgate-backend"] = backend
    if cost is not None:
        headers["x-poolgate-cost-usd"] = f"{cost:.8f}"
    return headers


def _base_row(request_id: str, chat: ChatRequest, services: Services) -> dict[str, Any]:
    return {
        "id": request_id,
        "created_at": datetime.now(UTC),
        "model_requested": chat.model,
        "stream": chat.stream,
        "prompt_text": chat.prompt_text if services.settings.store_prompts else None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
        "attempts": [],
        "candidates": [],
    }


def _decision_fields(decision: RouteDecision) -> dict[str, Any]:
    return {
        "pool": decision.pool,
        "router": decision.router,
        "router_version": decision.router_version,
        "candidates": decision.candidates,
        "flags": decision.flags.as_dict() if decision.flags is not None else None,
    }


@router.post("/v1/chat/completions", openapi_extra=CHAT_REQUEST_OPENAPI)
async def chat_completions(
    request: Request, services: Services = Depends(get_services), key: KeyRecord | None = Depends(authenticate)
) -> Response:
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    if services.writer.refusing:  # spool_full_policy=refuse: serve nothing that cannot be logged
        raise GatewayError(503, "the request log is down and its local spool is full; try again later",
                           code="log_store_unavailable", headers={"retry-after": "5"})
    body = await read_json_body(request, services.settings.max_body_bytes, services.settings.client_read_timeout_s)
    chat = parse_chat_request(body, request.headers.get("x-poolgate-flags"))
    row = _base_row(request_id, chat, services)
    prompt_tokens = chat.prompt_tokens()
    decision: RouteDecision | None = None
    try:
        admitted = await services.tenancy.admit(key, chat.model, chat.payload, prompt_tokens, row)
        decision = await services.routing.route(
            chat.model, chat.prompt_text, prompt_tokens, chat.required_capabilities,
            request_flags=chat.request_flags, router_override=chat.router_override,
            key_flags=admitted.key_flags, adjust_flags=admitted.adjust_flags,
        )
        row.update(_decision_fields(decision))
        if services.shadow is not None:  # shadow routers' choices, computed while the backend answers
            services.shadow.start(request_id, decision, chat.prompt_text, prompt_tokens)
        result = await services.dispatcher.dispatch(decision.ranking, chat.payload, chat.stream, decision.fallback)
    except GatewayError as exc:
        _finish_error(services, row, started, exc.status, exc.type, exc.message)
        return exc.response(_headers(request_id, decision, None, None))
    except AllBackendsFailed as exc:
        row["attempts"] = exc.attempts
        row["backend"] = exc.attempts[-1]["backend"] if exc.attempts else None
        _finish_error(services, row, started, exc.status, "upstream_error", exc.message)
        wait = {"retry-after": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None
        err = GatewayError(exc.status, exc.message, code="all_backends_failed", headers=wait)
        return err.response(_headers(request_id, decision, row["backend"], None))
    row["backend"] = result.backend.name
    row["attempts"] = result.attempts
    if result.stream is not None:
        return _stream_response(services, chat, row, result, decision, started, prompt_tokens)
    return _plain_response(services, chat, row, result, decision, started, prompt_tokens)


def _finish(services: Services, row: dict[str, Any]) -> None:
    """Hand the row on (metrics, limits, log), once the shadow routers' choices are in it (gateway.shadow)."""
    if services.shadow is not None:
        services.shadow.finish(row, services.tenancy.finish)
    else:
        services.tenancy.finish(row)


def _finish_error(services: Services, row: dict[str, Any], started: float, status: int, etype: str, msg: str) -> None:
    row.update(status="error", http_status=status, error_type=etype, error_message=msg[:2000],
               latency_ms=(time.perf_counter() - started) * 1000)
    _finish(services, row)


def _plain_response(
    services: Services, chat: ChatRequest, row: dict[str, Any], result: UpstreamResult,
    decision: RouteDecision, started: float, prompt_tokens: int,
) -> Response:
    usage: dict[str, Any] = {}
    text = None
    if result.status < 400:
        try:
            parsed = orjson.loads(result.body)
            usage = parsed.get("usage") or {}
            if services.settings.store_responses:
                text = parsed["choices"][0]["message"].get("content")
        except (orjson.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError):
            usage = {}
    p_tok = int(usage.get("prompt_tokens") or (prompt_tokens if result.status < 400 else 0))
    c_tok = int(usage.get("completion_tokens") or 0)
    cost = cost_usd(result.backend, p_tok, c_tok)
    ok = result.status < 400
    row.update(
        status="ok" if ok else "error", http_status=result.status, prompt_tokens=p_tok, completion_tokens=c_tok,
        cost_usd=cost, latency_ms=(time.perf_counter() - started) * 1000, response_text=text,
        error_type=None if ok else "upstream_error",
        error_message=None if ok else result.body[:2000].decode("utf-8", "replace"),
    )
    _finish(services, row)
    return Response(result.body, status_code=result.status, media_type="application/json",
                    headers=_headers(row["id"], decision, result.backend.name, cost))


def _stream_response(
    services: Services, chat: ChatRequest, row: dict[str, Any], result: UpstreamResult,
    decision: RouteDecision, started: float, prompt_tokens: int,
) -> Response:
    backend = result.backend

    def on_finish(out: StreamOutcome) -> None:
        usage = out.usage or {}
        p_tok = int(usage.get("prompt_tokens") or prompt_tokens)
        c_tok = out.completion_tokens()
        row.update(
            status="error" if out.error else "ok", http_status=200, prompt_tokens=p_tok, completion_tokens=c_tok,
            cost_usd=cost_usd(backend, p_tok, c_tok), latency_ms=(time.perf_counter() - started) * 1000,
            ttft_ms=out.ttft_ms, error_type=("client_disconnected" if out.client_disconnected else
                                             "upstream_stream_error") if out.error else None,
            error_message=out.error,
            response_text=out.text() if services.settings.store_responses else None,
        )
        _finish(services, row)

    estimate = next(
        (c.get("expected_cost_usd") for c in decision.candidates if c.get("backend") == backend.name), None
    )
    headers = _headers(row["id"], decision, backend.name, estimate)
    headers["x-poolgate-cost-estimated"] = "true"
    assert result.stream is not None
    body = relay(result.stream, result.response, started, chat.wants_usage, on_finish)
    return EventStreamResponse(body, headers=headers)


@router.get("/v1/models")
async def list_models(
    services: Services = Depends(get_services), _key: KeyRecord | None = Depends(authenticate)
) -> Response:
    data = []
    for name, rt in services.routing.runtimes.items():
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "poolgate",
                     "poolgate": {"type": "pool", "members": rt.config.members, "router": rt.router.name,
                                  "router_version": rt.router_version, "objective": rt.config.objective}})
    for b in services.pool_file.backends:
        data.append({"id": b.name, "object": "model", "created": 0, "owned_by": "poolgate",
                     "poolgate": {"type": "backend", "upstream_model": b.model, "input_price": b.input_price,
                                  "output_price": b.output_price, "context_window": b.context_window,
                                  "capabilities": b.capabilities}})
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
