"""A backend's ``usage``, checked at the edge: only plausible token counts get into rows, limits and metrics.

A backend may send anything as ``usage``: a string, a list, counts that are strings, dicts, negative, or 10^12.
:func:`parse_usage` keeps a count only if it is a JSON integer (or an integral float) from 0 to
``MAX_REPORTED_TOKENS``; anything else is dropped, and the caller counts that side itself and marks the row's
usage as estimated. Nothing here raises.

Detail counts are checked the same way and against their total: OpenAI's
``prompt_tokens_details.cached_tokens`` (at most ``prompt_tokens``) and
``completion_tokens_details.reasoning_tokens`` (at most ``completion_tokens``), and cache writes as LiteLLM and
OpenAI-compatible Anthropic proxies report them (``cache_creation_input_tokens`` at the top level, or
``prompt_tokens_details.cache_write_tokens``). A detail that is not a plausible count, or more than its total, is
dropped (0, and the usage is not ``complete``: the row says ``usage_estimated``), never believed.

:func:`parse_anthropic_usage` reads Anthropic's ``usage`` (``input_tokens`` excludes the cache reads and writes,
which come as ``cache_read_input_tokens`` and ``cache_creation_input_tokens``) into the same OpenAI-convention
:class:`Usage`: prompt tokens = input + cache read + cache write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypedDict

from routers.pricing import TokenUsage

#: Larger counts are not believed: a thousand times the largest context window offered today (~10^6 tokens).
MAX_REPORTED_TOKENS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts a backend reported and the gateway believes (None: missing or dropped). The details are parts
    of their totals (OpenAI's convention), 0 when not reported or dropped."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    dropped: tuple[str, ...] = ()  # fields that were present but not plausible counts
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def complete(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None and not self.dropped

    def settled(self, prompt_tokens: int, completion_tokens: int) -> TokenUsage:
        """The counts a row is finished with: the reported ones, the gateway's own where one is missing (details
        then stay only while they fit in the total used)."""
        p = self.prompt_tokens if self.prompt_tokens is not None else prompt_tokens
        c = self.completion_tokens if self.completion_tokens is not None else completion_tokens
        cached = self.cached_tokens if self.cached_tokens + self.cache_write_tokens <= p else 0
        write = self.cache_write_tokens if cached + self.cache_write_tokens <= p else 0
        return TokenUsage(p, c, cached, write, self.reasoning_tokens if self.reasoning_tokens <= c else 0)


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


def _detail(raw: Any, name: str, dropped: list[str]) -> int:
    """A detail count (0 when absent); a present one that is not a plausible count is dropped and named."""
    if raw is None:
        return 0
    count = token_count(raw)
    if count is None:
        dropped.append(name)
        return 0
    return count


def _within(value: int, total: int | None, name: str, dropped: list[str]) -> int:
    """``value`` if it fits in ``total`` (a detail is a part of it), else dropped."""
    if total is not None and value > total:
        dropped.append(name)
        return 0
    return value


def _sub(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def parse_usage(value: Any) -> Usage:
    """The believable counts of an OpenAI ``usage`` value as sent (any JSON value; None when the backend sent
    none)."""
    if value is None:
        return NO_USAGE
    if not isinstance(value, dict):
        return Usage(dropped=("usage",))
    counts: dict[str, int | None] = {}
    dropped: list[str] = []
    for name in ("prompt_tokens", "completion_tokens"):
        raw = value.get(name)
        counts[name] = token_count(raw)
        if raw is not None and counts[name] is None:
            dropped.append(name)
    prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
    pd, cd = value.get("prompt_tokens_details"), value.get("completion_tokens_details")
    cached = _detail(_sub(pd, "cached_tokens"), "prompt_tokens_details.cached_tokens", dropped)
    write_raw = value.get("cache_creation_input_tokens", _sub(pd, "cache_write_tokens"))
    write = _detail(write_raw, "cache_write_tokens", dropped)
    reasoning = _detail(_sub(cd, "reasoning_tokens"), "completion_tokens_details.reasoning_tokens", dropped)
    cached = _within(cached, prompt, "prompt_tokens_details.cached_tokens", dropped)
    write = _within(write, None if prompt is None else prompt - cached, "cache_write_tokens", dropped)
    reasoning = _within(reasoning, completion, "completion_tokens_details.reasoning_tokens", dropped)
    return Usage(prompt, completion, tuple(dropped), cached, write, reasoning)


def parse_anthropic_usage(value: Any) -> Usage:
    """Anthropic's ``usage`` (a Messages answer's, or a stream's message_start merged with its message_delta)
    as an OpenAI-convention :class:`Usage`: prompt = input + cache read + cache write."""
    if value is None:
        return NO_USAGE
    if not isinstance(value, dict):
        return Usage(dropped=("usage",))
    dropped: list[str] = []
    counts = {}
    for name in ("input_tokens", "output_tokens"):
        raw = value.get(name)
        counts[name] = token_count(raw)
        if raw is not None and counts[name] is None:
            dropped.append(name)
    read = _detail(value.get("cache_read_input_tokens"), "cache_read_input_tokens", dropped)
    write = _detail(value.get("cache_creation_input_tokens"), "cache_creation_input_tokens", dropped)
    inp = counts["input_tokens"]
    prompt = None if inp is None or inp + read + write > MAX_REPORTED_TOKENS else inp + read + write
    if inp is not None and prompt is None:
        dropped.append("input_tokens")
    return Usage(prompt, counts["output_tokens"], tuple(dropped), read if prompt is not None else 0,
                 write if prompt is not None else 0, 0)


def openai_usage(usage: TokenUsage) -> dict[str, Any]:
    """``usage`` as an OpenAI chat-completions ``usage`` object (details included)."""
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                           "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
                           "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}
    if usage.cache_write_tokens:
        out["cache_creation_input_tokens"] = usage.cache_write_tokens
    return out


def anthropic_usage(usage: TokenUsage) -> dict[str, int]:
    """``usage`` as an Anthropic ``usage`` object: ``input_tokens`` without the cache reads and writes."""
    return {"input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens),
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens}


def parse_usage_of(api: str, value: Any) -> Usage:
    """A backend's ``usage`` read by the API it speaks (a pool file backend's ``api``)."""
    return parse_anthropic_usage(value) if api == "anthropic" else parse_usage(value)


class DetailCounts(TypedDict):
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


def detail_fields(usage: TokenUsage) -> DetailCounts:
    """The record's detail columns (``RequestRecord.finish`` keywords) of ``usage``."""
    return {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens}
