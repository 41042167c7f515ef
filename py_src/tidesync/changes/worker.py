"""``ChangesWorker``: the one owner of the client database (app API + ``ChangesPort``).

Runs in the browser's Changes Worker (Pyodide, stdlib ``sqlite3`` on OPFS) and
natively (``tidesync.connect``).  Every public method takes one asyncio lock,
so calls from the page and from the Sync side never interleave inside a
transaction, and every method commits (or rolls back) before it returns:

* a local write commits the row and its ``local_changes`` record together and
  is durable when the call returns; then ``on_local_change`` listeners hear of
  it (the Sync side sends it) and ``on_tables_changed`` listeners (live queries);
* server data goes through ``DirectSqlProcessor`` (one transaction per batch
  with its LSN) and ``InitialSync`` (snapshot swapped in at once).

Call ``await ChangesWorker.open(path)`` (or construct it and ``await init()``),
then use it; ``close()`` at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from tidesync.changes.db import (
    RESET_CTX_SQL,
    get_state,
    open_connection,
    set_state,
    stored_clock,
    write_transaction,
)
from tidesync.changes.direct_sql_processor import DirectSqlProcessor
from tidesync.changes.initial_sync import InitialSync, clear_synced_rows
from tidesync.changes.listeners import Listeners
from tidesync.changes.live_queries import LiveQueries
from tidesync.changes.local_schema import prepare_database
from tidesync.changes.results import record_results
from tidesync.changes.retry_manager import RetryManager, RetryPolicy
from tidesync.changes.table_resync import (
    commit_table_resync,
    drop_covered,
    load_floors,
    save_floors,
)
from tidesync.changes.writes import (
    LocalWriter,
    Rows,
    Transaction,
    WriteOp,
    WriteResult,
    read_only,
)
from tidesync.checksums import table_checksum
from tidesync.schema import Schema
from tidesync.worker_sync.shared.changes_port import ApplyOutcome, LocalState
from tidesync.worker_sync.shared.hlc import HybridLogicalClock
from tidesync.worker_sync.shared.lsn_manager import format_lsn
from tidesync.worker_sync.shared.message_types import ChangeResult, Operation, TableChange

__all__ = ["ChangesWorker"]

log = logging.getLogger(__name__)

#: How long after a snapshot's commit its WAL is checkpointed (``_checkpoint_soon``).
CHECKPOINT_DELAY_S = 1.0

TablesListener = Callable[[tuple[str, ...], str], None]


class ChangesWorker:
    """The client database: local writes, reads, and the Sync side's ``ChangesPort``."""

    def __init__(
        self,
        conn_or_path: sqlite3.Connection | str,
        schema: Schema | None = None,
        *,
        now_ms: Callable[[], int] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        retry_policy: RetryPolicy | None = None,
        random: Callable[[], float] | None = None,
        pragmas: Mapping[str, str | int] | None = None,
        defer_checkpoint: bool = False,
    ) -> None:
        """``defer_checkpoint``: the database starts with a whole snapshot in its WAL (an
        adopted bootstrap image): ``checkpoint_later`` from the first statement on."""
        if isinstance(conn_or_path, sqlite3.Connection):
            self._conn = conn_or_path
            self._conn.isolation_level = None
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
        else:
            self._conn = open_connection(conn_or_path, pragmas)
        # ``checkpoint_later``: SQLite's auto-checkpoint, held off until the deferred one.
        self._restore_autocheckpoint: int | None = None
        if defer_checkpoint:
            self.checkpoint_later()
        self.schema = schema or Schema.demo()
        self._sleep = sleep
        self._retry = RetryManager(retry_policy or RetryPolicy())
        if random is not None:
            self._retry.random = random
        # ``_lock``: one database user at a time.  ``_server_lock``: server data (which
        # moves the LSN) is applied in order, even while a failed batch waits for its
        # retry with ``_lock`` released (local writes go on meanwhile).  Order: server, db.
        self._lock = asyncio.Lock()
        self._server_lock = asyncio.Lock()
        self._background: set[asyncio.Future[None]] = set()  # e.g. the deferred checkpoint
        self._hlc = HybridLogicalClock() if now_ms is None else HybridLogicalClock(now_ms)
        self._now_ms = self._hlc.now_ms
        self._local_listeners: Listeners[[list[TableChange] | None]] = Listeners()
        self._tables_listeners: Listeners[[tuple[str, ...], str]] = Listeners()
        self._result_listeners: Listeners[[str, Rows]] = Listeners()
        self.client_id = ""
        self.client_id = prepare_database(self._conn, self.schema)
        self._hlc.last = stored_clock(self._conn)
        self._processor = DirectSqlProcessor(
            self._conn, self.schema, self.client_id, self._observe_time
        )
        self._initial = InitialSync(self._conn, self.schema, self._processor)
        # Tables repaired ahead of the LSN: changes at or below their floor are in them.
        self._floors = load_floors(self._conn)
        self._writer = LocalWriter(self._conn, self.schema, self._hlc.tick_iso)
        self._live = LiveQueries(self._conn, self._query_now, self._emit_result)
        # ``arm_local_changes``: the next local commit reads this many unsynced changes
        # for its ``on_local_change`` listeners (None: it reads nothing).
        self._carry_limit: int | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, path: str, *, schema_sql: str | None = None, **options: Any
    ) -> ChangesWorker:
        """Open (or create) the database at ``path`` for the app schema ``schema_sql``."""
        schema = Schema.from_sql(schema_sql) if schema_sql else Schema.demo()
        return cls(path, schema, **options)

    @property
    def busy(self) -> bool:
        """A call holds the database (or applies server data) and others would wait for it."""
        return self._lock.locked() or self._server_lock.locked()

    # --- listeners ----------------------------------------------------------------------------

    def on_local_change(
        self, callback: Callable[[list[TableChange] | None], None]
    ) -> Callable[[], None]:
        """``callback(carried)`` after each commit that recorded local changes.

        ``carried`` is None, or (once after ``arm_local_changes``) what
        ``unsynced_changes`` would have answered right after that commit.
        Returns an unsubscribe function.
        """
        return self._local_listeners.add(callback)

    def on_tables_changed(self, callback: TablesListener) -> Callable[[], None]:
        """``callback(tables, source)``; source: local, server, initial, results, reset, repair."""
        return self._tables_listeners.add(callback)

    def on_query_result(self, callback: Callable[[str, Rows], None]) -> Callable[[], None]:
        """Live query results: ``callback(sub_id, rows)``."""
        return self._result_listeners.add(callback)

    def _emit_result(self, sub_id: str, rows: Rows) -> None:
        self._result_listeners.emit(sub_id, rows)

    def _tables_changed(self, tables: Sequence[str], source: str) -> None:
        if not tables:
            return
        names = (tables[0],) if len(tables) == 1 else tuple(sorted(set(tables)))
        self._live.tables_changed(names)
        self._tables_listeners.emit(names, source)

    # --- app API ------------------------------------------------------------------------------

    async def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Rows:
        async with self._lock:
            return self._query_now(sql, params)

    def _query_now(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Rows:
        """A read; SQL that would write raises ``WriteError`` (use ``execute``)."""
        return read_only(self._conn, sql, params)

    async def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> WriteResult:
        """Raw SQL; writes to synced tables are recorded by the triggers."""
        return (await self.run_transaction([WriteOp("execute", sql=sql, params=params)]))[0]

    async def insert(self, table: str, row: Mapping[str, Any]) -> WriteResult:
        return (await self.run_transaction([WriteOp("insert", table, row)]))[0]

    async def update(self, table: str, row: Mapping[str, Any]) -> WriteResult:
        return (await self.run_transaction([WriteOp("update", table, row)]))[0]

    async def delete(self, table: str, key: Any) -> WriteResult:
        """``key``: the primary key value or a mapping holding the key columns."""
        async with self.transaction() as tx:
            return await tx.delete(table, key)

    async def upsert(self, table: str, row: Mapping[str, Any]) -> WriteResult:
        return (await self.run_transaction([WriteOp("upsert", table, row)]))[0]

    async def run_transaction(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Several writes, all or nothing; one result per op."""
        async with self._lock:
            results, tables, carried = self._commit_ops(ops)
        self._local_committed(tables, carried)
        return results

    def write_row(self, op: str, table: str, row: Mapping[str, Any]) -> WriteResult | None:
        """A one-row ``insert/update/delete/upsert`` (``op``) run to its end in this call, as
        ``run_transaction([WriteOp(op, table, row)])`` would; None (nothing run) when busy.

        Why: a page's one-row write is the hot path, and the coroutines, the lock and
        the context managers around it cost about as much as its SQL in Pyodide.  It
        is the same transaction: asyncio runs one step at a time and nothing here
        awaits, so running while no call holds the database (``busy`` is False) is
        what taking the free lock would do, and nobody can come in between.
        """
        if self._lock.locked() or self._server_lock.locked():  # ``busy``, one call less
            return None
        results, tables, carried = self._commit_ops((WriteOp(op, table, row),))
        self._local_committed(tables, carried)
        return results[0]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``async with worker.transaction() as tx``: commit at the end, roll back on error."""
        async with self._lock:
            self._writer.touched.start()
            with write_transaction(self._conn, applying=False, clock=self._clock):
                yield Transaction(self._writer, self._conn)
            tables, carried = self._after_commit()
        self._local_committed(tables, carried)

    def _commit_ops(
        self, ops: Sequence[WriteOp]
    ) -> tuple[list[WriteResult], list[str], list[TableChange] | None]:
        """One local transaction of ``ops``; the caller holds the database.

        ``write_transaction(applying=False, clock=self._clock)`` written out (the same
        statements): its generator and context manager were ~6 of a one-row write's
        Python calls.
        """
        writer = self._writer
        conn = self._conn
        cursor = writer.cursor
        writer.touched.start()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            results = [writer.run(op) for op in ops]
            cursor.execute(RESET_CTX_SQL, (self._hlc.last,))
            cursor.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return (results, *self._after_commit())

    def _after_commit(self) -> tuple[list[str], list[TableChange] | None]:
        """The tables a local commit changed, and what it carries to the Sync side."""
        tables = self._writer.touched.finish()
        carried: list[TableChange] | None = None
        if tables and self._carry_limit is not None:
            # Read with the database still held, right after the commit: the same rows
            # a ``unsynced_changes`` call would return now (``arm_local_changes``).
            carried = self._read_unsynced(self._carry_limit) or None
            self._carry_limit = None
        return tables, carried

    def _local_committed(self, tables: list[str], carried: list[TableChange] | None) -> None:
        """Tell the listeners, after the database is free again."""
        if tables:
            self._local_listeners.emit(carried)
            self._tables_changed(tables, "local")

    async def pending_changes(self) -> Rows:
        """Local changes the server has not acknowledged, oldest first."""
        async with self._lock:
            return self._query_now(
                "SELECT * FROM local_changes WHERE from_server = 0 AND state = 'pending' "
                "ORDER BY seq"
            )

    async def pending_count(self) -> int:
        """How many local changes the server has not acknowledged yet."""
        return (await self.local_state()).pending_count

    async def local_changes(
        self, limit: int = 100, offset: int = 0, state: str | None = None
    ) -> Rows:
        """The change history, newest first (the inspector's view)."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        async with self._lock:
            return self._query_now(
                f"SELECT * FROM local_changes {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*params, int(limit), int(offset)],
            )

    async def status(self) -> dict[str, Any]:
        async with self._lock:
            counts = dict(
                self._conn.execute(
                    "SELECT state, count(*) FROM local_changes WHERE from_server = 0 "
                    "OR state IN ('failed', 'retrying') GROUP BY state"
                ).fetchall()
            )
            return {
                "clientId": self.client_id,
                "lsn": format_lsn(self._lsn()),
                "initialized": self._initialized(),
                "pending": counts.get("pending", 0),
                "rejected": counts.get("rejected", 0),
                "failed": counts.get("failed", 0) + counts.get("retrying", 0),
            }

    async def table_checksums(
        self, tables: Sequence[str] | None = None, *, if_idle_at: int | None = None
    ) -> dict[str, str] | None:
        """Order-independent checksums (``tidesync.checksums``) of the synced tables, one read
        (``ChangesPort.table_checksums``: None when ``if_idle_at`` is given and not met)."""
        names = [n for n in (tables or self.schema.order) if self.schema.table(n) is not None]
        async with self._lock:
            self._conn.execute("BEGIN")
            try:
                if if_idle_at is not None:
                    pending = self._conn.execute(
                        "SELECT 1 FROM local_changes "
                        "WHERE from_server = 0 AND state = 'pending' LIMIT 1"
                    ).fetchone()
                    if pending is not None or self._lsn() != if_idle_at:
                        return None
                cursor = self._conn.cursor()
                return {n: table_checksum(cursor, self.schema.tables[n]) for n in names}
            finally:
                self._conn.execute("COMMIT")

    async def subscribe(self, sub_id: str, sql: str, params: Sequence[Any] = ()) -> Rows:
        async with self._lock:
            return self._live.subscribe(sub_id, sql, params)

    async def unsubscribe(self, sub_id: str) -> bool:
        return self._live.unsubscribe(sub_id)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            async with self._lock:
                self._conn.close()

    # --- ChangesPort --------------------------------------------------------------------------

    async def local_state(self) -> LocalState:
        async with self._lock:
            pending = self._conn.execute(
                "SELECT count(*) FROM local_changes WHERE from_server = 0 AND state = 'pending'"
            ).fetchone()[0]
            return LocalState(self.client_id, self._lsn(), int(pending), self._initialized())

    async def observe_server_time(self, millis: int) -> None:
        """Feed the HLC (persisted with the next write, not here: no fsync per message)."""
        self._hlc.observe(millis)

    async def begin_initial_sync(self, server_lsn: int) -> None:
        async with self._lock:
            self._initial.begin(server_lsn)

    async def stage_initial_chunk(self, table: str, changes: Sequence[TableChange]) -> None:
        async with self._lock:
            self._initial.stage(table, changes)

    async def stage_initial_json(self, table: str, changes_json: str | bytes) -> None:
        async with self._lock:
            self._initial.stage_json(table, changes_json)

    async def commit_initial_sync(self, server_lsn: int) -> ApplyOutcome:
        async with self._server_lock, self._lock:
            result = self._initial.commit(server_lsn)
        self._tables_changed(sorted(result.tables), "initial")
        self.checkpoint_later()
        return _outcome(result.lsn, result.applied, result.skipped, result.failed, result.tables)

    def checkpoint_later(self) -> None:
        """Checkpoint the WAL a snapshot left (a streamed snapshot's commit, or an adopted
        bootstrap image) ``CHECKPOINT_DELAY_S`` from now, off the path to live.

        SQLite's auto-checkpoint is held off until then: otherwise the next commit (the
        catchup's first batch, the triggers' refresh on open) would copy the snapshot's
        whole WAL (~17 MB per 100k demo rows) on that path.
        """
        if self._restore_autocheckpoint is None:
            auto = int(self._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
            self._restore_autocheckpoint = auto
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        asyncio.get_running_loop().call_later(CHECKPOINT_DELAY_S, self._checkpoint_soon)

    def _checkpoint_soon(self) -> None:
        """Checkpoint the WAL the snapshot's commit left (``InitialSync.commit``), once the
        sync is past it, so the copy is not on the path to live."""
        task = asyncio.ensure_future(self._checkpoint())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _checkpoint(self) -> None:
        async with self._lock:
            if self._closed:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                auto, self._restore_autocheckpoint = self._restore_autocheckpoint, None
                if auto is not None:
                    self._conn.execute(f"PRAGMA wal_autocheckpoint = {auto}")
            except sqlite3.Error as exc:  # e.g. closed under us: the next commit or open does it
                log.info("deferred checkpoint skipped: %s", exc)

    async def abort_initial_sync(self) -> None:
        async with self._lock:
            self._initial.abort()

    async def apply_server_changes(
        self, changes: Sequence[TableChange], last_lsn: int, *, source: str, server_time: int = 0
    ) -> ApplyOutcome:
        """One transaction per try; failed tries are recorded and retried with backoff.

        After ``max_attempts`` failures the batch is applied change by change and
        what still fails is marked ``failed``, so this always returns (or raises
        when even that transaction cannot commit, e.g. the disk is gone).
        """
        if server_time > 0:
            self._hlc.observe(server_time)  # as ``observe_server_time``: no write here
        key = f"{source}:{last_lsn}"
        async with self._server_lock:
            changes, covered = drop_covered(changes, self._floors)
            if covered:
                log.debug("%d change(s) already in a repaired table's snapshot", covered)
            while True:
                async with self._lock:
                    isolate = self._retry.should_give_up(key)
                    try:
                        result = self._processor.apply_batch(
                            changes, last_lsn, self._lsn(), isolate=isolate
                        )
                        break
                    except sqlite3.Error as exc:
                        if isolate:
                            self._retry.reset(key)
                            raise
                        delay = self._batch_failed(key, changes, last_lsn, exc)
                await self._sleep(delay)  # the database is free for local writes meanwhile
            self._retry.reset(key)
        self._tables_changed(sorted(result.tables), "server")
        return _outcome(result.lsn, result.applied, result.skipped, result.failed, result.tables)

    async def commit_table_resync(self, tables: Sequence[str], server_lsn: int) -> ApplyOutcome:
        """Swap in the staged snapshot of ``tables`` only (``table_resync``); LSN unchanged."""
        async with self._server_lock, self._lock:
            result = commit_table_resync(
                self._conn,
                self.schema,
                self._processor,
                self._initial,
                tables,
                server_lsn,
                self._floors,
            )
        self._tables_changed(sorted(result.tables), "repair")
        return _outcome(result.lsn, result.applied, result.skipped, result.failed, result.tables)

    async def advance_lsn(self, lsn: int) -> None:
        async with self._server_lock, self._lock:
            if lsn > self._lsn():
                with write_transaction(self._conn, applying=True):
                    set_state(self._conn, "lsn", lsn)

    async def unsynced_changes(self, limit: int) -> list[TableChange]:
        async with self._lock:
            self._carry_limit = None  # the Sync side reads for itself: it is not idle
            return self._read_unsynced(limit)

    async def arm_local_changes(self, limit: int) -> None:
        """The Sync side is live and idle: let the next local commit carry its changes.

        Why: a change then reaches the Sync side with the event that announces it,
        instead of the event and then an ``unsynced_changes`` round trip before it
        can be sent.  Only the next commit reads (at most ``limit`` changes, under the
        lock right after it commits), then the worker is disarmed again, as it is by
        ``unsynced_changes`` and by ``limit`` 0.  Armed only while the Sync side waits
        for local changes with nothing in flight, so the browser's OPFS flush before
        changes leave this worker (``browser_entry``) does not run on every commit.
        Taken under the lock so it is ordered after every port call posted before it.
        """
        async with self._lock:
            self._carry_limit = int(limit) if limit > 0 else None

    def _read_unsynced(self, limit: int) -> list[TableChange]:
        rows = self._conn.execute(
            "SELECT id, table_name, operation, data, updated_at FROM local_changes "
            "WHERE from_server = 0 AND state = 'pending' ORDER BY seq LIMIT ?",
            (int(limit),),
        ).fetchall()
        return [
            TableChange(
                id=r[0],
                table=r[1],
                operation=Operation(r[2]),
                data=json.loads(r[3]),
                updated_at=r[4],
            )
            for r in rows
        ]

    async def mark_sent(self, change_ids: Sequence[str]) -> None:
        async with self._lock, _in_txn(self._conn):
            self._conn.executemany(
                "UPDATE local_changes SET attempts = attempts + 1, "
                "modified_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                "WHERE id = ? AND from_server = 0",
                [(i,) for i in change_ids],
            )

    async def record_results(self, results: Sequence[ChangeResult]) -> ApplyOutcome:
        async with self._lock:
            result = record_results(self._conn, self.schema, self._processor, results, self._lsn())
        self._tables_changed(sorted(result.tables), "results")
        return _outcome(result.lsn, result.applied, result.skipped, result.failed, result.tables)

    async def reset_for_reinit(self) -> None:
        """``lsn_ahead``: keep pending local changes, drop synced rows, back to 0/0.

        The old server's LSNs on acknowledged changes mean nothing to the new
        one, so they are cleared (they would wrongly protect rows from updates).
        """
        async with self._server_lock, self._lock:
            with write_transaction(self._conn, applying=True, foreign_keys=False):
                clear_synced_rows(self._conn, self.schema)
                set_state(self._conn, "lsn", 0)
                set_state(self._conn, "initialized", 0)
                save_floors(self._conn, {})
                self._conn.execute(
                    "UPDATE local_changes SET lsn = NULL WHERE from_server = 0 AND state = 'synced'"
                )
            self._floors.clear()
        self._tables_changed(self.schema.order, "reset")

    # --- helpers ------------------------------------------------------------------------------

    def _batch_failed(
        self, key: str, changes: Sequence[TableChange], last_lsn: int, exc: sqlite3.Error
    ) -> float:
        """Count the failure, note it on the batch's history rows; return the delay to wait."""
        self._retry.record_failure(key)
        delay = self._retry.next_delay(key)
        log.warning(
            "server batch up to %s failed (%s); retry in %.2fs", format_lsn(last_lsn), exc, delay
        )
        retry_at = self._now_ms() + int(delay * 1000)
        try:
            self._processor.record_failure(changes, f"{type(exc).__name__}: {exc}", retry_at)
        except sqlite3.Error:  # the bookkeeping is best effort: the retry is what matters
            log.exception("could not record the failure of batch %s", format_lsn(last_lsn))
        return delay

    def synced_lsn(self) -> int:
        """The server LSN this database has applied up to (0: never synced)."""
        return self._lsn()

    def _lsn(self) -> int:
        return int(get_state(self._conn, "lsn") or 0)

    def _initialized(self) -> bool:
        return get_state(self._conn, "initialized") == "1"

    def _clock(self) -> int:
        return self._hlc.last

    def _observe_time(self, millis: int) -> int:
        self._hlc.observe(millis)
        return self._hlc.last


@asynccontextmanager
async def _in_txn(conn: sqlite3.Connection) -> AsyncIterator[None]:
    with write_transaction(conn, applying=True):
        yield


def _outcome(lsn: int, applied: int, skipped: int, failed: int, tables: Any) -> ApplyOutcome:
    return ApplyOutcome(lsn, applied, skipped, failed, tuple(sorted(tables)))
