"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /v1/models/{id}``.

The chat route is thin: parse and check the request, then the shared pipeline (``gateway.api.pipeline``) routes,
dispatches, relays, and finishes one typed :class:`~gateway.record.RequestRecord` for every request that got as
far as routing: ``finish(record)`` (``gateway.finish``) hands it to the metrics, the limits and the log writer, off
the response path.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import CallerKey, PoolFileDep, RoutingDep, ServicesDep
from gateway.api.pipeline import refuse_if_log_down, run_chat
from gateway.api.request import parse_chat_request, read_json_body
from gateway.api.schema import CHAT_REQUEST_OPENAPI
from gateway.errors import GatewayError
from gateway.pools import PoolFile
from gateway.routing.service import RoutingService

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=CHAT_REQUEST_OPENAPI)
async def chat_completions(request: Request, services: ServicesDep, key: CallerKey) -> Response:
    started = time.perf_counter()
    refuse_if_log_down(services)
    body = await read_json_body(request, services.settings.max_body_bytes, services.settings.client_read_timeout_s)
    chat = parse_chat_request(body, request.headers.get("x-poolgate-flags"))
    return (await run_chat(services, key, chat, started, request)).openai_response()


def _model_objects(routing: RoutingService, pool_file: PoolFile) -> list[dict[str, Any]]:
    data = []
    for name, rt in routing.runtimes.items():
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "poolgate",
                     "poolgate": {"type": "pool", "members": rt.config.members, "router": rt.router.name,
                                  "router_version": rt.router_version, "objective": rt.config.objective}})
    for b in pool_file.backends:
        data.append({"id": b.name, "object": "model", "created": 0, "owned_by": "poolgate",
                     "poolgate": {"type": "backend", "upstream_model": b.model, "input_price": b.input_price,
                                  "output_price": b.output_price, "cached_input_price": b.cached_input_price,
                                  "cache_write_price": b.cache_write_price, "reasoning_price": b.reasoning_price,
                                  "context_window": b.context_window, "capabilities": b.capabilities,
                                  "api": b.api}})
    return data


@router.get("/v1/models")
async def list_models(routing: RoutingDep, pool_file: PoolFileDep, _key: CallerKey) -> Response:
    data = _model_objects(routing, pool_file)
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, routing: RoutingDep, pool_file: PoolFileDep, _key: CallerKey) -> Response:
    """One pool or backend, as ``GET /v1/models`` lists it; 404 (OpenAI error JSON) for any other id."""
    found = next((m for m in _model_objects(routing, pool_file) if m["id"] == model_id), None)
    if found is None:
        raise GatewayError(404, f"model {model_id!r} is neither a pool nor a backend; see GET /v1/models",
                           param="model", code="model_not_found")
    return Response(orjson.dumps(found), media_type="application/json")
