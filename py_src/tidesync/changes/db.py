"""Opening the client database, its transactions, and the ``sync_state`` key/value rows.

One connection, opened in autocommit mode (``isolation_level=None``) so every
transaction here is explicit: ``BEGIN IMMEDIATE`` ... ``COMMIT``.  The two kinds
of write transaction differ only in the trigger switch: local writes run with
``applying = 0`` (recorded), server data with ``applying = 1`` (not recorded).
Both leave ``_ts_ctx`` at ``applying = 0, now = NULL`` when they commit, so a
write by another program (with no time set) is still recorded with the wall clock.

``_ts_ctx.hlc`` persists the hybrid logical clock: the statement that resets the
row at the end of a transaction also raises ``hlc`` to the clock's value, so the
clock is durable with every commit that used it without writing another page
(``_ts_ctx``'s page is written by every transaction anyway).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

__all__ = [
    "DEFAULT_PRAGMAS",
    "RESET_CTX_SQL",
    "SET_NOW_SQL",
    "get_state",
    "open_connection",
    "set_now",
    "set_state",
    "stored_clock",
    "write_transaction",
]

# Durable defaults for a native file; the browser passes its own journal settings.
DEFAULT_PRAGMAS: Mapping[str, str | int] = {
    "journal_mode": "WAL",
    "synchronous": "FULL",
    "busy_timeout": 5000,
}
_PRAGMA_VALUE = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")

# ``set_now``; and the statement that ends every write transaction that persists the clock
# (``write_transaction(clock=...)``, ``ChangesWorker._commit_ops``), binding the clock.
SET_NOW_SQL = "UPDATE _ts_ctx SET applying = 0, now = ? WHERE id = 1"
RESET_CTX_SQL = "UPDATE _ts_ctx SET applying = 0, now = NULL, hlc = max(hlc, ?) WHERE id = 1"


def open_connection(
    path: str, pragmas: Mapping[str, str | int] | None = None
) -> sqlite3.Connection:
    """Open ``path`` with ``pragmas`` (names and values checked: they come from config)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    settings = dict(DEFAULT_PRAGMAS if pragmas is None else pragmas)
    settings["foreign_keys"] = "ON"  # not optional: the schema's FKs must hold locally too
    for name, value in settings.items():
        if not name.isidentifier() or not _PRAGMA_VALUE.match(str(value)):
            conn.close()
            raise ValueError(f"unsupported pragma {name!r} = {value!r}")
        conn.execute(f"PRAGMA {name} = {value}").fetchall()
    return conn


def stored_clock(conn: sqlite3.Connection) -> int:
    """The last persisted HLC time: ``_ts_ctx.hlc``, or ``sync_state.hlc_last`` if later.

    Why both: local commits raise ``_ts_ctx.hlc`` (no page of its own); server batches
    and databases written before ``_ts_ctx.hlc`` existed keep ``sync_state.hlc_last``.
    """
    ctx = conn.execute("SELECT hlc FROM _ts_ctx WHERE id = 1").fetchone()
    legacy = get_state(conn, "hlc_last")
    return max(int(ctx[0] or 0) if ctx else 0, int(legacy or 0))


def get_state(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_state(conn: sqlite3.Connection, key: str, value: str | int) -> None:
    conn.execute(
        "INSERT INTO sync_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


def set_now(conn: sqlite3.Connection, iso_time: str) -> None:
    """The time the recording triggers stamp on the next statement's changes.

    Also sets ``applying = 0``: every local write statement comes through here, so a
    local transaction needs no statement of its own to switch the triggers on.
    """
    conn.execute(SET_NOW_SQL, (iso_time,))


@contextmanager
def write_transaction(
    conn: sqlite3.Connection,
    *,
    applying: bool,
    foreign_keys: bool = True,
    clock: Callable[[], int] | None = None,
) -> Iterator[sqlite3.Connection]:
    """One all-or-nothing write: committed when the block ends, rolled back if it raises.

    ``foreign_keys=False`` switches enforcement off around the transaction (it
    cannot change inside one), for replacing a snapshot without cascades.
    ``clock()`` (read when the block ends) is persisted as ``_ts_ctx.hlc`` (never lowered).
    """
    if not foreign_keys:
        conn.execute("PRAGMA foreign_keys = OFF")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if applying:
                # A local transaction starts from the committed state (applying = 0,
                # now = NULL) and each of its writes goes through ``set_now``.
                conn.execute("UPDATE _ts_ctx SET applying = 1, now = NULL WHERE id = 1")
            yield conn
            if clock is None:
                conn.execute("UPDATE _ts_ctx SET applying = 0, now = NULL WHERE id = 1")
            else:
                conn.execute(RESET_CTX_SQL, (int(clock()),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        if not foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
