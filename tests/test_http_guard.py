"""The guarded HTTP protocol relies on uvicorn internals: the installed uvicorn must be in the pinned, tested
range and still have every hook ``gateway/http_guard.py`` overrides or calls (the behaviour is in
``test_hostile_http.py``)."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from pathlib import Path

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.http_guard import GuardedHttpToolsProtocol, guarded_protocol

HOOKS = ("connection_made", "connection_lost", "on_message_begin", "on_url", "on_header", "on_headers_complete",
         "on_response_complete", "send_400_response")


def test_installed_uvicorn_is_in_the_pinned_range() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    low, high = re.search(r'"uvicorn\[standard\]>=([\d.]+),<([\d.]+)"', pyproject).groups()  # type: ignore[union-attr]

    def parse(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:3])

    assert parse(low) <= parse(version("uvicorn")) < parse(high)


def test_every_hook_the_guard_overrides_exists_in_uvicorn_with_the_same_signature() -> None:
    for name in HOOKS:
        ours, theirs = getattr(GuardedHttpToolsProtocol, name), getattr(HttpToolsProtocol, name, None)
        assert theirs is not None, f"uvicorn's HttpToolsProtocol has no {name} any more"
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), name


def test_the_state_the_guard_reads_is_still_set_by_uvicorn() -> None:
    source = inspect.getsource(HttpToolsProtocol)
    for attr in ("self.transport", "self.pipeline", "self.cycle", "self.logger", "self.client", "self.loop"):
        assert f"{attr} =" in source or f"{attr}: " in source, attr


def test_guarded_protocol_carries_its_limits() -> None:
    cls = guarded_protocol(1234, 5.0)
    assert issubclass(cls, HttpToolsProtocol)
    assert (cls.max_header_bytes, cls.head_timeout_s) == (1234, 5.0)
