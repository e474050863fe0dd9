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
- add the cost to the pool's judge spend of the UTC day (``max_usd_per_day``; per gateway process, restored
  at start from the judge's cost rows of the day in the database, :meth:`JudgeService.restore_spend`);
- when the verdict has a score, upsert a ``source: judge`` feedback row (labeler = the judge backend, comment =
  its reason) once the judged request's own row is in the database, then tell ``on_label`` (the online router).

A verdict of ``score: null`` (the judge cannot tell) writes no label. Failures are counted and logged, never raised.

**Pairs** (``pair_share``): when exploration sent a judged request to another backend than the router's top
choice, with probability ``pair_share`` the worker also sends the request's payload to the top choice (a second
upstream call, off the request path, within the day's budget) and judges that answer too. The call is a
``requests`` row of its own: ``router = "judge"``, ``policy = "judge-pair"``, ``model_requested =
"judge-pair:<pool>"``, the top choice as ``backend``, the request's prompt text when it was stored, its cost at
the backend's prices (counted in the judge's spend), and **no propensity**: nobody routed it, so the off-policy
estimators and the promote gate's holdout never take it for logged traffic. Its judge label is a ``source: judge``
feedback row on that row, so ``poolgate train`` sees an observed cell for the other backend on the same prompt
(fitting side only, and only when older than the holdout's cut: :func:`training.log_holdout.time_split`); reports
leave its label out of the pool's mean feedback (it is not an answer any client got).
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
from typing import Any

from gateway.judge.rubric import Verdict, VerdictError, judge_prompt, parse_verdict
from gateway.pools import BackendConfig, JudgeConfig, PoolFile
from gateway.proxy.dispatch import AllBackendsFailed, Dispatcher
from gateway.proxy.usage import detail_fields, parse_usage
from gateway.record import RequestRecord
from gateway.store import LogWriter
from gateway.store.estimates import judge_spend_since
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
    #: pairwise judging: the router's top choice, asked with ``payload`` (None: no pair)
    pair_backend: str | None = None
    payload: dict[str, Any] | None = None
    prompt_text: str | None = None  # the judged request's stored prompt text (None when prompts are not stored)


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
        # offered, sampled_out, over_budget, dropped, scored, unknown, failed; pairs: pair_asked, pair_scored,
        # pair_failed, pair_over_budget
        self.counts: Counter[str] = Counter()
        self.spend: dict[tuple[str, date], float] = {}
        self._workers: list[asyncio.Task[None]] = []

    # -- the request path: cheap, synchronous, never raises --------------------------------------------------
    def offer(self, record: RequestRecord, question: str | None, answer: str | None, top_choice: str | None = None,
              payload: dict[str, Any] | None = None) -> None:
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
        pair = None
        explored = (record.policy or "").startswith("explore:")
        if (explored and payload is not None and top_choice is not None and top_choice != record.backend
                and judge.pair_share > 0 and self.rng.random() < judge.pair_share):
            pair = top_choice
        try:
            self.queue.put_nowait(JudgeItem(record.id, record.pool or "", record.backend, question, answer, pair,
                                            payload if pair else None, record.prompt_text if pair else None))
        except asyncio.QueueFull:
            self.counts["dropped"] += 1

    def spent_today(self, pool: str) -> float:
        return self.spend.get((pool, datetime.now(UTC).date()), 0.0)

    async def restore_spend(self) -> None:
        """Today's spend per judged pool from the judge's cost rows in the database, so a restart does not reset
        the daily budget. Rows other replicas wrote count too (they share the database): the cap then holds for
        the deployment up to what each replica spends after its start. A database error leaves the count at 0."""
        if not self.judges:
            return
        today = datetime.now(UTC).date()
        midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
        try:
            spent = await judge_spend_since(self.repository, midnight)
        except Exception:  # the gateway must start without the log store; the budget then counts from here
            log.exception("judge: could not read today's spend; counting from 0")
            return
        for pool in self.judges:
            self.spend[(pool, today)] = max(self.spend.get((pool, today), 0.0), spent.get(pool, 0.0))

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
        """Judge one answer (and, for a pair, the top choice's); returns the score written (None when none was)."""
        verdict = await self._verdict(item.pool, item.question, item.answer, item.request_id)
        score = await self._label(item, item.request_id, item.backend, verdict, "scored")
        if item.pair_backend is not None:
            await self._judge_pair(item)
        return score

    async def _verdict(self, pool: str, question: str, answer: str, about: str) -> Verdict | None:
        """One judge call with its cost row and the day's spend; None when it failed or could not judge."""
        config = self.judges[pool]
        backend = self.pool_file.backend(config.backend)
        payload = {"model": backend.model, "temperature": 0, "max_tokens": 200,
                   "messages": [{"role": "user", "content": judge_prompt(question, answer)}]}
        cost_row = RequestRecord(id=uuid.uuid4().hex, model_requested=f"judge:{pool}", stream=False,
                                 pool=pool, router="judge", policy="judge", propensity=1.0, backend=backend.name)
        result = await self._call(backend, payload, cost_row)
        if result is None:
            return None
        try:
            verdict = parse_verdict(_content(result))
        except VerdictError as exc:
            self.counts["failed"] += 1
            log.warning("judge %s on request %s: %s", backend.name, about, exc)
            return None
        if verdict.score is None:
            self.counts["unknown"] += 1
            return None
        return verdict

    async def _call(self, backend: BackendConfig, payload: dict[str, Any],
                    row: RequestRecord) -> dict[str, Any] | None:
        """POST ``payload`` to ``backend`` (no fallback), log ``row`` with the call's tokens and cost and add the
        cost to the day's spend of ``row.pool``; returns the parsed answer (None when the call failed)."""
        started = asyncio.get_running_loop().time()
        try:
            result = await self.dispatcher.dispatch([backend], payload, stream=False, fallback=False)
        except AllBackendsFailed as exc:
            row.attempts = exc.attempts
            row.finish(status="error", http_status=exc.status, latency_ms=self._ms(started),
                       error_type="judge_error", error_message=exc.message[:2000])
            self.writer.submit(row)
            self.counts["failed"] += 1
            return None
        usage = parse_usage(result.parsed.get("usage") if result.parsed else None)
        tokens = usage.settled(0, 0)  # a judge call without usage costs what it reported: nothing is guessed
        p_tok, c_tok = tokens.prompt_tokens, tokens.completion_tokens
        cost = usage_cost_usd(backend, tokens)
        row.attempts = result.attempts
        row.finish(status="ok" if result.parsed is not None else "error", http_status=result.status,
                   latency_ms=self._ms(started), prompt_tokens=p_tok, completion_tokens=c_tok,
                   **detail_fields(tokens), usage_estimated=not usage.complete, cost_usd=cost)
        self.writer.submit(row)
        key = (row.pool or "", datetime.now(UTC).date())
        self.spend[key] = self.spend.get(key, 0.0) + cost
        if result.parsed is None:
            self.counts["failed"] += 1
        return result.parsed

    async def _label(self, item: JudgeItem, request_id: str, backend: str, verdict: Verdict | None,
                     counter: str) -> float | None:
        """Write ``verdict`` as the judge's label of ``request_id`` (once its row is in the database) and tell
        ``on_label``; None when there is no verdict or no row."""
        if verdict is None or verdict.score is None:
            return None
        if not await self._request_logged(request_id):
            self.counts["failed"] += 1
            log.warning("judge: request %s has no log row; its label is dropped", request_id)
            return None
        judge_name = self.judges[item.pool].backend
        await self.repository.upsert_feedback(request_id, verdict.score, verdict.reason or None, judge_name,
                                              source="judge")
        self.counts[counter] += 1
        if self.on_label is not None:
            await self.on_label(item.pool, item.question, backend, verdict.score)
        return verdict.score

    async def _judge_pair(self, item: JudgeItem) -> None:
        """Ask the router's top choice the same request and judge its answer (module docstring, "Pairs")."""
        assert item.pair_backend is not None and item.payload is not None
        limit = self.judges[item.pool].max_usd_per_day
        if limit is not None and self.spent_today(item.pool) >= limit:
            self.counts["pair_over_budget"] += 1
            return
        backend = self.pool_file.backend(item.pair_backend)
        body = {k: v for k, v in item.payload.items() if k not in ("stream", "stream_options")}
        row = RequestRecord(id=uuid.uuid4().hex, model_requested=f"judge-pair:{item.pool}", stream=False,
                            pool=item.pool, router="judge", policy="judge-pair", propensity=None,
                            backend=backend.name, prompt_text=item.prompt_text)
        parsed = await self._call(backend, body, row)
        answer = _content(parsed)
        if parsed is None or not answer or len(answer) > MAX_ANSWER_CHARS:
            self.counts["pair_failed"] += 1
            return
        self.counts["pair_asked"] += 1
        verdict = await self._verdict(item.pool, item.question, answer, row.id)
        await self._label(item, row.id, backend.name, verdict, "pair_scored")

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
