"""Which synced tables a local transaction recorded changes for, mostly without a query.

The page and the Sync Worker are told after each local commit which tables changed
(``tables_changed``, ``local_change``).  Asking ``local_changes`` for that costs two
statements per transaction (``max(seq)`` before, ``DISTINCT table_name`` after), a
fifth of a one-row insert's statements.  A typed write (insert/update/delete/upsert)
usually names the only table it can change, so it is counted here instead; the query
is kept for what a name cannot tell:

* raw SQL (``execute``) may write any table;
* a typed update/delete/upsert of a table that a foreign key references with an
  action (``ON DELETE CASCADE``, ``SET NULL``, ...) also changes the child rows;
* a database holding triggers of the app's own (not ``_ts_*``) may write anything.

A typed write that changed rows is counted even when the recording trigger skipped
it (an update that set every column to its value): an extra notification, never a
missed one.  The foreign keys and triggers are read again after raw SQL, which may
have created or dropped either.
"""

from __future__ import annotations

import sqlite3

from tidesync.schema import quote_ident

__all__ = ["TouchedTables"]


class TouchedTables:
    """Per transaction: ``start()``, ``before(table, op)`` / ``after(table, rows)`` around
    each typed write, ``raw()`` before raw SQL, ``finish()`` after COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._tables: set[str] = set()
        self._since: int | None = None  # max(seq) before the first write counted by query
        self._parents: frozenset[str] | None = None  # None: read again before use
        self._app_triggers = False

    def start(self) -> None:
        self._tables = set()
        self._since = None

    def before(self, table: str, op: str) -> None:
        """Call before a typed write ``op`` of ``table`` runs."""
        if self._since is not None:
            return
        if self._parents is None:
            self._load()
        if self._app_triggers or (op != "insert" and table.lower() in (self._parents or ())):
            self._since = self._max_seq()

    def after(self, table: str, rows: int) -> None:
        """Call after a typed write of ``table`` changed ``rows`` rows."""
        if rows > 0:
            self._tables.add(table)

    def raw(self) -> None:
        """Call before raw SQL runs: its tables come from ``local_changes``."""
        if self._since is None:
            self._since = self._max_seq()
        self._parents = None  # it may have changed the schema

    def finish(self) -> list[str]:
        """The tables changed by the committed transaction (unordered, no repeats)."""
        tables = set(self._tables)
        if self._since is not None:
            tables.update(
                r[0]
                for r in self._conn.execute(
                    "SELECT DISTINCT table_name FROM local_changes WHERE seq > ?", (self._since,)
                )
            )
        self.start()
        return list(tables)

    def _max_seq(self) -> int:
        row = self._conn.execute("SELECT COALESCE(max(seq), 0) FROM local_changes").fetchone()
        return int(row[0])

    def _load(self) -> None:
        if self._parents is not None:
            return
        names = [
            r[0]
            for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        parents: set[str] = set()
        for name in names:
            for fk in self._conn.execute(f"PRAGMA foreign_key_list({quote_ident(name)})"):
                # (id, seq, table, from, to, on_update, on_delete, match)
                if str(fk[5]).upper() not in _NO_ACTION or str(fk[6]).upper() not in _NO_ACTION:
                    parents.add(str(fk[2]).lower())
        self._app_triggers = (
            self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'trigger' "
                "AND substr(name, 1, 4) <> '_ts_' LIMIT 1"
            ).fetchone()
            is not None
        )
        self._parents = frozenset(parents)


_NO_ACTION = frozenset({"NO ACTION", "RESTRICT"})
