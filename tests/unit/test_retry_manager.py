"""RetryPolicy / RetryManager: the pure backoff schedule of failed server batches."""

from __future__ import annotations

import pytest

from tidesync.changes.retry_manager import RetryManager, RetryPolicy


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    manager = RetryManager(RetryPolicy(base=0.5, factor=2, cap=3, jitter=0), random=lambda: 0.0)
    delays = []
    for _ in range(5):
        manager.record_failure("b")
        delays.append(manager.next_delay("b"))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_only_shortens_a_delay() -> None:
    policy = RetryPolicy(base=1, factor=2, cap=30, jitter=0.5)
    assert policy.delay(1, 0.0) == 1.0
    assert policy.delay(1, 0.999) == pytest.approx(0.5005)
    assert policy.delay(10, 0.0) == 30.0


def test_gives_up_after_max_attempts_and_reset_forgets() -> None:
    manager = RetryManager(RetryPolicy(max_attempts=2), random=lambda: 0.5)
    assert not manager.should_give_up("b")
    manager.record_failure("b")
    assert not manager.should_give_up("b")
    manager.record_failure("b")
    assert manager.should_give_up("b")
    assert not manager.should_give_up("other")
    manager.reset("b")
    assert manager.attempts("b") == 0
    assert manager.next_delay("b") == 0.0


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(factor=0.5)
