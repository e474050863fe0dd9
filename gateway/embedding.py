"""Request-time embeddings: cached, batched across concurrent requests, computed off the event loop.

Concurrent requests that arrive within ``window_ms`` of each other share one call of the
embedding function (a batch of 32 costs little more than one query on CPU), which runs in a worker
thread so the event loop keeps relaying other requests meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class EmbeddingBatcher:
    """``await batcher.embed(text)`` -> a 1-D float32 embedding."""

    def __init__(
        self, embed_fn: EmbedFn, window_ms: float = 2.0, max_batch: int = 64, cache_size: int = 10_000
    ) -> None:
        self.embed_fn = embed_fn
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, asyncio.Future[np.ndarray]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self.batches = 0  # number of embed_fn calls, for metrics and tests

    async def embed(self, text: str) -> np.ndarray:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        fut = self._pending.get(text)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._pending[text] = loop.create_future()
            if len(self._pending) >= self.max_batch:
                self._flush(loop)
            elif self._flush_handle is None:
                self._flush_handle = loop.call_later(self.window_s, self._flush, loop)
        return await asyncio.shield(fut)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, {}
        if batch:
            loop.create_task(self._run(batch))

    async def _run(self, batch: dict[str, asyncio.Future[np.ndarray]]) -> None:
        texts = list(batch)
        self.batches += 1
        try:
            vectors = await asyncio.to_thread(self.embed_fn, texts)
        except Exception as exc:  # every waiter sees the failure; the router falls back
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        for text, vec in zip(texts, vectors, strict=True):
            self._remember(text, vec)
            fut = batch[text]
            if not fut.done():
                fut.set_result(vec)

    def _remember(self, text: str, vec: np.ndarray) -> None:
        self._cache[text] = vec
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
