"""The client's own tables and the triggers that record every local write.

Invariant: a write to a synced app table and its ``local_changes`` record
commit in the same transaction, because the record is written by an AFTER
trigger in that transaction.  The triggers stay silent while server data is
applied (``_ts_ctx.applying = 1``, set inside the applying transaction and
reset before its commit, so the committed value is always 0).

``local_changes`` keeps the whole history, local and server changes alike.
``state`` takes these values (``from_server`` tells the two families apart):

* local changes: ``pending`` (not acknowledged; ``attempts`` counts sends) ->
  ``synced`` (applied by the server at ``lsn``) | ``skipped`` (lost
  last-write-wins on the server; ``skip_reason``) | ``rejected`` (invalid;
  ``error``; never resent);
* server changes: ``applied`` | ``skipped`` (lost last-write-wins to a pending
  local change) | ``retrying`` (the batch failed; ``attempts``, ``error``,
  ``next_retry_at``) | ``failed`` (could never apply; the LSN moved past it).

``pk`` is ``json_array(<primary key values>)`` as SQLite renders it, so rows and
their changes are matched with SQLite's own JSON on both sides of a comparison.
"""

from __future__ import annotations

import sqlite3
import uuid

from tidesync.changes.db import get_state, set_state, write_transaction
from tidesync.schema import Schema, TableInfo, quote_ident

__all__ = [
    "INTERNAL_TABLES",
    "LOCAL_DDL",
    "NOW_SQL",
    "PENDING",
    "install_triggers",
    "migrate_local_tables",
    "pk_sql",
    "prepare_database",
    "recording_trigger_name",
    "sql_literal",
]

PENDING = "pending"
NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
INTERNAL_TABLES = ("local_changes", "sync_state", "_ts_ctx")

# ``seq`` is a plain rowid alias, not AUTOINCREMENT: that would write ``sqlite_sequence``
# (a page more) on every commit.  Nothing deletes ``local_changes`` rows, so a new seq
# is always max(seq) + 1, the order AUTOINCREMENT gave (databases made with it are
# rebuilt on open: ``migrate_local_tables``).
_LOCAL_CHANGES_COLUMNS = f"""
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    table_name TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    pk TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    client_id TEXT,
    from_server INTEGER NOT NULL DEFAULT 0,
    processed_local INTEGER NOT NULL DEFAULT 0,
    processed_sync INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    error TEXT,
    skip_reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_retry_at INTEGER,
    lsn INTEGER,
    created_at TEXT NOT NULL DEFAULT ({NOW_SQL}),
    modified_at TEXT NOT NULL DEFAULT ({NOW_SQL})
"""
_LOCAL_CHANGES_INDEXES = (
    "CREATE INDEX IF NOT EXISTS local_changes_unsynced "
    "ON local_changes (seq) WHERE from_server = 0 AND state = 'pending'",
    "CREATE INDEX IF NOT EXISTS local_changes_row "
    "ON local_changes (table_name, pk) WHERE from_server = 0 AND state IN ('pending', 'synced')",
)

LOCAL_DDL = f"""
CREATE TABLE IF NOT EXISTS local_changes ({_LOCAL_CHANGES_COLUMNS});
{";".join(_LOCAL_CHANGES_INDEXES)};
CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS _ts_ctx (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    applying INTEGER NOT NULL DEFAULT 0,
    now TEXT,
    hlc INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO _ts_ctx (id, applying, now) VALUES (1, 0, NULL);
"""

# A change's id: a UUIDv7 made in SQL from ``t`` (the change's time, ``_TIME_SQL``) and
# random bits, so triggers can give every change its id.  Time first, so ids made one after
# another sort together: the UNIQUE index on ``local_changes.id`` grows at its right edge
# instead of at a random page per commit, and a checkpoint writes a few of its pages back to
# the database file instead of one per commit (docs/performance.md, "What was tuned").
_UUID_SQL = (
    "substr(ms, 1, 8) || '-' || substr(ms, 9, 4) || '-7' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || "
    "substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || "
    "'-' || lower(hex(randomblob(6)))"
)
# ``t`` as 12 hex digits of milliseconds since the epoch (the UUIDv7 time field).
_MS_HEX_SQL = "printf('%012x', CAST(round((julianday(t) - 2440587.5) * 86400000.0) AS INTEGER))"
_TIME_SQL = f"COALESCE((SELECT now FROM _ts_ctx WHERE id = 1), {NOW_SQL})"
_ACTIVE_SQL = "COALESCE((SELECT applying FROM _ts_ctx WHERE id = 1), 0) = 0"


def sql_literal(text: str) -> str:
    """A SQL string literal (for names already read from the schema, in generated DDL)."""
    return "'" + text.replace("'", "''") + "'"


_UPDATED_AT = "updated_at"


def pk_sql(table: TableInfo, row: str = "") -> str:
    """``json_array(...)`` of the primary key: of ``row`` (``NEW``/``OLD``) or of bound values.

    Bound values of TEXT key columns are cast to text, as the column's affinity
    stores them, so a key computed from wire data matches the stored row's.
    """
    parts = []
    for name in table.primary_key:
        if row:
            parts.append(f"{row}.{quote_ident(name)}")
        else:
            column = table.column(name)
            is_text = column is not None and column.affinity == "TEXT"
            parts.append("CAST(? AS TEXT)" if is_text else "?")
    return "json_array(" + ", ".join(parts) + ")"


def _object_sql(names: tuple[str, ...], row: str) -> str:
    return (
        "json_object(" + ", ".join(f"{sql_literal(n)}, {row}.{quote_ident(n)}" for n in names) + ")"
    )


def _record_sql(table: TableInfo, operation: str, row: str, data_sql: str, where: str) -> str:
    return (
        "INSERT INTO local_changes (id, table_name, operation, pk, data, updated_at, "
        "from_server, processed_local, state) "
        f"SELECT {_UUID_SQL}, {sql_literal(table.name)}, '{operation}', {pk_sql(table, row)}, "
        f"{data_sql}, t, 0, 1, '{PENDING}' "
        f"FROM (SELECT t, {_MS_HEX_SQL} AS ms FROM (SELECT {_TIME_SQL} AS t)) WHERE {where};"
    )


def recording_trigger_name(table: TableInfo, op: str) -> str:
    """The name (unquoted) of ``table``'s trigger that records ``op`` in ``local_changes``."""
    return f"_ts_lc_{table.name}_{op}"


def _trigger_names(table: TableInfo) -> dict[str, str]:
    return {
        op: quote_ident(recording_trigger_name(table, op)) for op in ("insert", "update", "delete")
    }


def _triggers_sql(table: TableInfo) -> list[str]:
    names = _trigger_names(table)
    target = quote_ident(table.name)
    all_cols = table.column_names
    pk_cols = table.primary_key
    same_pk = " AND ".join(f"OLD.{quote_ident(c)} IS NEW.{quote_ident(c)}" for c in pk_cols)
    others = [c for c in all_cols if c not in pk_cols]
    # Changed columns only; json_group_object keeps a column set to NULL (json_patch would not).
    pairs = [f"SELECT {sql_literal(c)} AS k, NEW.{quote_ident(c)} AS v" for c in pk_cols]
    pairs += [
        f"SELECT {sql_literal(c)}, NEW.{quote_ident(c)} "
        f"WHERE OLD.{quote_ident(c)} IS NOT NEW.{quote_ident(c)}"
        for c in others
        if c != _UPDATED_AT
    ]
    any_changed = (
        " OR ".join(f"OLD.{quote_ident(c)} IS NOT NEW.{quote_ident(c)}" for c in others) or "0"
    )
    stamp = ""
    if _UPDATED_AT in others:
        # An update that leaves ``updated_at`` alone (raw SQL) takes the change's time,
        # as the server does with it (PROTOCOL.md: a change without updated_at in data
        # takes it from the change); the row is stamped too, or the author alone would
        # keep the old value (its own changes are never sent back to it).
        col = quote_ident(_UPDATED_AT)
        pairs.append(
            f"SELECT {sql_literal(_UPDATED_AT)}, CASE WHEN OLD.{col} IS NOT NEW.{col} "
            f"THEN NEW.{col} ELSE {_TIME_SQL} END"
        )
        pk_match = " AND ".join(f"{quote_ident(c)} IS NEW.{quote_ident(c)}" for c in pk_cols)
        # Not recursive: SQLite does not fire this trigger again for its own UPDATE.
        stamp = (
            f"UPDATE {target} SET {col} = {_TIME_SQL} WHERE {pk_match} "
            f"AND ({same_pk}) AND ({any_changed}) AND OLD.{col} IS NEW.{col};"
        )
    changed_data = "(SELECT json_group_object(k, v) FROM (" + " UNION ALL ".join(pairs) + "))"
    update_body = "\n  ".join(
        [
            _record_sql(table, "update", "NEW", changed_data, f"({same_pk}) AND ({any_changed})"),
            stamp,
            # A primary-key change is recorded as delete + insert (PROTOCOL.md: data holds the key).
            _record_sql(table, "delete", "OLD", _object_sql(pk_cols, "OLD"), f"NOT ({same_pk})"),
            _record_sql(table, "insert", "NEW", _object_sql(all_cols, "NEW"), f"NOT ({same_pk})"),
        ]
    )
    return [
        f"CREATE TRIGGER {names['insert']} AFTER INSERT ON {target} WHEN {_ACTIVE_SQL} BEGIN\n  "
        + _record_sql(table, "insert", "NEW", _object_sql(all_cols, "NEW"), "1")
        + "\nEND",
        f"CREATE TRIGGER {names['update']} AFTER UPDATE ON {target} WHEN {_ACTIVE_SQL} BEGIN\n  "
        + update_body
        + "\nEND",
        f"CREATE TRIGGER {names['delete']} AFTER DELETE ON {target} WHEN {_ACTIVE_SQL} BEGIN\n  "
        + _record_sql(table, "delete", "OLD", _object_sql(pk_cols, "OLD"), "1")
        + "\nEND",
    ]


def migrate_local_tables(conn: sqlite3.Connection) -> None:
    """Bring a ``local_changes`` written by an earlier version up to ``LOCAL_DDL``.

    Run before ``LOCAL_DDL``: early databases named ``modified_at``
    ``updated_at_row``; the rename keeps their history (no rows are rewritten).
    ``_ts_ctx.hlc`` (the persisted clock) is added to databases made before it.
    A ``local_changes`` made with ``seq ... AUTOINCREMENT`` is rebuilt without it
    (``_drop_autoincrement``).
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(local_changes)")}
    if "updated_at_row" in columns and "modified_at" not in columns:
        conn.execute("ALTER TABLE local_changes RENAME COLUMN updated_at_row TO modified_at")
    ctx_columns = {row[1] for row in conn.execute("PRAGMA table_info(_ts_ctx)")}
    if ctx_columns and "hlc" not in ctx_columns:
        conn.execute("ALTER TABLE _ts_ctx ADD COLUMN hlc INTEGER NOT NULL DEFAULT 0")
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'local_changes'"
    ).fetchone()
    if row is not None and "AUTOINCREMENT" in str(row[0]).upper():
        _drop_autoincrement(conn)


def _drop_autoincrement(conn: sqlite3.Connection) -> None:
    """Rebuild ``local_changes`` with a plain ``seq`` rowid, every row and seq kept.

    One transaction: the file holds the old table or the new one, never neither.
    The recording triggers name ``local_changes`` and would stop the rename, so they
    are dropped here; ``prepare_database`` creates them again right after.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' "
            "AND substr(name, 1, 7) = '_ts_lc_'"
        ).fetchall():
            conn.execute(f"DROP TRIGGER {quote_ident(name)}")
        conn.execute(f"CREATE TABLE _ts_local_changes_new ({_LOCAL_CHANGES_COLUMNS})")
        old = {r[1] for r in conn.execute("PRAGMA table_info(local_changes)")}
        new = [r[1] for r in conn.execute("PRAGMA table_info(_ts_local_changes_new)")]
        cols = ", ".join(quote_ident(c) for c in new if c in old)
        conn.execute(
            f"INSERT INTO _ts_local_changes_new ({cols}) "
            f"SELECT {cols} FROM local_changes ORDER BY seq"
        )
        conn.execute("DROP TABLE local_changes")
        conn.execute("ALTER TABLE _ts_local_changes_new RENAME TO local_changes")
        for statement in _LOCAL_CHANGES_INDEXES:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def install_triggers(conn: sqlite3.Connection, schema: Schema) -> None:
    """(Re)create the recording triggers of every synced table; the caller holds a transaction.

    Dropped and recreated on every open, so a schema that gained columns is
    recorded in full.
    """
    for name in schema.order:
        table = schema.tables[name]
        for trigger in _trigger_names(table).values():
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for statement in _triggers_sql(table):
            conn.execute(statement)


def prepare_database(conn: sqlite3.Connection, schema: Schema) -> str:
    """App tables (missing ones only), sync tables, triggers, client id; returns the client id.

    A fresh database runs the whole schema SQL (indexes and all).  The client id
    is made once and persisted, so a reopened database is the same client.
    """
    existing = _table_names(conn)
    if not existing & set(schema.tables) and schema.sql:
        conn.executescript(schema.sql)
        existing = _table_names(conn)
    migrate_local_tables(conn)
    conn.executescript(LOCAL_DDL)
    with write_transaction(conn, applying=False):
        for name in schema.order:
            if name not in existing:
                conn.execute(schema.tables[name].create_sql)
        install_triggers(conn, schema)
        client_id = get_state(conn, "client_id")
        if client_id is None:
            client_id = str(uuid.uuid4())
            set_state(conn, "client_id", client_id)
    return client_id


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
