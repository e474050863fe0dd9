"""Shadow routers: what other routers would have chosen for each request, recorded beside the real decision.

A pool lists ``shadow_routers``. For each routed request :meth:`ShadowRecorder.start` schedules one task that asks
every shadow router of the pool for its choice under the request's own flags; the response does not wait for it.
When the request's log row is ready, :meth:`ShadowRecorder.finish` puts the choices into the row's ``shadow``
column and hands the row on (at once if the task is done, else when it is). So only the log row waits for the
shadows, never the client. A shadow that fails records ``{"error": ...}`` and changes nothing else.

A row that waits is journaled at once (``LogWriter.hold``) in a provisional version whose ``shadow`` is
``PENDING_SHADOW`` (``{"pending": true}``), and released once the final row has been handed on: a SIGKILL while the
shadows run (possibly after the response went out) loses no row, and the next start stores the provisional one.
A final row that also reached the journal wins over it (``gateway/store/writer.py``). If handing the row on
raises, the hold is kept, so shutdown passes the provisional row to the spool rather than lose it.

Row format: ``shadow = {name: {"backend", "version", "quality", "expected_cost_usd"} | {"error": str}}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.record import RequestRecord
from gateway.routing.service import PoolRuntime, RouteDecision, RoutingService
from gateway.store.writer import PENDING_SHADOW, LogWriter
from routers.base import Router
from routers.objective import Calibration, Flags, decide

log = logging.getLogger("poolgate.shadow")


class ShadowRecorder:
    """Computes shadow choices off the response path and attaches them to log rows (see the module doc)."""

    def __init__(self, routing: RoutingService, max_pending: int = 10_000, *, writer: LogWriter | None = None) -> None:
        self.routing = routing
        self.max_pending = max_pending
        self.writer = writer  # journals rows while they wait (None: they wait in memory only)
        self._pending: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._waiting: set[asyncio.Task[dict[str, Any]]] = set()

    def start(self, request_id: str, decision: RouteDecision, text: str, prompt_tokens: int) -> None:
        """Schedule the shadow choices of one routed request (no-op when its pool has no shadow routers)."""
        runtime = self.routing.runtimes.get(decision.pool) if decision.pool else None
        if runtime is None or not runtime.shadows or decision.flags is None:
            return
        if len(self._pending) >= self.max_pending:
            self._evict()
        task = asyncio.get_running_loop().create_task(self._compute(runtime, decision.flags, text, prompt_tokens))
        self._pending[request_id] = task

    def finish(self, record: RequestRecord, then: Callable[[RequestRecord], None]) -> None:
        """Call ``then(record)`` with the shadow choices attached: now, or once they are computed."""
        task = self._pending.pop(record.id, None)
        if task is None:
            then(record)
            return
        if task.done():
            self._attach(record, task)
            then(record)
            return

        token = self.writer.hold({**record.as_row(), "shadow": PENDING_SHADOW}) if self.writer is not None else None

        def done(t: asyncio.Task[dict[str, Any]]) -> None:
            self._waiting.discard(t)
            self._attach(record, t)
            then(record)  # submits the final row (journaled and queued)...
            if self.writer is not None:
                self.writer.release(token)  # ...so the provisional one may go with its journal file

        self._waiting.add(task)
        task.add_done_callback(done)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for shadow tasks whose rows are waiting on them, so their final rows are written.

        With the journal on, a row still waiting after ``timeout_s`` is not lost: the writer's ``stop`` hands its
        provisional version (held in the journal) to the spool.
        """
        if self._waiting:
            await asyncio.wait(set(self._waiting), timeout=timeout_s)

    @staticmethod
    def _attach(record: RequestRecord, task: asyncio.Task[dict[str, Any]]) -> None:
        if task.cancelled():
            record.shadow = {"error": "cancelled"}
        elif task.exception() is not None:
            record.shadow = {"error": f"{type(task.exception()).__name__}: {task.exception()}"}
        else:
            record.shadow = task.result()

    def _evict(self) -> None:
        """Drop the oldest finished tasks whose rows never came (requests that ended before logging)."""
        for key in [k for k, t in self._pending.items() if t.done()][: max(1, self.max_pending // 10)]:
            del self._pending[key]
        if len(self._pending) >= self.max_pending:  # all still running: drop the oldest entry
            self._pending.pop(next(iter(self._pending)))

    async def _compute(self, runtime: PoolRuntime, flags: Flags, text: str, prompt_tokens: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, router in runtime.shadows.items():
            try:
                out[name] = await self._choose(router, runtime, flags, text, prompt_tokens)
            except Exception as exc:  # a broken shadow must never affect the request or the other shadows
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            out[name]["version"] = runtime.shadow_versions.get(name, "builtin")
        return out

    async def _choose(
        self, router: Router, runtime: PoolRuntime, flags: Flags, text: str, prompt_tokens: int
    ) -> dict[str, Any]:
        features = await self.routing.features(router, text, prompt_tokens)
        pred = await self.routing.predict(router, features, runtime.cards)
        ranking, scores = decide(pred, runtime.cards, flags, prompt_tokens, calibration=Calibration.of(router))
        best = ranking[0]
        return {
            "backend": runtime.cards[best].name,
            "quality": round(float(scores.quality[0, best]), 4),
            "expected_cost_usd": float(scores.expected_cost_usd[0, best]),
        }
