"""Reading and checking a chat-completions request without re-validating the whole body.

What the gateway needs (model, messages, our ``poolgate`` extension) is checked here, and the types and ranges of the
fields it publishes (``gateway.api.fields``); every other field passes through to the backend untouched.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from gateway.api.fields import CHAT_FIELDS, CONTENT_PARTS, MESSAGE_FIELDS, check_fields
from gateway.errors import GatewayError
from gateway.errors import invalid_value as _bad
from gateway.proxy.tokens import count_prompt_tokens_off_loop
from routers.pricing import TokenCount, message_text, quick_prompt_tokens

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Deeper bodies get 400: the upstream encoder (orjson) stops at 255 levels, and no OpenAI request needs many.
MAX_JSON_DEPTH = 128
#: Longer model names get 400 rather than being echoed into errors and stored in every log row.
MAX_MODEL_CHARS = 256


@dataclass
class ChatRequest:
    payload: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    wants_usage: bool
    prompt_text: str
    required_capabilities: frozenset[str]
    request_flags: dict[str, Any] | None
    router_override: str | None
    #: ``poolgate.cache`` / ``poolgate.affinity`` of the body (None when absent; ``gateway.api.cached``)
    cache_opt: bool | None = None
    affinity_opt: bool | None = None

    def quick_prompt_tokens(self) -> TokenCount:
        """Cheap count to admit the request with (exact when small, else from the size): no tokenizing work
        is done for a request its key's limits refuse."""
        return quick_prompt_tokens(self.messages)

    async def prompt_tokens(self) -> TokenCount:
        """The prompt's tokens, counted off the event loop (estimated from the size past the bound)."""
        return await count_prompt_tokens_off_loop(self.messages)


async def read_json_body(request: Request, max_bytes: int, timeout_s: float = 30.0) -> Any:
    """The request body parsed as JSON: 415 for a non-JSON content type, 413 over ``max_bytes``, 400 if bad,
    408 when the client has not sent the whole body within ``timeout_s`` (a slow-body client holds nothing)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise GatewayError(415, f"unsupported content type {ctype or '(none)'!r}; send application/json",
                           code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise GatewayError(413, f"request body of {declared} bytes is over the limit of {max_bytes}",
                           code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise GatewayError(413, f"request body is over the limit of {max_bytes} bytes",
                                       code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise GatewayError(408, f"request body not received within {timeout_s:g} s", code="request_timeout") from None
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from None


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True when arrays/objects in ``value`` nest more than ``limit`` levels (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_chat_request(body: Any, header_flags: str | None = None) -> ChatRequest:
    """Check the fields the gateway relies on; errors name the parameter."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "body")
    if nesting_exceeds(body, MAX_JSON_DEPTH):
        raise _bad(f"request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string (a pool or backend name)", "model")
    if len(model) > MAX_MODEL_CHARS:
        raise _bad(f"'model' is longer than {MAX_MODEL_CHARS} characters; see GET /v1/models", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    _check_messages(messages)
    check_fields(CHAT_FIELDS, body)  # types and ranges of what gateway.api.schema publishes
    opts = body.get("stream_options")
    flags, router = _extension(body.get("poolgate"), header_flags)
    switches = _switches(body.get("poolgate"))
    return ChatRequest(
        payload=body,
        model=model,
        messages=messages,
        stream=body.get("stream") is True,  # null: the default
        wants_usage=bool(opts and opts.get("include_usage")),
        prompt_text=_routing_text(messages),
        required_capabilities=_capabilities(body, messages),
        request_flags=flags,
        router_override=router,
        cache_opt=switches.get("cache"),
        affinity_opt=switches.get("affinity"),
    )


def _check_messages(messages: list[Any]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]")
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:  # a list/dict role is unhashable
            raise _bad(f"messages[{i}].role must be one of {sorted(ROLES)}", f"messages[{i}].role")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"messages[{i}].content must be a string or an array of parts", f"messages[{i}].content")
        if isinstance(content, list):
            CONTENT_PARTS.check(f"messages[{i}].content", content)
        check_fields(MESSAGE_FIELDS, m, f"messages[{i}].")


def _extension(ext: Any, header_flags: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Flags from the ``X-Poolgate-Flags`` header, overridden key by key by the body's ``poolgate.flags``."""
    flags: dict[str, Any] = {}
    if header_flags:
        try:
            parsed = orjson.loads(header_flags)
        except orjson.JSONDecodeError:
            raise _bad("X-Poolgate-Flags header is not valid JSON", "X-Poolgate-Flags") from None
        if not isinstance(parsed, dict):
            raise _bad("X-Poolgate-Flags header must be a JSON object", "X-Poolgate-Flags")
        flags.update(parsed)
    router = None
    if ext is not None:
        if not isinstance(ext, dict):
            raise _bad("'poolgate' must be an object with 'flags', 'router', 'cache' and/or 'affinity'", "poolgate")
        unknown = set(ext) - {"flags", "router", *SWITCHES}
        if unknown:
            raise _bad(f"unknown poolgate field(s) {sorted(unknown)}", f"poolgate.{sorted(unknown)[0]}")
        body_flags = ext.get("flags")
        if body_flags is not None:
            if not isinstance(body_flags, dict):
                raise _bad("'poolgate.flags' must be an object", "poolgate.flags")
            flags.update(body_flags)
        router = ext.get("router")
        if router is not None and not isinstance(router, str):
            raise _bad("'poolgate.router' must be a string", "poolgate.router")
    return (flags or None), router


#: ``poolgate`` body fields that turn a per-request feature off (false) or ask for it (true)
SWITCHES = ("cache", "affinity")


def _switches(ext: Any) -> dict[str, bool]:
    """``poolgate.cache`` and ``poolgate.affinity``, each a boolean when given (``_extension`` checked the rest)."""
    out = {}
    for name in SWITCHES if isinstance(ext, dict) else ():
        value = ext.get(name)
        if value is not None and not isinstance(value, bool):
            raise _bad(f"'poolgate.{name}' must be a boolean", f"poolgate.{name}")
        if value is not None:
            out[name] = value
    return out


def _routing_text(messages: list[dict[str, Any]]) -> str:
    """What routers read: the last user message (the question being asked now)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m.get("content"))
    return message_text(messages[-1].get("content"))


def _capabilities(body: dict[str, Any], messages: list[dict[str, Any]]) -> frozenset[str]:
    caps = set()
    if body.get("tools") or body.get("functions"):
        caps.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        caps.add("json")
    for m in messages:
        content = m.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            caps.add("vision")
    return frozenset(caps)
