"""The app's services are built whole by one factory, and "request finished" is one step: the record reaches the
metrics, the limits and the log writer, in that order, after its shadow routers' choices are in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.finish import RequestFinisher
from gateway.pools import DEMO_POOL_PATH, load_pool_file
from gateway.record import RequestRecord
from gateway.services import Services, build_services
from gateway.settings import Settings


async def test_the_factory_builds_every_service_with_its_collaborators(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/log.db", spool_dir=tmp_path / "spool",
                        artifacts_dir=tmp_path / "artifacts")
    services = build_services(settings, load_pool_file(DEMO_POOL_PATH), DEMO_POOL_PATH.parent)
    try:
        assert all(getattr(services, f.name) is not None for f in dataclasses.fields(Services))
        assert services.tenancy.limiter is services.limiter
        assert services.reloader.routing is services.routing and services.reloader.store is services.artifacts
        assert services.shadow.routing is services.routing and services.shadow.writer is services.writer
        assert services.finish.shadow is services.shadow and services.finish.writer is services.writer
        assert services.routing.embedder == services.embedders.embed
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.shadow = services.shadow  # type: ignore[misc]  # nothing is attached after construction
    finally:
        await services.engine.dispose()


class Calls:
    """Stand-ins for the shadow recorder, metrics, limits and writer that log what reaches them, in order."""

    def __init__(self, shadow_pending: bool) -> None:
        self.log: list[str] = []
        self.shadow_pending = shadow_pending
        self.waiting: list[Any] = []

    def finish(self, record: RequestRecord, then: Any) -> None:  # ShadowRecorder.finish
        self.log.append("shadow")
        if self.shadow_pending:
            self.waiting.append(lambda: then(record))
        else:
            then(record)

    def observe(self, record: RequestRecord) -> None:
        self.log.append("metrics")

    def settle(self, record: RequestRecord) -> None:
        self.log.append("limits")

    def submit(self, record: RequestRecord) -> None:
        self.log.append("writer")


@pytest.mark.parametrize("pending", [False, True])
def test_request_finished_hands_the_record_to_metrics_limits_and_writer_in_order(pending: bool) -> None:
    calls = Calls(shadow_pending=pending)
    finish = RequestFinisher(calls, calls, calls, calls)  # type: ignore[arg-type]
    record = RequestRecord(id="r1", model_requested="auto", stream=False)
    record.finish(status="ok", http_status=200, latency_ms=1.0)
    finish(record)
    if pending:  # the shadow routers are still choosing: nothing is handed on yet
        assert calls.log == ["shadow"]
        calls.waiting.pop()()
    assert calls.log == ["shadow", "metrics", "limits", "writer"]


def test_each_route_dependency_gives_the_service_of_its_declared_type() -> None:
    from typing import get_args

    from gateway.api import deps

    fields = {f.name: f.type for f in dataclasses.fields(Services)}
    aliases = {name: value for name, value in vars(deps).items() if name.endswith("Dep") and name != "ServicesDep"}
    assert len(aliases) >= 10
    for name, alias in aliases.items():
        declared, marker = get_args(alias)
        service = marker.dependency.__name__.removeprefix("get_")
        assert fields[service] == declared.__name__, (name, service)
