"""The judge, off the request path: a share of each judged pool's answers is scored by the pool's judge backend.

``offer(record, question, answer)`` is called after a request finished (the client has its answer, or is getting
its stream); it only draws the sample, checks the day's budget and puts the item on a bounded queue (a full
queue drops it and counts the drop), so it can never delay or fail the request. Workers send the rubric prompt
(``gateway.judge.rubric``) through the dispatcher (breakers, retries; no fallback: the judge is one backend),
and for each call:

- write a ``requests`` row of its own for the call's cost: ``router = policy = "judge"``, ``model_requested =
  "judge:<pool>"``, ``pool`` the judged pool, ``backend`` the judge, no key. Reports and ``usage_totals`` count its
  cost like any row (group ``--by router`` shows it as ``judge``); it has no candidates, so it never enters the
  routing counterfactuals, and no label, so it never enters training;
- add the cost to the pool's judge spend of the UTC day (``max_usd_per_day``; per gateway process);
- when the verdict has a score, upsert a ``source: judge`` feedback row (labeler = the judge backend, comment =
  its reason) once the judged request's own row is in the database, then tell ``on_label`` (the online router).

A verdict of ``score: null`` (the judge cannot tell) writes no label. Failures are counted and logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from gateway.judge.rubric import VerdictError, judge_prompt, parse_verdict
from gateway.pools import JudgeConfig, PoolFile
from gateway.proxy.dispatch import AllBackendsFailed, Dispatcher
from gateway.proxy.usage import detail_fields, parse_usage
from gateway.record import RequestRecord
from gateway.store import LogWriter
from gateway.store.repository import LogRepository
from routers.pricing import usage_cost_usd

log = logging.getLogger("poolgate.judge")

#: ``await on_label(pool, question, backend, score)``: a new label for ``backend``'s answer to ``question``
OnLabel = Callable[[str, str, str, float], Awaitable[object]]
#: longest answer sent to the judge (characters): longer ones are not judged (a judge call must stay bounded)
MAX_ANSWER_CHARS = 32_000


@dataclass(frozen=True)
class JudgeItem:
    request_id: str
    pool: str
    backend: str  # who answered
    question: str
    answer: str


class JudgeService:
    """See the module docstring. ``rng`` draws the sample (seedable for tests)."""

    def __init__(self, pool_file: PoolFile, dispatcher: Dispatcher, writer: LogWriter, repository: LogRepository,
                 on_label: OnLabel | None = None, rng: random.Random | None = None) -> None:
        self.pool_file = pool_file
        self.dispatcher = dispatcher
        self.writer = writer
        self.repository = repository
        self.on_label = on_label
        self.rng = rng or random.Random()
        self.judges: dict[str, JudgeConfig] = {p.name: p.judge for p in pool_file.pools if p.judge is not None}
        size = max((j.queue_size for j in self.judges.values()), default=1)
        self.queue: asyncio.Queue[JudgeItem] = asyncio.Queue(maxsize=size)
        self.counts: Counter[str] = Counter()  # offered, sampled_out, over_budget, dropped, scored, unknown, failed
        self.spend: dict[tuple[str, date], float] = {}
        self._workers: list[asyncio.Task[None]] = []

    # -- the request path: cheap, synchronous, never raises --------------------------------------------------
    def offer(self, record: RequestRecord, question: str | None, answer: str | None) -> None:
        judge = self.judges.get(record.pool or "")
        if judge is None or record.status != "ok" or not question or not answer or record.backend is None:
            return
        self.counts["offered"] += 1
        if self.rng.random() >= judge.share or len(answer) > MAX_ANSWER_CHARS:
            self.counts["sampled_out"] += 1
            return
        if judge.max_usd_per_day is not None and self.spent_today(record.pool or "") >= judge.max_usd_per_day:
            self.counts["over_budget"] += 1
            return
        try:
            self.queue.put_nowait(JudgeItem(record.id, record.pool or "", record.backend, question, answer))
        except asyncio.QueueFull:
            self.counts["dropped"] += 1

    def spent_today(self, pool: str) -> float:
        return self.spend.get((pool, datetime.now(UTC).date()), 0.0)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.judges or self._workers:
            return
        n = max(j.concurrency for j in self.judges.values())
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._run(), name=f"poolgate-judge-{i}") for i in range(n)]

    async def drain(self) -> None:
        """Wait until every queued item is judged (tests, the benchmark)."""
        await self.queue.join()

    async def stop(self) -> None:
        """Stop the workers; answers still queued go unjudged (they are labels, not data: nothing is lost)."""
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self.judge(item)
            except Exception:  # a worker must survive anything: the next answer still gets judged
                self.counts["failed"] += 1
                log.exception("judging request %s failed", item.request_id)
            finally:
                self.queue.task_done()

    # -- one judgment ----------------------------------------------------------------------------------------
    async def judge(self, item: JudgeItem) -> float | None:
        """Judge one answer; returns the score written (None when none was)."""
        config = self.judges[item.pool]
        backend = self.pool_file.backend(config.backend)
        payload = {"model": backend.model, "temperature": 0, "max_tokens": 200,
                   "messages": [{"role": "user", "content": judge_prompt(item.question, item.answer)}]}
        cost_row = RequestRecord(id=uuid.uuid4().hex, model_requested=f"judge:{item.pool}", stream=False,
                                 pool=item.pool, router="judge", policy="judge", propensity=1.0, backend=backend.name)
        started = asyncio.get_running_loop().time()
        try:
            result = await self.dispatcher.dispatch([backend], payload, stream=False, fallback=False)
        except AllBackendsFailed as exc:
            cost_row.attempts = exc.attempts
            cost_row.finish(status="error", http_status=exc.status, latency_ms=self._ms(started),
                            error_type="judge_error", error_message=exc.message[:2000])
            self.writer.submit(cost_row)
            self.counts["failed"] += 1
            return None
        usage = parse_usage(result.parsed.get("usage") if result.parsed else None)
        tokens = usage.settled(0, 0)  # a judge call without usage costs what it reported: nothing is guessed
        p_tok, c_tok = tokens.prompt_tokens, tokens.completion_tokens
        cost = usage_cost_usd(backend, tokens)
        cost_row.attempts = result.attempts
        text = _content(result.parsed)
        cost_row.finish(status="ok" if result.parsed is not None else "error", http_status=result.status,
                        latency_ms=self._ms(started), prompt_tokens=p_tok, completion_tokens=c_tok,
                        **detail_fields(tokens), usage_estimated=not usage.complete, cost_usd=cost)
        self.writer.submit(cost_row)
        key = (item.pool, datetime.now(UTC).date())
        self.spend[key] = self.spend.get(key, 0.0) + cost
        try:
            verdict = parse_verdict(text)
        except VerdictError as exc:
            self.counts["failed"] += 1
            log.warning("judge %s on request %s: %s", backend.name, item.request_id, exc)
            return None
        if verdict.score is None:
            self.counts["unknown"] += 1
            return None
        if not await self._request_logged(item.request_id):
            self.counts["failed"] += 1
            log.warning("judge: request %s has no log row; its label is dropped", item.request_id)
            return None
        await self.repository.upsert_feedback(item.request_id, verdict.score, verdict.reason or None,
                                              backend.name, source="judge")
        self.counts["scored"] += 1
        if self.on_label is not None:
            await self.on_label(item.pool, item.question, item.backend, verdict.score)
        return verdict.score

    async def _request_logged(self, request_id: str) -> bool:
        """The judged request's row is in the database (the label's foreign key), flushing the writer once."""
        exists, _ = await self.repository.request_owner(request_id)
        if not exists:
            await self.writer.flush()
            exists, _ = await self.repository.request_owner(request_id)
        return exists

    @staticmethod
    def _ms(started: float) -> float:
        return (asyncio.get_running_loop().time() - started) * 1000

    def status(self) -> dict[str, object]:
        return {"pools": {p: {"backend": j.backend, "share": j.share, "spent_today_usd": round(self.spent_today(p), 6),
                              "max_usd_per_day": j.max_usd_per_day} for p, j in self.judges.items()},
                "queued": self.queue.qsize(), "counts": dict(self.counts)}


def _content(parsed: dict[str, object] | None) -> str:
    choices = parsed.get("choices") if parsed else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""
