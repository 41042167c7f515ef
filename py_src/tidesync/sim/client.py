"""One simulated client process: a real ``ChangesWorker`` and a real ``SyncWorker``.

The client is wired exactly as ``tidesync.native.client`` wires it (local
commits poke the Sync side), with the clock, the wall time, the jitter and the
sleeps injected from the simulation, and the socket replaced by ``SimTransport``.

The client id is written into ``sync_state`` before the Changes side opens the
file (``prepare_database`` keeps an id it finds), so ids, and with them the
last-write-wins tie-breaks, are the same on every replay.

``crash()`` is a killed process: the database connection is closed first, so
an open transaction is rolled back and nothing the dying tasks still do can
reach the file; then the tasks are cancelled and the sockets reset.  ``start()``
again is the restarted process: same file, fresh memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tidesync.changes.worker import ChangesWorker
from tidesync.schema import Schema
from tidesync.sim.loop import seeded_sqlite
from tidesync.sim.network import SimNetwork
from tidesync.worker_sync.worker_thread.connection_manager import BackoffPolicy
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker

__all__ = ["SimClient"]

SYNC_URL = "sim://server/api/sync"


class SimClient:
    """A client process; ``changes``/``sync`` are None while it is down."""

    def __init__(
        self,
        index: int,
        path: Path,
        client_id: str,
        schema: Schema,
        net: SimNetwork,
        rng: random.Random,
        wall_ms: Callable[[], int],
        *,
        heartbeat_interval: float,
        checksum_interval: float,
    ) -> None:
        self.index = index
        self.path = path
        self.client_id = client_id
        self.schema = schema
        self.net = net
        self.rng = rng
        self.wall_ms = wall_ms
        self.heartbeat_interval = heartbeat_interval
        self.checksum_interval = checksum_interval
        self.changes: ChangesWorker | None = None
        self.sync: SyncWorker | None = None
        self._conn: sqlite3.Connection | None = None
        self.crashes = 0
        self.repairs = 0  # integrity repairs of earlier incarnations
        self.table_repairs = 0
        self.full_resyncs = 0

    @property
    def up(self) -> bool:
        return self.changes is not None

    @property
    def connection(self) -> sqlite3.Connection | None:
        """The open database connection (for faults that edit the file behind its back)."""
        return self._conn

    def _count_repairs(self, sync: SyncWorker) -> None:
        status = sync.status
        self.repairs += status.repairs
        self.table_repairs += status.table_repairs
        self.full_resyncs += status.full_resyncs

    async def start(self) -> None:
        """Open the file and start syncing (a process start)."""
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = FULL")
        seeded_sqlite(conn, self.rng)
        conn.execute("CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "INSERT OR IGNORE INTO sync_state (key, value) VALUES ('client_id', ?)",
            (self.client_id,),
        )
        self._conn = conn
        changes = ChangesWorker(
            conn, self.schema, now_ms=self.wall_ms, sleep=asyncio.sleep, random=self.rng.random
        )
        sync = SyncWorker(
            changes,
            self.net.transport_factory(self.index),
            url=SYNC_URL,
            heartbeat_interval=self.heartbeat_interval,
            clock=asyncio.get_running_loop().time,
            random=self.rng.random,
            wall_ms=self.wall_ms,
            backoff=BackoffPolicy(base=0.5, cap=10.0),
            checksum_interval=self.checksum_interval,
        )
        changes.on_local_change(sync.notify_local_change)
        self.changes, self.sync = changes, sync
        await sync.start()

    async def crash(self) -> None:
        """Kill the process: uncommitted work is lost, committed work stays in the file."""
        self.crashes += 1
        conn, sync = self._conn, self.sync
        if sync is not None:
            self._count_repairs(sync)
        self.changes = self.sync = self._conn = None
        if conn is not None:
            conn.close()  # rolls back an open transaction, as the OS does for a dead process
        for link in self.net.live_links(self.index):
            link.cut("reset")
        if sync is not None:
            # White-box: the worker has no "die" API; its loop task is all there is to stop.
            task: asyncio.Task[None] | None = getattr(sync, "_run_task", None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def stop(self) -> None:
        """A clean shutdown (close 1000, database closed)."""
        sync, changes = self.sync, self.changes
        if sync is not None:
            self._count_repairs(sync)
            await sync.stop()
        if changes is not None:
            await changes.close()
        self.changes = self.sync = self._conn = None
