"""OpenTelemetry: a request is one trace (request span, routing decision with each candidate's scores, one client
span per upstream attempt, the stream, the log write) with GenAI attributes; no prompt text in any attribute;
without an endpoint nothing is traced. Spans are read from the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.pools import parse_pool_file  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.store import upgrade  # noqa: E402
from gateway.tracing import make_tracing  # noqa: E402
from tests.conftest import backend_yaml, wait_until  # noqa: E402
from tests.servers import ServerThread  # noqa: E402

PROMPT = "a-prompt-that-must-not-be-traced-5521"


@pytest.fixture
def traced(fake_backends, tmp_path: Path) -> Iterator[tuple[str, InMemorySpanExporter]]:
    _, down = fake_backends("down", mode="500")
    _, up = fake_backends("up")
    pool = f"""backends:
{backend_yaml("down", down.url, input_price=0.1, output_price=0.1, retries=0)}
{backend_yaml("up", up.url, input_price=5, output_price=5, retries=0)}
pools:
  - name: auto
    members: [down, up]
    router: cheapest
"""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db", spool_dir=tmp_path / "spool",
                        log_flush_interval_s=0.05)
    upgrade(settings.database_url)
    app = create_app(settings, parse_pool_file(pool, "pool.yaml"), tracer_provider=provider)
    with ServerThread(app) as server:
        yield server.url, exporter


def spans_of(exporter: InMemorySpanExporter, request_id: str) -> list[ReadableSpan]:
    def found() -> list[ReadableSpan]:
        spans = exporter.get_finished_spans()
        root = [s for s in spans if (s.attributes or {}).get("poolgate.request_id") == request_id]
        if not root:
            return []
        trace_id = root[0].context.trace_id
        return [s for s in spans if s.context.trace_id == trace_id]

    wait_until(found, 10, "the request's root span")
    return found()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_is_one_trace_with_routing_attempts_and_log_write(traced, stream: bool) -> None:
    url, exporter = traced
    body = {"model": "auto", "stream": stream, "max_tokens": 20, "temperature": 0.5,
            "messages": [{"role": "user", "content": PROMPT}]}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200 and resp.headers["x-poolgate-backend"] == "up"
    if stream:
        assert b"[DONE]" in resp.content
    spans = spans_of(exporter, resp.headers["x-poolgate-request-id"])
    by_name = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    root, = by_name["chat auto"]
    a = dict(root.attributes or {})
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "auto"
    assert a["gen_ai.request.max_tokens"] == 20 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.response.model"] and a["poolgate.backend"] == "up" and a["poolgate.attempts"] == 2
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert root.parent is None

    route, = by_name["poolgate.route"]
    r = dict(route.attributes or {})
    assert list(r["poolgate.route.candidates"]) == ["down", "up"] and r["poolgate.router"] == "cheapest"
    assert len(r["poolgate.route.utility"]) == 2 and len(r["poolgate.route.expected_cost_usd"]) == 2
    assert list(r["poolgate.route.ranking"]) == ["down", "up"]

    failed, = by_name["chat down-upstream"]
    ok, = by_name["chat up-upstream"]
    assert failed.attributes["http.response.status_code"] == 500 and failed.status.status_code.name == "ERROR"
    assert ok.attributes["http.response.status_code"] == 200 and ok.attributes["server.address"] == "127.0.0.1"
    assert ok.attributes["gen_ai.request.model"] == "up-upstream"
    assert by_name["poolgate.log_write"]
    assert ("poolgate.stream" in by_name) == stream
    for s in spans:
        if s is not root:
            assert s.parent is not None and s.parent.span_id == root.context.span_id, s.name
        assert PROMPT not in repr(dict(s.attributes or {}))


def test_without_an_endpoint_tracing_is_inert() -> None:
    tracing = make_tracing(None)
    assert not tracing.enabled
    tracing.start_request("r1", "auto", {}, False)
    with tracing.request_context("r1"), tracing.span("x") as span:
        assert span is None


def test_with_an_endpoint_spans_go_to_the_otlp_collector_over_http() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from gateway.record import RequestRecord

    received: list[tuple[str, str, int]] = []

    async def collect(request: Request) -> Response:
        received.append((request.url.path, request.headers.get("content-type", ""), len(await request.body())))
        return Response(b"", media_type="application/x-protobuf")

    with ServerThread(Starlette(routes=[Route("/v1/traces", collect, methods=["POST"])])) as collector:
        tracing = make_tracing(collector.url)
        assert tracing.enabled
        tracing.start_request("r1", "auto", {"max_tokens": 5}, False)
        record = RequestRecord(id="r1", model_requested="auto", stream=False)
        record.finish(status="ok", http_status=200, latency_ms=1.0, prompt_tokens=3, completion_tokens=4)
        tracing.end_request(record)
        tracing.close()  # flushes the batch
    assert received and received[0][0] == "/v1/traces" and received[0][1] == "application/x-protobuf"
    assert received[0][2] > 0
