"""The closed loop's reads beside :mod:`gateway.store.repository`'s aggregates: the logged events the report's
off-policy estimators use and the requests labelled by both a person and the judge (one row per request: the
bootstrap resamples requests, so these read rows, capped), and the judge's spend since a time (its daily budget
survives a restart)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from gateway.store.repository import FB, REQ, LogRepository, Prices, Window

#: the newest this many events per report feed the estimators (the report says when the cap was reached)
MAX_EVENTS = 5_000


@dataclass(frozen=True)
class Event:
    """One logged request the estimators may use (``gateway.loop.report_estimates``)."""

    pool: str
    backend: str
    propensity: float
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    score: float | None
    cheapest: str
    strongest: str


async def off_policy_events(repo: LogRepository, window: Window, prices: Prices,
                            limit: int = MAX_EVENTS) -> list[Event]:
    """Successful pooled requests of the window with a known propensity and priced candidates, newest first."""
    if not prices:
        return []
    r = repo.requests_subquery(window, prices)
    query = (select(r.c.pool, r.c.backend, r.c.propensity, r.c.cost_usd, r.c.prompt_tokens, r.c.completion_tokens,
                    r.c.score, r.c.cheapest, r.c.strongest)
             .where(r.c.status == "ok", r.c.pool.is_not(None), r.c.backend.is_not(None),
                    r.c.propensity.is_not(None), r.c.cheapest.is_not(None), r.c.strongest.is_not(None))
             .order_by(r.c.created_at.desc(), r.c.id).limit(limit))
    async with repo.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Event(row.pool, row.backend, float(row.propensity), float(row.cost_usd), int(row.prompt_tokens),
                  int(row.completion_tokens), None if row.score is None else float(row.score), row.cheapest,
                  row.strongest) for row in rows]


async def label_pairs(repo: LogRepository, window: Window) -> list[tuple[float, float]]:
    """(user score, judge score) of the window's requests labelled by both."""
    user, judge = FB.alias("u"), FB.alias("j")
    query = window.where(
        select(user.c.score, judge.c.score.label("judge_score")).select_from(REQ)
        .join(user, (user.c.request_id == REQ.c.id) & (user.c.source == "user"))
        .join(judge, (judge.c.request_id == REQ.c.id) & (judge.c.source == "judge")))
    async with repo.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(float(a), float(b)) for a, b in rows]


async def judge_spend_since(repo: LogRepository, since: datetime) -> dict[str, float]:
    """Per judged pool: the cost of the judge's calls (its ``router = 'judge'`` rows) created at or after ``since``."""
    query = (select(REQ.c.pool, func.coalesce(func.sum(REQ.c.cost_usd), 0.0))
             .where(REQ.c.router == "judge", REQ.c.created_at >= since, REQ.c.pool.is_not(None))
             .group_by(REQ.c.pool))
    async with repo.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {pool: float(total) for pool, total in rows}
