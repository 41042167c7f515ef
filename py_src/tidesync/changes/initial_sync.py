"""Initial sync on the client: stage a snapshot, then swap it in with its LSN at once.

PROTOCOL.md "Initial sync": a half-received snapshot is never visible as synced
data.  Chunks go to a TEMP table (this connection only, gone with it); the
commit replaces the synced rows in one transaction together with the LSN and
the ``initialized`` flag.  Rows with pending local changes keep their local
values in the columns those changes wrote and take the snapshot's values in the
others: exactly the row the server will hold once it applies the pending
change on top of its own (a pending delete keeps the row absent).  If the
pending change loses on the server, its ``skipped`` result brings the server's
row.  The swap runs with foreign keys off, so deleting a parent cannot
cascade into a child that holds a pending local change.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from tidesync.changes.db import set_state, write_transaction
from tidesync.changes.direct_sql_processor import BatchResult, DirectSqlProcessor
from tidesync.changes.local_schema import pk_sql
from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.worker_sync.shared.message_types import TableChange

__all__ = ["InitialSync", "clear_synced_rows"]

log = logging.getLogger(__name__)

_PENDING_KEYS = (
    "SELECT pk FROM local_changes WHERE from_server = 0 AND state = 'pending' AND table_name = ?"
)


def clear_synced_rows(conn: sqlite3.Connection, schema: Schema) -> None:
    """Delete every app row without a pending local change (caller: FKs off, applying)."""
    for name in reversed(schema.order):
        table = schema.tables[name]
        conn.execute(
            f"DELETE FROM {quote_ident(name)} "
            f"WHERE {pk_sql(table, quote_ident(name))} NOT IN ({_PENDING_KEYS})",
            (name,),
        )


class InitialSync:
    """The staging area of one snapshot; ``begin`` -> ``stage``* -> ``commit`` or ``abort``."""

    def __init__(
        self, conn: sqlite3.Connection, schema: Schema, processor: DirectSqlProcessor
    ) -> None:
        self._conn = conn
        self._schema = schema
        self._processor = processor
        self.server_lsn: int | None = None

    def begin(self, server_lsn: int) -> None:
        self._conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _ts_stage (seq INTEGER PRIMARY KEY, "
            "table_name TEXT NOT NULL, data TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        self._conn.execute("DELETE FROM temp._ts_stage")
        self.server_lsn = server_lsn

    def stage(self, table: str, changes: Sequence[TableChange]) -> None:
        if self.server_lsn is None:
            raise RuntimeError("stage_initial_chunk before begin_initial_sync")
        rows = [
            (c.table or table, json.dumps(c.data, ensure_ascii=False), c.updated_at)
            for c in changes
        ]
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                "INSERT INTO temp._ts_stage (table_name, data, updated_at) VALUES (?, ?, ?)", rows
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def abort(self) -> None:
        self.server_lsn = None
        self._conn.execute("DROP TABLE IF EXISTS temp._ts_stage")

    def commit(self, server_lsn: int) -> BatchResult:
        """Swap the snapshot in with ``lsn = server_lsn``; all or nothing."""
        if self.server_lsn is None:
            raise RuntimeError("commit_initial_sync before begin_initial_sync")
        result = BatchResult(lsn=server_lsn)
        with write_transaction(self._conn, applying=True, foreign_keys=False):
            pending_tables = {
                row[0]
                for row in self._conn.execute(
                    "SELECT DISTINCT table_name FROM local_changes "
                    "WHERE from_server = 0 AND state = 'pending'"
                )
            }
            clear_synced_rows(self._conn, self._schema)
            staged = self._conn.execute(
                "SELECT table_name, data, updated_at FROM temp._ts_stage ORDER BY seq"
            )
            for name, raw, updated_at in staged:
                table = self._schema.table(name)
                data = json.loads(raw)
                if table is None or not isinstance(data, dict):
                    result.failed += 1
                    log.warning("snapshot row for unknown table %r ignored", str(name)[:60])
                    continue
                if table.has_updated_at:
                    data.setdefault("updated_at", updated_at)
                keep = frozenset[str]()
                if name in pending_tables:
                    pending = self._pending_columns(table, data)
                    if pending is not None:
                        settable = set(data) - pending - set(table.primary_key)
                        if not settable or not self._exists(table, data):
                            result.skipped += 1  # nothing of the snapshot row is left to write
                            continue
                        keep = frozenset(pending)
                if self._processor.write_row(table, data, data, keep):
                    result.applied += 1
                    result.tables.add(name)
                else:
                    result.failed += 1
            set_state(self._conn, "lsn", server_lsn)
            set_state(self._conn, "initialized", 1)
        self.abort()
        result.tables.update(self._schema.order)  # rows may have gone from any table
        return result

    def staged_rows(self, tables: Collection[str]) -> Iterator[tuple[str, Any, str]]:
        """``(table, data, updated_at)`` staged for ``tables``, in arrival order.

        The table re-sync (``table_resync``) stages through this class too, so the
        staging format stays private to it.
        """
        if self.server_lsn is None:
            raise RuntimeError("commit_table_resync before begin_initial_sync")
        names = sorted(tables)
        marks = ", ".join("?" * len(names))
        for name, raw, updated_at in self._conn.execute(
            "SELECT table_name, data, updated_at FROM temp._ts_stage "
            f"WHERE table_name IN ({marks}) ORDER BY seq",
            names,
        ):
            yield name, json.loads(raw), updated_at

    def _pending_columns(self, table: TableInfo, data: dict[str, Any]) -> set[str] | None:
        """Columns written by pending local changes to this row; None when there are none."""
        found = self._conn.execute(
            "SELECT data FROM local_changes WHERE from_server = 0 AND state = 'pending' "
            f"AND table_name = ? AND pk = {pk_sql(table)}",
            [table.name, *table.key_of(data)],
        ).fetchall()
        if not found:
            return None
        columns: set[str] = set()
        for (raw,) in found:
            columns.update(json.loads(raw))
        return columns

    def _exists(self, table: TableInfo, data: dict[str, Any]) -> bool:
        where = " AND ".join(f"{quote_ident(c)} = ?" for c in table.primary_key)
        sql = f"SELECT 1 FROM {quote_ident(table.name)} WHERE {where}"
        return self._conn.execute(sql, list(table.key_of(data))).fetchone() is not None
