"""A new client's database as one SQLite file: built by the server, adopted by the client.

Why: the streamed initial sync (PROTOCOL.md) makes every new client parse, check and
stage each snapshot row in Pyodide, then copy them into the app tables, after Pyodide
is up and the Sync Worker has booted: on a 2-core machine that is most of a first
visit's CPU.  A client whose database does not exist yet may instead download the
database it would have ended up with (``GET /api/bootstrap``, docs/protocol.md) while
Pyodide boots, check it, and start from it at the image's LSN: the Sync Worker then
only catches up.  Nothing changes on the wire protocol; a server without the endpoint
(or a failed check) leaves the client on the streamed path.

The image is what the client's own code makes of the snapshot: ``build_image`` runs
``prepare_database`` and ``InitialSync`` (stage, then commit) natively on an in-memory
database, so there is one definition of the file's layout and both sides share it.
It holds no client id (each client makes its own on open) and a zero clock.

``adopt_image`` trusts nothing in the bytes.  Before anything reaches the client's
database it checks, on a private in-memory copy: the header (SQLite magic, the page
size the client uses, UTF-8, no reserved bytes, a length that matches the page count);
``PRAGMA quick_check``; that ``sqlite_master`` (tables, indexes, triggers, their SQL)
is exactly what ``prepare_database`` makes for the client's schema, so the file brings
no trigger, view or table of its own; that ``local_changes`` is empty and the state
holds only an LSN and the ``initialized`` flag; and that every app value has a type the
streamed path would have stored in its column (set-based SQL, one scan per table).
Only then is the copy written into the (empty) database with SQLite's backup API: one
write transaction, atomic on a crash like any commit.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tidesync.changes.direct_sql_processor import DirectSqlProcessor
from tidesync.changes.initial_sync import InitialSync
from tidesync.changes.local_schema import prepare_database
from tidesync.schema import Schema, quote_ident

__all__ = [
    "ImageInfo",
    "ImageRejected",
    "adopt_image",
    "build_image",
    "check_page_size",
]

_MAGIC = b"SQLite format 3\x00"
#: State rows an image may hold (the client id is each client's own, made on open).
_IMAGE_STATE_KEYS = frozenset({"lsn", "initialized"})
#: SQLite's ``typeof`` names of the values the streamed path stores in a column.
_NUMBERS = ("integer", "real")
#: The largest finite double: a real above it is infinite (JSON has none).
_MAX_FLOAT = 1.7976931348623157e308


class ImageRejected(ValueError):
    """The image failed a check: the client keeps its empty database and streams instead."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image holds: the snapshot's LSN and its app rows."""

    lsn: int
    rows: int
    page_size: int
    bytes: int
    #: ``adopt_image`` only: time spent checking the copy, and copying it in, ms.
    check_ms: float = field(default=0.0, compare=False)
    copy_ms: float = field(default=0.0, compare=False)


def check_page_size(page_size: int) -> int:
    """``page_size`` if SQLite accepts it (a power of two, 512-65536), else ValueError."""
    if type(page_size) is not int or not 512 <= page_size <= 65536:
        raise ValueError(f"page size must be 512-65536, not {page_size!r}")
    if page_size & (page_size - 1):
        raise ValueError(f"page size must be a power of two, not {page_size}")
    return page_size


def build_image(
    schema: Schema,
    lsn: int,
    chunks: Iterable[tuple[str, Sequence[str], Sequence[Sequence[Any]], Sequence[Any]]],
    *,
    page_size: int,
) -> tuple[bytes, ImageInfo]:
    """The database a new client has after the initial sync of ``chunks`` at ``lsn``.

    ``chunks`` are ``(table, columns, rows, versions)`` as ``srv_init_rows`` carries
    them (the server's ``Snapshot.read_rows``), in foreign-key order.  They go through
    ``InitialSync`` exactly as a client stages and commits them.
    """
    check_page_size(page_size)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA foreign_keys = ON")
        client_id = prepare_database(conn, schema)
        processor = DirectSqlProcessor(conn, schema, client_id, lambda millis: millis)
        initial = InitialSync(conn, schema, processor)
        initial.begin(lsn)
        for table, columns, rows, versions in chunks:
            initial.stage_rows(table, list(columns), [list(r) for r in rows], list(versions))
        result = initial.commit(lsn)
        conn.execute("DELETE FROM sync_state WHERE key NOT IN ('lsn', 'initialized')")
        conn.execute("UPDATE _ts_ctx SET applying = 0, now = NULL, hlc = 0")
        conn.execute("VACUUM")  # no free pages: the smallest file for this content
        image = conn.serialize()
    finally:
        conn.close()
    return image, ImageInfo(lsn, result.applied, page_size, len(image))


def adopt_image(conn: sqlite3.Connection, schema: Schema, image: bytes) -> ImageInfo:
    """Check ``image`` and make it the whole content of the empty database ``conn``.

    Raises ``ImageRejected`` (``conn`` untouched) when ``conn`` is not empty, the
    image fails a check (see the module docstring) or the copy fails and rolls back
    (e.g. storage full); any other error (a copy that left ``conn`` not empty) is
    raised as it is.  ``conn`` must not be in a transaction.  Its auto-checkpoint is
    held off for the copy: the caller checkpoints the image's WAL later, as after a
    streamed snapshot's commit.
    """
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    _check_header(image, page_size)
    if not _is_empty(conn):
        raise ImageRejected("the database is not empty")
    started = time.perf_counter()
    copy = _private_copy(image)
    try:
        info = _check_content(copy, schema, page_size, len(image))
        checked = time.perf_counter()
        auto = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            copy.backup(conn)
            # SQLite hands the backup's WAL frames to its auto-checkpoint when the next
            # statement ends: let that be this one, while it is off (else whichever statement
            # came next would copy the whole image into the file, on the path to live).
            conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            if not _is_empty(conn):
                raise  # never a refusal that leaves a half-made database behind
            raise ImageRejected(f"could not be copied in: {exc}") from None
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint = {auto}")
    finally:
        copy.close()
    copied = time.perf_counter()
    return replace(info, check_ms=(checked - started) * 1000, copy_ms=(copied - checked) * 1000)


def _is_empty(conn: sqlite3.Connection) -> bool:
    return not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]


def _check_header(image: bytes, page_size: int) -> None:
    if len(image) < 100 or image[:16] != _MAGIC:
        raise ImageRejected("not an SQLite database")
    (size,) = struct.unpack_from(">H", image, 16)
    if (65536 if size == 1 else size) != page_size:
        raise ImageRejected(f"page size {size}, this database uses {page_size}")
    if image[20] != 0:
        raise ImageRejected("reserved bytes per page are not supported")
    change_counter, pages = struct.unpack_from(">II", image, 24)
    (valid_for,) = struct.unpack_from(">I", image, 92)
    if valid_for != change_counter or pages * page_size != len(image):
        raise ImageRejected(f"{len(image)} bytes do not hold the {pages} pages the header names")
    (encoding,) = struct.unpack_from(">I", image, 56)
    if encoding != 1:
        raise ImageRejected("text encoding is not UTF-8")


def _private_copy(image: bytes) -> sqlite3.Connection:
    """An in-memory database holding ``image``, opened defensively (it is untrusted)."""
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        defensive = getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", None)
        if defensive is not None and hasattr(copy, "setconfig"):
            copy.setconfig(defensive, True)
        copy.execute("PRAGMA trusted_schema = OFF")
        copy.deserialize(image)
        copy.execute("PRAGMA cell_size_check = ON")
        copy.execute("PRAGMA foreign_keys = OFF")
        return copy
    except sqlite3.Error as exc:
        copy.close()
        raise ImageRejected(f"not an SQLite database: {exc}") from None


def _master(conn: sqlite3.Connection) -> set[tuple[Any, ...]]:
    return set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def _check_content(
    copy: sqlite3.Connection, schema: Schema, page_size: int, size: int
) -> ImageInfo:
    try:
        problems = [str(r[0]) for r in copy.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise ImageRejected("corrupt: " + "; ".join(problems)[:300])
        reference = sqlite3.connect(":memory:", isolation_level=None)
        try:
            reference.execute(f"PRAGMA page_size = {page_size}")
            prepare_database(reference, schema)
            expected = _master(reference)
            settings = _settings(reference)
        finally:
            reference.close()
        found = _master(copy)
        if found != expected:
            extra = sorted(str(r[1]) for r in found - expected)[:5]
            missing = sorted(str(r[1]) for r in expected - found)[:5]
            raise ImageRejected(
                f"schema differs from this client's (extra or changed {extra}, missing {missing})"
            )
        if _settings(copy) != settings:
            raise ImageRejected("database settings differ from this client's")
        lsn = _check_state(copy)
        rows = 0
        for name in schema.order:
            count = _check_values(copy, schema, name)
            _check_indexes(copy, schema, name, count)
            rows += count
    except sqlite3.Error as exc:
        raise ImageRejected(f"unreadable: {exc}") from None
    return ImageInfo(lsn, rows, page_size, size)


def _settings(conn: sqlite3.Connection) -> tuple[Any, ...]:
    return tuple(
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("encoding", "user_version", "application_id", "auto_vacuum")
    )


def _check_state(copy: sqlite3.Connection) -> int:
    if copy.execute("SELECT EXISTS (SELECT 1 FROM local_changes)").fetchone()[0]:
        raise ImageRejected("the image holds local changes")
    state = dict(copy.execute("SELECT key, value FROM sync_state").fetchall())
    if set(state) != _IMAGE_STATE_KEYS or state["initialized"] != "1":
        raise ImageRejected(f"unexpected sync state {sorted(map(str, state))}")
    lsn_text = state["lsn"]
    if (
        type(lsn_text) is not str
        or not 0 < len(lsn_text) <= 20
        or not (lsn_text.isascii() and lsn_text.isdigit())
        or str(int(lsn_text)) != lsn_text  # as ``set_state`` writes it: no leading zeros
        or not 0 < int(lsn_text) < 1 << 64
    ):
        raise ImageRejected("the image's LSN is not a positive 64-bit number")
    ctx = copy.execute("SELECT id, applying, now, hlc FROM _ts_ctx").fetchall()
    if ctx != [(1, 0, None, 0)]:
        raise ImageRejected("unexpected trigger context")
    return int(lsn_text)


def _check_values(copy: sqlite3.Connection, schema: Schema, name: str) -> int:
    """The table's row count, after checking every value's type in one scan.

    What the streamed path stores (``InitialSync``, ``Schema.check_value``): numbers
    and, in a TEXT column, text (TEXT affinity turns numbers into text); NULL only where
    the column allows it; no blobs, no infinities.  Checked with aggregates, using
    SQLite's order of values (NULL < numbers < text < blob), about twice as fast as a
    ``typeof`` per value: a TEXT column's least and greatest values are text, a numeric
    column's greatest is a finite number, and ``count(column)`` counts its non-NULLs.
    """
    table = schema.tables[name]
    checks: list[tuple[str, str, str]] = []  # (column, expression true when fine, else)
    for column in table.columns:
        col = quote_ident(column.name)
        if column.affinity == "TEXT":
            checks.append((column.name, f"typeof(min({col})) IN ('text', 'null')", "not text"))
            checks.append((column.name, f"typeof(max({col})) IN ('text', 'null')", "not text"))
        elif column.affinity == "BLOB":  # stored as given: numbers or text, per value
            checks.append(
                (
                    column.name,
                    f"count(*) FILTER (WHERE typeof({col}) = 'blob' "
                    f"OR (typeof({col}) = 'real' AND abs({col}) > {_MAX_FLOAT!r})) = 0",
                    "a blob or an infinity",
                )
            )
        else:
            checks.append(
                (column.name, f"typeof(max({col})) IN ('integer', 'real', 'null')", "not a number")
            )
            checks.append(
                (
                    column.name,
                    f"coalesce(max({col}) <= {_MAX_FLOAT!r} AND min({col}) >= -{_MAX_FLOAT!r}, 1)",
                    "an infinity",
                )
            )
        if column.not_null or column.pk_index:
            checks.append((column.name, f"count({col}) = count(*)", "NULL"))
    found = copy.execute(
        f"SELECT count(*), {', '.join(e for _, e, _ in checks)} FROM {quote_ident(name)}"
    ).fetchone()
    for (column_name, _, what), ok in zip(checks, found[1:], strict=True):
        if not ok:
            raise ImageRejected(f"{name}.{column_name}: a value that is {what}")
    return int(found[0])


def _check_indexes(copy: sqlite3.Connection, schema: Schema, name: str, count: int) -> None:
    """Each full index of the table has one entry per row, and the primary key is unique.

    Why: ``quick_check`` checks each B-tree but not an index against its table; a file
    whose key index lacks a row could hold the same key twice.  These counts are cheap
    (SQLite counts an index without reading its rows; the distinct keys are read off
    the key's own index in order).  Not caught without ``PRAGMA integrity_check``
    (~7x ``quick_check``): an index entry whose key differs from its row's.
    """
    table = quote_ident(name)
    for row in copy.execute(f"PRAGMA index_list({table})").fetchall():
        index, partial = str(row[1]), int(row[4])
        if partial:
            continue
        entries = copy.execute(f"SELECT count(*) FROM {table} INDEXED BY {quote_ident(index)}")
        if entries.fetchone()[0] != count:
            raise ImageRejected(f"index {index!r} does not match table {name!r}")
    info = schema.tables[name]
    keys = ", ".join(quote_ident(k) for k in info.primary_key)
    distinct = copy.execute(f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {table})")
    if distinct.fetchone()[0] != count:
        raise ImageRejected(f"{name!r} holds a primary key twice")
