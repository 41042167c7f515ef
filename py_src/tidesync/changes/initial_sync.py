"""Initial sync on the client: stage a snapshot, then swap it in with its LSN at once.

PROTOCOL.md "Initial sync": a half-received snapshot is never visible as synced
data.  Chunks go to TEMP tables (this connection only, gone with it); the
commit replaces the synced rows in one transaction together with the LSN and
the ``initialized`` flag.  Rows with pending local changes keep their local
values in the columns those changes wrote and take the snapshot's values in the
others: exactly the row the server will hold once it applies the pending
change on top of its own (a pending delete keeps the row absent).  If the
pending change loses on the server, its ``skipped`` result brings the server's
row.  The swap runs with foreign keys off, so deleting a parent cannot
cascade into a child that holds a pending local change.

Set-based, because a snapshot is 100k rows and the per-row path (decode,
validate, upsert) costs ~50 us a row in Pyodide.  A chunk arrives as one JSON
text (``stage_json``: one string crosses the MessageChannel instead of 1,000
proxied dicts); rows that certainly fit the schema go to a typed stage table
per app table (``temp."_ts_stage_<table>"``, same column affinities) with one
``executemany``.  "Certainly fit" is decided in bulk: an ``insert`` whose
``data`` holds exactly the table's columns (``updated_at`` may be left to the
change's time), checked column by column with C-level builtins (the set of
value types, integer range, finite floats), accepting only what
``Schema.check_value`` accepts without parsing.  Every other row (a number as
text, a missing column with a default, an unknown column, anything odd) goes
to the generic stage ``temp._ts_stage`` as JSON and through the per-row path
at commit, which validates exactly as before (a row that does not fit is
counted ``failed`` and left out).  The commit copies each typed stage with one
``INSERT ... SELECT`` (an upsert: a repeated key keeps the last row), leaving
out the keys that have pending local changes; those few rows go through the
per-row merge.  Table and column names come from the schema and are quoted;
values are always bound.

(SQLite's ``json_each``/``json_extract`` would keep even the parse in C, but
in Pyodide's SQLite 3.39 each ``json_extract`` re-renders and re-parses the
row: measured 3x slower than ``json.loads`` + ``executemany``.)
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import eq, itemgetter
from typing import Any

from tidesync.changes.db import set_state, write_transaction
from tidesync.changes.direct_sql_processor import BatchResult, DirectSqlProcessor
from tidesync.changes.local_schema import pk_sql, recording_trigger_name
from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.worker_sync.shared.hlc import is_canonical_timestamp
from tidesync.worker_sync.shared.message_types import TableChange

__all__ = ["InitialSync", "clear_synced_rows"]

log = logging.getLogger(__name__)

_PENDING_KEYS = (
    "SELECT pk FROM local_changes WHERE from_server = 0 AND state = 'pending' AND table_name = ?"
)
_SEQ = "_ts_stage_seq"
#: Page cache for the snapshot's commit, KiB (``PRAGMA cache_size`` is negative KiB): at the
#: browser's 16 MiB the ~20 MB of pages that 100k demo rows dirty spill to the WAL in the
#: middle of the copy and are read back for the index updates; measured in Pyodide on
#: OPFS, the commit took ~385 ms at 16 MiB and ~290 ms at this size.  A ceiling, not an
#: allocation (only pages in use take memory), and given back when the commit is done.
COMMIT_CACHE_KIB = 65536
_MIN_INT, _MAX_INT = -(1 << 63), (1 << 63) - 1


def clear_synced_rows(conn: sqlite3.Connection, schema: Schema) -> None:
    """Delete every app row without a pending local change (caller: FKs off, applying)."""
    for name in reversed(schema.order):
        table = schema.tables[name]
        conn.execute(
            f"DELETE FROM {quote_ident(name)} "
            f"WHERE {pk_sql(table, quote_ident(name))} NOT IN ({_PENDING_KEYS})",
            (name,),
        )


def _stage_name(table: TableInfo) -> str:
    return "temp." + quote_ident(f"_ts_stage_{table.name}")


@dataclass(frozen=True)
class _Plan:
    """How rows of one table are checked in bulk and staged (see the module docstring)."""

    columns: tuple[str, ...]
    keys: frozenset[str]
    keys_but_time: frozenset[str] | None  # the key set of a row without ``updated_at``
    row: Callable[[dict[str, Any]], tuple[Any, ...]]
    allowed: tuple[frozenset[type], ...]  # per column: types stored as they are
    insert_sql: str


def _plan(table: TableInfo) -> _Plan:
    allowed = []
    for column in table.columns:
        kinds: set[type] = {int, bool, float}
        if column.affinity in ("TEXT", "BLOB"):
            kinds.add(str)  # text in a numeric column must parse as a number: per row
        if not column.not_null and not column.pk_index:
            kinds.add(type(None))
        allowed.append(frozenset(kinds))
    names = table.column_names
    cols = ", ".join(quote_ident(c) for c in names)
    marks = ", ".join("?" for _ in names)
    return _Plan(
        columns=names,
        keys=frozenset(names),
        keys_but_time=frozenset(names) - {"updated_at"} if table.has_updated_at else None,
        row=itemgetter(*names) if len(names) > 1 else (lambda d: (d[names[0]],)),
        allowed=tuple(allowed),
        insert_sql=f"INSERT INTO {_stage_name(table)} ({cols}) VALUES ({marks})",
    )


def _plain_rows(plan: _Plan, items: list[Any]) -> list[tuple[Any, ...]] | None:
    """The rows of a chunk of plain inserts holding exactly the table's columns, or None.

    The usual chunk, checked with C-level builtins over the whole list (no Python
    per row); any other chunk takes the loop of ``_stage_items``, row by row.
    """
    if not items or set(map(type, items)) != {dict}:
        return None
    if set(map(dict.get, items, repeat("operation"))) != {"insert"}:
        return None
    datas: list[Any] = list(map(dict.get, items, repeat("data")))
    if set(map(type, datas)) != {dict}:
        return None
    if not all(map(eq, repeat(plan.keys), map(dict.keys, datas))):
        return None
    return list(map(plan.row, datas))


def _unfit_rows(plan: _Plan, rows: Sequence[Sequence[Any]]) -> set[int]:
    """Indexes of rows holding a value the bulk check cannot vouch for.

    Column by column with C-level builtins (``set(map(type, ...))``, ``min``/``max``),
    so a clean chunk costs no Python per value; the rows found go per row.
    """
    unfit: set[int] = set()
    for values, allowed in zip(zip(*rows, strict=True), plan.allowed, strict=True):
        kinds = set(map(type, values))
        if not kinds <= allowed:
            unfit.update(i for i, v in enumerate(values) if type(v) not in allowed)
        if int in kinds:
            ints = [v for v in values if type(v) is int]
            if min(ints) < _MIN_INT or max(ints) > _MAX_INT:
                unfit.update(
                    i
                    for i, v in enumerate(values)
                    if type(v) is int and not _MIN_INT <= v <= _MAX_INT
                )
        if float in kinds and not all(map(math.isfinite, (v for v in values if type(v) is float))):
            unfit.update(
                i for i, v in enumerate(values) if type(v) is float and not math.isfinite(v)
            )
    return unfit


def _row_changes(
    table: str, columns: list[str], rows: list[Any], versions: list[Any], indexes: Iterable[int]
) -> list[dict[str, Any]]:
    """Rows of an ``srv_init_rows`` chunk as the wire changes ``srv_init_changes`` holds."""
    out = []
    for i in indexes:
        data = dict(zip(columns, rows[i], strict=True))
        version = versions[i]
        change: dict[str, Any] = {"table": table, "operation": "insert", "data": data}
        if type(version) is list and len(version) == 2:
            change["updated_at"], change["clientId"] = version
        else:
            change["updated_at"] = data.get("updated_at")
        out.append(change)
    return out


class InitialSync:
    """The staging area of one snapshot; ``begin`` -> ``stage``* -> ``commit`` or ``abort``."""

    def __init__(
        self, conn: sqlite3.Connection, schema: Schema, processor: DirectSqlProcessor
    ) -> None:
        self._conn = conn
        self._schema = schema
        self._processor = processor
        self.server_lsn: int | None = None
        self._plans = {name: _plan(t) for name, t in schema.tables.items()}

    def begin(self, server_lsn: int) -> None:
        self.abort()
        self._conn.execute(
            "CREATE TEMP TABLE _ts_stage (seq INTEGER PRIMARY KEY, "
            "table_name TEXT NOT NULL, data TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        for table in self._schema.tables.values():
            # Declared with the app column's affinity, so values convert exactly as they will
            # in the app table and ``json_array(key)`` matches ``local_changes.pk``.
            cols = ", ".join(f"{quote_ident(c.name)} {c.affinity}" for c in table.columns)
            self._conn.execute(
                f"CREATE TEMP TABLE {quote_ident(f'_ts_stage_{table.name}')} "
                f"({quote_ident(_SEQ)} INTEGER PRIMARY KEY, {cols})"
            )
        self.server_lsn = server_lsn

    def stage(self, table: str, changes: Sequence[TableChange]) -> None:
        """Stage decoded changes (the native path); same result as ``stage_json``."""
        self._stage_items(table, [c.to_wire() for c in changes])

    def stage_json(self, table: str, changes_json: str | bytes) -> None:
        """Stage one chunk given as JSON text: the list of wire changes, or the whole
        ``srv_init_changes`` frame holding it (the Sync Worker forwards the frame it
        received, unparsed; its envelope was checked there).  The changes are checked
        here as always: rows that do not fit take the per-row path and are counted.
        """
        try:
            parsed = json.loads(changes_json)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"snapshot chunk is not valid JSON: {exc}") from None
        if type(parsed) is dict and parsed.get("type") == "srv_init_rows":
            self.stage_rows(
                table, parsed.get("columns"), parsed.get("rows"), parsed.get("versions")
            )
            return
        items = parsed.get("changes") if type(parsed) is dict else parsed
        if type(items) is not list:
            raise ValueError("snapshot chunk must be a JSON array of changes (or a frame of one)")
        self._stage_items(table, items)

    def stage_rows(self, table: str, columns: Any, rows: Any, versions: Any) -> None:
        """Stage an ``srv_init_rows`` chunk: its rows go to the typed stage as they are.

        The Sync Worker checked the frame's shape; it is checked again here, cheaply,
        since this is what reaches SQL.  When ``columns`` are the table's columns in
        the schema's order (the usual chunk), each row is a list ``executemany``
        binds as it is, after the per-column value check of ``_unfit_rows``; the rows
        it cannot vouch for, and every row of a chunk with other columns, become wire
        changes and take ``_stage_items`` (validated per row at commit, as always).
        The versions are only needed there: the typed stage, like ``srv_init_changes``'
        typed rows, keeps no per-row version (the columns hold ``updated_at``).
        """
        if self.server_lsn is None:
            raise RuntimeError("stage_initial_chunk before begin_initial_sync")
        if (
            type(columns) is not list
            or type(rows) is not list
            or type(versions) is not list
            or len(versions) != len(rows)
            or not set(map(type, columns)) <= {str}
            or not set(map(type, rows)) <= {list}
            or set(map(len, rows)) - {len(columns)}
        ):
            raise ValueError("srv_init_rows chunk: columns, rows and versions do not fit")
        plan = self._plans.get(table) if self._schema.table(table) is not None else None
        if plan is None or tuple(columns) != plan.columns:
            self._stage_items(table, _row_changes(table, columns, rows, versions, range(len(rows))))
            return
        unfit = _unfit_rows(plan, rows)
        generic: list[Any] = []
        if unfit:
            generic = _row_changes(table, columns, rows, versions, sorted(unfit))
            rows = [row for i, row in enumerate(rows) if i not in unfit]
        self._write_stage(table, plan, rows, generic)

    def _stage_items(self, table: str, items: list[Any]) -> None:
        """Rows that certainly fit go to the typed stage in bulk, the rest per row."""
        if self.server_lsn is None:
            raise RuntimeError("stage_initial_chunk before begin_initial_sync")
        plan = self._plans.get(table) if self._schema.table(table) is not None else None
        typed: list[tuple[Any, ...]] = []
        typed_items: list[Any] = []
        generic: list[Any] = []
        if plan is None:
            generic = items
        elif (bulk := _plain_rows(plan, items)) is not None:
            typed, typed_items = bulk, items
        else:
            for item in items:
                data = item.get("data") if type(item) is dict else None
                if type(data) is dict and item.get("operation") == "insert":
                    keys = data.keys()
                    if keys == plan.keys:
                        typed.append(plan.row(data))
                        typed_items.append(item)
                        continue
                    stamp = item.get("updated_at")
                    if (
                        keys == plan.keys_but_time
                        and type(stamp) is str
                        and is_canonical_timestamp(stamp)
                    ):
                        typed.append(plan.row({**data, "updated_at": stamp}))
                        typed_items.append(item)
                        continue
                generic.append(item)
        if typed and plan is not None:
            unfit = _unfit_rows(plan, typed)
            if unfit:
                generic.extend(typed_items[i] for i in sorted(unfit))
                typed = [row for i, row in enumerate(typed) if i not in unfit]
        self._write_stage(table, plan, typed, generic)

    def _write_stage(
        self, table: str, plan: _Plan | None, typed: Sequence[Sequence[Any]], generic: list[Any]
    ) -> None:
        """One transaction on the TEMP stages: ``typed`` rows, and ``generic`` wire items."""
        rows = [
            (
                table,
                json.dumps(i.get("data") if type(i) is dict else None, ensure_ascii=False),
                str(i.get("updated_at", "")) if type(i) is dict else "",
            )
            for i in generic
        ]
        self._conn.execute("BEGIN")
        try:
            if typed and plan is not None:
                self._conn.executemany(plan.insert_sql, typed)
            if rows:
                self._conn.executemany(
                    "INSERT INTO temp._ts_stage (table_name, data, updated_at) VALUES (?, ?, ?)",
                    rows,
                )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def abort(self) -> None:
        self.server_lsn = None
        self._conn.execute("DROP TABLE IF EXISTS temp._ts_stage")
        for table in self._schema.tables.values():
            self._conn.execute(f"DROP TABLE IF EXISTS {_stage_name(table)}")

    def commit(self, server_lsn: int) -> BatchResult:
        """Swap the snapshot in with ``lsn = server_lsn``; all or nothing.

        The commit does not run SQLite's auto-checkpoint: copying a snapshot's WAL
        (~20 MB for 100k demo rows) into the database file took 0.1-0.4 s of the
        path to live in Pyodide on OPFS; the caller checkpoints later
        (``ChangesWorker``).  Nothing about durability changes: the commit is in the
        WAL either way, and the next write commit checkpoints if that comes first.
        It runs with a larger page cache (``COMMIT_CACHE_KIB``), restored after.
        """
        if self.server_lsn is None:
            raise RuntimeError("commit_initial_sync before begin_initial_sync")
        auto = int(self._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        cache = int(self._conn.execute("PRAGMA cache_size").fetchone()[0])
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        if cache >= 0 or -cache < COMMIT_CACHE_KIB:  # in pages, or smaller: raise it
            self._conn.execute(f"PRAGMA cache_size = -{COMMIT_CACHE_KIB}")
        try:
            return self._commit(server_lsn)
        finally:
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {auto}")
            self._conn.execute(f"PRAGMA cache_size = {cache}")

    def _commit(self, server_lsn: int) -> BatchResult:
        assert self.server_lsn is not None
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
            for name in self._schema.order:
                self._copy_stage(self._schema.tables[name], name in pending_tables, result)
            staged = self._conn.execute(
                "SELECT table_name, data, updated_at FROM temp._ts_stage ORDER BY seq"
            )
            for name, raw, updated_at in staged.fetchall():
                table = self._schema.table(name)
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = None
                if table is None or not isinstance(data, dict):
                    result.failed += 1
                    log.warning("snapshot row for unknown table %r ignored", str(name)[:60])
                    continue
                if table.has_updated_at:
                    data.setdefault("updated_at", updated_at)
                self._write(table, data, name in pending_tables, result)
            set_state(self._conn, "lsn", server_lsn)
            set_state(self._conn, "initialized", 1)
        self.abort()
        result.tables.update(self._schema.order)  # rows may have gone from any table
        return result

    def staged_rows(self, tables: Collection[str]) -> Iterator[tuple[str, Any, str]]:
        """``(table, data, updated_at)`` staged for ``tables``: per table, the typed stage
        in arrival order, then the rows staged for the per-row path.

        The table re-sync (``table_resync``) stages through this class too, so the
        staging format stays private to it.
        """
        if self.server_lsn is None:
            raise RuntimeError("commit_table_resync before begin_initial_sync")
        for name in sorted(tables):
            table = self._schema.table(name)
            if table is not None:
                cols = ", ".join(quote_ident(c) for c in table.column_names)
                typed = self._conn.execute(
                    f"SELECT {cols} FROM {_stage_name(table)} ORDER BY {quote_ident(_SEQ)}"
                )
                for row in typed.fetchall():
                    data = dict(zip(table.column_names, tuple(row), strict=True))
                    yield name, data, str(data.get("updated_at") or "")
            generic = self._conn.execute(
                "SELECT data, updated_at FROM temp._ts_stage WHERE table_name = ? ORDER BY seq",
                (name,),
            )
            for raw, updated_at in generic.fetchall():
                yield name, json.loads(raw), updated_at

    def _copy_stage(self, table: TableInfo, has_pending: bool, result: BatchResult) -> None:
        """One ``INSERT ... SELECT`` of the typed stage; rows with pending changes per row."""
        stage = _stage_name(table)
        cols = ", ".join(quote_ident(c) for c in table.column_names)
        others = [c for c in table.column_names if c not in table.primary_key]
        action = (
            "DO UPDATE SET "
            + ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in others)
            if others
            else "DO NOTHING"
        )
        keys = ", ".join(quote_ident(k) for k in table.primary_key)
        key_of_stage = pk_sql(table, "s")
        where = f"{key_of_stage} NOT IN ({_PENDING_KEYS})" if has_pending else "true"
        rebuild = self._drop_plain_indexes(table) + self._drop_insert_trigger(table)
        cursor = self._conn.execute(
            f"INSERT INTO {quote_ident(table.name)} ({cols}) SELECT {cols} FROM {stage} AS s "
            f"WHERE {where} ORDER BY s.{quote_ident(_SEQ)} ON CONFLICT ({keys}) {action}",
            (table.name,) if has_pending else (),
        )
        for create_index in rebuild:
            self._conn.execute(create_index)
        if cursor.rowcount > 0:
            result.applied += cursor.rowcount
            result.tables.add(table.name)
        if not has_pending:
            return
        rows = self._conn.execute(
            f"SELECT {cols} FROM {stage} AS s WHERE {key_of_stage} IN ({_PENDING_KEYS}) "
            f"ORDER BY s.{quote_ident(_SEQ)}",
            (table.name,),
        ).fetchall()
        for row in rows:
            self._write(table, dict(zip(table.column_names, tuple(row), strict=True)), True, result)

    def _drop_plain_indexes(self, table: TableInfo) -> list[str]:
        """Drop the app's non-unique indexes of an empty ``table``; their ``CREATE`` SQL.

        Why: SQLite builds an index over rows already there by sorting them, much
        cheaper than one random B-tree insert per copied row (the snapshot's 100k demo
        tasks: ~20% of the copy natively).  Only for an empty table (rebuilding a big
        one would cost more) and only plain indexes: unique ones decide conflicts
        during the copy.  Same transaction as the copy, so the file never lacks them.
        """
        name = quote_ident(table.name)
        if self._conn.execute(f"SELECT EXISTS (SELECT 1 FROM {name})").fetchone()[0]:
            return []
        found = self._conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            (table.name,),
        ).fetchall()
        unique = {row[1] for row in self._conn.execute(f"PRAGMA index_list({name})") if row[2]}
        rebuild = []
        for index_name, sql in found:
            if index_name in unique:
                continue
            self._conn.execute(f"DROP INDEX {quote_ident(index_name)}")
            rebuild.append(str(sql))
        return rebuild

    def _drop_insert_trigger(self, table: TableInfo) -> list[str]:
        """Drop ``table``'s recording ``AFTER INSERT`` trigger; its ``CREATE`` SQL.

        Why: the copy runs with ``applying`` set, so the trigger records nothing, but
        SQLite still evaluates its ``WHEN`` (a subquery on ``_ts_ctx``) once per copied
        row: about a third of the copy of the snapshot's 100k demo tasks.  It is
        created again from its own SQL in the same transaction, so the file never
        lacks it.  Only tidesync's own trigger: an app trigger runs as always.
        """
        found = self._conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
            "AND name = ? AND sql IS NOT NULL",
            (table.name, recording_trigger_name(table, "insert")),
        ).fetchone()
        if found is None:
            return []
        self._conn.execute(f"DROP TRIGGER {quote_ident(found[0])}")
        return [str(found[1])]

    def _write(
        self, table: TableInfo, data: dict[str, Any], has_pending: bool, result: BatchResult
    ) -> None:
        """One snapshot row through the per-row path: validated, merged with pending changes."""
        keep = pending_keep(self._conn, table, data) if has_pending else frozenset[str]()
        if keep is None:
            result.skipped += 1  # nothing of the snapshot row is left to write
            return
        if self._processor.write_row(table, data, data, keep):
            result.applied += 1
            result.tables.add(table.name)
        else:
            result.failed += 1


def pending_keep(
    conn: sqlite3.Connection, table: TableInfo, data: dict[str, Any]
) -> frozenset[str] | None:
    """How a snapshot row merges under the row's pending local changes (initial sync and table
    re-sync alike): the columns to leave alone (empty when nothing is pending), or None when
    nothing of the snapshot row is left to write."""
    found = conn.execute(
        "SELECT data FROM local_changes WHERE from_server = 0 AND state = 'pending' "
        f"AND table_name = ? AND pk = {pk_sql(table)}",
        [table.name, *table.key_of(data)],
    ).fetchall()
    if not found:
        return frozenset()
    pending: set[str] = set()
    for (raw,) in found:
        pending.update(json.loads(raw))
    settable = set(data) - pending - set(table.primary_key)
    if not settable or not _exists(conn, table, data):
        return None
    return frozenset(pending)


def _exists(conn: sqlite3.Connection, table: TableInfo, data: dict[str, Any]) -> bool:
    where = " AND ".join(f"{quote_ident(c)} = ?" for c in table.primary_key)
    sql = f"SELECT 1 FROM {quote_ident(table.name)} WHERE {where}"
    return conn.execute(sql, list(table.key_of(data))).fetchone() is not None
