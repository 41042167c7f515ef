"""A deterministic asyncio event loop on virtual time, and seeded sources of randomness.

Why a loop of our own: the Sync and Changes sides are asyncio code full of
sleeps, ``wait_for`` timeouts and heartbeat deadlines.  Running them on real
time would make a 2,000-operation run take hours and every run different.
``VirtualTimeLoop`` is a ``BaseEventLoop`` whose ``time()`` is a number it owns:
when nothing is ready to run, the "select" step jumps the clock to the next
scheduled timer instead of sleeping (the idea of trio's ``MockClock`` with
``autojump_threshold=0`` and of ``looptime``).  There is no selector and no
self-pipe, so the loop can do no I/O and wake from no thread: anything in the
simulated system that tried (``asyncio.to_thread``, a real socket) would wait
forever, and the loop reports that as ``SimulationDeadlock`` instead of hanging.

Given the same seed, callbacks run in the same order at the same virtual
times, so a failing run replays exactly.  ``seeded_ids`` makes the ids the
code under test draws (``uuid.uuid4``, SQLite's ``randomblob``/``random``)
come from the simulation's generator too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

__all__ = ["SimulationDeadlock", "VirtualTimeLoop", "seeded_ids", "seeded_sqlite"]


class SimulationDeadlock(RuntimeError):
    """Nothing is ready and no timer is scheduled: the simulated system can never move again."""


class _NoSelector:
    """Stands in for the selector: "waiting" ``timeout`` seconds moves the virtual clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise SimulationDeadlock(
                f"deadlock at virtual t={self._loop.time():.3f}s: no callback ready, no timer set"
            )
        if timeout > 0:
            self._loop.advance(timeout)
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An event loop whose clock only moves when every task is waiting for a timer."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._virtual_now = start
        self._selector = _NoSelector(self)
        # Timers are due when ``when < time() + resolution``; time lands exactly on them.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (never back); the driver calls it when idle."""
        if seconds > 0:
            self._virtual_now += seconds

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass  # only ever needed to wake a selector from another thread; there is none


def seeded_sqlite(conn: sqlite3.Connection, rng: random.Random) -> None:
    """Make ``randomblob()`` and ``random()`` on ``conn`` draw from ``rng``.

    The recording triggers give every change a uuid made in SQL; with the
    built-ins overridden (SQLite lets an application function replace them),
    the ids a run produces are the same on every replay.
    """
    conn.create_function("randomblob", 1, lambda n: rng.randbytes(max(1, int(n))))
    conn.create_function("random", 0, lambda: rng.getrandbits(63) - (1 << 62))


@contextlib.contextmanager
def seeded_ids(rng: random.Random) -> Iterator[None]:
    """``uuid.uuid4()`` draws from ``rng`` while the block runs (message ids, snapshot ids)."""

    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    with mock.patch.object(uuid, "uuid4", uuid4):
        yield
