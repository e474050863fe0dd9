"""Token counts that never block the event loop: the bounds of :mod:`routers.pricing`, with the middle range
counted in a worker thread (tiktoken releases the GIL)."""

from __future__ import annotations

import asyncio
from typing import Any

from routers.pricing import (
    EXACT_COUNT_MAX_CHARS,
    INLINE_COUNT_CHARS,
    TokenCount,
    count_prompt_tokens,
    count_tokens,
    estimate_prompt_tokens,
    prompt_chars,
)


async def count_prompt_tokens_off_loop(messages: list[dict[str, Any]]) -> TokenCount:
    """Prompt tokens without blocking the event loop: inline when small, in a worker thread up to
    ``EXACT_COUNT_MAX_CHARS`` characters in all, estimated from the size beyond."""
    chars = prompt_chars(messages)
    if chars <= INLINE_COUNT_CHARS:
        return TokenCount(count_prompt_tokens(messages))
    if chars <= EXACT_COUNT_MAX_CHARS:
        return TokenCount(await asyncio.to_thread(count_prompt_tokens, messages))
    return TokenCount(estimate_prompt_tokens(messages), estimated=True)


async def count_tokens_off_loop(text: str) -> int:
    """``count_tokens`` without blocking the event loop (same bounds as ``count_prompt_tokens_off_loop``)."""
    if len(text) <= INLINE_COUNT_CHARS or len(text) > EXACT_COUNT_MAX_CHARS:
        return count_tokens(text)
    return await asyncio.to_thread(count_tokens, text)
