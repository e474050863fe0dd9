"""OpenTelemetry traces: one trace per chat completion, after the GenAI semantic conventions.

Spans: ``chat {model}`` (the request, from parsing to the last byte of the answer and the log hand-off) with
``poolgate.route`` (the routing decision, each candidate's scores as list attributes aligned with
``poolgate.route.candidates``), one ``chat {upstream model}`` client span per upstream attempt,
``poolgate.stream`` (first byte to end of a streamed answer) and ``poolgate.log_write``.

Only when ``POOLGATE_OTEL_ENDPOINT`` is set (an OTLP/HTTP collector, e.g. ``http://collector:4318``) and the
``poolgate[otel]`` extra is installed; otherwise :class:`Tracing` is inert and opentelemetry is never imported.
Prompt and answer text are never attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from gateway.record import RequestRecord
    from gateway.routing.service import RouteDecision

log = logging.getLogger(__name__)

#: the request fields that become gen_ai.request.* attributes (the OpenAI name -> the convention's)
_REQUEST_PARAMS = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
                   "top_p": "top_p", "frequency_penalty": "frequency_penalty",
                   "presence_penalty": "presence_penalty", "seed": "seed"}


class Tracing:
    """Starts and ends the spans of each request; every method is a no-op when ``tracer`` is None."""

    def __init__(self, tracer: Tracer | None = None, provider: Any = None) -> None:
        self.tracer = tracer
        self._provider = provider  # the TracerProvider this object made (flushed and shut down on close)
        self._open: dict[str, Span] = {}  # request id -> its root span, ended by end_request

    def close(self) -> None:
        """Export what is buffered and stop the exporter (only one this object created)."""
        if self._provider is not None:
            self._provider.shutdown()

    def annotate(self, request_id: str, attributes: Mapping[str, Any]) -> None:
        """Add attributes to request ``request_id``'s span (e.g. the answer's model once known)."""
        span = self._open.get(request_id)
        if span is not None:
            span.set_attributes(dict(attributes))

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_request(self, request_id: str, model: str, payload: Mapping[str, Any], stream: bool) -> None:
        """Open the request's root span (``chat {model}``), to be ended by :meth:`end_request`."""
        if self.tracer is None:
            return
        # why: opentelemetry is imported only when tracing is on (the poolgate[otel] extra)
        from opentelemetry.trace import SpanKind

        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                                 "poolgate.request_id": request_id, "poolgate.stream": stream}
        for field, name in _REQUEST_PARAMS.items():
            value = payload.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[f"gen_ai.request.{name}"] = value
        self._open[request_id] = self.tracer.start_span(f"chat {model}", kind=SpanKind.SERVER, attributes=attrs)

    @contextmanager
    def request_context(self, request_id: str) -> Iterator[None]:
        """Make the request's span the current one (so routing and attempts nest under it) for a ``with``."""
        span = self._open.get(request_id)
        if span is None:
            yield
            return
        # why: opentelemetry is imported only when tracing is on
        from opentelemetry import context, trace

        token = context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            context.detach(token)

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None, client: bool = False,
             request_id: str | None = None) -> Iterator[Span | None]:
        """A child span of the current one (or of request ``request_id``'s root, from another context)."""
        if self.tracer is None:
            yield None
            return
        # why: opentelemetry is imported only when tracing is on
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        parent = self._open.get(request_id) if request_id else None
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        with self.tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=dict(attributes or {}),
                                               record_exception=False) as span:
            yield span

    def start_child(self, request_id: str, name: str, attributes: Mapping[str, Any]) -> Span | None:
        """A child of request ``request_id``'s root that the caller ends (a stream's span outlives the route)."""
        parent = self._open.get(request_id)
        if self.tracer is None or parent is None:
            return None
        # why: opentelemetry is imported only when tracing is on
        from opentelemetry import trace

        return self.tracer.start_span(name, context=trace.set_span_in_context(parent), attributes=dict(attributes))

    def end_request(self, record: RequestRecord, response_model: str | None = None) -> None:
        """Set the outcome (usage, cost, backend, error) on the request's span and end it."""
        span = self._open.pop(record.id, None)
        if span is None:
            return
        # why: opentelemetry is imported only when tracing is on
        from opentelemetry.trace import Status, StatusCode

        attrs: dict[str, Any] = {
            "gen_ai.usage.input_tokens": record.prompt_tokens, "gen_ai.usage.output_tokens": record.completion_tokens,
            "http.response.status_code": record.http_status, "poolgate.cost_usd": record.cost_usd,
            "poolgate.usage_estimated": record.usage_estimated, "poolgate.attempts": len(record.attempts),
        }
        for key, value in (("gen_ai.response.model", response_model), ("poolgate.backend", record.backend),
                           ("poolgate.pool", record.pool), ("poolgate.router", record.router),
                           ("poolgate.router_version", record.router_version), ("poolgate.key_id", record.key_id),
                           ("poolgate.ttft_ms", record.ttft_ms), ("error.type", record.error_type)):
            if value is not None:
                attrs[key] = value
        span.set_attributes(attrs)
        if record.status == "error":
            span.set_status(Status(StatusCode.ERROR, (record.error_message or "")[:200]))
        span.end()


    def abandon(self, request_id: str, exc: BaseException) -> None:
        """End request ``request_id``'s span after an exception no answer covers (it never reaches end_request)."""
        span = self._open.pop(request_id, None)
        if span is None:
            return
        # why: opentelemetry is imported only when tracing is on
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


def route_attributes(decision: RouteDecision) -> dict[str, Any]:
    """The routing decision as span attributes: scores are lists aligned with ``poolgate.route.candidates``."""
    cands = decision.candidates
    attrs: dict[str, Any] = {"poolgate.pool": decision.pool or "", "poolgate.router": decision.router,
                             "poolgate.route.ranking": [b.name for b in decision.ranking],
                             "poolgate.route.candidates": [str(c.get("backend")) for c in cands]}
    if decision.router_version:
        attrs["poolgate.router_version"] = decision.router_version
    if decision.router_error:
        attrs["poolgate.route.router_error"] = decision.router_error[:200]
    for key in ("quality", "utility", "expected_cost_usd"):
        if cands and all(isinstance(c.get(key), int | float) for c in cands):
            attrs[f"poolgate.route.{key}"] = [float(c[key]) for c in cands]
    if cands and all("feasible" in c for c in cands):
        attrs["poolgate.route.feasible"] = [bool(c["feasible"]) for c in cands]
    return attrs


def make_tracing(endpoint: str | None, provider: Any = None) -> Tracing:
    """Tracing to the OTLP/HTTP collector at ``endpoint``, or through ``provider`` (a TracerProvider: tests);
    inert when neither is given. A missing ``poolgate[otel]`` extra is one warning, not a failed start."""
    if provider is None and not endpoint:
        return Tracing()
    try:
        # why: opentelemetry-sdk is the optional poolgate[otel] extra, imported only when tracing is asked for
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("POOLGATE_OTEL_ENDPOINT is set but opentelemetry-sdk is not installed: "
                    "pip install 'poolgate[otel]'; tracing is off")
        return Tracing()
    if provider is not None:
        return Tracing(provider.get_tracer("poolgate"))
    # why: the exporter is part of the optional extra too
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    own = TracerProvider(resource=Resource.create({"service.name": "poolgate"}))
    url = (endpoint or "").rstrip("/")
    own.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=url if url.endswith("/v1/traces") else f"{url}/v1/traces")))
    return Tracing(own.get_tracer("poolgate"), own)
