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
        # A tuple, replaced whole by ``add`` and ``remove``: ``emit`` runs the listeners of
        # when it started without copying them (it runs after every local commit).
        self._callbacks: tuple[Callable[P, None], ...] = ()

    def add(self, callback: Callable[P, None]) -> Callable[[], None]:
        self._callbacks = (*self._callbacks, callback)

        def remove() -> None:
            if callback in self._callbacks:
                callbacks = list(self._callbacks)
                callbacks.remove(callback)
                self._callbacks = tuple(callbacks)

        return remove

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for callback in self._callbacks:
            try:
                callback(*args, **kwargs)
            except Exception:
                log.exception("listener %r failed", callback)

    def __len__(self) -> int:
        return len(self._callbacks)
