"""The end-of-run checks, read straight from the files (no worker code in the way).

Run after the network healed and every client settled.  Each check is one
promise the system makes (PROTOCOL.md, docs/architecture.md):

* ``tables``: every client's synced tables equal the server's, row for row;
* ``history_unique``: a client change id appears at most once in
  ``_ts_change_history`` (resends are idempotent);
* ``applied_has_history``: a change the server recorded as applied has its
  history row at the LSN it reported;
* ``local_truth``: ``local_changes`` tells the truth: ``synced`` changes are
  applied on the server (by this client, at the LSN noted), ``skipped`` and
  ``rejected`` ones are not (and say why), nothing is left ``pending``, and
  every change the server applied for a client is ``synced`` in its history;
* ``lsn``: no client's LSN is ahead of the server's; after settling, equal.

Reading files rather than asking the workers means the checker also works on
databases a test corrupted on purpose, and cannot be fooled by a worker's
in-memory state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidesync.schema import Schema, quote_ident

__all__ = ["Violation", "check_invariants"]

_SAMPLE = 5


@dataclass(frozen=True)
class Violation:
    """One broken promise: which check, which client (or None), and what was seen."""

    check: str
    client: str | None
    detail: str

    def __str__(self) -> str:
        who = f" [{self.client}]" if self.client else ""
        return f"{self.check}{who}: {self.detail}"


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return conn


def _rows(conn: sqlite3.Connection, schema: Schema, table: str) -> dict[str, tuple[Any, ...]]:
    info = schema.tables[table]
    cols = ", ".join(quote_ident(c) for c in info.column_names)
    keys = ", ".join(quote_ident(k) for k in info.primary_key)
    out: dict[str, tuple[Any, ...]] = {}
    for row in conn.execute(f"SELECT json_array({keys}), {cols} FROM {quote_ident(table)}"):
        out[str(row[0])] = tuple(row[1:])
    return out


def _compare_tables(
    server: sqlite3.Connection, client: sqlite3.Connection, schema: Schema, who: str
) -> list[Violation]:
    found: list[Violation] = []
    for table in schema.order:
        want, have = _rows(server, schema, table), _rows(client, schema, table)
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or extra or differ:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[:_SAMPLE]})")
            if extra:
                parts.append(f"{len(extra)} extra (e.g. {extra[:_SAMPLE]})")
            if differ:
                k = differ[0]
                parts.append(f"{len(differ)} differ (e.g. {k}: server {want[k]} client {have[k]})")
            found.append(Violation("tables", who, f"{table}: " + "; ".join(parts)))
    return found


def _local_truth(
    server: sqlite3.Connection, client: sqlite3.Connection, who: str
) -> list[Violation]:
    found: list[Violation] = []
    applied = {
        r[0]: (r[1], r[2])
        for r in server.execute(
            "SELECT change_id, client_id, lsn FROM _ts_applied_changes WHERE status = 'applied'"
        )
    }
    history = {
        r[0]: (r[1], r[2])
        for r in server.execute(
            "SELECT change_id, client_id, lsn FROM _ts_change_history WHERE client_id = ?", (who,)
        )
    }
    local = client.execute(
        "SELECT id, state, lsn, skip_reason, error FROM local_changes WHERE from_server = 0"
    ).fetchall()
    seen: set[str] = set()
    problems: dict[str, list[str]] = {}
    for change_id, state, lsn, skip_reason, error in local:
        seen.add(change_id)
        on_server = applied.get(change_id)
        if state == "synced":
            if on_server is None:
                problems.setdefault("synced but not applied on the server", []).append(change_id)
            elif on_server[0] != who:
                problems.setdefault("synced but applied for another client", []).append(change_id)
            elif lsn is not None and lsn != on_server[1]:
                problems.setdefault("synced at a different lsn", []).append(
                    f"{change_id} local {lsn} server {on_server[1]}"
                )
            elif change_id not in history:
                problems.setdefault("synced but absent from history", []).append(change_id)
        elif state in ("skipped", "rejected"):
            if on_server is not None:
                problems.setdefault(f"{state} but applied on the server", []).append(change_id)
            if not (skip_reason if state == "skipped" else error):
                problems.setdefault(f"{state} without a reason", []).append(change_id)
        elif state == "pending":
            problems.setdefault("still pending after settling", []).append(change_id)
        else:
            problems.setdefault(f"unknown state {state!r}", []).append(change_id)
    lost = sorted(
        cid for cid, (author, _lsn) in applied.items() if author == who and cid not in seen
    )
    if lost:
        problems["applied on the server, unknown locally"] = lost
    for what, ids in sorted(problems.items()):
        found.append(Violation("local_truth", who, f"{len(ids)} {what} (e.g. {ids[:_SAMPLE]})"))
    return found


def check_invariants(
    server_path: Path, client_paths: Sequence[Path], schema: Schema, *, settled: bool = True
) -> list[Violation]:
    """Every violation found; an empty list means the run kept every promise."""
    found: list[Violation] = []
    server = _open(server_path)
    try:
        server_lsn = int(
            server.execute("SELECT COALESCE(MAX(lsn), 0) FROM _ts_change_history").fetchone()[0]
        )
        dupes = server.execute(
            "SELECT change_id, COUNT(*) FROM _ts_change_history WHERE client_id IS NOT NULL "
            "GROUP BY change_id HAVING COUNT(*) > 1"
        ).fetchall()
        if dupes:
            found.append(
                Violation("history_unique", None, f"{len(dupes)} change ids: {dupes[:_SAMPLE]}")
            )
        orphans = server.execute(
            "SELECT a.change_id, a.lsn FROM _ts_applied_changes a WHERE a.status = 'applied' "
            "AND NOT EXISTS (SELECT 1 FROM _ts_change_history h "
            "WHERE h.change_id = a.change_id AND h.lsn = a.lsn)"
        ).fetchall()
        if orphans:
            found.append(
                Violation("applied_has_history", None, f"{len(orphans)}: {orphans[:_SAMPLE]}")
            )
        for path in client_paths:
            client = _open(path)
            try:
                state = dict(client.execute("SELECT key, value FROM sync_state").fetchall())
                who = str(state.get("client_id", path.name))
                lsn = int(state.get("lsn") or 0)
                if lsn > server_lsn:
                    found.append(
                        Violation("lsn", who, f"client {lsn} ahead of server {server_lsn}")
                    )
                elif settled and lsn != server_lsn:
                    found.append(Violation("lsn", who, f"client {lsn} behind server {server_lsn}"))
                if settled:
                    found += _compare_tables(server, client, schema, who)
                found += _local_truth(server, client, who) if settled else []
            finally:
                client.close()
    finally:
        server.close()
    return found
