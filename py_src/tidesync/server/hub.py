"""The tailer and fan-out: new history rows in, wake-ups to live sessions out.

The tailer reads rows past the newest one it holds into an in-memory ring.  It
is woken at once after the server's own commits (``Store.notify_commit``) and
polls ``PRAGMA data_version`` on its own connection every ``poll_interval`` s
to notice commits by other programs.  A session asks ``history(after, ...)``:
served from the ring when the ring covers that range, else read from the file
(a session that fell out of the ring costs a query, never a gap).

The hub never sends anything itself: ``notify`` callbacks only set each
connection's event, and each connection's own task does the work and owns its
bounded queue, so one slow or dead client cannot stall the others.

``ServerSource`` is the ``SessionSource`` sessions use; its methods are blocking
SQLite calls, run by the driver in worker threads (one thread per call, with a
thread-local reader connection).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

from tidesync.checksums import table_checksum
from tidesync.server.apply import apply_changes
from tidesync.server.snapshot import Snapshot
from tidesync.server.store import HistoryRow, Store, max_lsn, read_history
from tidesync.worker_sync.shared.message_types import ChangeResult, TableChange

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub:
    """Ring of recent history, subscribers to wake, and the ``SessionSource`` methods."""

    def __init__(self, store: Store, *, ring_size: int = 20_000, poll_interval: float = 0.1):
        self.store = store
        self.ring_size = ring_size
        self.poll_interval = poll_interval
        self._ring: list[HistoryRow] = []
        self._ring_floor = store.current_lsn()  # the ring holds every row in (floor, last]
        self._ring_last = self._ring_floor
        self._lock = threading.Lock()
        self._local = threading.local()
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._tail_conn = store.connect()
        store.add_commit_listener(self._on_commit)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._tail_forever(), name="tidesync-tailer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(self, callback: Callable[[], None]) -> int:
        """``callback()`` (on the event loop, must not block) runs when history grows."""
        key = id(callback)
        self._subscribers[key] = callback
        return key

    def unsubscribe(self, key: int) -> None:
        self._subscribers.pop(key, None)

    def _on_commit(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    # --- tailer -------------------------------------------------------------------------------

    async def _tail_forever(self) -> None:
        assert self._wake is not None
        version = -1
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                version, grew = await asyncio.to_thread(self._tail_once, version)
            except Exception:
                log.exception("tailer failed; retrying")
                continue
            if grew:
                for callback in list(self._subscribers.values()):
                    callback()

    def poll(self) -> bool:
        """Read new history into the ring now (blocking); True when rows came.

        The tailer task does this on its own; tests without an event loop call it.
        """
        return self._tail_once(-1)[1]

    def _tail_once(self, version: int) -> tuple[int, bool]:
        """Read rows past the ring's end; returns the new data_version and whether any came."""
        now_version = int(self._tail_conn.execute("PRAGMA data_version").fetchone()[0])
        grew = False
        while True:
            rows = read_history(self._tail_conn, self._ring_last, 5000)
            if not rows:
                break
            grew = True
            with self._lock:
                self._ring.extend(rows)
                self._ring_last = rows[-1].lsn
                if len(self._ring) > 2 * self.ring_size:
                    cut = len(self._ring) - self.ring_size
                    self._ring_floor = self._ring[cut - 1].lsn
                    del self._ring[:cut]
        return now_version, grew

    # --- SessionSource ------------------------------------------------------------------------

    def _reader(self) -> object:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.store.connect()
            self._local.conn = conn
        return conn

    def current_lsn(self) -> int:
        return max_lsn(self._reader())  # type: ignore[arg-type]

    def open_snapshot(self) -> Snapshot:
        return Snapshot(self.store.path, self.store.schema)

    def history(self, after: int, limit: int, upto: int | None = None) -> list[HistoryRow]:
        with self._lock:
            if after >= self._ring_floor and (upto is None or upto <= self._ring_last):
                start = bisect.bisect_right(self._ring, after, key=lambda r: r.lsn)
                rows = self._ring[start : start + limit]
                if upto is not None:
                    rows = [r for r in rows if r.lsn <= upto]
                return rows
        # Before the ring's floor, or a catchup range past the ring's end: the file has it.
        return read_history(self._reader(), after, limit, upto)  # type: ignore[arg-type]

    def count_history(self, after: int, upto: int) -> int:
        conn = self._reader()
        row = conn.execute(  # type: ignore[attr-defined]
            "SELECT COUNT(*) FROM _ts_change_history WHERE lsn > ? AND lsn <= ?", (after, upto)
        ).fetchone()
        return int(row[0])

    def apply(self, client_id: str, changes: Sequence[TableChange]) -> list[ChangeResult]:
        with self.store.write_lock:
            results = apply_changes(self.store.writer, self.store.schema, client_id, changes)
        self.store.notify_commit()
        return results

    def checksums(self, tables: Sequence[str]) -> tuple[int, dict[str, str]]:
        """Checksums of ``tables`` (all synced tables when empty) in one read transaction."""
        schema = self.store.schema
        names = [t for t in schema.order if not tables or t in tables]
        conn = self.store.connect()
        try:
            conn.execute("BEGIN")
            lsn = max_lsn(conn)
            cursor = conn.cursor()
            sums = {name: table_checksum(cursor, schema.tables[name]) for name in names}
            conn.execute("ROLLBACK")
            return lsn, sums
        finally:
            conn.close()
