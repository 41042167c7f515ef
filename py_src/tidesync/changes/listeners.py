"""Callback lists for the Changes Worker's events (local change, tables changed, query result).

A listener that raises is logged and the others still run: one broken live
query must not stop the Sync side from hearing about a local change.  Listeners
are called after the commit they report, never inside a transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, ParamSpec

__all__ = ["Listeners"]

log = logging.getLogger(__name__)

P = ParamSpec("P")


class Listeners(Generic[P]):
    """``add`` returns an unsubscribe function; ``emit`` calls every listener in order."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[P, None]] = []

    def add(self, callback: Callable[P, None]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for callback in list(self._callbacks):
            try:
                callback(*args, **kwargs)
            except Exception:
                log.exception("listener %r failed", callback)

    def __len__(self) -> int:
        return len(self._callbacks)
