"""``POST /v1/feedback``: a quality label for one request, stored beside its log row (labels for retraining).

Body: ``{"request_id": str, "score": 0..1}`` or ``{"request_id", "thumbs": "up" | "down" | true | false}``
(up = 1.0, down = 0.0), optional ``comment`` and ``labeler``. Posting again for the same request id updates the
label (one row per request; ``created`` in the answer says which happened). ``GET /v1/feedback/{request_id}``
reads it back. Errors: 400 for a bad body or a score outside [0, 1], 404 for a request id the log does not hold
(or that another API key made).

The log row is written asynchronously, so a label may arrive before its row: the route then flushes the writer
and looks again before answering 404.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from gateway.api.deps import CallerKey, OnlineDep, RepositoryDep, WriterDep
from gateway.api.request import read_json_body
from gateway.errors import GatewayError
from gateway.errors import invalid_value as _bad
from gateway.limits.keys import KeyRecord
from gateway.store.repository import LogRepository
from gateway.store.writer import LogWriter

router = APIRouter()

MAX_BODY_BYTES = 64 * 1024
MAX_COMMENT_CHARS = 10_000
MAX_LABELER_CHARS = 200
_THUMBS = {"up": 1.0, "down": 0.0, True: 1.0, False: 0.0}


@dataclass(frozen=True)
class FeedbackIn:
    """A validated feedback body."""

    request_id: str
    score: float
    comment: str | None
    labeler: str | None


def _optional_text(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a string", key)
    if len(value) > limit:
        raise _bad(f"'{key}' is longer than {limit} characters", key)
    return value


def parse_feedback(body: Any) -> FeedbackIn:
    """Check a feedback body; :class:`GatewayError` 400 naming the bad field."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "body")
    unknown = set(body) - {"request_id", "score", "thumbs", "comment", "labeler"}
    if unknown:
        raise _bad(f"unknown field(s) {sorted(unknown)}", sorted(unknown)[0])
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 64:
        raise _bad("'request_id' must be the x-poolgate-request-id of a request (a string)", "request_id")
    if ("score" in body) == ("thumbs" in body):
        raise _bad("give exactly one of 'score' (a number in [0, 1]) or 'thumbs' ('up' or 'down')", "score")
    if "thumbs" in body:
        thumbs = body["thumbs"]
        if not isinstance(thumbs, str | bool) or thumbs not in _THUMBS:
            raise _bad("'thumbs' must be 'up' or 'down' (or true / false)", "thumbs")
        score = _THUMBS[thumbs]
    else:
        raw = body["score"]
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise _bad(f"'score' must be a number in [0, 1], got {raw!r}", "score")
        if not 0.0 <= raw <= 1.0:
            raise _bad(f"'score' must be in [0, 1], got {raw}", "score")
        score = float(raw)
    return FeedbackIn(request_id.strip(), score, _optional_text(body, "comment", MAX_COMMENT_CHARS),
                      _optional_text(body, "labeler", MAX_LABELER_CHARS))


async def find_request(repository: LogRepository, writer: LogWriter, request_id: str, key: KeyRecord | None) -> None:
    """Return if the caller may label ``request_id``; 404 otherwise (after flushing the writer once)."""
    exists, owner = await repository.request_owner(request_id)
    if not exists:  # the row may still sit in the writer's queue
        await writer.flush()
        exists, owner = await repository.request_owner(request_id)
    if not exists or (key is not None and not key.is_master and owner != key.id):
        raise GatewayError(404, f"no request with id {request_id!r} in the log", param="request_id",
                           code="request_not_found")


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"object": "feedback", **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}}


@router.post("/v1/feedback")
async def post_feedback(request: Request, repository: RepositoryDep, writer: WriterDep, online: OnlineDep,
                        key: CallerKey) -> JSONResponse:
    """Label a request (see the module docstring); answers the stored label and whether it was created."""
    fb = parse_feedback(await read_json_body(request, MAX_BODY_BYTES))
    await find_request(repository, writer, fb.request_id, key)
    created, stored = await repository.upsert_feedback(fb.request_id, fb.score, fb.comment, fb.labeler)
    pool, backend, prompt = await repository.labelled_request(fb.request_id)
    if pool and backend and prompt:  # the pool's online router, if it has one, learns from it (needs store_prompts)
        await online.learn(pool, prompt, backend, fb.score)
    return JSONResponse({**_view(stored), "created": created}, status_code=201 if created else 200)


@router.get("/v1/feedback/{request_id}")
async def get_feedback(request_id: str, repository: RepositoryDep, writer: WriterDep,
                       key: CallerKey) -> JSONResponse:
    """The label of one request; 404 when the request or its label does not exist."""
    await find_request(repository, writer, request_id, key)
    stored = await repository.feedback(request_id)
    if stored is None:
        raise GatewayError(404, f"request {request_id!r} has no feedback yet", param="request_id",
                           code="feedback_not_found")
    return JSONResponse(_view(stored))
