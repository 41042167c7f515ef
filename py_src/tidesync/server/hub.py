"""The tailer and fan-out: new history rows in, wake-ups to live sessions out.

The tailer reads rows past the newest one it holds into an in-memory ring.  It
is woken at once after the server's own commits (``Store.notify_commit``) and
polls ``PRAGMA data_version`` on its own connection every ``poll_interval`` s
to notice commits by other programs.  A session asks ``history(after, ...)``:
served from the ring when the ring covers that range, else read from the file
(a session that fell out of the ring costs a query, never a gap).

After a client batch the applying thread reads the new rows into the ring
itself, and the driver calls ``announce`` right after queueing the author's
answer: a live change costs no tailer round trip, and the author hears
``srv_changes_applied`` before the fan-out fills everyone's outbox (a client
has one batch in flight, so its answer paces its next batch).  The tailer
announces anything left unannounced on its next poll, as a safety net.

The hub never sends anything itself: subscriber callbacks run on the event loop
and must not block; each connection queues frames in its own bounded outbox, so
one slow or dead client cannot stall the others.  ``live_batch`` builds each
batch once per cursor (``LiveBatch``): every live session at that cursor shares
its changes and their JSON encoding.

The hub is the ``SessionSource`` sessions use.  Reads past ``in_memory``'s
floor are served from the ring without touching SQLite (the driver runs those
steps on the event loop); the rest are blocking SQLite calls, run by the driver
in worker threads with a thread-local reader connection.
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
from tidesync.server.session_types import LiveBatch, SnapshotRows
from tidesync.server.snapshot import Snapshot
from tidesync.server.snapshot_cache import SnapshotCache
from tidesync.server.store import HistoryRow, Store, max_lsn, read_history
from tidesync.worker_sync.shared.message_types import ChangeResult, TableChange

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub:
    """Ring of recent history, subscribers to wake, and the ``SessionSource`` methods."""

    def __init__(
        self,
        store: Store,
        *,
        ring_size: int = 20_000,
        poll_interval: float = 0.1,
        snapshot_cache: SnapshotCache | None = None,
    ):
        self.store = store
        #: Initial-sync snapshots kept encoded for later clients; None reads every time.
        self.snapshot_cache = snapshot_cache
        self.ring_size = ring_size
        self.poll_interval = poll_interval
        self._ring: list[HistoryRow] = []
        self._ring_floor = store.current_lsn()  # the ring holds every row in (floor, last]
        self._ring_last = self._ring_floor
        self._lock = threading.Lock()
        self._tail_lock = threading.Lock()  # one reader extends the ring at a time
        self._batches: dict[tuple[int, int], LiveBatch] = {}  # for the ring as it is now
        self._unannounced = False  # a client batch grew the ring; no fan-out yet
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

    def announce(self) -> None:
        """Fan out what client batches added to the ring (on the event loop; cheap if none)."""
        if self._unannounced:
            self._unannounced = False
            self._fan_out()

    def _fan_out(self) -> None:
        """Tell every subscriber that history grew (on the event loop)."""
        for callback in list(self._subscribers.values()):
            try:
                callback()
            except Exception:
                log.exception("history subscriber failed")

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
            if grew or self._unannounced:
                self._unannounced = False
                self._fan_out()

    def poll(self) -> bool:
        """Read new history into the ring now (blocking); True when rows came.

        The tailer task does this on its own; tests without an event loop call it.
        """
        return self._tail_once(-1)[1]

    def _tail_once(self, version: int) -> tuple[int, bool]:
        """Read rows past the ring's end; returns the new data_version and whether any came."""
        with self._tail_lock:
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
                    self._batches.clear()
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

    def open_snapshot_rows(self, chunk_rows: int) -> SnapshotRows:
        cache = self.snapshot_cache
        if cache is None:
            return self.open_snapshot()
        return cache.open(self.open_snapshot, self.store.schema, chunk_rows, self.current_lsn())

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

    def in_memory(self, after: int) -> bool:
        return after >= self._ring_floor

    def live_batch(self, after: int, limit: int) -> LiveBatch | None:
        key = (after, limit)
        with self._lock:
            batch = self._batches.get(key)
            if batch is not None:
                return batch
            if after >= self._ring_floor:
                start = bisect.bisect_right(self._ring, after, key=lambda r: r.lsn)
                rows = self._ring[start : start + limit]
                if not rows:
                    return None
                batch = _live_batch(rows)
                if len(self._batches) >= 64:  # cursors far apart: keep memory bounded
                    self._batches.clear()
                self._batches[key] = batch
                return batch
        # Before the ring's floor (a session that was paused long): read the file.
        rows = read_history(self._reader(), after, limit)  # type: ignore[arg-type]
        return _live_batch(rows) if rows else None

    def count_history(self, after: int, upto: int) -> int:
        conn = self._reader()
        row = conn.execute(  # type: ignore[attr-defined]
            "SELECT COUNT(*) FROM _ts_change_history WHERE lsn > ? AND lsn <= ?", (after, upto)
        ).fetchone()
        return int(row[0])

    def apply(self, client_id: str, changes: Sequence[TableChange]) -> list[ChangeResult]:
        """Apply a client batch and read what it committed into the ring (see ``announce``).

        Without a running hub (tests, the simulator) the tailer's ``poll`` reads
        the rows instead.
        """
        with self.store.write_lock:
            results = apply_changes(self.store.writer, self.store.schema, client_id, changes)
        if self._loop is None:
            self.store.notify_commit()
        elif self._tail_once(-1)[1]:
            self._unannounced = True  # the tailer's next poll is the safety net
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


def _live_batch(rows: Sequence[HistoryRow]) -> LiveBatch:
    return LiveBatch(
        last_lsn=rows[-1].lsn,
        changes=tuple(r.to_change() for r in rows),
        authors=frozenset(r.client_id for r in rows),
    )
