"""Cheap text statistics shared by every router that uses them, and the row normalization of embeddings (pure
functions, no model)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")
_CODE_HINTS = ("def ", "return", "{", "}", ";", "SELECT", "import ", "```")
_MATH_HINTS = ("=", "+", "*", "/", "^", "\\frac", "$")

#: names of the columns :func:`text_stats` returns, in order
TEXT_STAT_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "mean_word_len",
    "digit_frac",
    "upper_frac",
    "punct_frac",
    "newline_count_log",
    "question_marks",
    "code_hints",
    "math_hints",
    "has_choices",
)


def text_stats_one(text: str) -> list[float]:
    """Statistics of one text; see :data:`TEXT_STAT_NAMES` (all scaled to roughly [0, 10])."""
    n = max(len(text), 1)
    words = _WORD.findall(text)
    n_words = max(len(words), 1)
    digits = len(_DIGIT.findall(text))
    upper = sum(1 for c in text if c.isupper())
    punct = sum(1 for c in text if not c.isalnum() and not c.isspace())
    return [
        float(np.log1p(len(text))),
        float(np.log1p(len(words))),
        sum(len(w) for w in words) / n_words,
        digits / n,
        upper / n,
        punct / n,
        float(np.log1p(text.count("\n"))),
        float(min(text.count("?"), 10)),
        float(sum(text.count(h) for h in _CODE_HINTS) > 0),
        float(min(sum(text.count(h) for h in _MATH_HINTS), 10)),
        float(bool(re.search(r"(?m)^\s*[A-D][.)]\s", text))),
    ]


def text_stats(texts: Sequence[str]) -> np.ndarray:
    """``[n, len(TEXT_STAT_NAMES)]`` float32 statistics for a batch of texts."""
    if not texts:
        return np.zeros((0, len(TEXT_STAT_NAMES)), dtype=np.float32)
    return np.asarray([text_stats_one(t) for t in texts], dtype=np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` as float32 unit vectors (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
