"""The log store's queries: every read of ``requests`` and ``feedback`` outside the writer, and the feedback upsert.

Routes and commands call :class:`LogRepository`; they hold no SQL. Reports aggregate in the database: each query is a
``GROUP BY`` over the window, so a report reads a few aggregate rows per group, never the window's requests. The
same SQL runs on SQLite and PostgreSQL; where their JSON and date functions differ, :class:`_Dialect` says which.

The routing report (``gateway.loop.report``) needs, per request, the cheapest and the dearest of its logged
candidates at the pool file's prices: :meth:`LogRepository._extremes` ranks each request's candidates (a JSON array)
against a table of those prices with ``ROW_NUMBER``, ties going to the earlier candidate, as the ``cheapest`` and
``strongest`` baselines order them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    Subquery,
    Table,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.models import Feedback, Request
from training.from_logs import LabelledRow

REQ: Table = Request.__table__  # type: ignore[assignment]
FB: Table = Feedback.__table__  # type: ignore[assignment]

#: labels of one request, the one that counts first: a human's label wins over the judge's ("user" > "judge")
_HUMAN_FIRST = FB.c.source.desc()


#: the token columns that are parts of prompt_tokens / completion_tokens
DETAIL_TOKENS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")


def _labels() -> Subquery:
    """One score per labelled request (``request_id``, ``score``): the human's (source ``user``) where there is
    one, else the judge's. Every reader of scores joins this, never ``feedback`` itself (two rows per request)."""
    user = func.max(case((FB.c.source == "user", FB.c.score)))
    judge = func.max(case((FB.c.source == "judge", FB.c.score)))
    return select(FB.c.request_id, func.coalesce(user, judge).label("score")).group_by(FB.c.request_id
                                                                                         ).subquery("labels")

#: policy of the judge's counterfactual calls (``gateway.judge.service``, "Pairs")
JUDGE_PAIR = "judge-pair"

#: (input, output) USD per 1M tokens of each backend, from the pool file
Prices = Mapping[str, tuple[float, float]]

C = TypeVar("C", "ReportCell", "ShadowCell", "TimeCell")

#: the groupings of the routing report, and the name of its all-rows group
GROUPINGS: tuple[str, ...] = ("pool", "key", "router", "backend", "day")
TOTAL = "total"


@dataclass(frozen=True)
class Window:
    """Requests created in [since, until) (either open), of ``pool`` when set."""

    since: datetime | None = None
    until: datetime | None = None
    pool: str | None = None

    def where(self, query: Select[Any]) -> Select[Any]:
        if self.since is not None:
            query = query.where(REQ.c.created_at >= self.since)
        if self.until is not None:
            query = query.where(REQ.c.created_at < self.until)
        if self.pool is not None:
            query = query.where(REQ.c.pool == self.pool)
        return query


@dataclass(frozen=True)
class Requester:
    """Who asked and who answered: the dimensions every report grouping is computed from."""

    pool: str | None
    key_id: str | None
    router: str | None
    router_version: str | None
    backend: str | None


@dataclass(frozen=True)
class ReportCell(Requester):
    """One ``GROUP BY`` cell of a window: requests sharing pool, key, router, backend, status, UTC day and the
    cheapest and dearest priced candidate (None: no candidate has a price), with their sums."""

    status: str
    day: str
    cheapest: str | None
    strongest: str | None
    n: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    labelled: int
    score_sum: float
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it
    reasoning_tokens: int = 0  # of completion_tokens


@dataclass(frozen=True)
class ShadowCell(Requester):
    """Successful pooled requests with a priced candidate on which shadow router ``name`` chose ``choice``."""

    day: str
    name: str
    choice: str
    n: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class TimeCell:
    """Requests of one time bucket (``bucket``: its start, Unix seconds) sharing pool, backend, status, extremes."""

    bucket: int
    pool: str | None
    backend: str | None
    status: str
    cheapest: str | None
    strongest: str | None
    n: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class _Dialect:
    """The expressions SQLite and PostgreSQL spell differently."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def day(self) -> ColumnElement[str]:
        """The request's UTC date, ``YYYY-MM-DD`` (SQLite stores naive UTC text)."""
        if self.pg:
            return func.to_char(func.timezone("UTC", REQ.c.created_at), "YYYY-MM-DD")
        return func.date(REQ.c.created_at)

    def epoch(self) -> ColumnElement[int]:
        """Whole Unix seconds of the request's creation."""
        if self.pg:
            return cast(func.floor(func.extract("epoch", REQ.c.created_at)), BigInteger)
        return cast(func.strftime("%s", REQ.c.created_at), BigInteger)

    def elements(self, col: Any, kind: str) -> tuple[Any, ColumnElement[Any], ColumnElement[Any]]:
        """(FROM item, key or array index, the element's ``backend`` as text) over a JSON array (``kind`` "array") or
        object ("object"); anything else in the column counts as empty, a non-object element has no backend."""
        if self.pg:
            empty = "'[]'::jsonb" if kind == "array" else "'{}'::jsonb"
            safe = case((func.jsonb_typeof(col) == kind, col), else_=literal_column(empty))
            if kind == "array":
                fn = func.jsonb_array_elements(safe).table_valued("value", with_ordinality="idx").render_derived()
                key = fn.c.idx
            else:
                fn = func.jsonb_each(safe).table_valued("key", "value").render_derived()
                key = fn.c.key
            return fn, key, fn.c.value.op("->>")(literal("backend"))
        empty = "'[]'" if kind == "array" else "'{}'"
        safe = case((func.json_type(col) == kind, col), else_=literal_column(empty))
        fn = func.json_each(safe).table_valued("key", "value", "type")
        backend = case((fn.c.type == "object", func.json_extract(fn.c.value, "$.backend")))
        return fn, fn.c.key, backend


def router_label(router: ColumnElement[Any], version: ColumnElement[Any]) -> ColumnElement[str]:
    """``router@version`` (``(direct)`` for requests that named a backend), as ``gateway.loop.report`` labels."""
    return case(
        ((router.is_(None)) | (router == "") | (router == "direct"), literal("(direct)")),
        ((version.is_not(None)) & (version != ""), router + literal("@") + version),
        else_=router,
    )


class LogRepository:
    """Queries of the log store behind ``engine`` (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = _Dialect(engine.dialect.name)

    # -- feedback -------------------------------------------------------------------------------------
    async def request_owner(self, request_id: str) -> tuple[bool, str | None]:
        """(the request has a row, its key id)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(REQ.c.key_id).where(REQ.c.id == request_id))).first()
        return (row is not None, row.key_id if row is not None else None)

    async def labelled_request(self, request_id: str) -> tuple[str | None, str | None, str | None]:
        """(pool, backend, prompt text) of a request, for the online router's update (Nones when unknown)."""
        query = select(REQ.c.pool, REQ.c.backend, REQ.c.prompt_text).where(REQ.c.id == request_id,
                                                                            REQ.c.status == "ok")
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return (row.pool, row.backend, row.prompt_text) if row is not None else (None, None, None)

    async def upsert_feedback(self, request_id: str, score: float, comment: str | None,
                              labeler: str | None, source: str = "user") -> tuple[bool, dict[str, Any]]:
        """Insert or update the ``source`` label of ``request_id`` (``None`` keeps a stored comment or labeler);
        returns (created, the stored row). A judge label (``source="judge"``) never touches the human one."""
        now = datetime.now(UTC)
        changes: dict[str, Any] = {"score": score, "updated_at": now}
        if comment is not None:
            changes["comment"] = comment
        if labeler is not None:
            changes["labeler"] = labeler
        insert = pg_insert if self.dialect.pg else sqlite_insert
        statement = insert(FB).values(request_id=request_id, source=source, score=score, comment=comment,
                                      labeler=labeler, created_at=now, updated_at=now)
        statement = statement.on_conflict_do_update(index_elements=["request_id", "source"], set_=changes)
        this = (FB.c.request_id == request_id) & (FB.c.source == source)
        async with self.engine.begin() as conn:
            existed = (await conn.execute(select(FB.c.request_id).where(this))).first()
            await conn.execute(statement)
            stored = (await conn.execute(select(FB).where(this))).one()._mapping
        return existed is None, dict(stored)

    async def feedback(self, request_id: str) -> dict[str, Any] | None:
        """The label of ``request_id`` that counts (the human one when both exist), or None."""
        query = select(FB).where(FB.c.request_id == request_id).order_by(_HUMAN_FIRST)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return dict(row._mapping) if row is not None else None

    # -- training data --------------------------------------------------------------------------------
    async def labelled(self, pool: str, since: datetime | None, until: datetime | None
                       ) -> tuple[list[LabelledRow], int]:
        """Successful requests of ``pool`` in [since, until) with feedback; and how many of those lack prompt text."""
        labels = _labels()
        query = (
            select(REQ.c.prompt_text, REQ.c.backend, REQ.c.prompt_tokens, REQ.c.completion_tokens,
                   REQ.c.created_at, REQ.c.propensity, REQ.c.policy, labels.c.score)
            .join(labels, labels.c.request_id == REQ.c.id)
            .where(REQ.c.status == "ok", REQ.c.backend.is_not(None))
            .order_by(REQ.c.created_at, REQ.c.id)  # time order: the holdout is the newest traffic
        )
        query = Window(since, until, pool).where(query)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = [LabelledRow(r.prompt_text, r.backend, int(r.prompt_tokens), int(r.completion_tokens), float(r.score),
                           r.created_at, None if r.propensity is None else float(r.propensity), r.policy)
               for r in rows if r.prompt_text]
        return out, len(rows) - len(out)

    # -- usage totals (GET /admin/report) -------------------------------------------------------------
    async def usage_totals(self, since: datetime | None, until: datetime | None,
                           key_id: str | None) -> list[dict[str, Any]]:
        """Per (key, pool, backend): requests, errors, prompt and completion tokens (and of those: cached, cache
        writes, reasoning), cost, mean latency."""
        cols = (REQ.c.key_id, REQ.c.pool, REQ.c.backend)
        query = select(
            *cols, func.count().label("requests"),
            func.sum(case((REQ.c.status == "ok", 0), else_=1)).label("errors"),
            func.sum(REQ.c.prompt_tokens).label("prompt_tokens"),
            func.sum(REQ.c.completion_tokens).label("completion_tokens"),
            *(func.sum(REQ.c[name]).label(name) for name in DETAIL_TOKENS),
            func.sum(REQ.c.cost_usd).label("cost_usd"), func.avg(REQ.c.latency_ms).label("mean_latency_ms"),
        ).group_by(*cols).order_by(*cols)
        query = Window(since, until).where(query)
        if key_id is not None:
            query = query.where(REQ.c.key_id == key_id)
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(query)).all()]
        for r in rows:
            r["errors"], r["cost_usd"] = int(r["errors"] or 0), float(r["cost_usd"] or 0.0)
            for name in ("prompt_tokens", "completion_tokens", *DETAIL_TOKENS):
                r[name] = int(r[name] or 0)
            r["mean_latency_ms"] = round(float(r["mean_latency_ms"] or 0.0), 2)
        return rows

    # -- the response cache's savings (the routing report's "cache" section) --------------------------
    async def cache_totals(self, window: Window) -> list[dict[str, Any]]:
        """Per pool and cache result (``exact``, ``semantic``, None for the requests it did not answer): requests,
        USD saved (``cache_saved_usd``: what the replayed answers had cost) and USD spent upstream."""
        cols = (REQ.c.pool, REQ.c.cache)
        query = window.where(select(*cols, func.count().label("requests"),
                                    func.sum(REQ.c.cache_saved_usd).label("saved_usd"),
                                    func.sum(REQ.c.cost_usd).label("cost_usd")).group_by(*cols).order_by(*cols))
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(query)).all()]
        for r in rows:
            r["requests"], r["saved_usd"] = int(r["requests"]), float(r["saved_usd"] or 0.0)
            r["cost_usd"] = float(r["cost_usd"] or 0.0)
        return rows

    # -- the routing report ---------------------------------------------------------------------------
    async def span(self, window: Window) -> tuple[datetime, datetime] | None:
        """The first and last creation time in the window (None when it holds no request)."""
        query = window.where(select(func.min(REQ.c.created_at), func.max(REQ.c.created_at)))
        async with self.engine.connect() as conn:
            first, last = (await conn.execute(query)).one()
        return None if first is None else (first, last)

    def _extremes(self, window: Window, prices: Prices) -> Subquery:
        """Per request id with a priced candidate: its cheapest (lowest input + output price, then input price) and
        dearest (highest input + output price) candidate, the earlier one on ties."""
        rows = [select(literal(name, String).label("pname"), literal(p_in + p_out, Float).label("psum"),
                       literal(p_in, Float).label("pin")) for name, (p_in, p_out) in prices.items()]
        table = union_all(*rows).subquery("prices")  # portable; SQLite has no VALUES with column names
        fn, idx, backend = self.dialect.elements(REQ.c.candidates, "array")
        elements = window.where(select(REQ.c.id.label("rid"), backend.label("name"), cast(idx, Integer).label("idx"))
                                .select_from(REQ).join(fn, true())).subquery("elements")
        ranked = select(
            elements.c.rid, elements.c.name,
            func.row_number().over(partition_by=elements.c.rid,
                                   order_by=(table.c.psum, table.c.pin, elements.c.idx)).label("cheap_rank"),
            func.row_number().over(partition_by=elements.c.rid,
                                   order_by=(table.c.psum.desc(), elements.c.idx)).label("dear_rank"),
        ).join(table, table.c.pname == elements.c.name).subquery("ranked")
        return select(
            ranked.c.rid,
            func.max(case((ranked.c.cheap_rank == 1, ranked.c.name))).label("cheapest"),
            func.max(case((ranked.c.dear_rank == 1, ranked.c.name))).label("strongest"),
        ).group_by(ranked.c.rid).subquery("extremes")

    def _requests(self, window: Window, prices: Prices) -> Subquery:
        """The window's requests with their feedback score, UTC day, epoch seconds and candidate extremes."""
        ext = self._extremes(window, prices) if prices else None
        labels = _labels()
        cols: list[Any] = [
            REQ.c.id, REQ.c.pool, REQ.c.key_id, REQ.c.router, REQ.c.router_version, REQ.c.backend, REQ.c.status,
            REQ.c.shadow, REQ.c.propensity, REQ.c.created_at,
            func.coalesce(REQ.c.latency_ms, 0.0).label("latency_ms"),
            func.coalesce(REQ.c.prompt_tokens, 0).label("prompt_tokens"),
            func.coalesce(REQ.c.completion_tokens, 0).label("completion_tokens"),
            func.coalesce(REQ.c.cost_usd, 0.0).label("cost_usd"),
            # a judge-pair row's label scores an answer no client got: not the pool's feedback
            case((REQ.c.policy == JUDGE_PAIR, None), else_=labels.c.score).label("score"),
            self.dialect.day().label("day"),
            self.dialect.epoch().label("epoch"),
            func.coalesce(REQ.c.cached_tokens, 0).label("cached_tokens"),
            func.coalesce(REQ.c.cache_write_tokens, 0).label("cache_write_tokens"),
            func.coalesce(REQ.c.reasoning_tokens, 0).label("reasoning_tokens"),
        ]
        if ext is not None:
            cols += [ext.c.cheapest, ext.c.strongest]
        else:
            cols += [literal(None, String).label("cheapest"), literal(None, String).label("strongest")]
        query = select(*cols).select_from(REQ).outerjoin(labels, labels.c.request_id == REQ.c.id)
        if ext is not None:
            query = query.outerjoin(ext, ext.c.rid == REQ.c.id)
        return window.where(query).subquery("r")

    def requests_subquery(self, window: Window, prices: Prices) -> Subquery:
        """The window's requests with the label that counts and their candidate extremes (one row each), for the
        report's per-event readers (``gateway.store.estimates``)."""
        return self._requests(window, prices)

    async def report_cells(self, window: Window, prices: Prices) -> list[ReportCell]:
        """The window's requests grouped as :class:`ReportCell` (one aggregate row per cell)."""
        r = self._requests(window, prices)
        dims = (r.c.pool, r.c.key_id, r.c.router, r.c.router_version, r.c.backend, r.c.status, r.c.day,
                r.c.cheapest, r.c.strongest)
        query = select(*dims, func.count(), func.sum(r.c.prompt_tokens), func.sum(r.c.completion_tokens),
                       func.sum(r.c.cost_usd), func.count(r.c.score), func.coalesce(func.sum(r.c.score), 0.0),
                       func.sum(r.c.cached_tokens), func.sum(r.c.cache_write_tokens), func.sum(r.c.reasoning_tokens),
                       ).group_by(*dims)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_cell(ReportCell, row) for row in rows]

    async def shadow_cells(self, window: Window, prices: Prices) -> list[ShadowCell]:
        """Each shadow router's choices on the window's successful pooled requests with a priced candidate."""
        if not prices:
            return []
        r = self._requests(window, prices)
        fn, name, choice = self.dialect.elements(r.c.shadow, "object")
        picks = (select(r.c.pool, r.c.key_id, r.c.router, r.c.router_version, r.c.backend, r.c.day,
                        cast(name, String).label("name"), choice.label("choice"), r.c.prompt_tokens,
                        r.c.completion_tokens, r.c.cost_usd)
                 .select_from(r).join(fn, true())
                 .where(r.c.status == "ok", r.c.pool.is_not(None), r.c.cheapest.is_not(None))).subquery("picks")
        dims = (picks.c.pool, picks.c.key_id, picks.c.router, picks.c.router_version, picks.c.backend, picks.c.day,
                picks.c.name, picks.c.choice)
        query = select(*dims, func.count(), func.sum(picks.c.prompt_tokens), func.sum(picks.c.completion_tokens),
                       func.sum(picks.c.cost_usd)).where(picks.c.choice.is_not(None)).group_by(*dims)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_cell(ShadowCell, row) for row in rows]

    async def time_cells(self, window: Window, prices: Prices, width_s: int) -> list[TimeCell]:
        """The window's requests grouped by ``width_s``-second bucket (buckets start at multiples of ``width_s``)."""
        r = self._requests(window, prices)
        bucket = (r.c.epoch // width_s * width_s).label("bucket")
        dims = (bucket, r.c.pool, r.c.backend, r.c.status, r.c.cheapest, r.c.strongest)
        query = select(*dims, func.count(), func.sum(r.c.prompt_tokens), func.sum(r.c.completion_tokens),
                       func.sum(r.c.cost_usd)).group_by(*dims)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_cell(TimeCell, row) for row in rows]

    async def latency_ranks(self, window: Window, by: str, quantiles: Sequence[float]
                            ) -> dict[str, tuple[int, dict[int, float]]]:
        """Per group of ``by`` (a grouping, or :data:`TOTAL`): (requests, {rank: latency ms}) for the ranks around
        each quantile's position ``(n - 1) q`` in the sorted latencies (at most three a quantile), enough to
        interpolate the quantile as numpy does. The database sorts; only those few latencies come back."""
        r = self._requests(window, {})
        key = self.group_key(r, by)
        order = func.row_number().over(partition_by=key, order_by=r.c.latency_ms) - 1
        ranked = select(key.label("g"), r.c.latency_ms.label("v"), order.label("rank"),
                        func.count().over(partition_by=key).label("n")).subquery("ranked")
        near = [(ranked.c.rank >= (ranked.c.n - 1) * q - 1.5) & (ranked.c.rank <= (ranked.c.n - 1) * q + 1.5)
                for q in quantiles]
        query = select(ranked.c.g, ranked.c.n, ranked.c.rank, ranked.c.v).where(near[0] if len(near) == 1 else
                                                                               _any(near))
        out: dict[str, tuple[int, dict[int, float]]] = {}
        async with self.engine.connect() as conn:
            for g, n, rank, v in (await conn.execute(query)).all():
                out.setdefault(str(g), (int(n), {}))[1][int(rank)] = float(v)
        return out

    def group_key(self, r: Subquery, by: str) -> ColumnElement[str]:
        """The group a request of ``r`` belongs to under grouping ``by`` (labels as ``gateway.loop.report``)."""
        if by == "pool":
            return func.coalesce(r.c.pool, "(direct)")
        if by == "key":
            return func.coalesce(r.c.key_id, "(no key)")
        if by == "router":
            return router_label(r.c.router, r.c.router_version)
        if by == "backend":
            return func.coalesce(r.c.backend, "(none)")
        if by == "day":
            return r.c.day
        if by == TOTAL:
            return literal(TOTAL)
        raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")


def _cell(cls: type[C], row: Sequence[Any]) -> C:
    """A cell from an aggregate row in field order: counts and sums as their field's type (a NULL sum is 0)."""
    kwargs: dict[str, Any] = {}
    for f, value in zip(dataclasses.fields(cls), row, strict=True):
        kwargs[f.name] = int(value or 0) if f.type == "int" else float(value or 0.0) if f.type == "float" else value
    return cls(**kwargs)


def _any(conditions: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    out = conditions[0]
    for c in conditions[1:]:
        out = out | c
    return out
