"""Request-time embeddings: cached, batched across concurrent requests, computed off the event loop.

:class:`EmbeddingBatcher` hands texts to one encoder thread. While the encoder is busy, texts of new requests
queue up and go together in the next batch; when it is idle, a text starts a batch at once (after
``window_ms`` if set), so a lone request never waits for company and a crowd shares few, large batches.

The ``minilm`` encoder is :class:`routers.encoders.minilm.MiniLMEncoder`, the one implementation training uses
too, here with bfloat16 weights where the CPU has native kernels and one intra-op thread.

:class:`Embedders` is what the gateway holds: one embedder per encoder name, built when first needed, so a
router fitted on ``minilm-static`` embeddings (:mod:`routers.encoders.static`) is served with those.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.encoders.minilm import MiniLMEncoder
from routers.encoders.static import StaticEncoder
from routers.extras import require_encoder

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class EmbeddingBatcher:
    """``await batcher.embed(text)`` -> a 1-D float32 embedding.

    ``embed_fn`` runs in one dedicated thread (``initializer`` runs there first), never two batches at a time.
    ``max_batch`` bounds a batch; ``cache_size`` bounds the LRU cache of recent texts.
    """

    def __init__(
        self, embed_fn: EmbedFn, window_ms: float = 0.0, max_batch: int = 64, cache_size: int = 10_000,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        self.embed_fn = embed_fn
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, asyncio.Future[np.ndarray]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="poolgate-embed", initializer=initializer
        )
        self.batches = 0  # number of embed_fn calls, for metrics and tests

    async def embed(self, text: str) -> np.ndarray:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        fut = self._pending.get(text)
        if fut is None:
            fut = self._pending[text] = asyncio.get_running_loop().create_future()
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        """Embed pending texts batch after batch until none are left."""
        try:
            # let requests that arrived in the same loop iteration (or within the window) join the first batch
            await asyncio.sleep(self.window_s)
            while self._pending:
                texts = list(self._pending)[: self.max_batch]
                batch = {t: self._pending.pop(t) for t in texts}
                await self._run(batch)
        finally:
            self._worker = None

    async def _run(self, batch: dict[str, asyncio.Future[np.ndarray]]) -> None:
        texts = list(batch)
        self.batches += 1
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._executor, self.embed_fn, texts)
        except Exception as exc:  # every waiter sees the failure; the router falls back
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        for text, vec in zip(texts, vectors, strict=True):
            vec = np.array(vec, dtype=np.float32)  # a copy: a cached row must not pin its whole batch in memory
            self._remember(text, vec)
            fut = batch[text]
            if not fut.done():
                fut.set_result(vec)

    def _remember(self, text: str, vec: np.ndarray) -> None:
        self._cache[text] = vec
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def preload(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the encoder thread now (e.g. load the model), ahead of the first batch."""
        self._executor.submit(fn)

    def close(self) -> None:
        """Stop the encoder thread (a batch in progress finishes)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class Embedders:
    """``await embedders.embed(text, encoder)`` -> the 1-D float32 embedding ``encoder`` gives ``text``.

    ``minilm``: :class:`MiniLMEncoder` behind an :class:`EmbeddingBatcher` (its own thread; 7-10 ms a text).
    ``minilm-static``: :class:`~routers.encoders.static.StaticEncoder` called inline on the event loop (0.1-0.2 ms,
    about what a hop to a thread would cost); its model loads in a worker thread first.
    Nothing is built before :meth:`preload` or the first :meth:`embed` of an encoder.
    """

    def __init__(self, batch_window_ms: float = 0.0, static_model_dir: Path | None = None) -> None:
        self.batch_window_ms = batch_window_ms
        self.static_model_dir = static_model_dir
        self._batcher: EmbeddingBatcher | None = None
        self._static: Any = None
        self._static_loading: asyncio.Future[None] | None = None

    def preload(self, encoders: Iterable[str]) -> None:
        """Start loading the models of ``encoders`` now, in the background (call inside the event loop)."""
        for name in set(encoders):
            if name == "minilm":
                self._minilm()
            elif name == "minilm-static":
                self._load_static()
            else:
                raise ValueError(f"unknown encoder {name!r}")

    async def ready(self, encoder: str) -> None:
        """Wait until ``encoder``'s model is loaded (``minilm-static``; the others load in their own thread)."""
        if encoder == "minilm-static":
            await asyncio.shield(self._load_static())

    async def embed(self, text: str, encoder: str) -> np.ndarray:
        if encoder == "minilm-static":
            if self._static is None or not self._static.loaded:
                await asyncio.shield(self._load_static())
            vectors: np.ndarray = self._static([text])
            return vectors[0]
        if encoder == "minilm":
            return await self._minilm().embed(text)
        raise ValueError(f"unknown encoder {encoder!r}")

    def _minilm(self) -> EmbeddingBatcher:
        if self._batcher is None:
            require_encoder("minilm")  # MissingExtraError (a RouterError: the pool falls back) without torch
            encoder = MiniLMEncoder()  # the featurizer's model in bfloat16 on one thread
            self._batcher = EmbeddingBatcher(encoder, window_ms=self.batch_window_ms, initializer=encoder.thread_setup)
            self._batcher.preload(encoder.load)  # load the model in the encoder thread now, not in the first request
        return self._batcher

    def _load_static(self) -> asyncio.Future[None]:
        if self._static_loading is None or (self._static_loading.done() and self._static_loading.exception()):
            self._static = StaticEncoder(self.static_model_dir)
            self._static_loading = asyncio.ensure_future(asyncio.to_thread(self._static.load))
        return self._static_loading

    def close(self) -> None:
        """Stop the encoder thread, if one was started."""
        if self._batcher is not None:
            self._batcher.close()
