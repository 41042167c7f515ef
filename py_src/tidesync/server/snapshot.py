"""A consistent read of every synced table for the initial sync.

PROTOCOL.md "Initial sync": the snapshot is one consistent read at one LSN.  It
holds one read transaction on its own connection (WAL: writers go on, this
reader keeps seeing the database as it was), takes the LSN inside that same
transaction, and streams each table with ``fetchmany`` so a large table is
never held in memory at once.  ``close`` ends the transaction; callers must
call it (the session does when the initial sync ends or the connection drops).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from tidesync.schema import Schema, TableInfo, quote_ident
from tidesync.server.store import connect, max_lsn
from tidesync.worker_sync.shared.hlc import (
    TimestampError,
    is_canonical_timestamp,
    normalize_timestamp,
)
from tidesync.worker_sync.shared.message_types import (
    Operation,
    TableChange,
    encode_init_rows_body,
)

__all__ = ["Snapshot"]

log = logging.getLogger(__name__)

#: Address space a snapshot's connection may map (not memory it takes: pages are
#: the OS's cache, shared with every other reader of the file).
SNAPSHOT_MMAP_BYTES = 256 << 20


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Snapshot:
    """Chunks of ``insert`` changes per table, all at ``lsn``."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        self.schema = schema
        self._conn: sqlite3.Connection | None = connect(path)
        # Read through a memory map: the row-version lookup (one B-tree search per row)
        # then reads pages without a system call each (100k demo tasks: ~0.26 -> ~0.2 s).
        self._conn.execute(f"PRAGMA mmap_size = {SNAPSHOT_MMAP_BYTES}")
        self._conn.execute("BEGIN")
        self.lsn = max_lsn(self._conn)  # the first read fixes the transaction's view
        self.counts: dict[str, int] = {
            name: int(self._conn.execute(f"SELECT COUNT(*) FROM {quote_ident(name)}").fetchone()[0])
            for name in schema.order
        }
        self._cursor: sqlite3.Cursor | None = None
        self._cursor_table: str | None = None
        # Change ids of snapshot rows only need to be unique (nothing resends them):
        # one random uuid per snapshot with a counter in its last 12 hex digits
        # costs a string format per row instead of a uuid4 (~2 us each, 100k rows).
        self._id_prefix = uuid.uuid4().hex[:20]
        self._serial = 0
        self._now = normalize_timestamp(
            self._conn.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ','now')").fetchone()[0]
        )

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables that have rows, in foreign-key order (the order they are sent in)."""
        return tuple(t for t in self.schema.order if self.counts.get(t, 0) > 0)

    def chunks_of(self, table: str, chunk_rows: int) -> int:
        count = self.counts.get(table, 0)
        return (count + chunk_rows - 1) // chunk_rows

    def _select(self, table: TableInfo) -> sqlite3.Cursor:
        assert self._conn is not None
        cols = ", ".join(f"t.{quote_ident(c)}" for c in table.column_names)
        pk = ", ".join(f"t.{quote_ident(k)}" for k in table.primary_key)
        # The row's LWW version travels with it, so clients resolve later conflicts
        # exactly as the server does.
        return self._conn.execute(
            f"SELECT {cols}, v.updated_at, v.client_id FROM {quote_ident(table.name)} AS t "
            f"LEFT JOIN _ts_row_versions AS v ON v.table_name = {_literal(table.name)} "
            f"AND v.pk = json_array({pk})"
        )

    def read_chunk(self, table_name: str, chunk_rows: int) -> tuple[TableChange, ...]:
        """The next ``chunk_rows`` rows of ``table_name`` (tables are read one after another)."""
        names, fetched = self._fetch(table_name, chunk_rows)
        width = len(names)
        prefix, serial = self._id_prefix, self._serial
        out: list[TableChange] = []
        for raw in fetched:
            data = dict(zip(names, raw[:width], strict=True))
            serial += 1
            out.append(
                TableChange(
                    f"{prefix}{serial:012x}",
                    table_name,
                    Operation.INSERT,
                    data,
                    self._time(raw[width], data),
                    None,
                    raw[width + 1],
                )
            )
        self._serial = serial
        return tuple(out)

    def read_rows(
        self, table_name: str, chunk_rows: int
    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]], list[list[Any] | None]]:
        """``read_chunk`` for ``srv_init_rows``: the columns, the rows as the cursor gives
        them, and each row's version, null where it is implied (``SrvInitRows``).

        No ``TableChange`` and no dict per row: the rows are sliced off the cursor's
        tuples and ``json.dumps`` writes them as arrays.  The version is the one
        ``read_chunk`` would send; it is implied when there is no author and the time
        equals the row's own ``updated_at`` (compared per distinct value, normalised).
        """
        names, raw = self._fetch(table_name, chunk_rows)
        width = len(names)
        rows = [r[:width] for r in raw]
        at = names.index("updated_at") if "updated_at" in names else None
        versions: list[list[Any] | None] = []
        canonical: dict[object, bool] = {}
        for r in raw:
            stamp, author = r[width], r[width + 1]
            if author is None and at is not None:
                own = r[at]
                if stamp is None or stamp == own:
                    ok = canonical.get(own)
                    if ok is None:
                        ok = canonical[own] = type(own) is str and is_canonical_timestamp(own)
                    if ok:
                        versions.append(None)
                        continue
            versions.append([self._time(stamp, dict(zip(names, r[:width], strict=True))), author])
        return names, rows, versions

    def read_body(self, table_name: str, chunk_rows: int) -> str:
        """``read_rows`` encoded: the members of an ``srv_init_rows`` frame after its
        ``sequence`` (``encode_init_rows_body``), what the session sends and the
        snapshot cache keeps."""
        return encode_init_rows_body(*self.read_rows(table_name, chunk_rows))

    def _fetch(self, table_name: str, chunk_rows: int) -> tuple[tuple[str, ...], list[Any]]:
        """The table's column names and its next ``chunk_rows`` cursor rows (the columns,
        then the row's version time and author), opening its cursor on first use."""
        table = self.schema.tables[table_name]
        if self._cursor_table != table_name:
            self._cursor = self._select(table)
            self._cursor_table = table_name
        assert self._cursor is not None
        return table.column_names, self._cursor.fetchmany(chunk_rows)

    def _time(self, version_time: object, data: dict[str, object]) -> str:
        for candidate in (version_time, data.get("updated_at")):
            if candidate is not None:
                try:
                    return normalize_timestamp(candidate)
                except TimestampError:
                    continue
        return self._now

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None
            self._cursor = None
