"""Listeners: a failing callback is logged and the others still hear the event."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tidesync.changes.listeners import Listeners


def test_a_failing_listener_does_not_silence_the_others(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[tuple[str, int]] = []
    listeners: Listeners[[str, int]] = Listeners()

    def broken(_name: str, _n: int) -> None:
        raise RuntimeError("app bug")

    listeners.add(broken)
    listeners.add(lambda name, n: heard.append((name, n)))
    listeners.emit("tasks", 1)
    assert heard == [("tasks", 1)]
    assert "listener" in caplog.text


def test_unsubscribe_stops_further_calls_and_is_idempotent() -> None:
    heard: list[int] = []
    listeners: Listeners[[int]] = Listeners()
    remove = listeners.add(heard.append)
    listeners.emit(1)
    remove()
    remove()
    listeners.emit(2)
    assert heard == [1] and len(listeners) == 0


def test_an_emit_calls_the_listeners_of_when_it_started() -> None:
    """A listener added or removed by another during an emit takes effect from the next."""
    heard: list[str] = []
    listeners: Listeners[[int]] = Listeners()
    removes: list[Callable[[], None]] = []

    def first(n: int) -> None:
        heard.append(f"first {n}")
        removes[0]()  # unsubscribes ``second``
        listeners.add(lambda n: heard.append(f"late {n}"))

    listeners.add(first)
    removes.append(listeners.add(lambda n: heard.append(f"second {n}")))
    listeners.emit(1)
    assert heard == ["first 1", "second 1"]
    heard.clear()
    listeners.emit(2)
    assert heard == ["first 2", "late 2"]
