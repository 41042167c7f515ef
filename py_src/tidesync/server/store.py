"""The server's SQLite file: app tables, change history, row versions, applied ids.

One file in WAL mode, so readers (snapshots, the tailer, checksums) never block
the single writer and the writer never blocks them.  ``_ts_change_history.lsn``
is an ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite has one writer at a time and
the rowid is taken inside the writing transaction, so LSN order is commit order
and an LSN is never reused, even after the newest rows are deleted.

Opening is idempotent (``CREATE ... IF NOT EXISTS`` semantics for every object of
the schema SQL), so a restarted server reopens its file and keeps its data and
LSN.  The writer connection is shared by the sessions' threads and guarded by
``write_lock``; every other reader opens its own connection with ``connect``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidesync.schema import Schema, demo_schema_sql
from tidesync.server.capture import install_triggers
from tidesync.worker_sync.shared.hlc import TimestampError, normalize_timestamp
from tidesync.worker_sync.shared.message_types import Operation, TableChange

__all__ = ["HistoryRow", "Store", "connect"]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

_INTERNAL_SQL = """
CREATE TABLE IF NOT EXISTS _ts_change_history (
    lsn INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id TEXT NOT NULL,
    client_id TEXT,
    table_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS _ts_change_history_change_id ON _ts_change_history(change_id);
CREATE TABLE IF NOT EXISTS _ts_row_versions (
    table_name TEXT NOT NULL,
    pk TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    client_id TEXT,
    PRIMARY KEY (table_name, pk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _ts_applied_changes (
    change_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    lsn INTEGER,
    applied_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _ts_context (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    change_id TEXT,
    client_id TEXT,
    updated_at TEXT,
    table_name TEXT,
    pk TEXT
);
INSERT OR IGNORE INTO _ts_context(id) VALUES (1);
"""


def connect(path: str | Path, *, check_same_thread: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every server connection needs.

    Autocommit mode (``isolation_level=None``): transactions are explicit
    ``BEGIN``/``COMMIT`` so their extent is visible in the code.
    """
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=check_same_thread, timeout=5.0
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@dataclass(frozen=True)
class HistoryRow:
    """One row of ``_ts_change_history``; ``client_id`` is None for other writers."""

    lsn: int
    change_id: str
    client_id: str | None
    table: str
    operation: str
    data: dict[str, Any]
    updated_at: str

    def to_change(self) -> TableChange:
        return TableChange(
            id=self.change_id,
            table=self.table,
            operation=Operation(self.operation),
            data=self.data,
            updated_at=self.updated_at,
            lsn=self.lsn,
            client_id=self.client_id,
        )


HISTORY_COLUMNS = "lsn, change_id, client_id, table_name, operation, data, updated_at, created_at"


def history_row(raw: tuple[Any, ...]) -> HistoryRow:
    """Build from a ``SELECT HISTORY_COLUMNS`` row; a bad time falls back to ``created_at``.

    Other programs may store anything in ``updated_at``; clients refuse a frame
    with an unparsable time, so the server only ever sends normalized ones.
    """
    lsn, change_id, client_id, table, operation, data, updated_at, created_at = raw
    try:
        when = normalize_timestamp(updated_at)
    except TimestampError:
        when = normalize_timestamp(created_at)
    return HistoryRow(lsn, change_id, client_id, table, operation, json.loads(data), when)


def read_history(
    conn: sqlite3.Connection, after: int, limit: int, upto: int | None = None
) -> list[HistoryRow]:
    """History rows with ``after < lsn (<= upto)`` in LSN order, at most ``limit``."""
    if upto is None:
        rows = conn.execute(
            f"SELECT {HISTORY_COLUMNS} FROM _ts_change_history WHERE lsn > ? ORDER BY lsn LIMIT ?",
            (after, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {HISTORY_COLUMNS} FROM _ts_change_history WHERE lsn > ? AND lsn <= ? "
            "ORDER BY lsn LIMIT ?",
            (after, upto, limit),
        ).fetchall()
    return [history_row(r) for r in rows]


def max_lsn(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM _ts_change_history").fetchone()
    return int(row[0])


class Store:
    """Owns the database file: schema creation, the writer connection, commit hooks."""

    def __init__(self, path: str | Path, schema_sql: str | None = None) -> None:
        self.path = Path(path)
        self.schema_sql = schema_sql if schema_sql is not None else demo_schema_sql()
        self.schema = Schema.from_sql(self.schema_sql)
        self.write_lock = threading.RLock()
        self._on_commit: list[Callable[[], None]] = []
        self.writer = connect(self.path)
        self.writer.execute("PRAGMA journal_mode = WAL")
        self._create()

    def _create(self) -> None:
        with self.write_lock:
            self.writer.execute("BEGIN IMMEDIATE")
            try:
                self._create_app_objects()
                for statement in _INTERNAL_SQL.split(";"):
                    if statement.strip():
                        self.writer.execute(statement)
                install_triggers(self.writer, self.schema)
                self.writer.execute("COMMIT")
            except BaseException:
                self.writer.execute("ROLLBACK")
                raise
        log.info(
            "store %s open: tables %s, lsn %d",
            self.path,
            ", ".join(self.schema.order),
            self.current_lsn(),
        )

    def _create_app_objects(self) -> None:
        """Run each object of the schema SQL that the file does not have yet."""
        memory = sqlite3.connect(":memory:")
        try:
            memory.executescript(self.schema_sql)
            wanted = memory.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, rowid"
            ).fetchall()
        finally:
            memory.close()
        have = {
            name for (name,) in self.writer.execute("SELECT name FROM sqlite_master").fetchall()
        }
        for kind, name, sql in wanted:
            if name not in have:
                log.debug("creating %s %s", kind, name)
                self.writer.execute(sql)

    # --- hooks and reads ----------------------------------------------------------------------

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (in the writer's thread) after every server commit."""
        self._on_commit.append(callback)

    def notify_commit(self) -> None:
        for callback in list(self._on_commit):
            try:
                callback()
            except Exception:
                log.exception("commit listener failed")

    def connect(self) -> sqlite3.Connection:
        """A new reader connection on the same file."""
        return connect(self.path)

    def current_lsn(self) -> int:
        with self.write_lock:
            return max_lsn(self.writer)

    def close(self) -> None:
        with self.write_lock:
            self.writer.close()
