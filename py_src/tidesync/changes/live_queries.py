"""Live queries: re-run a subscribed query when a table it reads changes.

Which tables a query reads is asked of SQLite itself: the statement is compiled
under an authorizer that records every ``SQLITE_READ`` (views report their base
tables), so no SQL is parsed here.  Results are only emitted when they differ
from the last ones sent, so a write that does not touch a subscriber's rows
costs it one query and no message.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LiveQueries", "Subscription", "tables_read_by"]

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
RunQuery = Callable[[str, Sequence[Any]], Rows]
Emit = Callable[[str, Rows], None]


def tables_read_by(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()
) -> frozenset[str]:
    """The tables ``sql`` reads, as SQLite's authorizer reports them while compiling."""
    tables: set[str] = set()

    def authorizer(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action == sqlite3.SQLITE_READ and arg1:
            tables.add(arg1)
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorizer)
    try:
        conn.execute("EXPLAIN " + sql, tuple(params)).fetchall()
    finally:
        conn.set_authorizer(None)
    return frozenset(tables)


@dataclass
class Subscription:
    sub_id: str
    sql: str
    params: tuple[Any, ...]
    tables: frozenset[str]
    last_rows: Rows | None = field(default=None, repr=False)


class LiveQueries:
    """Subscriptions of one connection's owner (the Changes Worker).

    Call ``tables_changed`` after every commit that touched app tables (local
    writes, server batches, results that rewrote rows); it re-runs only the
    subscriptions that read one of those tables.
    """

    def __init__(self, conn: sqlite3.Connection, run_query: RunQuery, emit: Emit) -> None:
        self._conn = conn
        self._run = run_query
        self._emit = emit
        self._subs: dict[str, Subscription] = {}

    def subscribe(self, sub_id: str, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Register and return the first result (also emitted)."""
        tables = tables_read_by(self._conn, sql, params)
        sub = Subscription(sub_id, sql, tuple(params), tables)
        rows = self._run(sql, sub.params)
        sub.last_rows = rows
        self._subs[sub_id] = sub
        self._emit(sub_id, rows)
        return rows

    def unsubscribe(self, sub_id: str) -> bool:
        return self._subs.pop(sub_id, None) is not None

    def __len__(self) -> int:
        return len(self._subs)

    def tables_changed(self, tables: Sequence[str]) -> int:
        """Re-run affected subscriptions; return how many emitted new rows."""
        if not self._subs:
            return 0
        changed = set(tables)
        emitted = 0
        for sub in list(self._subs.values()):
            if not (sub.tables & changed):
                continue
            try:
                rows = self._run(sub.sql, sub.params)
            except sqlite3.Error:
                log.exception("live query %s failed to re-run", sub.sub_id)
                continue
            if rows != sub.last_rows:
                sub.last_rows = rows
                self._emit(sub.sub_id, rows)
                emitted += 1
        return emitted
