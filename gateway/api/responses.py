"""``POST /v1/responses``: the OpenAI Responses API over the chat pipeline.

The request is translated to chat completions (``gateway.translate.responses``), after the stored conversation of
``previous_response_id``, and goes through the same ``run_chat`` as ``/v1/chat/completions`` (router, objective,
flags, limits, one log row). A completed response's conversation is stored for the caller's key unless
``store`` is false (``gateway.translate.store``: in process, per replica, bounded).
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
from gateway.errors import GatewayError
from gateway.limits.keys import KeyRecord
from gateway.proxy.streaming import EventStreamResponse
from gateway.translate.responses import (
    answer_from_chat,
    assistant_message,
    check_request,
    input_messages,
    new_shell,
    request_to_chat,
    stream_from_chat,
)
from gateway.translate.store import ResponseStore

router = APIRouter()


def _history(store: ResponseStore, scope: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    prev = body.get("previous_response_id")
    if prev is None:
        return []
    found = store.get(scope, prev) if isinstance(prev, str) else None
    if found is None:
        raise GatewayError(400, f"previous response {prev!r} is not stored for this key on this gateway replica "
                           f"(responses are kept in process, per replica, the most recent "
                           f"{store.max_entries})", param="previous_response_id", code="previous_response_not_found")
    return found


@router.post("/v1/responses")
async def responses(request: Request, services: ServicesDep, key: CallerKey) -> Response:
    started = time.perf_counter()
    refuse_if_log_down(services)
    body = check_request(await read_json_body(request, services.settings.max_body_bytes,
                                              services.settings.client_read_timeout_s))
    scope = _scope(key)
    history = _history(services.responses, scope, body)
    new = input_messages(body)
    chat = parse_chat_request(request_to_chat(body, history, new), request.headers.get("x-poolgate-flags"))
    answer = await run_chat(services, key, chat, started, request)
    if answer.stream is None and answer.parsed is None:
        return answer.openai_response()
    shell = new_shell(answer.headers.get("x-poolgate-request-id", ""), chat.model, body)

    def keep(response: dict[str, Any]) -> None:
        if body.get("store") is not False:
            services.responses.put(scope, response["id"], [*history, *new, assistant_message(response["output"])])

    if answer.stream is not None:
        return EventStreamResponse(stream_from_chat(answer.stream, shell, keep), headers=answer.headers)
    assert answer.parsed is not None
    response = answer_from_chat(answer.parsed, shell)
    keep(response)
    return Response(orjson.dumps(response), media_type="application/json", headers=answer.headers)


def _scope(key: KeyRecord | None) -> str:
    """Whose responses a request may continue: its key's (everyone's when auth is off)."""
    return key.id if key is not None else ""
