"""Table repair on the client: swap in a snapshot of some tables, leave the rest alone.

After a checksum mismatch the server sends a snapshot of just the differing
tables at its LSN ``S`` (extension ``clt_resync_tables``, docs/protocol.md).
The client's other tables stay at the client's LSN ``C`` (``C <= S``), so the
repaired tables are briefly *ahead* of the rest.  Two rules keep that safe:

* the swap happens in one transaction with foreign keys off (replacing a parent
  row must not cascade into children that are themselves correct), rows with
  pending local changes keep the columns those changes wrote, exactly as the
  initial sync merges them;
* every repaired table gets a *floor* ``S``, stored with the swap: server
  changes to that table at or below its floor are already in the snapshot and
  are passed over, in live batches and in catchup after a reconnect or a
  restart, so the table never goes back to an older state.  Once the client's
  LSN passes a floor it filters nothing more (those changes are skipped as
  already applied anyway); floors are dropped then, and on a reinit.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection, Mapping, Sequence

from tidesync.changes.db import get_state, set_state, write_transaction
from tidesync.changes.direct_sql_processor import BatchResult, DirectSqlProcessor
from tidesync.changes.initial_sync import InitialSync, pending_keep
from tidesync.changes.local_schema import pk_sql
from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.worker_sync.shared.message_types import TableChange

__all__ = ["FLOORS_KEY", "commit_table_resync", "drop_covered", "load_floors", "save_floors"]

log = logging.getLogger(__name__)

#: ``sync_state`` key holding ``{table: lsn}`` (JSON) of tables repaired ahead of the LSN.
FLOORS_KEY = "resync_floors"

_PENDING = (
    "SELECT pk FROM local_changes WHERE from_server = 0 AND state = 'pending' AND table_name = ?"
)


def load_floors(conn: sqlite3.Connection) -> dict[str, int]:
    """The stored floors; anything unreadable counts as none (they only ever filter)."""
    raw = get_state(conn, FLOORS_KEY)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def save_floors(conn: sqlite3.Connection, floors: Mapping[str, int]) -> None:
    """Store ``floors`` (caller holds the transaction)."""
    set_state(conn, FLOORS_KEY, json.dumps(dict(sorted(floors.items()))))


def drop_covered(
    changes: Sequence[TableChange], floors: Mapping[str, int]
) -> tuple[list[TableChange], int]:
    """``changes`` without those a table repair's snapshot already holds; and how many."""
    if not floors:
        return list(changes), 0
    kept = [c for c in changes if c.lsn is None or c.table not in floors or c.lsn > floors[c.table]]
    return kept, len(changes) - len(kept)


def _clear_synced(conn: sqlite3.Connection, table: TableInfo) -> None:
    """Delete the table's rows that carry no pending local change."""
    conn.execute(
        f"DELETE FROM {quote_ident(table.name)} "
        f"WHERE {pk_sql(table, quote_ident(table.name))} NOT IN ({_PENDING})",
        (table.name,),
    )


def commit_table_resync(
    conn: sqlite3.Connection,
    schema: Schema,
    processor: DirectSqlProcessor,
    staging: InitialSync,
    tables: Collection[str],
    server_lsn: int,
    floors: dict[str, int],
) -> BatchResult:
    """Replace ``tables``' synced rows with the staged snapshot at ``server_lsn``.

    ``floors`` (the worker's copy) is updated in place once the transaction has
    committed.  The LSN is not touched.  The staging area is dropped afterwards.
    """
    unknown = [t for t in tables if schema.table(t) is None]
    if unknown:
        raise ValueError(f"table re-sync of unknown table {unknown[0][:60]!r}")
    names = [n for n in schema.order if n in tables]
    lsn = int(get_state(conn, "lsn") or 0)
    result = BatchResult(lsn=lsn)
    new_floors = {t: f for t, f in floors.items() if f > lsn}
    with write_transaction(conn, applying=True, foreign_keys=False):
        for name in reversed(names):
            _clear_synced(conn, schema.tables[name])
        for name, data, updated_at in staging.staged_rows(names):
            table = schema.tables[name]
            if not isinstance(data, dict):
                result.failed += 1
                continue
            if table.has_updated_at:
                data.setdefault("updated_at", updated_at)
            keep = pending_keep(conn, table, data)
            if keep is None:
                result.skipped += 1  # the pending change decides this row (as in init)
                continue
            if processor.write_row(table, data, data, keep):
                result.applied += 1
            else:
                result.failed += 1
        if server_lsn > lsn:
            for name in names:
                new_floors[name] = max(new_floors.get(name, 0), server_lsn)
        save_floors(conn, new_floors)
    staging.abort()
    floors.clear()
    floors.update(new_floors)
    result.tables.update(names)
    log.info(
        "re-synced %s at %s: %d row(s) written, %d kept local, %d refused",
        ", ".join(names),
        server_lsn,
        result.applied,
        result.skipped,
        result.failed,
    )
    return result
