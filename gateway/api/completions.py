"""``POST /v1/completions`` (legacy): the prompt goes through the chat pipeline as one user message
(``gateway.translate.completions``), so it is routed, limited and logged as a chat request is."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import CallerKey, ServicesDep
from gateway.api.pipeline import refuse_if_log_down, run_chat
from gateway.api.request import parse_chat_request, read_json_body
from gateway.proxy.streaming import EventStreamResponse
from gateway.translate.completions import answer_from_chat, request_to_chat, stream_from_chat

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request, services: ServicesDep, key: CallerKey) -> Response:
    started = time.perf_counter()
    refuse_if_log_down(services)
    body = await read_json_body(request, services.settings.max_body_bytes, services.settings.client_read_timeout_s)
    chat_body, wants_usage = request_to_chat(body)
    chat = parse_chat_request(chat_body, request.headers.get("x-poolgate-flags"))
    answer = await run_chat(services, key, chat, started, request)
    if answer.stream is not None:
        return EventStreamResponse(stream_from_chat(answer.stream, wants_usage), headers=answer.headers)
    if answer.parsed is None:
        return answer.openai_response()
    return Response(orjson.dumps(answer_from_chat(answer.parsed)), media_type="application/json",
                    headers=answer.headers)
