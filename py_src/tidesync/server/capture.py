"""Change capture: triggers on every app table append to ``_ts_change_history``.

Why triggers and not Python: writes made by other programs (a script, the
``sqlite3`` shell, an admin tool) must reach clients too, and a trigger is the
one place every write goes through.  Invariants kept:

* every committed row change has exactly one history row (two for an update
  that changes the primary key: ``delete`` of the old key, ``insert`` of the new),
  committed in the same transaction, so the LSN (the history rowid) never exists
  without its change and LSN order is commit order;
* ``_ts_row_versions`` holds the last-write-wins version of every row written
  since the triggers exist, deletes included (tombstones), so a concurrent older
  update loses against a newer delete;
* the author comes from the one-row ``_ts_context`` table, which only the
  server's own writer fills (and empties again before it commits).  Other
  writers see it empty: author unknown (NULL), change id random, time = the
  row's ``updated_at`` column when the table has one, else now (ISO-ms UTC).
  The context change id and author are used only for the row the change names;
  rows touched by cascades get their own random ids (clients key changes by id)
  and no author, so they reach every client, the author included.
"""

from __future__ import annotations

import sqlite3

from tidesync.schema import Schema, TableInfo, quote_ident

__all__ = ["NOW_ISO_SQL", "install_triggers", "trigger_names"]

NOW_ISO_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_RANDOM_ID_SQL = "lower(hex(randomblob(16)))"
_CTX = "(SELECT {col} FROM _ts_context WHERE id = 1)"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pk_json(table: TableInfo, ref: str) -> str:
    cols = ", ".join(f"{ref}.{quote_ident(k)}" for k in table.primary_key)
    return f"json_array({cols})"


def _row_json(table: TableInfo, ref: str, *, key_only: bool) -> str:
    names = table.primary_key if key_only else table.column_names
    parts = ", ".join(f"{_literal(n)}, {ref}.{quote_ident(n)}" for n in names)
    return f"json_object({parts})"


def _time_sql(table: TableInfo, ref: str, *, use_row: bool) -> str:
    """The change time: the server's context, else the row's ``updated_at``, else now.

    A delete by another program carries no time of its own, so it takes now
    (the old row's time would let an older concurrent update resurrect it).
    """
    row_time = f"{ref}.{quote_ident('updated_at')}, " if use_row and table.has_updated_at else ""
    return f"COALESCE({_CTX.format(col='updated_at')}, {row_time}{NOW_ISO_SQL})"


def _record(table: TableInfo, ref: str, operation: str, *, key_only: bool, when: str = "") -> str:
    """Two statements: the history row and the row's LWW version."""
    name = _literal(table.name)
    pk = _pk_json(table, ref)
    named = f"{_CTX.format(col='table_name')} = {name} AND {_CTX.format(col='pk')} = {pk}"
    change_id = f"CASE WHEN {named} THEN {_CTX.format(col='change_id')} ELSE {_RANDOM_ID_SQL} END"
    # Rows touched by a cascade have no author: the client that made the change must be
    # sent them too (sessions leave out a client's own rows), since its local copy of the
    # children may differ from the server's (e.g. a child it received after its delete).
    author = f"CASE WHEN {named} THEN {_CTX.format(col='client_id')} END"
    # A write the server did not arbitrate (a cascade, another program) happened after the
    # row's current version whatever its own time says: it is stamped just after that
    # version when its time is not newer, so versions never run backwards.  Otherwise a
    # change older than the overwritten version would win on the server against the
    # tombstone, while every client (comparing with the overwritten version) drops it.
    # (A version that is not a time, written by another program, is left as it is.)
    raw_time = _time_sql(table, ref, use_row=operation != "delete")
    version = f"(SELECT updated_at FROM _ts_row_versions WHERE table_name = {name} AND pk = {pk})"
    time_sql = (
        f"CASE WHEN {named} THEN {raw_time} WHEN {version} >= {raw_time} "
        f"THEN COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', {version}, '+0.001 seconds'), "
        f"{raw_time}) ELSE {raw_time} END"
    )
    where = f"WHERE {when}" if when else "WHERE 1"
    return (
        "INSERT INTO _ts_change_history"
        "(change_id, client_id, table_name, operation, data, updated_at, created_at) "
        f"SELECT {change_id}, {author}, {name}, {_literal(operation)}, "
        f"{_row_json(table, ref, key_only=key_only)}, {time_sql}, {NOW_ISO_SQL} {where};\n"
        "INSERT INTO _ts_row_versions(table_name, pk, updated_at, client_id) "
        f"SELECT {name}, {pk}, {time_sql}, {author} {where} "
        "ON CONFLICT(table_name, pk) DO UPDATE SET "
        "updated_at = excluded.updated_at, client_id = excluded.client_id;\n"
    )


def trigger_names(table: TableInfo) -> tuple[str, str, str]:
    base = f"_ts_capture_{table.name}"
    return (f"{base}_insert", f"{base}_update", f"{base}_delete")


def _trigger_sql(table: TableInfo) -> list[str]:
    ins, upd, dele = trigger_names(table)
    target = quote_ident(table.name)
    key_changed = " OR ".join(
        f"OLD.{quote_ident(k)} IS NOT NEW.{quote_ident(k)}" for k in table.primary_key
    )
    key_same = f"NOT ({key_changed})"
    return [
        f"CREATE TRIGGER IF NOT EXISTS {quote_ident(ins)} AFTER INSERT ON {target} BEGIN\n"
        + _record(table, "NEW", "insert", key_only=False)
        + "END",
        f"CREATE TRIGGER IF NOT EXISTS {quote_ident(upd)} AFTER UPDATE ON {target} BEGIN\n"
        + _record(table, "NEW", "update", key_only=False, when=key_same)
        + _record(table, "OLD", "delete", key_only=True, when=key_changed)
        + _record(table, "NEW", "insert", key_only=False, when=key_changed)
        + "END",
        f"CREATE TRIGGER IF NOT EXISTS {quote_ident(dele)} AFTER DELETE ON {target} BEGIN\n"
        + _record(table, "OLD", "delete", key_only=True)
        + "END",
    ]


def install_triggers(conn: sqlite3.Connection, schema: Schema) -> None:
    """(Re)create the capture triggers of every synced table (idempotent).

    Dropped first, so a file written by an earlier version gets the current triggers.
    """
    for name in schema.order:
        for trigger in trigger_names(schema.tables[name]):
            conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(trigger)}")
        for statement in _trigger_sql(schema.tables[name]):
            conn.execute(statement)
