"""Redis limiter: rate limits and budgets shared exactly by every gateway replica.

Each ``reserve`` is one ``EVALSHA`` of ``reserve.lua`` (prune the window, check rpm/tpm/budget, take the
reservation, all atomically, on Redis' clock); each ``settle`` one ``EVALSHA`` of ``settle.lua``. Keys of one API key
share a hash tag (``{key_id}``), so the scripts also run on Redis Cluster.

When Redis cannot be reached (connection refused, reset or timed out, any store-wide Redis error), each limit the
key has follows its policy from settings (``redis_failure_rpm`` / ``_tpm`` / ``_budget``): ``open`` lets the request
through unlimited by that limit, ``closed`` refuses it with 503. After a failure Redis is not tried again for
``redis_retry_s`` seconds, so an outage costs one timeout, not one per request. Settles that fail are kept (bounded)
and replayed once Redis answers again; a reservation whose settle is lost stays counted until its period ends, which
errs towards refusing. An error our own script raises on one request's arguments or one key's data (``@user_script``
in the reply) is that request's error (:class:`LimitCheckFailed`), never an outage: one tenant cannot switch
everyone's limits off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError

from gateway.limits.base import (
    WINDOW_MS,
    KeyRevoked,
    KeyUsage,
    LimitCheckFailed,
    LimitExceeded,
    LimitSpec,
    LimitsUnavailable,
    Reservation,
    bounded,
    budget_retry_after,
    from_nano,
    period_window,
)

log = logging.getLogger("poolgate.limits")

#: Budget hashes outlive their period by this much (usage stays readable just after a period ends).
BUDGET_GRACE_S = 3600
MAX_PENDING_SETTLES = 10_000
#: What the Redis client raises when the store, not the request, is the problem: refused, reset or timed-out
#: connections (redis-py's ConnectionError/TimeoutError, OSError), a write on a transport a reset already closed
#: (uvloop: ``RuntimeError: unable to perform operation on <TCPTransport closed=True>``), a reply cut short
#: (``asyncio.IncompleteReadError`` is an EOFError) and store-wide refusals (read-only replica, out of memory, busy).
_FAILURES = (RedisError, OSError, RuntimeError, EOFError, asyncio.TimeoutError)


def script_fault(exc: BaseException) -> bool:
    """True for an error raised inside one of our scripts by this call's arguments or this key's data (a value out of
    range, a key of the wrong type), which no other key shares. Redis names the script position: ``@user_script:N``.
    Store-wide errors raised inside a script keep their own class (ReadOnlyError, OutOfMemoryError, ...)."""
    return type(exc) is ResponseError and "@user_script" in str(exc)


def _script(name: str) -> str:
    return resources.files("gateway.limits").joinpath(name).read_text(encoding="utf-8")


class RedisLimiter:
    """Limits in Redis at ``url``; ``policy`` maps rpm/tpm/budget to "open" or "closed" for Redis outages."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "poolgate:",
        policy: Mapping[str, str] | None = None,
        timeout_s: float = 0.5,
        retry_s: float = 1.0,
        max_connections: int = 32,
        window_ms: int = WINDOW_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A bounded pool that callers queue for: a burst of concurrent requests reuses a few warm connections
        # instead of opening one each (a connect storm whose timeouts would look like an outage). One immediate
        # retry on a connection error replaces a pooled connection that died with a Redis restart; timeouts are
        # not retried (a blackholed Redis must cost one timeout, not two).
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=max(1.0, 4 * timeout_s), socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
            decode_responses=True,
        )
        self.client: Redis = Redis(connection_pool=pool)
        self.prefix = prefix
        self.policy = {"rpm": "open", "tpm": "open", "budget": "closed", **(policy or {})}
        self.retry_s = retry_s
        self.window_ms = window_ms
        self._clock = clock
        self._down_until = 0.0
        self.last_error = ""
        self._pending: deque[tuple[Reservation, int, int]] = deque(maxlen=MAX_PENDING_SETTLES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reserve = self.client.register_script(_script("reserve.lua"))
        self._settle = self.client.register_script(_script("settle.lua"))
        self._usage = self.client.register_script(_script("usage.lua"))

    # -- key names ------------------------------------------------------------------------------------

    def _k(self, key_id: str, suffix: str) -> str:
        return f"{self.prefix}{{{key_id}}}:{suffix}"

    def _keys(self, key_id: str, period_id: str | None) -> list[str]:
        return [self._k(key_id, "win"), self._k(key_id, "tok"), self._k(key_id, f"budget:{period_id or '-'}")]

    # -- health ---------------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while a recent failure keeps Redis out of use (``retry_s`` after it)."""
        return self._clock() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self.retry_s
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("redis unavailable for limits (%s); retry in %.1fs", self.last_error, self.retry_s)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except _FAILURES as exc:
            self._failed(exc)
            return False

    # -- limits ---------------------------------------------------------------------------------------

    async def reserve(self, spec: LimitSpec, request_id: str, tokens: int, cost_nano: int) -> Reservation:
        tokens, cost_nano = bounded(tokens, cost_nano)
        period_id, ttl = None, 0
        if spec.budget_nano is not None:
            period_id, seconds_left = period_window(spec.period)
            ttl = 0 if seconds_left is None else int(seconds_left) + BUDGET_GRACE_S
        if not self.available:
            return self._unavailable(spec, request_id, tokens, cost_nano)
        keys = [*self._keys(spec.key_id, period_id), self._k(spec.key_id, "revoked")]
        args: list[str | int] = [self.window_ms, spec.rpm or 0, spec.tpm or 0, tokens,
                -1 if spec.budget_nano is None else spec.budget_nano, cost_nano, request_id, ttl]
        try:
            reply: list[Any] = await self._reserve(keys=keys, args=args)
        except _FAILURES as exc:
            if script_fault(exc):
                log.warning("limit check of key %s refused by Redis: %s", spec.key_id, exc)
                raise LimitCheckFailed(f"{type(exc).__name__}: {exc}") from None
            self._failed(exc)
            return self._unavailable(spec, request_id, tokens, cost_nano)
        if self._pending:
            self._spawn(self._replay_pending())
        status = int(reply[0])
        if status == -1:
            raise KeyRevoked(spec.key_id)
        if status == 0:
            raise self._refusal(spec, str(reply[1]), float(reply[2]) / 1000)
        left = int(reply[1])
        return Reservation(spec, request_id, tokens, cost_nano, period_id, held=spec.any,
                           budget_left_nano=None if left < 0 else left)

    @staticmethod
    def _refusal(spec: LimitSpec, limit: str, retry_s: float) -> LimitExceeded:
        if limit == "rpm":
            return LimitExceeded("rpm", retry_s, f"rate limit of {spec.rpm} requests per minute reached")
        if limit == "tpm":
            return LimitExceeded("tpm", retry_s, f"rate limit of {spec.tpm} tokens per minute reached")
        if limit == "tpm_request":
            return LimitExceeded("tpm_request", retry_s,
                                 f"request needs more tokens than the key's {spec.tpm} per minute; lower max_tokens")
        budget = from_nano(spec.budget_nano or 0)
        return LimitExceeded("budget", budget_retry_after(spec.period),
                             f"budget of ${budget:g} per {spec.period} is spent")

    def _unavailable(self, spec: LimitSpec, request_id: str, tokens: int, cost_nano: int) -> Reservation:
        """Apply the outage policy: refuse if any limit this key has fails closed, else let it through."""
        configured = [name for name, on in (("rpm", spec.rpm), ("tpm", spec.tpm),
                                            ("budget", spec.budget_nano is not None)) if on]
        closed = [name for name in configured if self.policy.get(name) == "closed"]
        if closed:
            raise LimitsUnavailable(closed, self.retry_s, f"limit store unavailable ({self.last_error})")
        return Reservation(spec, request_id, tokens, cost_nano, None, held=False)

    async def settle(self, reservation: Reservation, tokens: int, cost_nano: int) -> None:
        if not reservation.held:
            return
        tokens, cost_nano = bounded(tokens, cost_nano)
        if not self.available:
            self._pending.append((reservation, tokens, cost_nano))
            return
        try:
            await self._settle_once(reservation, tokens, cost_nano)
        except _FAILURES as exc:
            if self._dropped(reservation, exc):
                return
            self._failed(exc)
            self._pending.append((reservation, tokens, cost_nano))

    @staticmethod
    def _dropped(reservation: Reservation, exc: BaseException) -> bool:
        """A settle our script refuses would be refused on every replay: drop it (the reservation stays counted
        until its window or period ends) instead of replaying it forever and calling Redis down each time."""
        if not script_fault(exc):
            return False
        log.warning("settle of key %s refused by Redis, dropped: %s", reservation.spec.key_id, exc)
        return True

    async def _settle_once(self, r: Reservation, tokens: int, cost_nano: int) -> None:
        keys = self._keys(r.spec.key_id, r.period_id)
        member = f"{r.request_id}:{r.tokens}"
        args: list[str | int] = [member, tokens, -r.cost_nano, cost_nano, "1" if r.period_id else "0"]
        await self._settle(keys=keys, args=args)

    async def _replay_pending(self) -> None:
        while self._pending and self.available:
            item = self._pending.popleft()
            try:
                await self._settle_once(*item)
            except _FAILURES as exc:
                if self._dropped(item[0], exc):
                    continue
                self._failed(exc)
                self._pending.appendleft(item)
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def usage(self, spec: LimitSpec) -> KeyUsage:
        """Usage now; raises :class:`LimitsUnavailable` when Redis cannot answer (the admin API says so)."""
        period_id = period_window(spec.period)[0] if spec.budget_nano is not None else None
        win, _, budget = self._keys(spec.key_id, period_id)
        try:
            n, tok, spent, reserved = await self._usage(keys=[win, budget], args=[self.window_ms])
        except _FAILURES as exc:
            if not script_fault(exc):
                self._failed(exc)
            raise LimitsUnavailable(["usage"], self.retry_s, f"limit store unavailable ({exc})") from None
        return KeyUsage(int(n), int(tok), int(spent), int(reserved), period_id)

    async def mark_revoked(self, key_id: str) -> None:
        """Raises :class:`LimitsUnavailable` when Redis cannot take the marker."""
        try:
            await self.client.set(self._k(key_id, "revoked"), "1")
        except _FAILURES as exc:
            self._failed(exc)
            raise LimitsUnavailable(["revocation"], self.retry_s, f"limit store unavailable ({exc})") from None

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose(close_connection_pool=True)
