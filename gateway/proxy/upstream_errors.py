"""A backend's error answer, relayed to the client as the backend sent it.

A 4xx that is the request's fault (``gateway.proxy.dispatch`` does not fall back on it) reaches the client with the
backend's status and the four OpenAI error fields the backend sent: ``message``, ``type``, ``param``, ``code``,
each scrubbed of secrets (``gateway.proxy.scrub``). Which backend answered is said by the ``x-poolgate-backend`` header,
not by rewriting the body. Only what is missing or not of the spec's type is filled in: a missing ``type`` becomes
the status's OpenAI type, an integer ``code`` (vLLM sends the status so) its string, anything else null.
Other fields of the backend's error are dropped: the body stays a valid OpenAI ``ErrorResponse``.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import openai_error_type
from gateway.proxy.scrub import scrub_secrets


def upstream_error_object(body: bytes) -> dict[str, Any] | None:
    """The error object of an upstream error body: OpenAI's ``{"error": {...}}``, ``{"error": "text"}``, or vLLM's
    top-level ``{"object": "error", "message": ...}``; None when the body is none of these (HTML, empty, ...)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    if err is None and isinstance(data.get("message"), str):
        return data
    return None


def upstream_message(status: int, body: bytes) -> str:
    """What an upstream error says, for the attempt log: ``upstream HTTP <status>: <message or body preview>``."""
    err = upstream_error_object(body)
    msg = err.get("message") if err is not None else None
    return f"upstream HTTP {status}: {msg if isinstance(msg, str) else body[:200].decode('utf-8', 'replace')}"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def relayed_error_body(status: int, body: bytes, secret: str | None) -> bytes:
    """The client's body for a backend's error answer (see the module docstring)."""
    err = upstream_error_object(body) or {}
    message = _text(err.get("message")) or upstream_message(status, body)
    code = err.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    fields = {"message": message, "type": _text(err.get("type")) or openai_error_type(status),
              "param": _text(err.get("param")), "code": _text(code)}
    return orjson.dumps({"error": {k: scrub_secrets(v, secret) if v is not None else None for k, v in fields.items()}})
