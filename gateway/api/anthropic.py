"""``POST /v1/messages``: the Anthropic Messages API over the chat pipeline, or passed through.

The request is translated to chat completions (``gateway.translate.anthropic``) and goes through the same
``run_chat`` as ``/v1/chat/completions``: the same router, objective, flags, limits and one log row. Keys come as
``x-api-key`` or ``Authorization: Bearer`` (``gateway.api.deps.api_key_of``), from the same key store; the
``anthropic-version`` header is accepted (any value: a translated answer is the 2023-06-01 shape). Every error on
this path is Anthropic's error JSON (``gateway.errors.ERROR_SHAPES``).

A backend that declares ``api: anthropic`` gets the request as the client sent it (``gateway.proxy.dispatch``'s
``NativeRequest``: the body with only ``model`` replaced, the ``anthropic-version`` and ``anthropic-beta``
headers, the backend's own ``x-api-key``), and its answer or event stream goes back as it came; its usage
(cache reads and writes included) is read for the row and the cost. Parameters only the Messages API has
(``PASSTHROUGH_ONLY``: ``thinking``, ``top_k``, ...) are accepted when the request can go to such a backend: it is
then routed among the ``api: anthropic`` members only.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import CallerKey, ServicesDep
from gateway.api.pipeline import refuse_if_log_down, run_chat
from gateway.api.request import parse_chat_request, read_json_body
from gateway.errors import anthropic_error_body
from gateway.proxy.dispatch import NativeRequest
from gateway.proxy.streaming import EventStreamResponse
from gateway.translate.anthropic import answer_from_chat, request_to_chat, stream_from_chat

router = APIRouter()

#: Messages parameters a chat backend cannot honour: a request with one is served by ``api: anthropic`` backends only
PASSTHROUGH_ONLY = frozenset({"thinking", "top_k", "service_tier", "container", "mcp_servers"})
_NATIVE_HEADERS = ("anthropic-version", "anthropic-beta")


def native_request(body: Any, request: Request) -> tuple[Any, NativeRequest | None]:
    """(the body to translate, the request to pass through): the pass-through-only parameters are kept from the
    translation, which validates the rest as for any backend."""
    if not isinstance(body, dict):
        return body, None
    only = PASSTHROUGH_ONLY & body.keys()
    headers = {h: v for h in _NATIVE_HEADERS if (v := request.headers.get(h))}
    translated = {k: v for k, v in body.items() if k not in only}
    return translated, NativeRequest(body, headers, only=bool(only))


@router.post("/v1/messages")
async def messages(request: Request, services: ServicesDep, key: CallerKey) -> Response:
    started = time.perf_counter()
    refuse_if_log_down(services)
    body = await read_json_body(request, services.settings.max_body_bytes, services.settings.client_read_timeout_s)
    translated, native = native_request(body, request)
    chat = parse_chat_request(request_to_chat(translated), request.headers.get("x-poolgate-flags"))
    answer = await run_chat(services, key, chat, started, request, native)
    request_id = answer.headers.get("x-poolgate-request-id", "")
    if answer.stream is not None:
        events = answer.stream if answer.api == "anthropic" else stream_from_chat(
            answer.stream, request_id, chat.model, chat.quick_prompt_tokens().tokens)
        return EventStreamResponse(events, headers=answer.headers)
    if answer.parsed is None:
        message = answer.error_fields()[0]
        if native is not None and native.only and answer.error is not None and answer.error.code == "unsupported_route":
            message = (f"parameters {sorted(PASSTHROUGH_ONLY & native.body.keys())} are not supported by poolgate "
                       f"for chat-completions backends: they need an api: anthropic backend (passed through), and "
                       f"model {chat.model!r} has none")
        headers = {**(answer.error.headers if answer.error else {}), **answer.headers}
        return Response(orjson.dumps(anthropic_error_body(answer.status, message)), status_code=answer.status,
                        media_type="application/json", headers=headers)
    content = answer.body if answer.api == "anthropic" else orjson.dumps(answer_from_chat(answer.parsed, request_id))
    return Response(content, media_type="application/json", headers=answer.headers)
