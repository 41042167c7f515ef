"""Applying ``srv_changes_applied`` results to ``local_changes`` and to the rows.

PROTOCOL.md "Client changes": ``applied`` -> the change is ``synced`` at its LSN;
``skipped`` -> it lost last-write-wins (or was a resend of one already applied,
reason "duplicate": then it is ``synced``); ``rejected`` -> never resent.  When
the server sends its current ``row`` (or says the row is deleted) with a skipped
or rejected result, the local row is overwritten with it, triggers off, so the
client converges on the server's state.  When other local changes to the same
row are still pending, only the columns they wrote keep their local values and
the others take the server's: exactly the row the server holds once it applies
those changes on top of its own (as the initial sync merges them).  Leaving the
whole row alone instead would keep the refused change's values for good in the
columns the pending ones do not write: an ``applied`` result carries no row,
and an update sends only its changed columns.  A row that is absent on either
side (a pending local delete, a server delete) is left as it is: the pending
change's own result settles it.  One transaction for the whole message.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from tidesync.changes.db import write_transaction
from tidesync.changes.direct_sql_processor import BatchResult, DirectSqlProcessor
from tidesync.changes.local_schema import NOW_SQL
from tidesync.changes.writes import key_where
from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.worker_sync.shared.message_types import ChangeResult, ChangeStatus

__all__ = ["record_results"]

log = logging.getLogger(__name__)


def record_results(
    conn: sqlite3.Connection,
    schema: Schema,
    processor: DirectSqlProcessor,
    results: Sequence[ChangeResult],
    current_lsn: int,
) -> BatchResult:
    """Settle each result's local change; unknown ids are logged and ignored."""
    outcome = BatchResult(lsn=current_lsn)
    # Server rows are the server's current state, possibly ahead of our LSN: a row may
    # reference a parent we receive later, so foreign keys are not enforced here.
    with write_transaction(conn, applying=True, foreign_keys=False):
        for result in results:
            row = conn.execute(
                "SELECT seq, table_name, pk, data FROM local_changes "
                "WHERE id = ? AND from_server = 0",
                (result.id,),
            ).fetchone()
            if row is None:
                log.info("result for unknown change %s ignored", result.id)
                continue
            seq, table_name, pk, data = row
            state = _state_for(result)
            conn.execute(
                "UPDATE local_changes SET state = ?, processed_sync = 1, lsn = COALESCE(?, lsn), "
                "skip_reason = ?, error = ?, next_retry_at = NULL, "
                f"modified_at = {NOW_SQL} WHERE seq = ?",
                (
                    state,
                    result.lsn,
                    result.reason if result.status == ChangeStatus.SKIPPED else None,
                    result.reason if result.status == ChangeStatus.REJECTED else None,
                    seq,
                ),
            )
            if state == "synced":
                outcome.applied += 1
            elif state == "rejected":
                outcome.failed += 1
            else:
                outcome.skipped += 1
            if result.status == ChangeStatus.APPLIED or (
                result.row is None and not result.row_deleted
            ):
                continue
            table = schema.table(table_name)
            if table is None:
                continue
            key = json.loads(data)
            keep = _pending_columns(conn, table_name, pk, seq)
            if keep is not None:
                settable = set(result.row or ()) - keep - set(table.primary_key)
                if not settable or not _exists(conn, table, key):
                    continue
            if processor.write_row(table, key, result.row, keep or frozenset()):
                outcome.tables.add(table_name)
    return outcome


def _state_for(result: ChangeResult) -> str:
    if result.status == ChangeStatus.APPLIED:
        return "synced"
    if result.status == ChangeStatus.REJECTED:
        return "rejected"
    if result.reason and "duplicate" in result.reason.lower():
        return "synced"  # a resend of a change the server had already applied
    return "skipped"


def _pending_columns(
    conn: sqlite3.Connection, table_name: str, pk: str, seq: int
) -> frozenset[str] | None:
    """Columns written by the row's other pending local changes; None when there are none."""
    found = conn.execute(
        "SELECT data FROM local_changes WHERE table_name = ? AND pk = ? AND from_server = 0 "
        "AND state = 'pending' AND seq <> ?",
        (table_name, pk, seq),
    ).fetchall()
    if not found:
        return None
    columns: set[str] = set()
    for (raw,) in found:
        columns.update(json.loads(raw))
    return frozenset(columns)


def _exists(conn: sqlite3.Connection, table: TableInfo, key: dict[str, Any]) -> bool:
    sql = f"SELECT 1 FROM {quote_ident(table.name)} WHERE {key_where(table)}"
    return conn.execute(sql, list(table.key_of(key))).fetchone() is not None
