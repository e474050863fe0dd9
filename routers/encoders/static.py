"""``minilm-static``: all-MiniLM-L6-v2 distilled by Model2Vec into one vector per vocabulary token, averaged per text.

Why: the contextual model costs 7-10 ms of CPU per question on the benchmark machine (six transformer layers over
every token), which bounds a learned router's latency and throughput; a static embedding costs 0.1-0.2
ms. How much routing quality this gives up is measured per router and data set, not assumed
(``poolgate evaluate --encoder``, table in ``docs/encoders.md``).

The model is package data (:data:`MODEL_DIR`: ``model.safetensors`` with the int8 token table and its scale,
``tokenizer.json``, ``config.json``; 11 MiB), built once by :mod:`routers.encoders.distill` with the ``model2vec``
library from the packaged weights, and read here with ``model2vec.StaticModel`` (numpy, ``tokenizers`` and
``safetensors``: no torch, no download). So ``pip install poolgate`` routes with it without the ``minilm`` extra.
A text's embedding is the unit-normalized mean of its tokens' rows (special tokens not added, no length limit).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ENCODER_NAME = "minilm-static"
#: the packaged Model2Vec distillation of all-MiniLM-L6-v2 (``python -m routers.encoders.distill`` rebuilds it)
MODEL_DIR = Path(__file__).resolve().parent / "data" / ENCODER_NAME
#: the packaged table's version, recorded in every artifact fitted on ``minilm-static`` embeddings and checked when
#: one is loaded: two tables share a name and a shape but not a space, so an artifact fitted on another one would
#: route on meaningless neighbours. Bump it (and :data:`TABLE_SHA256`) whenever the packaged model is rebuilt.
TABLE_VERSION = "model2vec-int8-1"
#: SHA-256 of the packaged ``model.safetensors`` of :data:`TABLE_VERSION` (a test holds the file to it)
TABLE_SHA256 = "72ec48b5cd972a48e818d6e21e2b296b63e56afa882c7dfa1b0ecc57b1a4a329"


class StaticEncoder:
    """``encoder(texts)`` -> unit-norm float32 ``[n, 384]`` ``minilm-static`` embeddings.

    ``model_dir``: a Model2Vec model folder (None: the packaged :data:`MODEL_DIR`; a router must be served with the
    model it was fitted on). Loads on first use (or :meth:`load`); thread-safe. A text with no tokens gets the
    normalized mean of the table (a fixed, valid unit vector) rather than a zero vector.
    """

    name = ENCODER_NAME

    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else MODEL_DIR
        self._model: Any = None
        self._tokenizer: Any = None
        self._table: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self._empty: np.ndarray | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read the model (token table and tokenizer) now."""
        with self._lock:
            if self._model is not None:
                return
            # why: model2vec (and its numpy/tokenizers stack) loads only when the static encoder is first used
            from model2vec import StaticModel

            if not (self.model_dir / "model.safetensors").is_file():
                raise FileNotFoundError(f"no Model2Vec model in {self.model_dir} (model.safetensors missing)")
            model = StaticModel.from_pretrained(str(self.model_dir), normalize=True)
            if model.weights is not None or model.token_mapping is not None:  # a vocabulary-quantized model
                raise ValueError(f"{self.model_dir}: a Model2Vec model with token weights or a token mapping; "
                                 "minilm-static reads plain token tables (routers/encoders/distill.py)")
            tokenizer = model.tokenizer
            tokenizer.no_padding()
            tokenizer.no_truncation()
            self._table = np.asarray(model.embedding)
            mean = self._table.astype(np.float32).mean(axis=0)
            self._empty = mean / np.linalg.norm(mean)
            self._tokenizer, self._model = tokenizer, model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            self.load()
        assert self._empty is not None
        # model2vec's own encode() computes the same mean, with a progress bar and a dispatcher around it that
        # cost as much again as the work for a single question (a router embeds one per request)
        table = self._table
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        out = np.empty((len(encodings), table.shape[1]), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids = enc.ids
            if not ids:  # no tokens: a fixed, valid unit vector
                out[row] = self._empty
                continue
            vec = table[ids].astype(np.float32).sum(axis=0)
            norm = float(np.linalg.norm(vec))
            out[row] = vec / norm if norm > 1e-6 else self._empty
        return out
