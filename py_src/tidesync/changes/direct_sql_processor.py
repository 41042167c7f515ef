"""Applies server changes to the client database, one batch per transaction.

Invariants:

* a batch and its ``lastLSN`` commit together or not at all (the LSN never
  moves without the changes it covers); any SQLite error rolls the batch back
  and is raised to the caller, which retries;
* every table and column name from the wire is found in ``Schema`` before it
  reaches SQL, and quoted; values are bound;
* PROTOCOL.md "Convergence rules": a server change never overwrites what a
  local change that will win on the server wrote.  Protected are the columns
  of (a) pending local changes to the row that beat the server change in
  ``lww_key`` order and (b) local changes the server already acknowledged at a
  later LSN than the server change (the server applied ours on top of it, and
  will not send ours back).  The server change is applied to the other
  columns, exactly as the server combines the two; a change left with nothing
  to apply is recorded as skipped.
* triggers are off while applying (``applying = 1``), and each applied or
  skipped change is recorded in ``local_changes`` with ``from_server = 1``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidesync.changes.db import set_state, write_transaction
from tidesync.changes.local_schema import NOW_SQL, pk_sql
from tidesync.changes.writes import key_where, upsert_sql
from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.worker_sync.shared.hlc import TimestampError, lww_key, parse_timestamp
from tidesync.worker_sync.shared.message_types import Operation, TableChange

__all__ = ["LWW_SKIP_REASON", "BatchResult", "DirectSqlProcessor"]

log = logging.getLogger(__name__)

LWW_SKIP_REASON = "lost LWW to pending local change"
_ALL = frozenset({"*"})  # every column is protected (a winning local delete)
_NO_LSN = (1 << 63) - 1


@dataclass
class BatchResult:
    lsn: int
    applied: int = 0
    skipped: int = 0
    failed: int = 0
    tables: set[str] = field(default_factory=set)


class DirectSqlProcessor:
    """Runs server changes as SQL on ``conn`` (owned by the Changes Worker)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        schema: Schema,
        client_id: str,
        observe_time: Callable[[int], int],
    ) -> None:
        """``observe_time(ms)`` feeds the HLC and returns the value to persist as ``hlc_last``."""
        self._conn = conn
        self._schema = schema
        self._client_id = client_id
        self._observe = observe_time

    def apply_batch(
        self, changes: Sequence[TableChange], last_lsn: int, current_lsn: int, *, isolate: bool
    ) -> BatchResult:
        """Apply ``changes`` and move the LSN to ``last_lsn`` in one transaction.

        Changes at or below ``current_lsn`` were applied before (a resent frame)
        and are passed over.  With ``isolate`` each change runs in a SAVEPOINT
        with immediate foreign-key checks, so one that SQLite refuses is marked
        ``failed`` and the rest still commit; without it, the first error
        rolls back everything and propagates.
        """
        result = BatchResult(lsn=max(current_lsn, last_lsn))
        latest = 0
        # Foreign keys are not enforced on server data: the server's state is consistent
        # at every LSN, and a local overlay (a pending delete of the parent) must not make
        # a change of another client unappliable (it would be dropped and the row lost).
        with write_transaction(self._conn, applying=True, foreign_keys=False):
            for change in changes:
                if change.lsn is not None and change.lsn <= current_lsn:
                    continue
                latest = max(latest, _millis(change.updated_at))
                if isolate:
                    state, reason = self._apply_isolated(change)
                else:
                    state, reason = self._apply_one(change)
                    self._record(change, state, reason)
                if state == "applied":
                    result.applied += 1
                    result.tables.add(change.table)
                elif state == "skipped":
                    result.skipped += 1
                else:
                    result.failed += 1
            if result.lsn > current_lsn:
                set_state(self._conn, "lsn", result.lsn)
            if latest:
                set_state(self._conn, "hlc_last", self._observe(latest))
        return result

    def record_failure(
        self, changes: Sequence[TableChange], error: str, next_retry_at: int
    ) -> None:
        """Note a failed attempt on each change of a rolled-back batch (its own transaction)."""
        with write_transaction(self._conn, applying=True):
            for change in changes:
                self._record(change, "retrying", None, error=error, next_retry_at=next_retry_at)

    def write_row(
        self,
        table: TableInfo,
        key: dict[str, Any],
        row: dict[str, Any] | None,
        keep: frozenset[str] = frozenset(),
    ) -> bool:
        """Make the local row equal the server's ``row`` (None: deleted); caller holds the txn.

        Used to converge after ``skipped``/``rejected`` results and for snapshot
        rows; an existing row keeps its values in the ``keep`` columns (those of
        pending local changes).  Returns False when ``row`` does not fit the
        schema (nothing is written).
        """
        if row is None:
            self._delete(table, key)
            return True
        problem = self._schema.validate_change_data(table, row, full_row=True)
        if problem:
            log.warning("server row for %s ignored: %s", table.name, problem)
            return False
        self._upsert(table, row, [c for c in row if c not in table.primary_key and c not in keep])
        return True

    # --- one change ---------------------------------------------------------------------------

    def _apply_isolated(self, change: TableChange) -> tuple[str, str | None]:
        self._conn.execute("SAVEPOINT ts_change")
        try:
            state, reason = self._apply_one(change)
        except sqlite3.Error as exc:
            self._conn.execute("ROLLBACK TO ts_change")
            self._conn.execute("RELEASE ts_change")
            log.error("server change %s failed for good: %s", change.id, exc)
            self._record(change, "failed", None, error=f"{type(exc).__name__}: {exc}")
            return "failed", str(exc)
        self._conn.execute("RELEASE ts_change")
        self._record(change, state, reason)
        return state, reason

    def _apply_one(self, change: TableChange) -> tuple[str, str | None]:
        """Returns ``(state, reason)``; a change that does not fit the schema is ``failed``."""
        table = self._schema.table(change.table)
        if table is None:
            return "failed", f"unknown table '{change.table[:60]}'"
        if _millis(change.updated_at) < 0:
            return "failed", f"bad updated_at {str(change.updated_at)[:40]!r}"
        data = dict(change.data)
        full_row = change.operation == Operation.INSERT
        problem = self._schema.validate_change_data(table, data, full_row=full_row)
        if problem:
            return "failed", problem
        if change.operation != Operation.DELETE and table.has_updated_at:
            data.setdefault("updated_at", change.updated_at)
        protected = self._protected_columns(table, change, data)
        if protected is _ALL:
            return "skipped", LWW_SKIP_REASON
        if change.operation == Operation.DELETE:
            if protected:
                return "skipped", LWW_SKIP_REASON
            self._delete(table, data)
            return "applied", None
        settable = [c for c in data if c not in table.primary_key and c not in protected]
        merged = f"merged: kept local {', '.join(sorted(protected))}" if protected else None
        if change.operation == Operation.INSERT:
            if protected and not settable and self._exists(table, data):
                return "skipped", LWW_SKIP_REASON
            self._upsert(table, data, settable)
            return "applied", merged
        if not settable:
            return ("skipped", LWW_SKIP_REASON) if protected else ("applied", None)
        assignments = ", ".join(f"{quote_ident(c)} = ?" for c in settable)
        where, key_params = _where_key(table, data)
        cursor = self._conn.execute(
            f"UPDATE {quote_ident(table.name)} SET {assignments} WHERE {where}",
            [data[c] for c in settable] + key_params,
        )
        if cursor.rowcount:
            return "applied", merged
        if self._schema.validate_change_data(table, data, full_row=True) is None:
            self._upsert(table, data, settable)  # the row is missing here but the update is whole
            return "applied", "row missing: inserted"
        return "skipped", "row missing"

    def _protected_columns(
        self, table: TableInfo, change: TableChange, data: dict[str, Any]
    ) -> frozenset[str]:
        rows = self._conn.execute(
            "SELECT operation, data, updated_at, state, lsn FROM local_changes "
            f"WHERE table_name = ? AND pk = {pk_sql(table)} AND from_server = 0 "
            "AND state IN ('pending', 'synced') AND (state = 'pending' OR lsn > ?)",
            [table.name, *table.key_of(data), change.lsn if change.lsn is not None else _NO_LSN],
        ).fetchall()
        if not rows:
            return frozenset()
        theirs = lww_key(change.updated_at, change.client_id)
        protected: set[str] = set()
        for operation, raw, updated_at, state, _lsn in rows:
            if state == "pending" and theirs > lww_key(updated_at, self._client_id):
                continue  # the server change wins against this local one, here and there
            if operation == Operation.DELETE:
                return _ALL
            protected.update(json.loads(raw))
        return frozenset(protected - set(table.primary_key))

    # --- SQL ----------------------------------------------------------------------------------

    def _exists(self, table: TableInfo, data: dict[str, Any]) -> bool:
        where, params = _where_key(table, data)
        sql = f"SELECT 1 FROM {quote_ident(table.name)} WHERE {where}"
        return self._conn.execute(sql, params).fetchone() is not None

    def _delete(self, table: TableInfo, data: dict[str, Any]) -> None:
        where, params = _where_key(table, data)
        self._conn.execute(f"DELETE FROM {quote_ident(table.name)} WHERE {where}", params)

    def _upsert(self, table: TableInfo, data: dict[str, Any], update_cols: Sequence[str]) -> None:
        cols = list(data)
        self._conn.execute(upsert_sql(table, cols, update_cols), [data[c] for c in cols])

    def _record(
        self,
        change: TableChange,
        state: str,
        reason: str | None,
        *,
        error: str | None = None,
        next_retry_at: int | None = None,
    ) -> None:
        """Upsert the server change's history row (a local change of that id is left alone)."""
        table = self._schema.table(change.table)
        pk = json.dumps(list(table.key_of(change.data))) if table else "[]"
        if state == "failed" and error is None:
            error, reason = reason, None
        done = int(state != "retrying")
        self._conn.execute(
            "INSERT INTO local_changes (id, table_name, operation, pk, data, updated_at, "
            "client_id, from_server, processed_local, processed_sync, state, error, skip_reason, "
            "attempts, next_retry_at, lsn) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET processed_local = excluded.processed_local, "
            "processed_sync = excluded.processed_sync, state = excluded.state, "
            "error = COALESCE(excluded.error, error), skip_reason = excluded.skip_reason, "
            "attempts = attempts + excluded.attempts, next_retry_at = excluded.next_retry_at, "
            f"modified_at = {NOW_SQL} WHERE from_server = 1",
            (
                change.id,
                change.table,
                str(change.operation),
                pk,
                json.dumps(change.data, separators=(",", ":"), ensure_ascii=False),
                change.updated_at,
                change.client_id,
                int(state == "applied"),
                done,
                state,
                error,
                reason,
                int(state in ("retrying", "failed")),
                next_retry_at,
                change.lsn,
            ),
        )


def _millis(updated_at: object) -> int:
    """Milliseconds of a change's time, -1 when it is not a timestamp (the change fails)."""
    try:
        return parse_timestamp(updated_at)
    except TimestampError:
        return -1


def _where_key(table: TableInfo, data: dict[str, Any]) -> tuple[str, list[Any]]:
    return key_where(table), [data[c] for c in table.primary_key]
