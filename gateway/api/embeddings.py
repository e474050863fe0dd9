"""``POST /v1/embeddings``: to backends that declare the ``embeddings`` capability in the pool file.

A pool's embedding members are ranked by input price (an embedding has no answer quality for a router to weigh;
ties by name), tried in that order with the dispatcher's retries and fallback; a backend named directly must
declare the capability. The backend's body is relayed as it is; its ``usage.prompt_tokens`` (else the gateway's
count of the input) is priced at the backend's input price, and the request gets one log row like any other.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.access_log import RECORD_STATE_KEY
from gateway.api.deps import CallerKey, ServicesDep
from gateway.api.pipeline import finish_error, gateway_headers, refuse_if_log_down
from gateway.api.request import MAX_MODEL_CHARS, read_json_body
from gateway.errors import GatewayError, known_params_object
from gateway.errors import invalid_value as _bad
from gateway.pools import BackendConfig, PoolConfig, PoolFile
from gateway.proxy.dispatch import AllBackendsFailed
from gateway.proxy.tokens import count_tokens_off_loop
from gateway.proxy.usage import token_count
from gateway.record import RequestRecord
from routers.pricing import cost_usd

router = APIRouter()
CAPABILITY = "embeddings"
SUPPORTED = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _input_text(value: Any) -> str:
    """The text of ``input`` (a string, strings, or token arrays: those count one character per token)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return "\n".join(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return " " * len(value)
        if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
            return " " * sum(len(v) for v in value)
    raise _bad("'input' must be a non-empty string, array of strings, or array of token arrays", "input")


def _check(body: Any) -> tuple[str, str]:
    body = known_params_object(body, SUPPORTED, "/v1/embeddings")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_CHARS:
        raise _bad("'model' is required and must be a pool or backend name; see GET /v1/models", "model")
    return model, _input_text(body.get("input"))


def embedding_ranking(pool_file: PoolFile, model: str) -> tuple[PoolConfig | None, list[BackendConfig]]:
    """(the pool, or None for a backend named directly; its embedding backends, cheapest input first)."""
    pool = pool_file.pool(model)
    if pool is not None:
        members = [pool_file.backend(m) for m in pool.members]
        ranked = sorted((b for b in members if CAPABILITY in b.capabilities), key=lambda b: (b.input_price, b.name))
        if not ranked:
            raise GatewayError(400, f"pool {model!r} has no member that declares the 'embeddings' capability",
                               param="model", code="unsupported_model")
        return pool, ranked
    backend = next((b for b in pool_file.backends if b.name == model), None)
    if backend is None:
        raise GatewayError(404, f"model {model!r} is neither a pool nor a backend; see GET /v1/models",
                           param="model", code="model_not_found")
    if CAPABILITY not in backend.capabilities:
        raise GatewayError(400, f"backend {model!r} does not declare the 'embeddings' capability in the pool file",
                           param="model", code="unsupported_model")
    return None, [backend]


@router.post("/v1/embeddings")
async def embeddings(request: Request, services: ServicesDep, key: CallerKey) -> Response:
    started = time.perf_counter()
    refuse_if_log_down(services)
    body = await read_json_body(request, services.settings.max_body_bytes, services.settings.client_read_timeout_s)
    model, text = _check(body)
    record = RequestRecord(id=uuid.uuid4().hex, model_requested=model, stream=False,
                           prompt_text=text if services.settings.store_prompts else None)
    setattr(request.state, RECORD_STATE_KEY, record)  # the access log's line reads routing and usage from it
    try:
        pool, ranking = embedding_ranking(services.pool_file, model)
        record.pool = pool.name if pool is not None else None
        record.router = "cheapest-embeddings" if pool is not None else "direct"
        record.candidates = [{"backend": b.name, "input_price": b.input_price} for b in ranking]
        tokens = await count_tokens_off_loop(text)
        await services.tenancy.admit(key, model, {"max_tokens": 1}, tokens, record)
        fallback = pool.fallback if pool is not None else False
        result = await services.dispatcher.dispatch(ranking, body, False, fallback, path="embeddings")
    except GatewayError as exc:
        finish_error(services, record, started, exc.status, exc.type, exc.message)
        return exc.response({"x-poolgate-request-id": record.id})
    except AllBackendsFailed as exc:
        record.attempts = exc.attempts
        record.backend = exc.attempts[-1]["backend"] if exc.attempts else None
        finish_error(services, record, started, exc.status, "upstream_error", exc.message)
        return GatewayError(exc.status, exc.message, code="all_backends_failed").response(
            {"x-poolgate-request-id": record.id})
    record.backend, record.attempts = result.backend.name, result.attempts
    headers = gateway_headers(record.id, None, result.backend.name, None)
    headers["x-poolgate-router"] = record.router or "direct"
    latency_ms = (time.perf_counter() - started) * 1000
    if result.parsed is None:  # the backend's 4xx, relayed
        record.finish(status="error", http_status=result.status, latency_ms=latency_ms, error_type="upstream_error",
                      error_message=result.body[:2000].decode("utf-8", "replace"))
        services.finish(record)
        return Response(result.body, status_code=result.status, media_type="application/json", headers=headers)
    usage = result.parsed.get("usage")
    reported = token_count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    p_tok = reported if reported is not None else tokens
    cost = cost_usd(result.backend, p_tok, 0)
    record.finish(status="ok", http_status=result.status, prompt_tokens=p_tok, completion_tokens=0,
                  usage_estimated=reported is None, cost_usd=cost, latency_ms=latency_ms)
    services.finish(record)
    headers["x-poolgate-cost-usd"] = f"{cost:.8f}"
    return Response(result.body, status_code=result.status, media_type="application/json", headers=headers)
