"""Applying a client's ``clt_send_changes`` batch (PROTOCOL.md "Client changes").

The batch runs in one write transaction; each change runs inside its own
SAVEPOINT, so a change that fails (a constraint, a bad value SQLite refuses)
is rolled back alone and answered ``rejected`` while the others still commit.
A failure of the database itself (disk full, I/O error, locked) is not the
change's fault: it fails the whole batch (the session answers ``success:
false``) and the client resends it later.
No change is ever partly written.

Per change, in this order:

1. idempotency: an id already in ``_ts_applied_changes`` -> ``skipped``,
   reason ``duplicate``, with the current row (and the LSN it was applied at);
2. validation against ``Schema`` -> ``rejected`` with a reason and the current
   row (absent if the table is unknown or the key missing, null if deleted);
3. last-write-wins against ``_ts_row_versions`` with ``lww_key`` (newer
   ``updated_at`` wins, a tie goes to the larger clientId; an equal key loses)
   -> ``skipped``, reason ``lww``, with the current row;
4. apply: insert = upsert (``ON CONFLICT DO UPDATE``, never ``REPLACE``, which
   would delete and cascade), update = ``UPDATE`` of the sent columns (row
   missing -> ``skipped``, reason ``row_missing``, row null: the row was deleted
   by a change that won), delete = ``DELETE`` (row missing -> same).

The capture triggers write the history row and the row version; the context
row tells them the change id, author and time, and is emptied again before
the transaction commits, so other writers never see it filled.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.worker_sync.shared.hlc import TimestampError, lww_key
from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    Operation,
    TableChange,
)

__all__ = ["apply_changes", "current_row"]

log = logging.getLogger(__name__)

_ABSENT = object()


def _pk_where(table: TableInfo) -> str:
    return " AND ".join(f"{quote_ident(k)} = ?" for k in table.primary_key)


def _plain_key(table: TableInfo, data: Mapping[str, Any]) -> bool:
    """Every key column holds a value SQLite can bind (not null, not a list or object).

    Only such a key can look up "the server's current row" for a result; a change
    whose key is malformed is rejected without one.
    """
    return all(isinstance(data.get(k), str | int | float) for k in table.primary_key)


def current_row(
    conn: sqlite3.Connection, table: TableInfo, key: Sequence[Any]
) -> dict[str, Any] | None:
    """The row with primary key ``key`` as a dict, or None when there is none."""
    cols = ", ".join(quote_ident(c) for c in table.column_names)
    found = conn.execute(
        f"SELECT {cols} FROM {quote_ident(table.name)} WHERE {_pk_where(table)}", tuple(key)
    ).fetchone()
    return None if found is None else dict(zip(table.column_names, found, strict=True))


def _result(
    change: TableChange,
    status: ChangeStatus,
    *,
    lsn: int | None = None,
    reason: str | None = None,
    row: Any = _ABSENT,
) -> ChangeResult:
    if row is _ABSENT:
        return ChangeResult(id=change.id, status=status, lsn=lsn, reason=reason)
    return ChangeResult(
        id=change.id, status=status, lsn=lsn, reason=reason, row=row, row_deleted=row is None
    )


def _safe_key(updated_at: str, client_id: str | None) -> tuple[int, str]:
    try:
        return lww_key(updated_at, client_id)
    except TimestampError:
        return (0, client_id or "")


class _Applier:
    def __init__(self, conn: sqlite3.Connection, schema: Schema, client_id: str) -> None:
        self.conn = conn
        self.schema = schema
        self.client_id = client_id

    def pk_json(self, key: Sequence[Any]) -> str:
        # SQLite's own json_array, so the text matches what the triggers store.
        marks = ", ".join("?" for _ in key)
        return str(self.conn.execute(f"SELECT json_array({marks})", tuple(key)).fetchone()[0])

    def one(self, change: TableChange) -> ChangeResult:
        prior = self.conn.execute(
            "SELECT status, lsn FROM _ts_applied_changes WHERE change_id = ?", (change.id,)
        ).fetchone()
        table = self.schema.table(change.table)
        if prior is not None:
            row: Any = _ABSENT
            if table is not None and _plain_key(table, change.data):
                row = current_row(self.conn, table, table.key_of(change.data))
            return _result(change, ChangeStatus.SKIPPED, lsn=prior[1], reason="duplicate", row=row)
        if table is None:
            return _result(
                change, ChangeStatus.REJECTED, reason=f"unknown table '{change.table[:60]}'"
            )
        data = dict(change.data)
        if table.has_updated_at and "updated_at" not in data and change.operation != "delete":
            data["updated_at"] = change.updated_at
        full = change.operation is Operation.INSERT
        problem = self.schema.validate_change_data(table, data, full_row=full)
        key = table.key_of(data)
        if problem is not None:
            row = current_row(self.conn, table, key) if _plain_key(table, data) else _ABSENT
            return _result(change, ChangeStatus.REJECTED, reason=problem, row=row)
        pk_json = self.pk_json(key)
        version = self.conn.execute(
            "SELECT updated_at, client_id FROM _ts_row_versions WHERE table_name = ? AND pk = ?",
            (table.name, pk_json),
        ).fetchone()
        if version is not None and _safe_key(change.updated_at, self.client_id) <= _safe_key(
            version[0], version[1]
        ):
            row = current_row(self.conn, table, key)
            return _result(change, ChangeStatus.SKIPPED, reason="lww", row=row)
        return self._write(change, table, data, key, pk_json)

    def _write(
        self,
        change: TableChange,
        table: TableInfo,
        data: dict[str, Any],
        key: tuple[Any, ...],
        pk_json: str,
    ) -> ChangeResult:
        exists = current_row(self.conn, table, key) is not None
        if change.operation is not Operation.INSERT and not exists:
            return _result(change, ChangeStatus.SKIPPED, reason="row_missing", row=None)
        self.conn.execute(
            "UPDATE _ts_context SET change_id = ?, client_id = ?, updated_at = ?, "
            "table_name = ?, pk = ? WHERE id = 1",
            (change.id, self.client_id, change.updated_at, table.name, pk_json),
        )
        values = {k: (int(v) if isinstance(v, bool) else v) for k, v in data.items()}
        target = quote_ident(table.name)
        if change.operation is Operation.INSERT:
            names = list(values)
            cols = ", ".join(quote_ident(n) for n in names)
            marks = ", ".join("?" for _ in names)
            rest = [n for n in names if n not in table.primary_key]
            conflict = ", ".join(quote_ident(k) for k in table.primary_key)
            action = (
                "DO UPDATE SET "
                + ", ".join(f"{quote_ident(n)} = excluded.{quote_ident(n)}" for n in rest)
                if rest
                else "DO NOTHING"
            )
            self.conn.execute(
                f"INSERT INTO {target} ({cols}) VALUES ({marks}) ON CONFLICT({conflict}) {action}",
                [values[n] for n in names],
            )
        elif change.operation is Operation.UPDATE:
            rest = [n for n in values if n not in table.primary_key] or [table.primary_key[0]]
            sets = ", ".join(f"{quote_ident(n)} = ?" for n in rest)
            self.conn.execute(
                f"UPDATE {target} SET {sets} WHERE {_pk_where(table)}",
                [values.get(n, key[0]) for n in rest] + list(key),
            )
        else:
            self.conn.execute(f"DELETE FROM {target} WHERE {_pk_where(table)}", key)
        found = self.conn.execute(
            "SELECT MAX(lsn) FROM _ts_change_history WHERE change_id = ?", (change.id,)
        ).fetchone()
        lsn = found[0] if found is not None else None
        self.conn.execute(
            "INSERT INTO _ts_applied_changes(change_id, client_id, status, lsn, applied_at) "
            "VALUES (?, ?, 'applied', ?, ?)",
            (change.id, self.client_id, lsn, _now_iso()),
        )
        return _result(change, ChangeStatus.APPLIED, lsn=lsn)


#: SQLite errors that say nothing about the change itself (the disk is full, an I/O
#: error, the file is locked or read-only): rejecting the change for them would drop it
#: for good, and SQLite may already have rolled the whole transaction back.
_ENVIRONMENT_ERRORS = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _not_the_change(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _ENVIRONMENT_ERRORS


def _now_iso() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def apply_changes(
    conn: sqlite3.Connection, schema: Schema, client_id: str, changes: Sequence[TableChange]
) -> list[ChangeResult]:
    """Apply ``changes`` of ``client_id`` in order, in one transaction; one result each.

    ``conn`` must be in autocommit mode (``isolation_level=None``) and not in a
    transaction; the caller serializes writers (``Store.write_lock``).
    """
    applier = _Applier(conn, schema, client_id)
    results: list[ChangeResult] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for change in changes:
            conn.execute("SAVEPOINT _ts_change")
            try:
                result = applier.one(change)
            except sqlite3.Error as exc:
                if _not_the_change(exc):
                    raise  # the whole batch fails (``success: false``) and is resent later
                conn.execute("ROLLBACK TO _ts_change")
                log.info("change %s rejected by SQLite: %s", change.id, exc)
                table = schema.table(change.table)
                row: Any = _ABSENT
                if table is not None and _plain_key(table, change.data):
                    row = current_row(conn, table, table.key_of(change.data))
                result = _result(
                    change, ChangeStatus.REJECTED, reason=f"database refused: {exc}", row=row
                )
            conn.execute("RELEASE _ts_change")
            results.append(result)
        conn.execute(
            "UPDATE _ts_context SET change_id = NULL, client_id = NULL, updated_at = NULL, "
            "table_name = NULL, pk = NULL WHERE id = 1"
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results
