"""Applying ``srv_changes_applied`` results to ``local_changes`` and to the rows.

PROTOCOL.md "Client changes": ``applied`` -> the change is ``synced`` at its LSN;
``skipped`` -> it lost last-write-wins (or was a resend of one already applied,
reason "duplicate": then it is ``synced``); ``rejected`` -> never resent.  When
the server sends its current ``row`` (or says the row is deleted) with a skipped
or rejected result, the local row is overwritten with it, triggers off, so the
client converges on the server's state; unless another local change to the same
row is still pending, which carries newer local intent and will get its own
result.  One transaction for the whole message.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence

from tidesync.changes.db import write_transaction
from tidesync.changes.direct_sql_processor import BatchResult, DirectSqlProcessor
from tidesync.changes.local_schema import NOW_SQL
from tidesync.schema import Schema
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
            if table is None or _newer_pending(conn, table_name, pk, seq):
                continue
            if processor.write_row(table, json.loads(data), result.row):
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


def _newer_pending(conn: sqlite3.Connection, table_name: str, pk: str, seq: int) -> bool:
    found = conn.execute(
        "SELECT 1 FROM local_changes WHERE table_name = ? AND pk = ? AND from_server = 0 "
        "AND state = 'pending' AND seq <> ? LIMIT 1",
        (table_name, pk, seq),
    ).fetchone()
    return found is not None
