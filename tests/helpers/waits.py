"""Waits for the asynchronous suites: "until this holds, at most N seconds", never a speed.

``eventually`` polls an async check; ``holds`` turns a plain predicate (a status
field, a count read from a file) into one.  A check that never holds fails the
test with ``TimeoutError`` after ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["eventually", "holds"]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60.0, poll: float = 0.02
) -> None:
    """Return once ``await check()`` is true; raise ``TimeoutError`` after ``timeout`` s."""

    async def loop() -> None:
        while not await check():
            await asyncio.sleep(poll)

    await asyncio.wait_for(loop(), timeout)


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """An async check for ``eventually`` from a plain predicate, re-evaluated on every poll."""

    async def check() -> bool:
        return predicate()

    return check
