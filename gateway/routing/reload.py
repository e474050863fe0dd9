"""Hot reload of router versions: each gateway polls the artifact table and swaps promoted versions in.

Every ``router_reload_interval_s`` (and on ``POST /admin/routers/reload``) :meth:`RouterReloader.poll_once` reads
the live version of every pool. A pool whose live version changed gets it loaded in a worker thread (SHA-256 and
router checked, :func:`gateway.routing.artifacts.load_version`), *warmed* (one prediction on a probe query, which also
loads the embedding model when the router needs it), and only then swapped in with
:meth:`RoutingService.swap_router`: requests already routed finish on the old version, new ones get the new one,
none waits for a load. A version that fails any step is not served; the pool keeps its current version, the
reason is logged once and shown in :meth:`status`. A pool with no live version (all rolled back) goes back to its
pool file's router. Shadow routers that need training run the newest version of that router for the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gateway.routing.artifacts import ArtifactStore, VersionRecord, load_version
from gateway.routing.service import PoolRuntime, RoutingService, load_router
from routers.base import Router, RouterError

log = logging.getLogger("poolgate.reload")

PROBE_TEXT = "What is 12 times 7? Explain briefly."


@dataclass
class Loaded:
    """What one slot (a pool's router, or one of its shadows) serves now, and the last failure to change it."""

    router: str
    version: str
    record_id: int | None = None
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    error: str | None = None
    failed: tuple[int, str] | None = None  # (record id, sha256) of the version that failed: not retried

    def as_dict(self) -> dict[str, Any]:
        return {"router": self.router, "version": self.version, "record_id": self.record_id,
                "loaded_at": self.loaded_at.isoformat(), "last_error": self.error}


def needs_training(router: Router) -> bool:
    """True for routers that learn in ``fit`` (their shadow needs an artifact to be useful)."""
    return type(router).fit is not Router.fit


class RouterReloader:
    """Polls ``store`` and swaps router versions into ``routing`` (see the module docstring)."""

    def __init__(
        self, routing: RoutingService, store: ArtifactStore, interval_s: float = 5.0,
    ) -> None:
        self.routing = routing
        self.store = store
        self.interval_s = interval_s
        self.primary: dict[str, Loaded] = {
            pool: Loaded(rt.router.name, rt.router_version) for pool, rt in routing.runtimes.items()
        }
        self.shadows: dict[tuple[str, str], Loaded] = {}
        self.last_poll: datetime | None = None
        self.poll_error: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="poolgate-router-reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:  # keep polling whatever happens; the current versions keep serving
                log.exception("router reload poll failed")

    # -- polling ---------------------------------------------------------------------------------------
    async def poll_once(self) -> dict[str, Any]:
        """Bring every pool to its live version (and shadows to their newest); returns :meth:`status`."""
        async with self._lock:
            try:
                live = await self.store.live()
            except Exception as exc:  # table missing (not migrated) or database down: keep what is served
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if reason != self.poll_error:
                    log.warning("cannot read router versions (serving what is loaded): %s", reason)
                self.poll_error = reason
                return self.status()
            self.poll_error = None
            for pool in list(self.routing.runtimes):
                await self._sync_primary(pool, live.get(pool))
                await self._sync_shadows(pool)
            self.last_poll = datetime.now(UTC)
            return self.status()

    async def _sync_primary(self, pool: str, record: VersionRecord | None) -> None:
        state = self.primary[pool]
        if record is None:
            if state.record_id is not None:  # rolled back to nothing: the pool file's router serves again
                runtime = self.routing.runtimes[pool]
                await self._swap(pool, state, None, lambda: load_router(runtime.config, self.routing.base_dir))
            else:
                state.error = state.failed = None  # what is served is what is asked for: old errors are moot
            return
        if state.record_id == record.id:
            state.error = state.failed = None
            return
        if state.failed == (record.id, record.sha256):
            return
        await self._swap(pool, state, record, lambda: (load_version(record), record.version))

    async def _swap(
        self, pool: str, state: Loaded, record: VersionRecord | None, load: Callable[[], tuple[Router, str]]
    ) -> None:
        what = f"{record.router} {record.version}" if record is not None else "the pool file's router"
        try:
            router, version = await asyncio.to_thread(load)
            await self._warm(router, self.routing.runtimes[pool])
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            state.failed = (record.id, record.sha256) if record is not None else None
            log.error("pool %s: cannot serve %s, still serving %s %s: %s", pool, what, state.router, state.version,
                      state.error)
            return
        self.routing.swap_router(pool, router, version)
        self.primary[pool] = Loaded(router.name, version, record.id if record is not None else None)
        log.info("pool %s now serves %s %s (was %s %s)", pool, router.name, version, state.router, state.version)

    async def _sync_shadows(self, pool: str) -> None:
        runtime = self.routing.runtimes[pool]
        for name, router in list(runtime.shadows.items()):
            if not needs_training(router):
                continue
            record = await self.store.newest(pool, name)
            state = self.shadows.setdefault((pool, name), Loaded(name, "builtin"))
            if record is None or state.record_id == record.id or state.failed == (record.id, record.sha256):
                continue
            try:
                fitted = await asyncio.to_thread(load_version, record)
                await self._warm(fitted, self.routing.runtimes[pool])
            except Exception as exc:
                state.error, state.failed = f"{type(exc).__name__}: {exc}", (record.id, record.sha256)
                log.error("pool %s: shadow %s %s cannot run: %s", pool, name, record.version, state.error)
                continue
            self.routing.swap_shadow(pool, name, fitted, record.version)
            self.shadows[(pool, name)] = Loaded(name, record.version, record.id)

    async def _warm(self, router: Router, runtime: PoolRuntime) -> None:
        """One prediction on a probe query (loads lazy state, proves the router works for this pool)."""
        features = await self.routing.features(router, PROBE_TEXT, 12.0)
        pred = await self.routing.predict(router, features, runtime.cards)
        if pred.quality.shape != (1, len(runtime.cards)) or not np.isfinite(pred.quality).all():
            raise RouterError(f"probe prediction has shape {pred.quality.shape} or non-finite values")

    def status(self) -> dict[str, Any]:
        """What every pool (and shadow) serves, the last poll time and any errors, as JSON."""
        shadows: dict[str, dict[str, Any]] = {}
        for (pool, name), state in self.shadows.items():
            shadows.setdefault(pool, {})[name] = state.as_dict()
        return {
            "interval_s": self.interval_s,
            "last_poll": self.last_poll.isoformat() if self.last_poll else None,
            "poll_error": self.poll_error,
            "pools": {pool: {**state.as_dict(), "shadows": shadows.get(pool, {})}
                      for pool, state in self.primary.items()},
        }
