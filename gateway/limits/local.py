"""In-process limiter: exact sliding windows and budgets for one gateway process (no Redis configured).

Same semantics as the Redis limiter (see ``gateway/limits/reserve.lua``); everything runs on the event loop
thread without awaiting, so each ``reserve``/``settle`` is atomic with respect to other requests. Counters live
in memory: they reset when the process restarts, and replicas do not share them (use POOLGATE_REDIS_URL).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.limits.base import (
    WINDOW_MS,
    KeyRevoked,
    KeyUsage,
    LimitExceeded,
    LimitSpec,
    Reservation,
    bounded,
    budget_retry_after,
    from_nano,
    period_window,
)


@dataclass
class _Entry:
    request_id: str
    at_ms: float
    tokens: int


@dataclass
class _Window:
    """Admitted requests of the last minute, oldest first, and the tokens they hold."""

    entries: deque[_Entry] = field(default_factory=deque)
    by_request: dict[str, _Entry] = field(default_factory=dict)
    tokens: int = 0

    def prune(self, now_ms: float, window_ms: float) -> None:
        cutoff = now_ms - window_ms
        while self.entries and self.entries[0].at_ms <= cutoff:
            entry = self.entries.popleft()
            self.by_request.pop(entry.request_id, None)
            self.tokens -= entry.tokens


class InProcessLimiter:
    """Per-key sliding windows (rpm, tpm) and per-period budgets held in this process."""

    name = "in-process"
    last_error = ""

    def __init__(self, clock_ms: Callable[[], float] | None = None, window_ms: int = WINDOW_MS) -> None:
        self._clock_ms = clock_ms or (lambda: time.time() * 1000.0)
        self.window_ms = window_ms
        self._windows: dict[str, _Window] = {}
        self._budgets: dict[str, tuple[str, list[int]]] = {}  # key id -> (period id, [spent, reserved])
        self._revoked: set[str] = set()

    async def reserve(self, spec: LimitSpec, request_id: str, tokens: int, cost_nano: int) -> Reservation:
        tokens, cost_nano = bounded(tokens, cost_nano)
        if spec.key_id in self._revoked:
            raise KeyRevoked(spec.key_id)
        now = self._clock_ms()
        window = None
        if spec.windowed:
            window = self._windows.setdefault(spec.key_id, _Window())
            window.prune(now, self.window_ms)
            self._check_window(spec, window, tokens, now)
        period_id, left = None, None
        if spec.budget_nano is not None:
            period_id, _ = period_window(spec.period)
            counters = self._counters(spec.key_id, period_id)
            left = spec.budget_nano - counters[0] - counters[1]
            if left <= 0:
                raise LimitExceeded("budget", budget_retry_after(spec.period),
                                    f"budget of ${from_nano(spec.budget_nano):g} per {spec.period} is spent")
            counters[1] += cost_nano
        if window is not None:
            entry = _Entry(request_id, now, tokens)
            window.entries.append(entry)
            window.by_request[request_id] = entry
            window.tokens += tokens
        return Reservation(spec, request_id, tokens, cost_nano, period_id, held=spec.any, budget_left_nano=left)

    def _check_window(self, spec: LimitSpec, window: _Window, tokens: int, now: float) -> None:
        if spec.rpm and len(window.entries) >= spec.rpm:
            retry = (window.entries[0].at_ms + self.window_ms - now) / 1000
            raise LimitExceeded("rpm", retry, f"rate limit of {spec.rpm} requests per minute reached")
        if spec.tpm and window.tokens + tokens > spec.tpm:
            if tokens > spec.tpm:
                raise LimitExceeded("tpm_request", self.window_ms / 1000,
                                    f"request needs ~{tokens} tokens, over the key's {spec.tpm} tokens per minute; "
                                    "lower max_tokens")
            need = window.tokens + tokens - spec.tpm
            retry_ms: float = self.window_ms
            for entry in window.entries:
                need -= entry.tokens
                if need <= 0:
                    retry_ms = entry.at_ms + self.window_ms - now
                    break
            raise LimitExceeded("tpm", retry_ms / 1000, f"rate limit of {spec.tpm} tokens per minute reached")

    def _counters(self, key_id: str, period_id: str) -> list[int]:
        held = self._budgets.get(key_id)
        if held is None or held[0] != period_id:  # a new period starts from zero
            held = self._budgets[key_id] = (period_id, [0, 0])
        return held[1]

    async def settle(self, reservation: Reservation, tokens: int, cost_nano: int) -> None:
        if not reservation.held:
            return
        tokens, cost_nano = bounded(tokens, cost_nano)
        spec = reservation.spec
        window = self._windows.get(spec.key_id)
        entry = window.by_request.get(reservation.request_id) if window is not None else None
        if window is not None and entry is not None:  # still in the window: count the real tokens
            window.tokens += tokens - entry.tokens
            entry.tokens = tokens
        held = self._budgets.get(spec.key_id)
        if reservation.period_id is not None and held is not None and held[0] == reservation.period_id:
            held[1][1] -= reservation.cost_nano
            held[1][0] += cost_nano

    async def usage(self, spec: LimitSpec) -> KeyUsage:
        window = self._windows.get(spec.key_id)
        if window is not None:
            window.prune(self._clock_ms(), self.window_ms)
        period_id = period_window(spec.period)[0] if spec.budget_nano is not None else None
        held = self._budgets.get(spec.key_id)
        spent, reserved = held[1] if held is not None and held[0] == period_id else (0, 0)
        return KeyUsage(len(window.entries) if window else 0, window.tokens if window else 0, spent, reserved,
                        period_id)

    async def ping(self) -> bool:
        return True

    async def mark_revoked(self, key_id: str) -> None:
        self._revoked.add(key_id)

    async def close(self) -> None:
        return None
