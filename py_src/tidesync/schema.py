"""The synced schema: tables, columns, primary keys, foreign-key order, value checks.

Both the server and the Changes Worker read the app's ``CREATE TABLE`` SQL with
SQLite itself (an in-memory database and ``PRAGMA table_info``) instead of parsing
SQL by hand, then use the result to check every identifier that arrives from the
wire: a table or column name is used in SQL only after it was found here, and is
then quoted; values are always bound parameters.
"""

from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

__all__ = [
    "Column",
    "Schema",
    "SchemaError",
    "TableInfo",
    "demo_schema_sql",
    "quote_ident",
]

INTERNAL_PREFIXES = ("sqlite_", "_ts_", "local_changes", "sync_state")


class SchemaError(ValueError):
    """The schema SQL is unusable for sync (no primary key, bad SQL...)."""


def quote_ident(name: str) -> str:
    """Quote an identifier that was already checked against the schema."""
    return '"' + name.replace('"', '""') + '"'


def demo_schema_sql() -> str:
    """The demo app's schema (projects and tasks), shipped with the package.

    Read as the file next to this module when it is one (the wheel is always unpacked in
    the browser): ``importlib.resources`` imports four modules on its first use, which in
    a worker booted from a memory snapshot cost ~0.1 s of its database open. A package
    run from a zip falls back to ``importlib.resources``.
    """
    path = os.path.join(os.path.dirname(__file__), "demo_schema.sql")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return resources.files("tidesync").joinpath("demo_schema.sql").read_text(encoding="utf-8")


# Affinities that take any text as it is (``check_value``).
_TEXT_OK = frozenset({"TEXT", "BLOB"})


@dataclass(frozen=True)
class Column:
    name: str
    declared_type: str
    not_null: bool
    has_default: bool
    pk_index: int  # 0 when not part of the primary key, else 1-based position

    @cached_property
    def affinity(self) -> str:
        """SQLite's type affinity rules (https://sqlite.org/datatype3.html 3.1).

        Cached: every value of every server change is checked against it.
        """
        t = self.declared_type.upper()
        if "INT" in t:
            return "INTEGER"
        if "CHAR" in t or "CLOB" in t or "TEXT" in t:
            return "TEXT"
        if "BLOB" in t or not t:
            return "BLOB"
        if "REAL" in t or "FLOA" in t or "DOUB" in t:
            return "REAL"
        return "NUMERIC"

    @cached_property
    def takes_any_text(self) -> bool:
        """Text is stored as it is (TEXT or BLOB affinity): ``check_value`` passes any ``str``."""
        return self.affinity in _TEXT_OK


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    parents: tuple[str, ...]  # tables this one references (foreign keys)
    create_sql: str

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, Column]:
        return {col.name: col for col in self.columns}

    @property
    def has_updated_at(self) -> bool:
        return self.column("updated_at") is not None

    def key_of(self, data: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(data.get(k) for k in self.primary_key)

    def check_value(self, column: Column, value: Any) -> str | None:
        """Why ``value`` cannot be stored in ``column``, or None when it can."""
        # The usual values first, with no more than a type test (every value of every
        # local write and server change comes through here): text in a text column,
        # an integer in 64-bit range (``bool`` is not ``int`` here: it takes the path below).
        kind = type(value)
        if kind is str:
            if column.takes_any_text:
                return None
        elif kind is int and -(1 << 63) <= value < (1 << 63):
            return None
        if value is None:
            if column.not_null and not column.pk_index:
                return f"column '{column.name}' cannot be null"
            if column.pk_index:
                return f"primary key column '{column.name}' cannot be null"
            return None
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, str | int | float):
            return f"column '{column.name}' holds plain values, not {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            # NaN, and Infinity / 1e999 (Python's json reads both): JSON cannot carry them
            # back out, so a stored one would break every snapshot and batch holding it.
            return f"column '{column.name}' cannot hold {value!r}"
        affinity = column.affinity
        if affinity == "INTEGER" and isinstance(value, str):
            return (
                f"column '{column.name}' ({column.declared_type}) cannot hold text {value[:40]!r}"
            )
        if affinity in ("REAL", "NUMERIC") and isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return f"column '{column.name}' ({column.declared_type}) cannot hold text"
        if isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
            return f"column '{column.name}' integer out of 64-bit range"
        return None


class Schema:
    """The synced tables of an app, read from its ``CREATE TABLE`` statements."""

    def __init__(self, tables: dict[str, TableInfo], sql: str) -> None:
        self.tables = tables
        self.sql = sql
        self.order = self._foreign_key_order()

    @classmethod
    def from_sql(cls, sql: str) -> Schema:
        conn = sqlite3.connect(":memory:")
        try:
            try:
                conn.executescript(sql)
            except sqlite3.Error as exc:
                raise SchemaError(f"schema SQL does not run: {exc}") from exc
            return cls(_read_tables(conn), sql)
        finally:
            conn.close()

    @classmethod
    def from_connection(cls, conn: sqlite3.Connection) -> Schema:
        """The synced tables already present in a database."""
        return cls(_read_tables(conn), "")

    @classmethod
    def demo(cls) -> Schema:
        return cls.from_sql(demo_schema_sql())

    def table(self, name: object) -> TableInfo | None:
        """The table called ``name``, or None: the only way a wire name reaches SQL."""
        if not isinstance(name, str):
            return None
        return self.tables.get(name)

    def _foreign_key_order(self) -> tuple[str, ...]:
        """Parents before children; a cycle falls back to name order for its members."""
        done: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in done or name in visiting:
                return
            visiting.add(name)
            for parent in self.tables[name].parents:
                if parent in self.tables and parent != name:
                    visit(parent)
            visiting.discard(name)
            done.append(name)

        for name in sorted(self.tables):
            visit(name)
        return tuple(done)

    def validate_change_data(
        self, table: TableInfo, data: dict[str, Any], *, full_row: bool
    ) -> str | None:
        """Why a change's ``data`` does not fit ``table``, or None when it does."""
        for key in table.primary_key:
            if key not in data or data[key] is None:
                return f"primary key column '{key}' missing from data"
        for name, value in data.items():
            column = table.column(name)
            if column is None:
                return f"unknown column '{str(name)[:60]}' in table '{table.name}'"
            problem = table.check_value(column, value)
            if problem:
                return problem
        if full_row:
            for column in table.columns:
                if (
                    column.not_null
                    and not column.has_default
                    and column.name not in data
                    and column.name != "updated_at"
                ):
                    return f"column '{column.name}' is required"
        return None


def _read_tables(conn: sqlite3.Connection) -> dict[str, TableInfo]:
    tables: dict[str, TableInfo] = {}
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    for name, create_sql in rows:
        if name.startswith(INTERNAL_PREFIXES):
            continue
        info = conn.execute(f"PRAGMA table_info({quote_ident(name)})").fetchall()
        columns = tuple(
            Column(
                name=row[1],
                declared_type=row[2] or "",
                not_null=bool(row[3]),
                has_default=row[4] is not None,
                pk_index=int(row[5]),
            )
            for row in info
        )
        pk = tuple(c.name for c in sorted(columns, key=lambda c: c.pk_index) if c.pk_index)
        if not pk:
            raise SchemaError(f"table '{name}' needs a PRIMARY KEY to be synced")
        fk_rows = conn.execute(f"PRAGMA foreign_key_list({quote_ident(name)})").fetchall()
        parents = tuple(sorted({row[2] for row in fk_rows}))
        tables[name] = TableInfo(name, columns, pk, parents, create_sql or "")
    return tables
