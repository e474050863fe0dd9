"""The "request finished" step: the one place a finished :class:`~gateway.record.RequestRecord` is handed on.

Every request that got as far as routing ends here exactly once (``gateway.api.openai`` calls it when the answer,
the error or the end of the stream is known). The record waits for its pool's shadow routers' choices
(``gateway.routing.shadow``; the client never waits for them), then goes, in this order, to the metrics, to the
limits (the reservation is settled with the real tokens and cost) and to the log writer.
"""

from __future__ import annotations

from gateway.limits.tenancy import Tenancy
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.shadow import ShadowRecorder
from gateway.store import LogWriter
from gateway.tracing import Tracing


class RequestFinisher:
    """``finish(record)``: see the module docstring. Built once per app (``gateway.services``)."""

    def __init__(self, shadow: ShadowRecorder, metrics: Metrics, tenancy: Tenancy, writer: LogWriter,
                 tracing: Tracing | None = None) -> None:
        self.shadow = shadow
        self.tracing = tracing or Tracing()
        self.metrics = metrics
        self.tenancy = tenancy
        self.writer = writer

    def __call__(self, record: RequestRecord) -> None:
        """Hand ``record`` on once the shadow routers' choices are in it (now, or when they are computed)."""
        self.shadow.finish(record, self._hand_on)

    def _hand_on(self, record: RequestRecord) -> None:
        self.metrics.observe(record)
        self.tenancy.settle(record)
        with self.tracing.span("poolgate.log_write", request_id=record.id):
            self.writer.submit(record)
        self.tracing.end_request(record)  # last: the request's span covers its log hand-off
