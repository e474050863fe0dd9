"""The chat pipeline every inference route shares: admit, route, dispatch, relay, finish one log row.

``POST /v1/chat/completions`` answers with what :func:`run_chat` returns as it is; the drop-in routes
(``/v1/messages``, ``/v1/responses``, ``/v1/completions``) translate their request into a
:class:`~gateway.api.request.ChatRequest`, call the same :func:`run_chat` (so the same router, objective, flags,
limits, fallback and log row), and translate the :class:`ChatAnswer` back (``gateway.translate``). The backend's
``usage`` is checked at this edge (``gateway.proxy.usage``): counts that are not plausible integers are dropped,
counted by the gateway instead, and the row says ``usage_estimated``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.access_log import RECORD_STATE_KEY
from gateway.api.cached import after_answer, answer_headers, cache_lookup, hit_answer, stick
from gateway.api.request import ChatRequest
from gateway.errors import GatewayError
from gateway.limits.keys import KeyRecord
from gateway.proxy.dispatch import AllBackendsFailed, NativeRequest, UpstreamResult
from gateway.proxy.streaming import EventStreamResponse, StreamOutcome, relay
from gateway.proxy.tokens import count_tokens_off_loop
from gateway.proxy.usage import detail_fields, parse_usage_of
from gateway.record import RequestRecord
from gateway.routing.service import OPENAI_ONLY, RouteDecision
from gateway.services import Services
from gateway.tracing import route_attributes
from gateway.translate.to_anthropic import answer_to_chat, untranslatable
from routers.pricing import message_text, usage_cost_usd


def refuse_if_log_down(services: Services) -> None:
    """spool_full_policy=refuse: serve nothing that cannot be logged."""
    if services.writer.refusing:
        raise GatewayError(503, "the request log is down and its local spool is full; try again later",
                           code="log_store_unavailable", headers={"retry-after": "5"})


def gateway_headers(
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


@dataclass
class ChatAnswer:
    """What the pipeline produced, in chat-completions terms. Exactly one of: ``error`` (the gateway's own),
    ``body`` without ``parsed`` (a backend's 4xx relayed as OpenAI error JSON), ``parsed`` (a whole answer, also in
    ``body``), ``stream`` (the relayed chat-completions event stream, bytes as the client would get them)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    error: GatewayError | None = None
    body: bytes = b""
    parsed: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    api: str = "openai"  # the answering backend's: "anthropic" is a passed-through Messages answer or stream

    def error_fields(self) -> tuple[str, str, str | None, str | None]:
        """(message, type, param, code) of an error answer, the gateway's or a relayed backend's."""
        if self.error is not None:
            return self.error.message, self.error.type, self.error.param, self.error.code
        try:
            err = orjson.loads(self.body).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            err = {}
        if not isinstance(err, dict):
            err = {}
        def text(name: str) -> str | None:
            value = err.get(name)
            return value if isinstance(value, str) else None

        return (text("message") or f"upstream HTTP {self.status}", text("type") or "invalid_request_error",
                text("param"), text("code"))

    def openai_response(self) -> Response:
        """The answer as ``/v1/chat/completions`` sends it."""
        if self.error is not None:
            return self.error.response(self.headers)
        if self.stream is not None:
            return EventStreamResponse(self.stream, headers=self.headers)
        return Response(self.body, status_code=self.status, media_type="application/json", headers=self.headers)


def chat_apis(payload: dict[str, Any]) -> frozenset[str]:
    """The backend ``api`` values that may serve a chat request: ``api: anthropic`` ones (translated) unless it
    uses what the Messages API has no equivalent for (``gateway.translate.to_anthropic.untranslatable``)."""
    return OPENAI_ONLY if untranslatable(payload) else frozenset({"openai", "anthropic"})


def new_record(request_id: str, chat: ChatRequest, services: Services) -> RequestRecord:
    return RequestRecord(id=request_id, model_requested=chat.model, stream=chat.stream,
                         prompt_text=chat.prompt_text if services.settings.store_prompts else None)


def record_decision(record: RequestRecord, decision: RouteDecision) -> None:
    record.pool, record.router, record.router_version = decision.pool, decision.router, decision.router_version
    record.candidates = decision.candidates
    record.flags = decision.flags.as_dict() if decision.flags is not None else None
    record.propensity, record.policy = decision.propensity, decision.policy


def record_backend(record: RequestRecord, decision: RouteDecision | None, backend: str | None) -> None:
    """Set the backend that answered (or failed last). When a fallback answered instead of the chosen backend,
    the probability of *that* backend answering is unknown: the propensity becomes NULL, and off-policy
    estimators leave the row out rather than weight it by a wrong probability."""
    record.backend = backend
    if decision is not None and decision.ranking and backend != decision.ranking[0].name:
        record.propensity = None


def finish_error(
    services: Services, record: RequestRecord, started: float, status: int, etype: str, msg: str
) -> None:
    record.finish(status="error", http_status=status, error_type=etype, error_message=msg[:2000],
                  latency_ms=(time.perf_counter() - started) * 1000)
    services.finish(record)


async def run_chat(
    services: Services, key: KeyRecord | None, chat: ChatRequest, started: float, request: Request,
    native: NativeRequest | None = None,
) -> ChatAnswer:
    """Admit, route and dispatch ``chat``; the answer, with its log row handed on (plain, error) or handed on when
    the stream ends. The record is on ``request.state`` for the access log; the request has its trace span.
    With ``native`` (a Messages request as sent), ``api: anthropic`` backends may serve it too, passed through."""
    request_id = uuid.uuid4().hex
    record = new_record(request_id, chat, services)
    setattr(request.state, RECORD_STATE_KEY, record)  # the access log's line reads routing and usage from it
    services.tracing.start_request(request_id, chat.model, chat.payload, chat.stream)
    try:
        with services.tracing.request_context(request_id):
            return await _serve(services, key, chat, record, started, request.headers, native)
    except BaseException as exc:  # a bug or a cancelled task: end the span rather than keep it open for ever
        services.tracing.abandon(request_id, exc)
        raise


async def _serve(
    services: Services, key: KeyRecord | None, chat: ChatRequest, record: RequestRecord, started: float,
    request_headers: Mapping[str, str], native: NativeRequest | None = None,
) -> ChatAnswer:
    """Admit, route, dispatch and answer one parsed chat request (inside its trace span)."""
    request_id = record.id
    decision: RouteDecision | None = None
    try:
        # admitted on a cheap count first: a key over its limits costs no tokenizing (a 4 MB word: seconds)
        quick = chat.quick_prompt_tokens()
        admitted = await services.tenancy.admit(key, chat.model, chat.payload, quick.tokens, record)
        # None: the pool has no cache, or the request uses Messages-only parameters its chat form (the key) lacks
        cached = None if native is not None and native.only else await cache_lookup(services, key, chat,
                                                                                    request_headers)
        if cached is not None and cached.hit is not None:  # no routing, no upstream call
            return ChatAnswer(200, **await hit_answer(services, record, cached, chat, started, key, request_headers))
        prompt_tokens = quick.tokens if not quick.estimated else (await chat.prompt_tokens()).tokens
        with services.tracing.span("poolgate.route") as span:
            decision = await services.routing.route(
                chat.model, chat.prompt_text, prompt_tokens, chat.required_capabilities,
                request_flags=chat.request_flags, router_override=chat.router_override,
                key_flags=admitted.key_flags, adjust_flags=admitted.adjust_flags,
                apis=native.apis() if native is not None else chat_apis(chat.payload),
            )
            if span is not None:
                span.set_attributes(route_attributes(decision))
        record_decision(record, decision)
        decision, session = await stick(services, decision, record, key, chat, request_headers)  # affinity
        services.shadow.start(request_id, decision, chat.prompt_text, prompt_tokens)  # computed while it answers
        result = await services.dispatcher.dispatch(decision.ranking, chat.payload, chat.stream, decision.fallback,
                                                    native=native)
    except GatewayError as exc:
        finish_error(services, record, started, exc.status, exc.type, exc.message)
        return ChatAnswer(exc.status, gateway_headers(request_id, decision, None, None), error=exc)
    except AllBackendsFailed as exc:
        record.attempts = exc.attempts
        record_backend(record, decision, exc.attempts[-1]["backend"] if exc.attempts else None)
        finish_error(services, record, started, exc.status, "upstream_error", exc.message)
        wait = {"retry-after": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None
        err = GatewayError(exc.status, exc.message, code="all_backends_failed", headers=wait)
        return ChatAnswer(exc.status, {**err.headers, **gateway_headers(request_id, decision, record.backend, None)},
                          error=err)
    record_backend(record, decision, result.backend.name)
    record.attempts = result.attempts
    answered_by = (result.parsed or {}).get("model") if result.parsed is not None else None
    services.tracing.annotate(request_id, {"gen_ai.response.model": str(answered_by or result.backend.model)})
    if result.stream is not None:
        answer = _stream_answer(services, chat, record, result, decision, started, prompt_tokens)
    else:
        answer = await _plain_answer(services, record, result, decision, started, prompt_tokens, chat.prompt_text,
                                     chat.payload)
    kept = answer_to_chat(answer.parsed) if answer.api == "anthropic" and answer.parsed is not None else answer.parsed
    answer.stream = after_answer(services, kept, answer.stream, record, cached, session)  # keep it (in chat form)
    answer.headers.update(answer_headers(cached, record))
    return answer


def answer_text(parsed: dict[str, Any]) -> str:
    """The content of every choice's message, or an Anthropic answer's text blocks (what completion tokens are
    counted from without usage)."""
    if isinstance(parsed.get("content"), list):
        return message_text(parsed["content"])
    choices = parsed.get("choices")
    parts = []
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


async def _plain_answer(
    services: Services, record: RequestRecord, result: UpstreamResult, decision: RouteDecision, started: float,
    prompt_tokens: int, chat_prompt: str, payload: dict[str, Any] | None = None,
) -> ChatAnswer:
    latency_ms = (time.perf_counter() - started) * 1000
    headers = gateway_headers(record.id, decision, result.backend.name, None) | result.passed_headers
    if result.parsed is None:  # an error passed through (a 4xx that is the request's fault)
        record.finish(status="error", http_status=result.status, latency_ms=latency_ms, error_type="upstream_error",
                      error_message=result.body[:2000].decode("utf-8", "replace"))
        services.finish(record)
        return ChatAnswer(result.status, headers, body=result.body)
    usage = parse_usage_of(result.api, result.parsed.get("usage"))
    text = answer_text(result.parsed)
    c_tok = usage.completion_tokens if usage.completion_tokens is not None else (
        await count_tokens_off_loop(text))  # an answer of up to 16 MiB: not on the event loop
    tokens = usage.settled(prompt_tokens, c_tok)
    cost = usage_cost_usd(result.backend, tokens)
    record.finish(status="ok", http_status=result.status, prompt_tokens=tokens.prompt_tokens,
                  completion_tokens=tokens.completion_tokens, **detail_fields(tokens),
                  usage_estimated=not usage.complete, cost_usd=cost, latency_ms=latency_ms,
                  response_text=text if services.settings.store_responses else None)
    services.finish(record)
    # queued for the pool's judge, if any: never waited for (an explored request may also get its top choice's
    # answer judged, from the same payload, off the request path)
    services.judge.offer(record, chat_prompt, text, decision.top_choice, payload)
    headers["x-poolgate-cost-usd"] = f"{cost:.8f}"
    if not usage.complete:
        headers["x-poolgate-cost-estimated"] = "true"
    return ChatAnswer(result.status, headers, body=result.body, parsed=result.parsed, api=result.api)


def _stream_answer(
    services: Services, chat: ChatRequest, record: RequestRecord, result: UpstreamResult,
    decision: RouteDecision, started: float, prompt_tokens: int,
) -> ChatAnswer:
    backend = result.backend
    stream_span = services.tracing.start_child(record.id, "poolgate.stream", {"poolgate.backend": backend.name})

    def on_finish(out: StreamOutcome) -> None:
        usage = parse_usage_of(result.api, out.usage)
        tokens = usage.settled(prompt_tokens, usage.completion_tokens if usage.completion_tokens is not None
                               else out.counted_completion_tokens())
        c_tok = tokens.completion_tokens
        error_type = None
        if out.error:
            error_type = "client_disconnected" if out.client_disconnected else out.error_code
        record.finish(
            status="error" if out.error else "ok", http_status=200, prompt_tokens=tokens.prompt_tokens,
            completion_tokens=c_tok, **detail_fields(tokens), usage_estimated=not usage.complete,
            cost_usd=usage_cost_usd(backend, tokens),
            latency_ms=(time.perf_counter() - started) * 1000, ttft_ms=out.ttft_ms, error_type=error_type,
            error_message=out.error, response_text=out.text() if services.settings.store_responses else None,
        )
        if stream_span is not None:
            stream_span.set_attributes({"gen_ai.usage.output_tokens": c_tok, "poolgate.ttft_ms": out.ttft_ms or 0.0,
                                        "error.type": error_type or ""})
            stream_span.end()
        services.finish(record)

    estimate = next(
        (c.get("expected_cost_usd") for c in decision.candidates if c.get("backend") == backend.name), None
    )
    headers = gateway_headers(record.id, decision, backend.name, estimate) | result.passed_headers
    headers["x-poolgate-cost-estimated"] = "true"
    assert result.stream is not None
    body = relay(result.stream, result.response, started, chat.wants_usage, on_finish, result.scrubber, result.api)
    return ChatAnswer(200, headers, stream=body, api=result.api)
