"""What makes two requests "the same": the digests the response cache and session affinity key their entries by.

Every digest includes the pool and the tenant scope (the caller's key id), so no entry is ever found across tenants.
A request body is normalized before hashing: keys sorted at every level (orjson ``OPT_SORT_KEYS``), and the fields
that cannot change the answer dropped (:data:`IGNORED_FIELDS`: how it is delivered, who the end user is, what is
stored with it). The flags and the router the request asked for stay in: they change who answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from routers.pricing import message_text

#: Body fields that do not change the answer: delivery (``stream``, ``stream_options``), attribution (``user``,
#: ``metadata``), storage (``store``) and poolgate's own extension (whose flags are hashed separately).
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store", "poolgate"})


def _digest(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def normalized(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The body without :data:`IGNORED_FIELDS` (``null`` fields dropped too: null means the default)."""
    return {k: v for k, v in payload.items() if k not in IGNORED_FIELDS and v is not None}


def last_user_index(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Position of the last user message (the question asked now), None when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return None


def exact_key(pool: str, scope: str, payload: Mapping[str, Any], flags: Any, router: str | None) -> str:
    """The exact-match key: the whole normalized body, the request's flags and router, pool and tenant."""
    return _digest("exact", pool, scope, normalized(payload), flags, router)


def context_key(pool: str, scope: str, payload: Mapping[str, Any], flags: Any, router: str | None) -> str:
    """The key of a request *without its last user message's text*: semantic lookup compares only that text's
    embedding, among entries whose context (earlier messages, that message's other parts such as images,
    parameters, flags, pool, tenant) is this one's."""
    body = normalized(payload)
    messages = list(body.get("messages") or [])
    i = last_user_index(messages)
    if i is not None:  # its text goes; any other part (an image) stays in the context, compared exactly
        content = messages[i].get("content")
        rest = [p for p in content if not (isinstance(p, dict) and p.get("type", "text") == "text")] \
            if isinstance(content, list) else None
        messages[i] = {**messages[i], "content": rest}
    body["messages"] = messages
    return _digest("context", pool, scope, body, flags, router)


def _turns(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Messages as (role, text): what a client replays of a conversation is compared, not how it formats it."""
    return [(str(m.get("role")), message_text(m.get("content"))) for m in messages]


def conversation_prefix(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]] | None:
    """The messages before the last user message, when they hold an earlier turn (a user or assistant message);
    None for a first turn, whose prefix (at most a system prompt) many conversations share."""
    i = last_user_index(messages)
    prefix = list(messages[:i]) if i is not None else []
    return prefix if any(m.get("role") not in ("system", "developer") for m in prefix) else None


def session_digest(pool: str, scope: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """The derived session key of a conversation whose messages so far are ``messages``."""
    return _digest("session", pool, scope, _turns(messages))


def explicit_session_key(pool: str, scope: str, session: str) -> str:
    """The session key of an ``x-poolgate-session`` header value."""
    return _digest("session-header", pool, scope, session)
