"""A backend's ``usage``, checked at the edge: only plausible token counts get into rows, limits and metrics.

A backend may send anything as ``usage``: a string, a list, counts that are strings, dicts, negative, or 10^12.
:func:`parse_usage` keeps a count only if it is a JSON integer (or an integral float) from 0 to
``MAX_REPORTED_TOKENS``; anything else is dropped, and the caller counts that side itself and marks the row's
usage as estimated. Nothing here raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Larger counts are not believed: a thousand times the largest context window offered today (~10^6 tokens).
MAX_REPORTED_TOKENS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts a backend reported and the gateway believes (None: missing or dropped)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    dropped: tuple[str, ...] = ()  # fields that were present but not plausible counts

    @property
    def complete(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None


NO_USAGE = Usage()


def token_count(value: Any) -> int | None:
    """``value`` as a token count, or None when it is not an integer from 0 to ``MAX_REPORTED_TOKENS``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def parse_usage(value: Any) -> Usage:
    """The believable counts of a ``usage`` value as sent (any JSON value; None when the backend sent none)."""
    if value is None:
        return NO_USAGE
    if not isinstance(value, dict):
        return Usage(dropped=("usage",))
    counts: dict[str, int | None] = {}
    dropped = []
    for name in ("prompt_tokens", "completion_tokens"):
        raw = value.get(name)
        counts[name] = token_count(raw)
        if raw is not None and counts[name] is None:
            dropped.append(name)
    return Usage(counts["prompt_tokens"], counts["completion_tokens"], tuple(dropped))
