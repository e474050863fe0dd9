"""The artifact store (versions, promotion, rollback) and the reloader that swaps versions into a routing service:
a promoted version is served after a poll, a corrupt or changed artifact never is (the previous version keeps
serving and the reason is logged), a rollback with nothing left goes back to the pool file's router."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.pools import parse_pool_file
from gateway.routing.artifacts import ArtifactError, ArtifactStore, load_version
from gateway.routing.reload import RouterReloader
from gateway.routing.service import RoutingService
from gateway.store import make_engine, upgrade
from routers.base import ModelCard
from routers.baselines import BestSingleRouter, RandomRouter
from routers.dataset import RoutingDataset

POOL = """
backends:
  - {name: cheap, base_url: "http://127.0.0.1:9/v1", model: c, input_price: 1, output_price: 1}
  - {name: strong, base_url: "http://127.0.0.1:9/v1", model: s, input_price: 10, output_price: 30}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
    objective: quality-first
    shadow_routers: [best-single]
"""


def fitted(best: str) -> BestSingleRouter:
    """A best-single router whose training data makes ``best`` the better model."""
    quality = np.asarray([[1.0, 0.0], [1.0, 0.0]]) if best == "cheap" else np.asarray([[0.0, 1.0], [0.0, 1.0]])
    zeros = np.zeros((2, 2))
    ds = RoutingDataset("t", ["a", "b"], ["cheap", "strong"], quality, np.ones(2), zeros, zeros,
                        [ModelCard("cheap"), ModelCard("strong")])
    return BestSingleRouter().fit(ds)


@pytest.fixture
async def env(db_url: str, tmp_path: Path):
    url = db_url
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    store = ArtifactStore(engine, tmp_path / "artifacts")
    routing = RoutingService(parse_pool_file(POOL))
    routing.load()
    reloader = RouterReloader(routing, store, interval_s=0.05)
    yield store, routing, reloader
    await reloader.stop()
    await engine.dispose()


async def route_backend(routing: RoutingService) -> tuple[str, str, str | None]:
    d = await routing.route("auto", "hello?", 5)
    return d.ranking[0].name, d.router, d.router_version


async def test_versions_number_per_pool_and_promotion_keeps_one_live(env) -> None:
    store, _, _ = env
    v1 = await store.register("auto", fitted("strong"), metrics={"heldout": {"utility": 0.5}}, n_rows=10)
    v2 = await store.register("auto", fitted("cheap"), metrics={}, n_rows=12, note="second")
    other = await store.register("other", fitted("cheap"), metrics={}, n_rows=3)
    assert (v1.version, v2.version, other.version) == ("v1", "v2", "v1")
    assert v1.status == "candidate" and Path(v1.path).is_file() and len(v1.sha256) == 64
    await store.promote("auto", "v1")
    await store.promote("auto", "v2")
    statuses = {r.version: r.status for r in await store.versions("auto")}
    assert statuses == {"v1": "retired", "v2": "live"}
    assert (await store.live())["auto"].version == "v2" and "other" not in await store.live()
    down, up = await store.rollback("auto")
    assert (down.version, down.status, up and up.version, up and up.status) == ("v2", "rolled_back", "v1", "live")
    down, up = await store.rollback("auto")
    assert down.version == "v1" and up is None
    with pytest.raises(ArtifactError, match="no live router version"):
        await store.rollback("auto")
    with pytest.raises(ArtifactError, match="no router version 'v9'"):
        await store.promote("auto", "v9")


async def test_promoted_version_is_served_after_a_poll_and_rollback_returns_to_pool_file(env) -> None:
    store, routing, reloader = env
    assert await route_backend(routing) == ("cheap", "cheapest", "builtin")
    rec = await store.register("auto", fitted("strong"), metrics={}, n_rows=2)
    await reloader.poll_once()
    assert await route_backend(routing) == ("cheap", "cheapest", "builtin")  # a candidate is not served
    await store.promote("auto", rec.version)
    reloader.start()  # the periodic poll, not a forced one, picks the promotion up
    deadline = time.monotonic() + 30.0
    while routing.runtimes["auto"].router_version != "v1" and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await route_backend(routing) == ("strong", "best-single", "v1")
    await store.rollback("auto")
    status = await reloader.poll_once()
    assert await route_backend(routing) == ("cheap", "cheapest", "builtin")
    assert status["pools"]["auto"]["record_id"] is None


async def test_corrupt_artifact_is_never_served_and_the_reason_is_logged(env, caplog) -> None:
    store, routing, reloader = env
    good = await store.register("auto", fitted("strong"), metrics={}, n_rows=2)
    await store.promote("auto", good.version)
    await reloader.poll_once()
    bad = await store.register("auto", fitted("cheap"), metrics={}, n_rows=2)
    Path(bad.path).write_bytes(b"poolgate-router/1\n" + b"\x80garbage")  # truncated/overwritten file
    await store.promote("auto", bad.version)
    with caplog.at_level(logging.ERROR, logger="poolgate.reload"):
        status = await reloader.poll_once()
        await reloader.poll_once()  # the same bad version is not retried (or logged) every poll
    assert await route_backend(routing) == ("strong", "best-single", "v1")
    assert "the file has changed" in status["pools"]["auto"]["last_error"]
    assert len([r for r in caplog.records if "cannot serve best-single v2" in r.getMessage()]) == 1
    with pytest.raises(ArtifactError, match="the file has changed: sha256"):
        load_version(bad)
    await store.rollback("auto")  # v1 is live again: the stale error no longer describes the pool
    status = await reloader.poll_once()
    assert status["pools"]["auto"]["version"] == "v1" and status["pools"]["auto"]["last_error"] is None


async def test_unloadable_artifact_with_matching_digest_is_refused_too(env) -> None:
    store, routing, reloader = env
    rec = await store.register("auto", fitted("strong"), metrics={}, n_rows=2)
    Path(rec.path).write_bytes(b"not a router")
    from dataclasses import replace

    from gateway.routing.artifacts import file_sha256

    with pytest.raises(ArtifactError, match="not a poolgate router artifact"):
        load_version(replace(rec, sha256=file_sha256(Path(rec.path))))


async def test_shadow_router_runs_the_newest_version_of_its_router(env) -> None:
    store, routing, reloader = env
    await store.register("auto", fitted("cheap"), metrics={}, n_rows=2)
    await store.register("auto", fitted("strong"), metrics={}, n_rows=2)
    await store.register("auto", RandomRouter(), metrics={}, n_rows=2)  # another router: not this shadow's
    status = await reloader.poll_once()
    runtime = routing.runtimes["auto"]
    assert runtime.shadow_versions == {"best-single": "v2"}
    assert status["pools"]["auto"]["shadows"]["best-single"]["version"] == "v2"
    assert runtime.router_version == "builtin"  # shadows never change what is served
