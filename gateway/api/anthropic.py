"""``POST /v1/messages``: the Anthropic Messages API over the chat pipeline.

The request is translated to chat completions (``gateway.translate.anthropic``) and goes through the same
``run_chat`` as ``/v1/chat/completions``: the same router, objective, flags, limits and one log row. Keys come as
``x-api-key`` or ``Authorization: Bearer`` (``gateway.api.deps.api_key_of``), from the same key store; the
``anthropic-version`` header is accepted (any value: the answer is the 2023-06-01 shape). Every error on this path
is Anthropic's error JSON (``gateway.errors.ERROR_SHAPES``).
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import CallerKey, ServicesDep
from gateway.api.pipeline import refuse_if_log_down, run_chat
from gateway.api.request import parse_chat_request, read_json_body
from gateway.errors import anthropic_error_body
from gateway.proxy.streaming import EventStreamResponse
from gateway.translate.anthropic import answer_from_chat, request_to_chat, stream_from_chat

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request, services: ServicesDep, key: CallerKey) -> Response:
    started = time.perf_counter()
    refuse_if_log_down(services)
    body = await read_json_body(request, services.settings.max_body_bytes, services.settings.client_read_timeout_s)
    chat = parse_chat_request(request_to_chat(body), request.headers.get("x-poolgate-flags"))
    answer = await run_chat(services, key, chat, started, request)
    request_id = answer.headers.get("x-poolgate-request-id", "")
    if answer.stream is not None:
        events = stream_from_chat(answer.stream, request_id, chat.model, chat.quick_prompt_tokens().tokens)
        return EventStreamResponse(events, headers=answer.headers)
    if answer.parsed is None:
        message = answer.error_fields()[0]
        headers = {**(answer.error.headers if answer.error else {}), **answer.headers}
        return Response(orjson.dumps(anthropic_error_body(answer.status, message)), status_code=answer.status,
                        media_type="application/json", headers=headers)
    return Response(orjson.dumps(answer_from_chat(answer.parsed, request_id)), media_type="application/json",
                    headers=answer.headers)
