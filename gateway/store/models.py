"""ORM models of the log store: one ``requests`` row per gateway request, one ``feedback`` row per label.

Types are chosen to behave the same on SQLite and PostgreSQL: ``JSON`` (``JSONB`` on PostgreSQL, so reports can
query inside it), timezone-aware UTC datetimes (``UTCDateTime`` re-attaches UTC on SQLite, which stores naive
strings), unbounded ``String``/``Text``. The schema itself is created only by Alembic (``migrations/versions``);
these models must stay in step with it (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false
from sqlalchemy.types import DateTime, TypeDecorator

#: Deterministic constraint/index names, so migrations can name them and downgrades can drop them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always stores UTC and always returns timezone-aware UTC datetimes.

    Naive datetimes given to it are taken to be UTC already. SQLite keeps no offset, so values read back
    from it are naive UTC strings; this type re-attaches ``UTC`` so both databases return the same thing.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite's DATETIME string would silently drop the offset anyway; make the drop explicit.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_type(nullable: bool = False) -> JSON:
    """Portable JSON column type: ``JSONB`` on PostgreSQL, JSON text elsewhere.

    For nullable columns Python ``None`` becomes SQL ``NULL`` (not the JSON literal ``null``).
    """
    return JSON(none_as_null=nullable).with_variant(JSONB(none_as_null=nullable), "postgresql")  # type: ignore[return-value]


class Base(DeclarativeBase):
    """Declarative base of the log store; ``Base.metadata`` is Alembic's ``target_metadata``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Request(Base):
    """One routed request, successful or not: the decision, who answered, how long, how much.

    JSON columns: ``candidates`` is a list of ``{"backend", "quality", "utility", "expected_cost_usd"}``,
    ``attempts`` a list of ``{"backend", "status", "error", "latency_ms"}``, ``shadow`` other routers'
    would-be choices, ``flags`` the objective flags the request used.
    """

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # 32-char hex request id
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True, default=utcnow)
    pool: Mapped[str | None] = mapped_column(String, index=True)
    model_requested: Mapped[str] = mapped_column(String)
    router: Mapped[str | None] = mapped_column(String)
    router_version: Mapped[str | None] = mapped_column(String)
    key_id: Mapped[str | None] = mapped_column(String, index=True)
    flags: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(json_type(), default=list)
    backend: Mapped[str | None] = mapped_column(String)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(json_type(), default=list)
    status: Mapped[str] = mapped_column(String)  # "ok" | "error"
    http_status: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String)
    error_message: Mapped[str | None] = mapped_column(Text)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # 64-bit: migration 0004
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # the gateway counted (some of) the tokens itself: the backend sent no usage, or implausible counts
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_text: Mapped[str | None] = mapped_column(Text)  # only when settings.store_prompts
    response_text: Mapped[str | None] = mapped_column(Text)  # only when settings.store_responses
    shadow: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    # migration 0005: the probability with which ``backend`` was chosen (1.0 without exploration; NULL on rows
    # older than 0005, whose propensity is unknown) and the policy that chose it ("router", "explore:epsilon", ...)
    propensity: Mapped[float | None] = mapped_column(Float)
    policy: Mapped[str | None] = mapped_column(String)
    # migration 0006: usage details priced separately (cached input, Anthropic cache writes, reasoning output),
    # poolgate's own response cache ("exact" | "semantic", and the upstream cost it saved) and session affinity
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cache: Mapped[str | None] = mapped_column(String(16))
    cache_saved_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    session_id: Mapped[str | None] = mapped_column(String(64))
    affinity: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


#: Who gave a label: a person through ``POST /v1/feedback`` or the pool's judge backend.
FEEDBACK_SOURCES: tuple[str, ...] = ("user", "judge")


class Feedback(Base):
    """A quality label for one request (``score`` in [0, 1]) from one ``source``; relabeling updates the same row.

    The key is ``(request_id, source)`` (migration ``0005``): a judge's label and a human's label of the same
    request coexist. Where both exist the human one wins: every reader (``LogRepository``'s training rows,
    reports, ``feedback``) takes the ``user`` score and uses the ``judge`` score only for requests without one.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
        CheckConstraint("source IN ('user', 'judge')", name="source"),
    )

    request_id: Mapped[str] = mapped_column(String(64), ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True, default="user", server_default="user")
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    labeler: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


#: Column names of ``requests``, in table order (the keys ``LogWriter.submit`` accepts).
REQUEST_COLUMNS: tuple[str, ...] = tuple(c.name for c in Request.__table__.columns)


class ApiKey(Base):
    """A tenant's API key: limits, allowed pools and default routing flags (migration ``0002``).

    Only ``key_hash`` (SHA-256 hex of the secret) is stored; ``key_prefix`` (the secret's first characters) lets
    an operator recognise a key in listings. ``pools`` None means every pool; ``revoked_at`` set means revoked.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("budget_period IN ('day', 'week', 'month', 'total')", name="budget_period"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "key_" + 12 hex chars
    name: Mapped[str] = mapped_column(String, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str] = mapped_column(String(8), default="month")
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    pools: Mapped[list[str] | None] = mapped_column(json_type(nullable=True))
    default_flags: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RouterVersion(Base):
    """One trained router artifact of a pool (migration ``0003``); ``gateway.routing.artifacts`` owns the rows.

    ``version`` is ``v1``, ``v2``, ... per pool. ``status``: ``candidate`` (trained, not served), ``live`` (at most
    one per pool: what every gateway serves), ``retired`` (was live, superseded by a promotion) or ``rolled_back``
    (was live, taken down by a rollback). ``path`` is the artifact file, ``sha256`` its digest (a changed or
    truncated file is refused). ``metrics`` holds the held-out evaluation; ``data_since``/``data_until`` the log
    window it learned from and ``datasets`` any offline data sets mixed in.
    """

    __tablename__ = "router_versions"
    __table_args__ = (
        CheckConstraint("status IN ('candidate', 'live', 'retired', 'rolled_back')", name="status"),
        UniqueConstraint("pool", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool: Mapped[str] = mapped_column(String, index=True)
    router: Mapped[str] = mapped_column(String)
    version: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    metrics: Mapped[dict[str, Any]] = mapped_column(json_type(), default=dict)
    datasets: Mapped[list[str] | None] = mapped_column(json_type(nullable=True))
    data_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    data_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    n_rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    note: Mapped[str | None] = mapped_column(Text)
