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


#: The statistics read at most this many characters (the text's first): a huge prompt costs what a long one does
#: (a few ms). Ratios, the mean word length and the capped counts come from that prefix, the counts that grow with
#: a text (words, newlines) are scaled from it to the whole length, and ``log_chars`` is the whole length: every
#: text up to the bound gets exactly the statistics it always had.
TEXT_STATS_MAX_CHARS = 64 * 1024
#: Not alphanumeric and not whitespace (``str.isalnum``/``isspace``: ``\w`` is alnum or "_", ``\s`` is isspace).
_PUNCT = re.compile(r"[^\w\s]|_")
#: An answer choice ("A) ...", "B. ...") at the start of a line. ``[^\S\n]*`` and not ``\s*``: the latter spans
#: newlines, so a run of empty lines made the search quadratic (40 000 newlines: 25 s); both match the same texts.
_CHOICE = re.compile(r"(?m)^[^\S\n]*[A-D][.)]\s")


def text_stats_one(text: str) -> list[float]:
    """Statistics of one text; see :data:`TEXT_STAT_NAMES` (all scaled to roughly [0, 10]); bounded work."""
    view = text[:TEXT_STATS_MAX_CHARS]
    n = max(len(view), 1)
    scale = len(text) / n if len(text) > len(view) else 1  # 1 (exact counts) up to the bound
    words = _WORD.findall(view)
    n_words = max(len(words), 1)
    digits = len(_DIGIT.findall(view))
    upper = sum(map(str.isupper, view))
    punct = len(_PUNCT.findall(view))
    return [
        float(np.log1p(len(text))),
        float(np.log1p(len(words) * scale)),
        sum(map(len, words)) / n_words,
        digits / n,
        upper / n,
        punct / n,
        float(np.log1p(view.count("\n") * scale)),
        float(min(view.count("?"), 10)),
        float(sum(view.count(h) for h in _CODE_HINTS) > 0),
        float(min(sum(view.count(h) for h in _MATH_HINTS), 10)),
        float(bool(_CHOICE.search(view))),
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
