"""Random application writes for any schema: what the simulated users do.

Keys come from a small pool per table, so clients keep writing the same rows:
concurrent inserts of one key, an update racing a delete, a child inserted
under a parent another client just deleted.  That is where last-write-wins,
tombstones and foreign keys earn their keep; unique keys would only test the
happy path.  Values follow each column's affinity; foreign-key columns take a
key of a parent row the client has (or NULL when allowed).  ``updated_at`` is
left to the Changes side, which stamps it.

A write the local database refuses (a foreign key, NOT NULL, a vanished row)
is the app's own error, counted and not retried: the protocol never sees it.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidesync.changes.worker import ChangesWorker
from tidesync.changes.writes import WriteError, WriteOp
from tidesync.schema import Column, Schema, TableInfo, quote_ident
from tidesync.sim.loop import seeded_sqlite

__all__ = ["Workload", "admin_update"]

_WORDS = ("alpha", "bravo", "café", "delta", "echo", "fox", "golf", "hôtel", "ïndia", "j'ai")


@dataclass(frozen=True)
class _ForeignKey:
    column: str
    parent: str
    parent_column: str


def _foreign_keys(schema_sql: str) -> dict[str, list[_ForeignKey]]:
    """Single-column foreign keys per table, read by SQLite itself from the schema SQL."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema_sql)
        found: dict[str, list[_ForeignKey]] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f"PRAGMA foreign_key_list({quote_ident(name)})"):
                parent_column = row[4]
                if parent_column is None:  # references the parent's primary key
                    pk = [
                        r[1]
                        for r in conn.execute(f"PRAGMA table_info({quote_ident(row[2])})")
                        if r[5]
                    ]
                    parent_column = pk[0] if pk else "rowid"
                found.setdefault(name, []).append(_ForeignKey(row[3], row[2], parent_column))
        return found
    finally:
        conn.close()


class Workload:
    """Draws one random write at a time and runs it on a client's ``ChangesWorker``."""

    def __init__(self, schema: Schema, rng: random.Random, *, key_pool: int = 40) -> None:
        self.schema = schema
        self.rng = rng
        self.key_pool = key_pool
        self.fks = _foreign_keys(schema.sql)
        self.counts: Counter[str] = Counter()

    async def step(self, changes: ChangesWorker) -> None:
        """One operation: insert, update, delete, upsert, or a small transaction of them."""
        kind = self.rng.choices(
            ("insert", "update", "delete", "upsert", "transaction"), weights=(4, 5, 2, 3, 1)
        )[0]
        try:
            if kind == "transaction":
                ops = [
                    await self._op(changes, self.rng.choice(("insert", "update", "upsert")))
                    for _ in range(self.rng.randint(2, 4))
                ]
                real = [op for op in ops if op is not None]
                if real:
                    await changes.run_transaction(real)
            else:
                op = await self._op(changes, kind)
                if op is None:
                    kind = "noop"
                elif op.op == "delete":
                    assert op.row is not None
                    await changes.delete(op.table or "", dict(op.row))
                else:
                    await changes.run_transaction([op])
            self.counts[kind] += 1
        except (WriteError, sqlite3.IntegrityError) as exc:
            self.counts["refused_locally"] += 1
            self.counts[f"refused:{type(exc).__name__}"] += 1

    async def _op(self, changes: ChangesWorker, kind: str) -> WriteOp | None:
        table = self.schema.tables[self.rng.choice(self.schema.order)]
        if kind in ("insert", "upsert"):
            row = await self._row(changes, table)
            return WriteOp(kind, table.name, row)
        existing = await self._existing_key(changes, table)
        if existing is None:
            return None
        if kind == "delete":
            return WriteOp("delete", table.name, existing)
        columns = [c for c in self._value_columns(table)]
        if not columns:
            return None
        chosen = self.rng.sample(columns, self.rng.randint(1, min(2, len(columns))))
        row = dict(existing)
        for column in chosen:
            row[column.name] = await self._value(changes, table, column)
        return WriteOp("update", table.name, row)

    def _value_columns(self, table: TableInfo) -> list[Column]:
        return [c for c in table.columns if not c.pk_index and c.name != "updated_at"]

    async def _row(self, changes: ChangesWorker, table: TableInfo) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for column in table.columns:
            if column.pk_index:
                row[column.name] = self._key_value(table, column)
            elif column.name != "updated_at":
                row[column.name] = await self._value(changes, table, column)
        return row

    def _key_value(self, table: TableInfo, column: Column) -> Any:
        n = self.rng.randrange(self.key_pool)
        if column.affinity == "INTEGER":
            return n + 1
        return f"{table.name[:3]}-{n}"

    async def _value(self, changes: ChangesWorker, table: TableInfo, column: Column) -> Any:
        for fk in self.fks.get(table.name, ()):
            if fk.column == column.name:
                rows = await changes.query(
                    f"SELECT {quote_ident(fk.parent_column)} AS k FROM {quote_ident(fk.parent)}"
                )
                keys = [r["k"] for r in rows]
                if keys and (column.not_null or self.rng.random() < 0.9):
                    return self.rng.choice(sorted(keys, key=repr))
                return None if not column.not_null else f"missing-{self.rng.randrange(5)}"
        if not column.not_null and self.rng.random() < 0.05:
            return None
        affinity = column.affinity
        if affinity == "INTEGER":
            return self.rng.choice((0, 1, self.rng.randrange(-1000, 1000)))
        if affinity in ("REAL", "NUMERIC"):
            return round(self.rng.uniform(-100, 100), 3)
        return f"{self.rng.choice(_WORDS)} {self.rng.randrange(1000)}"

    async def _existing_key(
        self, changes: ChangesWorker, table: TableInfo
    ) -> dict[str, Any] | None:
        cols = ", ".join(quote_ident(k) for k in table.primary_key)
        order = ", ".join(quote_ident(k) for k in table.primary_key)
        rows = await changes.query(f"SELECT {cols} FROM {quote_ident(table.name)} ORDER BY {order}")
        if not rows:
            return None
        return dict(self.rng.choice(rows))


def admin_update(
    server_path: Path, schema: Schema, workload: Workload, rng: random.Random, now_iso: str
) -> str | None:
    """Another program updates one server row in place; returns what happened (for counting).

    Updates only, and only of tables with ``updated_at`` (set to the virtual
    time): a delete, or a table without that column, would take SQLite's real
    ``'now'`` as the change time, and the run would stop being repeatable.
    """
    tables = [schema.tables[n] for n in schema.order if schema.tables[n].has_updated_at]
    if not tables:
        return None
    table = rng.choice(tables)
    fk_columns = {fk.column for fk in workload.fks.get(table.name, ())}
    cols = [
        c
        for c in table.columns
        if not c.pk_index
        and c.name != "updated_at"
        and c.name not in fk_columns
        and c.affinity in ("TEXT", "INTEGER")
    ]
    if not cols:
        return None
    conn = sqlite3.connect(str(server_path), isolation_level=None)
    seeded_sqlite(conn, rng)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        keys = ", ".join(quote_ident(k) for k in table.primary_key)
        found = conn.execute(
            f"SELECT {keys} FROM {quote_ident(table.name)} ORDER BY {keys}"
        ).fetchall()
        if not found:
            return None
        key = rng.choice(found)
        col = rng.choice(cols)
        value: Any = f"admin {rng.randrange(100)}" if col.affinity == "TEXT" else 7
        where = " AND ".join(f"{quote_ident(k)} = ?" for k in table.primary_key)
        conn.execute(
            f"UPDATE {quote_ident(table.name)} SET {quote_ident(col.name)} = ?, "
            f"updated_at = ? WHERE {where}",
            [value, now_iso, *key],
        )
        return "admin_update"
    except sqlite3.Error:
        return "admin_refused"
    finally:
        conn.close()
