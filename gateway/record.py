"""The typed record of one request: built by the route, finished once, consumed by metrics, limits and the log.

Its fields are the ``requests`` columns (a test keeps them equal), so a misspelt field is an ``AttributeError``
when set (slots) and a mypy error before that, never a silently NULL column. The route creates the record with
what the request says, tenancy adds the key, routing its decision, then exactly one :meth:`RequestRecord.finish`
sets the outcome (a second one raises); shadow routers may attach their choices afterwards (``shadow``).
The request-finished step (``gateway.finish.RequestFinisher``) hands it to ``Metrics.observe``, the limits' settle
(``Tenancy.settle``) and ``LogWriter.submit``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["ok", "error"]


class RecordFinishedTwice(RuntimeError):
    """``finish`` was called on a record that already has its outcome."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """One request's log row (see ``gateway.store.models.Request`` for what each column means)."""

    id: str
    model_requested: str
    stream: bool
    created_at: datetime = field(default_factory=_now)
    prompt_text: str | None = None
    pool: str | None = None
    router: str | None = None
    router_version: str | None = None
    key_id: str | None = None
    flags: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    backend: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: Status = "ok"
    http_status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: float = 0.0
    response_text: str | None = None
    shadow: dict[str, Any] | None = None
    propensity: float | None = None  # P(backend chosen) under ``policy``; routing sets it (1.0 without exploration)
    policy: str | None = None  # "router" or "explore:<policy>"
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it (Anthropic cache_creation_input_tokens)
    reasoning_tokens: int = 0  # of completion_tokens
    cache: str | None = None  # "exact" | "semantic" when poolgate's response cache answered
    cache_saved_usd: float = 0.0  # what the upstream call a cache hit replaced would have cost
    session_id: str | None = None  # the conversation (x-poolgate-session or a digest of the message prefix)
    affinity: bool = False  # the backend came from the session's earlier turns, not the router
    finished: bool = field(default=False, repr=False)

    def finish(
        self,
        *,
        status: Status,
        http_status: int,
        latency_ms: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        usage_estimated: bool = False,
        cost_usd: float = 0.0,
        ttft_ms: float | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        response_text: str | None = None,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        """Set the request's outcome, once. Token counts must be non-negative and the details parts of their
        totals (``gateway.proxy.usage`` checks what backends report)."""
        if self.finished:
            raise RecordFinishedTwice(f"request record {self.id} finished twice")
        if prompt_tokens < 0 or completion_tokens < 0 or cost_usd < 0:
            raise ValueError(f"negative usage in record {self.id}: {prompt_tokens}, {completion_tokens}, {cost_usd}")
        if not (0 <= cached_tokens + cache_write_tokens <= prompt_tokens and min(cached_tokens, cache_write_tokens) >= 0
                and 0 <= reasoning_tokens <= completion_tokens):
            raise ValueError(f"token details of record {self.id} are not parts of their totals: {cached_tokens} "
                             f"cached + {cache_write_tokens} written of {prompt_tokens}, {reasoning_tokens} of "
                             f"{completion_tokens}")
        self.status, self.http_status, self.latency_ms = status, http_status, latency_ms
        self.prompt_tokens, self.completion_tokens, self.usage_estimated = prompt_tokens, completion_tokens, \
            usage_estimated
        self.cost_usd, self.ttft_ms = cost_usd, ttft_ms
        self.cached_tokens, self.cache_write_tokens, self.reasoning_tokens = cached_tokens, cache_write_tokens, \
            reasoning_tokens
        self.error_type, self.error_message, self.response_text = error_type, error_message, response_text
        self.finished = True

    def as_row(self) -> dict[str, Any]:
        """The record as a ``requests`` row (column name -> value); nested values are shared, not copied."""
        return {name: getattr(self, name) for name in ROW_FIELDS}


#: The record's fields that are ``requests`` columns (all but ``finished``).
ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RequestRecord) if f.name != "finished")
