"""A circuit breaker per backend: closed -> open after N consecutive failures -> half-open probe.

While open, the backend is skipped (the dispatcher falls back down the ranking). After
``reset_after_s`` one request is let through as a probe (half-open): success closes the breaker,
failure opens it again for another ``reset_after_s``. A backend that says how long to wait (Retry-After)
is held open for that long instead (``hold_off``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int = 3
    reset_after_s: float = 10.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May a request go to this backend now? In half-open state only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def hold_off(self, seconds: float) -> None:
        """The backend asked for a pause (429/503 with Retry-After): stay open ``seconds``, then probe as usual."""
        self.opened_at = self.clock() + seconds - self.reset_after_s
        self.probing = False

    def open_for_s(self) -> float:
        """Seconds until this breaker lets a probe through (0 when it is not open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.reset_after_s - self.clock())

    def record_failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
        self.probing = False


class BreakerRegistry:
    """One breaker per backend name, created on first use."""

    def __init__(self, failure_threshold: int = 3, reset_after_s: float = 10.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, backend: str) -> CircuitBreaker:
        br = self._breakers.get(backend)
        if br is None:
            br = self._breakers[backend] = CircuitBreaker(self.failure_threshold, self.reset_after_s)
        return br

    def states(self) -> dict[str, str]:
        return {name: br.state.value for name, br in self._breakers.items()}
