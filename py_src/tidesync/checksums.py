"""Order-independent table checksums, computed the same way by server and clients.

A table's checksum is the sum, modulo 2**64, of a 64-bit hash of every row,
written as 16 lower-case hex digits.  A sum does not depend on row order, so two
databases holding the same rows agree however they stored them.  A row's hash
is BLAKE2b (8 bytes) of its canonical JSON: an object with the table's columns
sorted by name, no spaces, UTF-8, so only values that read back the same from
SQLite hash the same (``1`` and ``1.0`` differ, as they do in SQLite).

Used by ``srv_table_checksums`` (extension in ``message_types``); pure apart
from reading the cursor it is given.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from tidesync.schema import TableInfo, quote_ident

__all__ = ["EMPTY_CHECKSUM", "combine", "row_hash", "table_checksum"]

_MASK = (1 << 64) - 1
EMPTY_CHECKSUM = "0" * 16


def row_hash(row: Mapping[str, Any]) -> int:
    """The 64-bit hash of one row (a mapping of every column name to its value)."""
    text = json.dumps(
        dict(sorted(row.items())), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def combine(hashes: Iterable[int]) -> str:
    """Sum row hashes into the hex checksum."""
    total = 0
    for value in hashes:
        total = (total + value) & _MASK
    return f"{total:016x}"


def table_checksum(cursor: sqlite3.Cursor, table: TableInfo) -> str:
    """Checksum of every row of ``table`` as ``cursor`` sees it (run it in one read txn)."""
    names = table.column_names
    cols = ", ".join(quote_ident(c) for c in names)
    cursor.execute(f"SELECT {cols} FROM {quote_ident(table.name)}")
    return combine(row_hash(dict(zip(names, raw, strict=True))) for raw in cursor)
