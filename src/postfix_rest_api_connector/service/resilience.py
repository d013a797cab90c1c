"""Riding out API trouble: bounded, jittered retries and a circuit breaker.

Both only ever turn a failure into a quicker failure or a later success; neither can turn a
failure into "not found".
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from ..core.model import Outcome, TemporaryError, Timeout


def is_transient(outcome: Outcome) -> bool:
    """Failures worth retrying and counting against the API: 5xx, transport errors, timeouts."""
    return isinstance(outcome, TemporaryError | Timeout)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int
    backoff: float
    """Seconds before the first retry; doubled per retry and jittered by +-50 %."""

    def delay(self, attempt: int) -> float:
        return self.backoff * (1 << attempt) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """After ``threshold`` consecutive transient failures, fail at once for ``cooldown`` seconds,
    then let one probe through; a success closes it again. A threshold of 0 disables it."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at = 0.0
        self.state = BreakerState.CLOSED

    def allow(self, now: float) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self._opened_at >= self._cooldown:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def record(self, outcome: Outcome, now: float) -> None:
        if not is_transient(outcome):
            self._failures = 0
            self.state = BreakerState.CLOSED
            return
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self._threshold and self._failures >= self._threshold
        ):
            self.state = BreakerState.OPEN
            self._opened_at = now
