"""OpenAI-compatible chat completions that replay recorded answers (plain Starlette: nothing to validate
beyond a few fields, and it keeps the backend's own overhead negligible next to the gateway's).

Routes: ``POST /v1/chat/completions`` (model from the body), ``POST /{model}/v1/chat/completions``
(model from the path, so a pool entry's ``base_url`` can be ``http://host:port/mixtral-8x7b/v1``),
``GET /v1/models``, ``GET /{model}/v1/models`` and ``GET /health``. Every completion carries
``x-replay-match`` (exact|nearest), ``x-replay-similarity`` and ``x-replay-correct`` (the source's
grading of the replayed answer).

The judge model ``replay-judge`` (alias ``judge``, so also ``POST /judge/v1/chat/completions``) reads the
rubric prompt (``gateway.judge.rubric``) and answers ``{"score": 1.0 | 0.0, "reason"}`` from the record's real
correctness, or ``{"score": null, "reason"}`` when it cannot tell (see ``ReplayStore.grade``); header
``x-replay-judge``: ``scored`` | ``unknown``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.judge.rubric import parse_judge_prompt
from gateway.replay.data import JUDGE_ALIASES, JUDGE_MODEL, MODEL_SOURCES, PromptMatch, ReplayStore
from gateway.replay.tokens import content_text, decode, split_pieces, truncate
from routers.pricing import count_prompt_tokens, encoding

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}


class ReplayError(Exception):
    """A client error, answered as OpenAI error JSON ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> Response:
        kind = _ERROR_TYPES.get(self.status, "server_error")
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return Response(orjson.dumps(body), status_code=self.status, media_type="application/json")


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat completion request the replay backend uses."""

    model: str  # served name (aliases resolved)
    messages: list[dict[str, Any]]
    prompt: str  # text of the last user message
    max_tokens: int | None
    stream: bool
    include_usage: bool


def parse_chat_request(body: bytes, path_model: str | None, store: ReplayStore) -> ChatRequest:
    """Validate a request body; the path's model, when given, overrides the body's. Raises ReplayError."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReplayError(400, f"request body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReplayError(400, "request body must be a JSON object")
    requested = path_model if path_model is not None else data.get("model")
    if not isinstance(requested, str) or not requested:
        raise ReplayError(400, "'model' is required", param="model")
    model = JUDGE_MODEL if requested in JUDGE_ALIASES else store.resolve(requested)
    if model is None:
        served = ", ".join(store.models)
        raise ReplayError(
            404,
            f"The model '{requested}' does not exist here; served: {served}",
            param="model",
            code="model_not_found",
        )
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ReplayError(400, "'messages' must be a non-empty list of message objects", param="messages")
    users = [m for m in messages if m.get("role") == "user"]
    prompt = content_text(users[-1].get("content")) if users else None
    if prompt is None:
        raise ReplayError(
            400, "'messages' needs a user message with string or text-part content", param="messages"
        )
    # OpenAI's spec lets these fields be null, which means their default
    limit_param = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(limit_param)
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise ReplayError(400, f"'{limit_param}' must be a positive integer", param=limit_param)
    if data.get("n") not in (None, 1):
        raise ReplayError(400, "this replay backend returns exactly one choice (n=1)", param="n")
    stream = data.get("stream") or False
    options = data.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise ReplayError(400, "'stream' must be a boolean and 'stream_options' an object", param="stream")
    return ChatRequest(model, messages, prompt, max_tokens, stream, bool(options.get("include_usage")))


class ReplayService:
    """Request handlers over one store; pacing: ``latency_ms`` before the first byte, then
    ``ms_per_token`` per completion token (between stream pieces, or in total before a JSON answer)."""

    def __init__(self, store: ReplayStore, latency_ms: float, ms_per_token: float, tokens_per_chunk: int):
        self.store = store
        self.latency_s = max(0.0, latency_ms) / 1000.0
        self.s_per_token = max(0.0, ms_per_token) / 1000.0
        self.tokens_per_chunk = max(1, tokens_per_chunk)
        self.enc = encoding()

    async def chat(self, request: Request) -> Response:
        try:
            req = parse_chat_request(await request.body(), request.path_params.get("model"), self.store)
        except ReplayError as exc:
            return exc.response()
        if req.model == JUDGE_MODEL:
            return await self._judge(req)
        found = self.store.match(req.prompt)
        record = self.store.records[found.row]
        tokens, cut = truncate(record.answers[req.model], req.max_tokens, self.enc)
        prompt_tokens = count_prompt_tokens(req.messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        headers = _match_headers(found, record.correct[req.model])
        base = {"id": f"chatcmpl-replay-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
        finish = "length" if cut else "stop"
        if req.stream:
            await asyncio.sleep(self.latency_s)
            headers["cache-control"] = "no-cache"
            events = self._events(base, tokens, finish, usage if req.include_usage else None)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        await asyncio.sleep(self.latency_s + self.s_per_token * len(tokens))
        body = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    # refusal: required by OpenAI's spec (null unless the model refused), as OpenAI sends it
                    "message": {"role": "assistant", "content": decode(tokens, self.enc), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    async def _judge(self, req: ChatRequest) -> Response:
        """A verdict on the rubric prompt's (question, answer), from the record's real correctness."""
        parts = parse_judge_prompt(req.prompt)
        if parts is None:
            correct, reason = None, "the prompt is not the judge rubric (no <question>/<answer> blocks)"
        else:
            correct, reason = self.store.grade(*parts)
        score = None if correct is None else (1.0 if correct else 0.0)
        content = orjson.dumps({"score": score, "reason": reason}).decode()
        prompt_tokens = count_prompt_tokens(req.messages)
        completion_tokens = len(self.enc.encode(content))
        await asyncio.sleep(self.latency_s)
        body = {
            "id": f"chatcmpl-replay-{uuid.uuid4().hex}", "created": int(time.time()), "model": JUDGE_MODEL,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        headers = {"x-replay-judge": "unknown" if score is None else "scored"}
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    async def _events(
        self, base: dict[str, Any], tokens: list[int], finish: str, usage: dict[str, int] | None
    ) -> AsyncIterator[bytes]:
        """SSE: a role chunk, content pieces, a finish chunk, the usage chunk if asked, ``[DONE]``."""
        extra = {"usage": None} if usage is not None else {}

        def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra, **more}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        yield event([choice({"role": "assistant", "content": "", "refusal": None})])
        for text, n_tokens in split_pieces(tokens, self.tokens_per_chunk, self.enc):
            if self.s_per_token:
                await asyncio.sleep(self.s_per_token * n_tokens)
            yield event([choice({"content": text})])
        yield event([choice({}, finish)])
        if usage is not None:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    async def models(self, request: Request) -> Response:
        path_model = request.path_params.get("model")
        names = [*self.store.models, JUDGE_MODEL]
        if path_model is not None:
            resolved = JUDGE_MODEL if path_model in JUDGE_ALIASES else self.store.resolve(path_model)
            if resolved is None:
                return ReplayError(
                    404,
                    f"The model '{path_model}' does not exist here",
                    param="model",
                    code="model_not_found",
                ).response()
            names = [resolved]
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "poolgate-replay",
                "recorded_by": MODEL_SOURCES.get(name, "the source's grading (judge)"),
            }
            for name in names
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def health(self, request: Request) -> Response:
        body = {
            "status": "ok",
            "prompts": len(self.store),
            "models": list(self.store.models),
            "source": self.store.source,
        }
        return Response(orjson.dumps(body), media_type="application/json")


def _match_headers(found: PromptMatch, correct: bool) -> dict[str, str]:
    return {
        "x-replay-match": found.kind,
        "x-replay-similarity": f"{found.similarity:.3f}",
        "x-replay-correct": "true" if correct else "false",
    }


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ReplayError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()


async def _unexpected(request: Request, exc: Exception) -> Response:  # last resort: still OpenAI JSON
    return ReplayError(500, f"internal error ({type(exc).__name__})").response()


def create_replay_app(
    store: ReplayStore, latency_ms: float = 0.0, ms_per_token: float = 0.0, tokens_per_chunk: int = 4
) -> Starlette:
    """An ASGI app replaying ``store``'s answers as OpenAI chat completions (see the module docstring)."""
    service = ReplayService(store, latency_ms, ms_per_token, tokens_per_chunk)
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/{model}/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/{model}/v1/models", service.models, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _unexpected})
