"""Backoff schedule for work that failed and will be tried again (sans-I/O).

Used by the Changes Worker when a server batch cannot be applied: the batch is
rolled back, its failure counted here, and the caller sleeps ``next_delay`` before
trying again; once ``should_give_up`` says so, the caller falls back to applying
change by change.  Nothing here sleeps or reads a clock: randomness is injected,
so tests pin every delay.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RetryManager", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Delay after the n-th failure: ``min(cap, base * factor**(n-1))``, minus up to ``jitter``.

    Jitter only shortens a delay, so ``cap`` is a true ceiling; ``max_attempts``
    failures mean "give up retrying the whole".
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    max_attempts: int = 5
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError("RetryPolicy needs base >= 0, cap >= 0 and factor >= 1")
        if self.max_attempts < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy needs max_attempts >= 1 and 0 <= jitter <= 1")

    def delay(self, failures: int, rand: float) -> float:
        """Seconds to wait after ``failures`` failures; ``rand`` in [0, 1)."""
        if failures <= 0:
            return 0.0
        raw = min(self.cap, self.base * self.factor ** min(failures - 1, 64))
        return raw * (1.0 - self.jitter * rand)


@dataclass
class RetryManager:
    """Failure counts per key (e.g. a batch's last LSN) and the delays they earn."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    random: Callable[[], float] = field(default=_random.random)
    _failures: dict[str, int] = field(default_factory=dict, repr=False)

    def record_failure(self, key: str) -> int:
        """Count one failure of ``key``; return how many there have been."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        return count

    def attempts(self, key: str) -> int:
        return self._failures.get(key, 0)

    def next_delay(self, key: str) -> float:
        """How long to wait before the next try of ``key``."""
        return self.policy.delay(self.attempts(key), self.random())

    def should_give_up(self, key: str) -> bool:
        """True once ``key`` failed ``max_attempts`` times."""
        return self.attempts(key) >= self.policy.max_attempts

    def reset(self, key: str) -> None:
        """Forget ``key`` (it succeeded, or its work was settled another way)."""
        self._failures.pop(key, None)
