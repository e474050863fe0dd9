"""The query featurizer: MiniLM sentence embeddings (cached) plus cheap text statistics and token counts.

Two encoders (:data:`ENCODERS`): ``minilm`` runs all-MiniLM-L6-v2 on every text (contextual; 7-10 ms of CPU per
question; :mod:`routers.encoders.minilm` in float32), ``minilm-static`` averages per-token vectors distilled from the
same model (:mod:`routers.encoders.static`; 0.1-0.2 ms). Serving runs the same two implementations
(``gateway.routing.embedding``), so a router sees at request time the vectors it was fitted on. A router must be
served with the encoder it was fitted with: the featurizer stamps its name on the features
(``QueryFeatures.encoder``) and routers record it.

One :class:`Featurizer` serves offline evaluation and training. It does no work in
``__init__``; the model loads on first use. Embeddings are cached in memory and on disk, keyed by
``sha256(text)`` inside a folder named for the model version, so a changed model never reads stale vectors.

Disk layout: ``<cache_dir>/<model tag>/chunk-*.npz``, each holding ``keys`` (uint8 ``[n, 32]`` digests; a
bytes dtype would strip trailing NUL bytes) and ``vectors``
(float32 ``[n, 384]``). New vectors are buffered and written as one chunk per :meth:`Featurizer.flush` (or
when :data:`FLUSH_EVERY` are pending), so request-time use does not write one file per request. Chunks are
merged into one when more than :data:`MAX_CHUNKS` accumulate. A corrupt chunk is skipped: it is only a cache.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import QueryFeatures
from routers.dataset import RoutingDataset
from routers.encoders.minilm import MiniLMEncoder
from routers.encoders.model import EMBEDDING_DIM, model_version
from routers.encoders.static import StaticEncoder
from routers.extras import require_encoder
from routers.features import text_stats
from routers.pricing import encoding
from routers.progress import report

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: encoder names
ENCODERS = ("minilm", "minilm-static")
#: what routers are fitted on unless told otherwise: as good as ``minilm`` for routing on the four data sets and
#: ~200x cheaper per request (docs/encoders.md); ``POOLGATE_EMBEDDING_ENCODER`` is the same default for the CLI
DEFAULT_ENCODER = "minilm-static"
DEFAULT_CACHE_DIR = Path(".poolgate/embeddings")
FLUSH_EVERY = 256
MAX_CHUNKS = 32
#: bound of the in-memory cache (about 150 MB of vectors); the oldest half is dropped past it
MAX_MEMORY_ITEMS = 100_000


def count_tokens(texts: Sequence[str]) -> np.ndarray:
    """cl100k_base token counts of ``texts`` (float64, batched over 2 threads)."""
    if not texts:
        return np.zeros(0)
    counts = [len(t) for t in encoding().encode_ordinary_batch(list(texts), num_threads=2)]
    return np.asarray(counts, dtype=np.float64)


def text_key(text: str) -> bytes:
    """Cache key of one text: its SHA-256 digest (the model version is the folder)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass
class EmbedStats:
    """Counters since construction: cache hits (memory or disk), texts encoded, seconds spent encoding."""

    hits: int = 0
    encoded: int = 0
    encode_seconds: float = 0.0


class Featurizer:
    """Sentence embeddings (unit-norm float32 ``[n, 384]``) with caches, and :class:`QueryFeatures` batches.

    ``batch_size`` texts go to the model per call (so a long job checkpoints its progress to the cache
    every ``batch_size`` texts); the encoder groups them by length into its own forward passes.
    Thread-safe: cache access is locked, and encoding is serialized (the tokenizer is not reentrant).
    ``cache_dir=None`` uses :data:`DEFAULT_CACHE_DIR` (relative to the cwd); ``disk_cache=False`` keeps
    the cache in memory only. ``encoder`` is one of :data:`ENCODERS`; ``minilm-static`` embeddings are cheaper to
    compute than to look up, so they skip both caches; they come from the Model2Vec model in ``static_model_dir``
    (None: the packaged one, see :mod:`routers.encoders.static`). ``minilm`` needs the ``minilm`` extra
    (:class:`~routers.extras.MissingExtraError` otherwise).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        *,
        disk_cache: bool = True,
        encoder: str = DEFAULT_ENCODER,
        static_model_dir: Path | None = None,
    ) -> None:
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")
        require_encoder(encoder)
        self.encoder = encoder
        self.static_model_dir = static_model_dir
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.batch_size = batch_size
        self.device = device
        self.disk_cache = disk_cache
        self.stats = EmbedStats()
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._model: Any = None
        self._memory: dict[bytes, np.ndarray] = {}
        self._pending: dict[bytes, np.ndarray] = {}
        self._disk_loaded = False

    # -- public API ------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), 384]`` float32 unit-norm embeddings; cached ones are not recomputed."""
        if self.encoder != "minilm":
            return self._encode(list(texts))
        keys = [text_key(t) for t in texts]
        with self._lock:
            self._load_disk()
            missing: dict[bytes, str] = {}
            for key, text in zip(keys, texts, strict=True):
                if key not in self._memory and key not in missing:
                    missing[key] = text
            self.stats.hits += len(keys) - len(missing)
        todo = list(missing.items())
        for start in range(0, len(todo), max(1, self.batch_size)):
            part = todo[start : start + max(1, self.batch_size)]
            vectors = self._encode([text for _, text in part])
            report("embeddings (minilm)", start + len(part), len(todo))
            with self._lock:
                for (key, _), vec in zip(part, vectors, strict=True):
                    self._memory[key] = vec
                    if self.disk_cache:
                        self._pending[key] = vec
                if len(self._pending) >= FLUSH_EVERY:
                    self._flush_locked()
        with self._lock:
            found = [self._memory.get(k) for k in keys]
            self._trim_memory()
        if not keys:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        # a vector trimmed from memory between the two locked sections is recomputed (rare)
        if any(v is None for v in found):
            return self._encode(list(texts))
        return np.stack([v for v in found if v is not None]).astype(np.float32, copy=False)

    def featurize(
        self, texts: Sequence[str], embeddings: bool = True
    ) -> QueryFeatures:
        """Text statistics, cl100k_base prompt tokens and (optionally) embeddings for a batch of texts."""
        texts = list(texts)
        return QueryFeatures(
            texts=texts,
            stats=text_stats(texts),
            prompt_tokens=count_tokens(texts),
            embeddings=self.embed(texts) if embeddings else None,
            encoder=self.encoder if embeddings else None,
        )

    def featurize_dataset(self, ds: RoutingDataset, embeddings: bool = True) -> QueryFeatures:
        """Features of every query of ``ds`` (what serving has: no task labels, no answers); flushes the disk cache.

        Prompt tokens are the dataset's own, so the objective's cost estimate uses the same counts as the
        dataset's true cost."""
        feats = QueryFeatures(
            texts=list(ds.queries),
            stats=text_stats(ds.queries),
            prompt_tokens=np.asarray(ds.prompt_tokens, dtype=np.float64),
            embeddings=self.embed(ds.queries) if embeddings else None,
            encoder=self.encoder if embeddings else None,
        )
        self.flush()
        return feats

    def flush(self) -> None:
        """Write pending vectors to the disk cache as one chunk (no-op when nothing is pending)."""
        with self._lock:
            self._flush_locked()

    # -- model -----------------------------------------------------------------------------------
    def _load_model(self) -> Any:
        if self._model is None and self.encoder == "minilm-static":
            self._model = StaticEncoder(self.static_model_dir)
        if self._model is None:
            self._model = MiniLMEncoder(dtype="float32", device=self.device)  # the one implementation serving runs
        return self._model

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._encode_lock:
            model = self._load_model()
            start = time.perf_counter()
            out = model(texts)
            self.stats.encode_seconds += time.perf_counter() - start
            self.stats.encoded += len(texts)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), EMBEDDING_DIM)

    # -- disk cache (callers hold self._lock) ----------------------------------------------------
    @property
    def model_dir(self) -> Path:
        """Folder of this model version's chunks."""
        return self.cache_dir / model_version()

    def _load_disk(self) -> None:
        if self._disk_loaded or not self.disk_cache:
            return
        self._disk_loaded = True
        chunks = sorted(self.model_dir.glob("chunk-*.npz"))
        for path in chunks:
            try:
                with np.load(path) as data:
                    keys, vectors = data["keys"], data["vectors"]
                if keys.shape != (len(vectors), 32) or vectors.shape[1:] != (EMBEDDING_DIM,):
                    continue
            except (OSError, ValueError, KeyError):  # corrupt or half-deleted chunk: skip it
                continue
            for key, vec in zip(keys, vectors, strict=True):
                self._memory.setdefault(key.tobytes(), vec)
        if len(chunks) > MAX_CHUNKS:
            self._compact(chunks)

    def _write_chunk(self, items: dict[bytes, np.ndarray]) -> Path:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        tmp = self.model_dir / f"{name}.tmp.npz"
        keys = np.frombuffer(b"".join(items), dtype=np.uint8).reshape(len(items), 32)
        np.savez(tmp, keys=keys, vectors=np.stack(list(items.values())).astype(np.float32))
        final = self.model_dir / f"{name}.npz"
        tmp.replace(final)  # atomic: readers never see a half-written chunk
        return final

    def _flush_locked(self) -> None:
        if not self._pending or not self.disk_cache:
            return
        try:
            self._write_chunk(self._pending)
        except OSError:
            return  # an unwritable cache dir costs recomputation later, never a failed request
        self._pending = {}

    def _compact(self, chunks: list[Path]) -> None:
        try:
            self._write_chunk(dict(self._memory))
            for path in chunks:
                path.unlink(missing_ok=True)
        except OSError:
            pass

    def _trim_memory(self) -> None:
        if len(self._memory) > MAX_MEMORY_ITEMS:
            for key in list(self._memory)[: len(self._memory) // 2]:
                if key not in self._pending:
                    del self._memory[key]
