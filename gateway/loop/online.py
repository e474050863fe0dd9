"""The online router's learning between retrains: each new label updates the live router of its pool.

A pool whose live router has an ``update(features, backend, reward)`` method (``routers.linucb``) learns from every
label as it arrives, judge (``gateway.judge.service``) or user (``POST /v1/feedback``): the request's prompt is
featurized as for routing and the router updated in place, on the event loop (an update is a few small matrix
operations; the routes see the new state from the next request on). Every ``save_every`` updates of a pool the
learner registers the state as a new version through the artifact store and promotes it, so other replicas'
hot reload (``gateway.routing.reload``) picks it up and a restart resumes from it; this process keeps serving
its own instance (the reloader is told the new version is already loaded).

Labels are learned in arrival order: a user label for a request the judge already scored is one more observation
(the user's score is what training and reports read, ``gateway.store.repository._labels``).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from gateway.routing.artifacts import ArtifactStore
from gateway.routing.reload import Loaded, RouterReloader
from gateway.routing.service import RoutingService
from routers.base import Router
from routers.pricing import count_prompt_tokens

log = logging.getLogger("poolgate.online")


def learns_online(router: Router) -> bool:
    return callable(getattr(router, "update", None))


class OnlineLearner:
    """See the module docstring."""

    def __init__(self, routing: RoutingService, artifacts: ArtifactStore, reloader: RouterReloader,
                 save_every: int = 50) -> None:
        self.routing = routing
        self.artifacts = artifacts
        self.reloader = reloader
        self.save_every = max(1, save_every)
        self.pending: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    async def learn(self, pool: str, question: str, backend: str, score: float) -> bool:
        """Update ``pool``'s live router with ``backend``'s ``score`` on ``question``; False when it does not learn."""
        runtime = self.routing.runtimes.get(pool)
        if runtime is None or not learns_online(runtime.router) or backend not in runtime.config.members:
            return False
        router = runtime.router
        try:
            tokens = count_prompt_tokens([{"role": "user", "content": question}])
            features = await self.routing.features(router, question, float(tokens))
            router.update(features, backend, float(score))  # type: ignore[attr-defined]
        except Exception as exc:  # a bad label must not stop the loop
            self.counts["failed"] += 1
            log.warning("online update of pool %s failed: %s: %s", pool, type(exc).__name__, exc)
            return False
        self.counts["updates"] += 1
        self.pending[pool] += 1
        if self.pending[pool] >= self.save_every:
            await self.save(pool)
        return True

    async def save(self, pool: str) -> str | None:
        """Register and promote ``pool``'s live online router as a new version; returns it (None if nothing new)."""
        runtime = self.routing.runtimes.get(pool)
        if runtime is None or not learns_online(runtime.router) or not self.pending[pool]:
            return None
        router, n = runtime.router, self.pending[pool]
        self.pending[pool] = 0
        try:
            record = await self.artifacts.register(
                pool, router, metrics={"online_updates": n}, n_rows=round(float(sum(getattr(router, "n_", ())))),
                params=router.get_params(), note=f"online: {n} updates since the last save")
            record = await self.artifacts.promote(pool, record.version)
        except Exception as exc:
            self.counts["save_failed"] += 1
            self.pending[pool] += n
            log.error("pool %s: cannot save the online router: %s: %s", pool, type(exc).__name__, exc)
            return None
        # this process already serves that state: label it, and keep the reloader from loading its own file back
        self.routing.swap_router(pool, router, record.version)
        self.reloader.primary[pool] = Loaded(router.name, record.version, record.id)
        self.counts["saves"] += 1
        return record.version

    async def save_all(self) -> None:
        for pool in list(self.pending):
            await self.save(pool)

    def status(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "pending": dict(self.pending), "save_every": self.save_every}
