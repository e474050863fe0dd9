"""Secrets out of upstream text before it reaches a client or a log row.

Some providers echo the key they were sent, in error messages (``invalid key 'Bearer sk-...'``), plain or inside
a streamed error event. Two rules, applied to every upstream byte the gateway passes on:

- the backend's own key (the one secret the gateway sends it) is replaced wherever it appears: answers, error
  bodies, every SSE event, probe results;
- any ``Bearer <token>`` is replaced in error text only (error bodies, error events, the gateway's own error
  messages), because a model's answer may legitimately contain one (a code sample) and must reach the client
  unchanged.
"""

from __future__ import annotations

import re

MASK = "***"
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{6,}")
_BEARER_BYTES = re.compile(rb"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{6,}")


def scrub_secrets(text: str, *secrets: str | None) -> str:
    """Error ``text`` without the given secrets or any ``Bearer <token>``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return _BEARER.sub("Bearer " + MASK, text)


class Scrubber:
    """Scrubs the bytes relayed from one backend whose key is ``secret`` (None: a backend without a key)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret.encode() if secret else None

    def answer(self, data: bytes) -> bytes:
        """Answer bytes (a completion, an ordinary event): the key replaced, nothing else touched."""
        if self._secret is not None and self._secret in data:
            return data.replace(self._secret, MASK.encode())
        return data

    def error(self, data: bytes) -> bytes:
        """Error bytes (an error body or event): the key and any ``Bearer <token>`` replaced."""
        return _BEARER_BYTES.sub(b"Bearer " + MASK.encode(), self.answer(data))


NO_SECRET = Scrubber(None)
