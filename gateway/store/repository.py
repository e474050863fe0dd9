"""The log store's queries: every read of the ``requests`` and ``feedback`` tables outside the writer.

Routes and commands call these functions and hold no SQL themselves.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.models import Feedback, Request
from training.from_logs import LabelledRow


async def fetch_labelled(
    engine: AsyncEngine, pool: str, since: datetime | None, until: datetime | None
) -> tuple[list[LabelledRow], int]:
    """Successful requests of ``pool`` in [since, until) with feedback; and how many of those lack prompt text."""
    req, fb = Request.__table__, Feedback.__table__
    assert isinstance(req, Table) and isinstance(fb, Table)
    query = (
        select(req.c.prompt_text, req.c.backend, req.c.prompt_tokens, req.c.completion_tokens,
               req.c.created_at, fb.c.score)
        .join(fb, fb.c.request_id == req.c.id)
        .where(req.c.pool == pool, req.c.status == "ok", req.c.backend.is_not(None))
    )
    if since is not None:
        query = query.where(req.c.created_at >= since)
    if until is not None:
        query = query.where(req.c.created_at < until)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out = [
        LabelledRow(r.prompt_text, r.backend, int(r.prompt_tokens), int(r.completion_tokens), float(r.score),
                    r.created_at)
        for r in rows if r.prompt_text
    ]
    return out, len(rows) - len(out)
