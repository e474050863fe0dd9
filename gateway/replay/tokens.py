"""Token counting and splitting for the replay backend, with the gateway's shared tokenizer (cl100k_base).

Prompt tokens follow OpenAI's published recipe for chat models (openai-cookbook, "How to count tokens
with tiktoken"): 3 tokens per message, plus the tokens of every string field (role, content, name; a
``name`` adds 1 more), plus 3 that prime the assistant's reply. Completion tokens are the answer's tokens.
"""

from __future__ import annotations

from typing import Any

import tiktoken

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def content_text(content: Any) -> str | None:
    """Text of a message ``content``: the string itself, or the ``text`` parts of a list joined by newlines.

    Returns None when ``content`` is neither a string nor a list of parts.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return None


def count_prompt_tokens(messages: list[dict[str, Any]], enc: tiktoken.Encoding) -> int:
    """Prompt tokens of a chat request by the recipe in the module docstring."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            text = content_text(value) if key == "content" else value
            if isinstance(text, str):
                total += len(enc.encode(text, disallowed_special=()))
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


def truncate(text: str, max_tokens: int | None, enc: tiktoken.Encoding) -> tuple[list[int], bool]:
    """Token ids of ``text``, cut to ``max_tokens`` when given; and whether a cut happened."""
    tokens = enc.encode(text, disallowed_special=())
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], True
    return tokens, False


def decode(tokens: list[int], enc: tiktoken.Encoding) -> str:
    """Text of ``tokens``; a multi-byte character cut by truncation is dropped, not replaced by U+FFFD."""
    return enc.decode_bytes(tokens).decode("utf-8", errors="ignore")


def split_pieces(tokens: list[int], per_piece: int, enc: tiktoken.Encoding) -> list[tuple[str, int]]:
    """Split ``tokens`` into (text, n_tokens) pieces of about ``per_piece`` tokens each.

    A piece ends only where its bytes are valid UTF-8, so a character spread over several tokens
    (e.g. an emoji or a curly quote) never arrives as two broken halves; the pieces join to ``decode``.
    """
    pieces: list[tuple[str, int]] = []
    buffer, count = b"", 0
    for token in tokens:
        buffer += enc.decode_single_token_bytes(token)
        count += 1
        if count >= per_piece:
            try:
                pieces.append((buffer.decode("utf-8"), count))
            except UnicodeDecodeError:
                continue  # mid-character: keep collecting
            buffer, count = b"", 0
    if count:
        pieces.append((buffer.decode("utf-8", errors="ignore"), count))
    return pieces
