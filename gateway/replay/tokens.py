"""Token splitting for the replay backend, with the gateway's shared tokenizer (cl100k_base).

Prompt tokens are counted by ``routers.pricing.count_prompt_tokens`` (OpenAI's recipe), as the gateway estimates
them; completion tokens are the answer's tokens.
"""

from __future__ import annotations

from typing import Any

import tiktoken

from routers.pricing import message_text


def content_text(content: Any) -> str | None:
    """Text of a message ``content`` (``routers.pricing.message_text``); None when it is neither a string nor a
    list of parts, which the replay backend refuses."""
    return message_text(content) if isinstance(content, str | list) else None


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
