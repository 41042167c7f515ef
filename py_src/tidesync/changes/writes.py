"""Local writes from the app: typed operations and raw SQL, inside a caller's transaction.

The recording triggers do the bookkeeping; this module only makes sure each
statement carries a fresh hybrid-logical-clock time (``_ts_ctx.now``, which the
triggers stamp on the change, and the row's ``updated_at`` when the table has
one), that typed operations name only tables and columns of the ``Schema``, and
that raw SQL cannot end the surrounding transaction or write the sync tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidesync.changes.db import SET_NOW_SQL, set_now
from tidesync.changes.local_schema import INTERNAL_TABLES
from tidesync.changes.touched import TouchedTables
from tidesync.schema import Column, Schema, TableInfo, quote_ident

__all__ = [
    "LocalWriter",
    "Rows",
    "Transaction",
    "WriteError",
    "WriteOp",
    "WriteResult",
    "key_where",
    "read_only",
    "rows_of",
    "upsert_sql",
]

WriteResult = dict[str, Any]  # {"rowsAffected": int, "lastInsertRowid": int | None}
Rows = list[dict[str, Any]]

_TYPED_OPS = ("insert", "update", "delete", "upsert")
_WRITES = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
_DROPS = (sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_TRIGGER)
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
# Pragmas that only report, even when given an argument (``PRAGMA table_info(tasks)``).
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)


_SQL_CACHE_SIZE = 256
_INT64 = (-(1 << 63), 1 << 63)


class WriteError(ValueError):
    """A write the app asked for that does not fit the schema (nothing was written)."""


@dataclass(frozen=True, slots=True)
class _RowPlan:
    """What a typed insert/upsert of one table and column list (in order) needs, made the
    first time that list passed ``validate_change_data``: the names are the schema's, the
    key columns are there and the required ones too; only the values are checked again."""

    info: TableInfo
    sql: str
    columns: tuple[Column, ...]  # of the row's names, in order
    text_ok: tuple[bool, ...]  # per column: ``Column.takes_any_text``
    key_at: tuple[int, ...]  # positions of the primary key columns
    stamp_at: int | None  # where ``updated_at`` goes in the values (== len: appended)


@dataclass(frozen=True)
class WriteOp:
    """One operation of a transaction: a typed ``insert/update/delete/upsert`` or ``execute``."""

    op: str
    table: str | None = None
    row: Mapping[str, Any] | None = None
    sql: str | None = None
    params: Sequence[Any] | Mapping[str, Any] = field(default=())


def _is_internal(name: str | None) -> bool:
    return bool(name) and (str(name).startswith("_ts_") or name in INTERNAL_TABLES)


def _guard(
    action: int, arg1: str | None, _arg2: str | None, _db: str | None, inner: str | None
) -> int:
    """Authorizer for raw SQL: no transaction control, no direct writes to sync tables."""
    if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
        return sqlite3.SQLITE_DENY
    if action in _WRITES and inner is None and _is_internal(arg1):
        return sqlite3.SQLITE_DENY
    if action in _DROPS and _is_internal(arg1):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _read_guard(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _inner: str | None
) -> int:
    """Authorizer for ``query``: reads and reporting pragmas only.

    A write sneaked through ``query`` would be recorded without an HLC time and
    without waking the Sync side, so it is refused: writes go through ``execute``.
    """
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg2 is None or (arg1 or "").lower() in _READ_PRAGMAS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def read_only(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> Rows:
    """Run ``sql`` as a read (``query``/live queries): anything that writes is refused."""
    conn.set_authorizer(_read_guard)
    try:
        cursor = conn.execute(sql, params)
    except sqlite3.DatabaseError as exc:
        if "not authorized" in str(exc):
            raise WriteError(
                "query is read-only (writes go through execute or the typed writes)"
            ) from exc
        raise
    finally:
        conn.set_authorizer(None)
    return rows_of(cursor)


class LocalWriter:
    """Runs app writes on ``conn``; the caller holds a ``write_transaction(applying=False)``."""

    def __init__(self, conn: sqlite3.Connection, schema: Schema, tick: Callable[[], str]) -> None:
        self._conn = conn
        # One cursor for the statements of local transactions (``ChangesWorker._commit_ops``
        # too): ``Connection.execute`` makes a cursor per statement, ~1-2.5 us each of
        # a one-row write's five in Pyodide.  Only writes: nothing is left to fetch.
        self.cursor = conn.cursor()
        self._schema = schema
        self._tick = tick
        self.touched = TouchedTables(conn)
        # Typed inserts/upserts by (op, table, the row's column names in order): see
        # ``_write_row``.  Names are the schema's, checked before use.
        self._plans: dict[tuple[str, str, tuple[str, ...]], _RowPlan] = {}

    def run(self, op: WriteOp) -> WriteResult:
        if op.op == "execute":
            if not isinstance(op.sql, str):
                raise WriteError("execute needs 'sql'")
            return self.execute(op.sql, op.params)
        if op.op not in _TYPED_OPS:
            raise WriteError(f"unknown operation {str(op.op)[:40]!r}")
        if op.row is None:
            raise WriteError(f"{op.op} needs a row")
        if op.op == "insert" or op.op == "upsert":  # ``insert``/``upsert`` without their frame
            return self._write_row(op.op, op.table, op.row)
        method: Callable[[Any, Mapping[str, Any]], WriteResult] = getattr(self, op.op)
        return method(op.table, op.row)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> WriteResult:
        """Raw SQL; writes to synced tables are recorded by the triggers."""
        self.touched.raw()
        set_now(self._conn, self._tick())
        self._conn.set_authorizer(_guard)
        try:
            cursor = self._conn.execute(sql, params)
        finally:
            self._conn.set_authorizer(None)
        return {"rowsAffected": max(cursor.rowcount, 0), "lastInsertRowid": cursor.lastrowid}

    def insert(self, table: object, row: Mapping[str, Any]) -> WriteResult:
        return self._write_row("insert", table, row)

    def upsert(self, table: object, row: Mapping[str, Any]) -> WriteResult:
        """Insert, or update the row with the same key (never REPLACE: that would cascade)."""
        return self._write_row("upsert", table, row)

    def _write_row(self, op: str, table: object, row: Mapping[str, Any]) -> WriteResult:
        """``insert`` or ``upsert`` of ``row``: checked, stamped with a fresh time, written.

        Why a plan per (op, table, column list): an app writes a table with the same few
        column lists over and over, and checking the names against the schema and making
        the SQL text again was most of a one-row insert's Python in Pyodide.  The checks
        and their messages are ``validate_change_data``'s, in its order (key present,
        then each value, then required columns, which a known list always passes).
        """
        plan = None
        if type(table) is str and type(row) is dict:
            plan = self._plans.get((op, table, tuple(row)))
        if plan is None:
            return self._write_new_row(op, table, row)
        values = list(row.values())
        for at in plan.key_at:
            if values[at] is None:
                name = plan.columns[at].name
                raise WriteError(f"primary key column '{name}' missing from data")
        info = plan.info
        low, high = _INT64
        for column, text_ok, value in zip(plan.columns, plan.text_ok, values, strict=True):
            kind = type(value)  # ``check_value``'s own fast path, without its call
            if (kind is str and text_ok) or (kind is int and low <= value < high):
                continue
            problem = info.check_value(column, value)
            if problem:
                raise WriteError(problem)
        now = self._tick()
        stamp_at = plan.stamp_at
        if stamp_at is not None:
            if stamp_at < len(values):
                values[stamp_at] = now
            else:
                values.append(now)
        cursor = self.cursor
        cursor.execute(SET_NOW_SQL, (now,))
        touched = self.touched
        touched.before(info.name, op)
        cursor.execute(plan.sql, values)
        rowcount = cursor.rowcount
        touched.after(info.name, rowcount)
        return {"rowsAffected": rowcount, "lastInsertRowid": cursor.lastrowid}

    def _write_new_row(self, op: str, table: object, row: Mapping[str, Any]) -> WriteResult:
        """``_write_row`` the first time (or for a table name that is not text): checked in
        full, then its plan is kept when the row fits."""
        info, data = self._prepare(table, row, full_row=True)
        cols = tuple(data)
        if op == "insert":
            sql = f"INSERT INTO {quote_ident(info.name)} ({_idents(cols)}) VALUES ({_marks(cols)})"
        else:
            others = [c for c in cols if c not in info.primary_key]
            sql = upsert_sql(info, cols, others)
        result = self._run(info, op, sql, list(data.values()))
        if type(table) is str and type(row) is dict:
            names = tuple(row)
            # All there: ``_prepare`` found every name in the table.
            columns = tuple(c for c in map(info.column, names) if c is not None)
            stamp_at = None
            if info.has_updated_at:
                stamp_at = names.index("updated_at") if "updated_at" in names else len(names)
            if len(self._plans) >= _SQL_CACHE_SIZE:  # an app with ever new column lists
                self._plans.clear()
            self._plans[(op, table, names)] = _RowPlan(
                info,
                sql,
                columns,
                tuple(c.takes_any_text for c in columns),
                tuple(names.index(k) for k in info.primary_key),
                stamp_at,
            )
        return result

    def update(self, table: object, row: Mapping[str, Any]) -> WriteResult:
        """``row`` holds the key plus the columns to change."""
        info = self._table(table)
        if not any(c not in info.primary_key for c in row):
            raise WriteError("update needs at least one column besides the primary key")
        info, data = self._prepare(table, row, full_row=False)
        sets = [c for c in data if c not in info.primary_key]
        return self._run(
            info,
            "update",
            f"UPDATE {quote_ident(info.name)} SET "
            + ", ".join(f"{quote_ident(c)} = ?" for c in sets)
            + f" WHERE {key_where(info)}",
            [data[c] for c in sets] + [data[c] for c in info.primary_key],
        )

    def delete(self, table: object, key: Any) -> WriteResult:
        """``key``: the primary key value, or a mapping holding the key columns."""
        info = self._table(table)
        if not isinstance(key, Mapping):
            if len(info.primary_key) != 1:
                raise WriteError(f"table '{info.name}' has a composite key: pass a mapping")
            key = {info.primary_key[0]: key}
        data = {c: key.get(c) for c in info.primary_key}
        problem = self._schema.validate_change_data(info, data, full_row=False)
        if problem:
            raise WriteError(problem)
        self.cursor.execute(SET_NOW_SQL, (self._tick(),))
        result = self._run(
            info,
            "delete",
            f"DELETE FROM {quote_ident(info.name)} WHERE {key_where(info)}",
            list(data.values()),
        )
        return {**result, "lastInsertRowid": None}

    def _table(self, table: object) -> TableInfo:
        info = self._schema.table(table)
        if info is None:
            raise WriteError(f"unknown table {str(table)[:60]!r}")
        return info

    def _prepare(
        self, table: object, row: Mapping[str, Any], *, full_row: bool
    ) -> tuple[TableInfo, dict[str, Any]]:
        """Check ``row`` against the schema and stamp ``updated_at`` with a fresh time."""
        info = self._table(table)
        # ``type() is dict`` first: the ABC check behind ``isinstance(row, Mapping)`` is
        # slow next to the rest of a one-row write, and rows are nearly always dicts.
        if type(row) is not dict and not isinstance(row, Mapping):
            raise WriteError("row must be an object of column values")
        data = dict(row)
        problem = self._schema.validate_change_data(info, data, full_row=full_row)
        if problem:
            raise WriteError(problem)
        now = self._tick()
        if info.has_updated_at:
            data["updated_at"] = now
        self.cursor.execute(SET_NOW_SQL, (now,))
        return info, data

    def _run(self, info: TableInfo, op: str, sql: str, params: list[Any]) -> WriteResult:
        self.touched.before(info.name, op)
        cursor = self.cursor
        cursor.execute(sql, params)
        self.touched.after(info.name, cursor.rowcount)
        return {"rowsAffected": cursor.rowcount, "lastInsertRowid": cursor.lastrowid}


def key_where(table: TableInfo) -> str:
    """``"k1" = ? AND ...``; bind the key values in ``table.primary_key`` order."""
    return " AND ".join(f"{quote_ident(c)} = ?" for c in table.primary_key)


def upsert_sql(table: TableInfo, cols: Sequence[str], update_cols: Sequence[str]) -> str:
    """INSERT ... ON CONFLICT (key) DO UPDATE: never REPLACE, which would cascade-delete children.

    Binds the values of ``cols`` in order; ``update_cols`` are overwritten on conflict.
    """
    if update_cols:
        sets = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in update_cols)
        action = f"DO UPDATE SET {sets}"
    else:
        action = "DO NOTHING"
    return (
        f"INSERT INTO {quote_ident(table.name)} ({_idents(cols)}) VALUES ({_marks(cols)}) "
        f"ON CONFLICT ({_idents(table.primary_key)}) {action}"
    )


def _idents(names: Sequence[str]) -> str:
    return ", ".join(quote_ident(n) for n in names)


def _marks(names: Sequence[str]) -> str:
    return ", ".join("?" for _ in names)


def rows_of(cursor: sqlite3.Cursor) -> Rows:
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class Transaction:
    """Writes and reads inside one open transaction (``async with worker.transaction() as tx``)."""

    def __init__(self, writer: LocalWriter, conn: sqlite3.Connection) -> None:
        self._writer = writer
        self._conn = conn

    async def insert(self, table: str, row: Mapping[str, Any]) -> WriteResult:
        return self._writer.insert(table, row)

    async def update(self, table: str, row: Mapping[str, Any]) -> WriteResult:
        return self._writer.update(table, row)

    async def delete(self, table: str, key: Any) -> WriteResult:
        return self._writer.delete(table, key)

    async def upsert(self, table: str, row: Mapping[str, Any]) -> WriteResult:
        return self._writer.upsert(table, row)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> WriteResult:
        return self._writer.execute(sql, params)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return read_only(self._conn, sql, params)
