"""Per-table checksums catch a client table that drifted from the server, and repair it.

Against the real ``tidesync serve`` subprocess with native clients on SQLite
files.  A table is corrupted behind the client's back (its file edited directly,
the recording triggers silenced); the integrity check finds it and the client
re-syncs *that table only* (extension ``clt_resync_tables``, docs/protocol.md):
the other tables are not written at all (a trigger counts every write to them and
their rowids stay), the repaired table equals the server's, and local changes
made while the repair runs survive it and reach the server.  A server without the
extension (``--no-table-resync`` answers like an old server, ``unknown_type``)
gets the old remedy, a full re-sync from ``0/0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.conftest import ServerFactory
from tests.helpers.server_process import ServerHandle
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.waits import eventually, holds

import tidesync

TIMEOUT = 30.0
SYNC = {"heartbeat_interval": 0.5, "checksum_interval": 0}  # checks only when asked


def _behind_the_clients_back(db_path: Path, *statements: str) -> None:
    """A bug's effect: rows changed locally without being recorded or synced."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE _ts_ctx SET applying = 1")  # the recording triggers stay quiet
        for statement in statements:
            conn.execute(statement)
        conn.execute("UPDATE _ts_ctx SET applying = 0")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _count_writes(db_path: Path, table: str) -> None:
    """A trigger counter of every insert, update and delete on ``table``."""
    _behind_the_clients_back(
        db_path,
        "CREATE TABLE IF NOT EXISTS test_writes (tbl TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        f"INSERT INTO test_writes VALUES ('{table}', 0)",
        *(
            f"CREATE TRIGGER test_count_{table}_{event} AFTER {event} ON {table} "
            f"BEGIN UPDATE test_writes SET n = n + 1 WHERE tbl = '{table}'; END"
            for event in ("INSERT", "UPDATE", "DELETE")
        ),
    )


def _read(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as conn:
        return conn.execute(sql).fetchall()


def _rows(db_path: Path, table: str) -> list[tuple[Any, ...]]:
    columns = {"projects": "id, name", "tasks": "id, project_id, title, done"}[table]
    return _read(db_path, f"SELECT {columns} FROM {table} ORDER BY id")


async def _seed(client: Any) -> None:
    for p in ("p1", "p2"):
        await client.insert("projects", {"id": p, "name": p.upper()})
    for i in range(1, 41):
        project = "p1" if i % 2 else "p2"
        await client.insert("tasks", {"id": f"t{i:02}", "project_id": project, "title": f"T{i}"})
    await client.wait_until_synced(TIMEOUT)


def _corrupt_tasks(db_path: Path) -> None:
    _behind_the_clients_back(
        db_path,
        "UPDATE tasks SET title = 'drifted' WHERE id = 't03'",
        "DELETE FROM tasks WHERE id = 't04'",
        "INSERT INTO tasks (id, project_id, title, done, updated_at) "
        "VALUES ('ghost', 'p1', 'never synced', 0, '2026-01-01T00:00:00.000Z')",
    )


def _stall_after_local_checksums(client: Any, proxy: TcpProxy) -> None:
    """Freeze the connection right after the client read its checksums, before it judges.

    So the table repair request goes out into a stalled connection, and the test
    can write locally while the repair is known to be under way.
    """
    changes = client.changes
    original = changes.table_checksums

    async def then_stall(tables: Any = None, **kwargs: Any) -> dict[str, str] | None:
        sums: dict[str, str] | None = await original(tables, **kwargs)
        proxy.stall()
        return sums

    changes.table_checksums = then_stall


async def test_checksum_mismatch_resyncs_and_keeps_unsent_changes(
    server: Any, tmp_path: Path
) -> None:
    db_path = tmp_path / "drifting.db"
    client = await tidesync.connect(server.ws_url, str(db_path), heartbeat_interval=0.5)
    try:
        await client.insert("projects", {"id": "p1", "name": "one"})
        await client.insert("projects", {"id": "p2", "name": "two"})
        await client.wait_until_synced(TIMEOUT)

        client.verify_integrity()  # nothing wrong yet: no repair
        await asyncio.sleep(1.0)
        assert client.status.repairs == 0

        _behind_the_clients_back(
            db_path,
            "UPDATE projects SET name = 'drifted' WHERE id = 'p1'",
            "DELETE FROM projects WHERE id = 'p2'",
        )
        client.verify_integrity()
        await eventually(holds(lambda: client.status.repairs == 1), TIMEOUT)
        await client.wait_until_synced(TIMEOUT)
        rows = await client.query("SELECT id, name FROM projects ORDER BY id")
        assert rows == [{"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}]
        await eventually(holds(lambda: client.status.table_repairs == 1), TIMEOUT)
        assert client.status.full_resyncs == 0
    finally:
        await client.close()


async def test_only_the_differing_table_is_resynced_and_local_edits_made_meanwhile_survive(
    server: ServerHandle,
    tmp_path: Path,
    proxy_to: Callable[[ServerHandle], Awaitable[TcpProxy]],
) -> None:
    proxy = await proxy_to(server)
    db_path = tmp_path / "drifting.db"
    client = await tidesync.connect(proxy.ws_url(), str(db_path), **SYNC)  # type: ignore[arg-type]
    other = await tidesync.connect(server.ws_url, str(tmp_path / "other.db"), **SYNC)  # type: ignore[arg-type]
    try:
        await _seed(client)
        await other.wait_until_synced(TIMEOUT)
        await other.update("projects", {"id": "p2", "name": "P2 renamed"})  # the LSN moves on
        await other.wait_until_synced(TIMEOUT)
        await eventually(holds(lambda: client.status.lsn >= other.status.lsn), TIMEOUT)

        _count_writes(db_path, "projects")
        projects_before = _read(db_path, "SELECT rowid, * FROM projects ORDER BY rowid")
        lsn_before = client.status.lsn
        _corrupt_tasks(db_path)
        _stall_after_local_checksums(client, proxy)
        client.verify_integrity()
        await eventually(holds(lambda: client.status.repairing == ("tasks",)), TIMEOUT)

        # Written while the repair is under way: held back (nothing may be in flight
        # between the snapshot and its swap), kept on top of the snapshot, then sent.
        await client.update("tasks", {"id": "t05", "title": "edited during the repair"})
        await client.insert("tasks", {"id": "t99", "project_id": "p1", "title": "new meanwhile"})
        during = client.status
        assert during.repairing == ("tasks",) and not during.synced
        assert during.last_error is not None and "repairing tasks" in during.last_error
        proxy.resume()

        await eventually(holds(lambda: client.status.table_repairs == 1), TIMEOUT)
        await client.wait_until_synced(TIMEOUT)
        status = client.status
        assert (status.repairs, status.full_resyncs) == (1, 0)
        assert (status.last_repair, status.last_repair_mode) == (("tasks",), "tables")
        assert status.repairing == () and status.last_error is None
        assert status.lsn >= lsn_before

        # Not one write to the other table; its rows are the very same rows.
        assert _read(db_path, "SELECT n FROM test_writes WHERE tbl = 'projects'") == [(0,)]
        assert _read(db_path, "SELECT rowid, * FROM projects ORDER BY rowid") == projects_before
        # The repaired table equals the server's, the local edits included.
        assert _rows(db_path, "tasks") == _rows(server.db_path, "tasks")
        assert _rows(db_path, "projects") == _rows(server.db_path, "projects")
        tasks = {r[0]: r[2] for r in _rows(server.db_path, "tasks")}
        assert tasks["t03"] == "T3" and "t04" in tasks and "ghost" not in tasks
        assert tasks["t05"] == "edited during the repair" and tasks["t99"] == "new meanwhile"
        await other.wait_until_synced(TIMEOUT)
        assert _rows(tmp_path / "other.db", "tasks") == _rows(server.db_path, "tasks")
    finally:
        await client.close()
        await other.close()


async def test_a_repair_cut_off_midway_is_asked_again_on_the_next_connection(
    server: ServerHandle,
    tmp_path: Path,
    proxy_to: Callable[[ServerHandle], Awaitable[TcpProxy]],
) -> None:
    proxy = await proxy_to(server)
    db_path = tmp_path / "drifting.db"
    client = await tidesync.connect(proxy.ws_url(), str(db_path), **SYNC)  # type: ignore[arg-type]
    try:
        await _seed(client)
        _count_writes(db_path, "projects")
        _corrupt_tasks(db_path)
        _stall_after_local_checksums(client, proxy)
        client.verify_integrity()
        await eventually(holds(lambda: client.status.repairing == ("tasks",)), TIMEOUT)
        proxy.drop_all()  # the request never reached the server, or its answer was lost
        proxy.resume()

        await eventually(holds(lambda: client.status.table_repairs == 1), TIMEOUT)
        await client.wait_until_synced(TIMEOUT)
        assert client.status.full_resyncs == 0
        assert _rows(db_path, "tasks") == _rows(server.db_path, "tasks")
        assert _read(db_path, "SELECT n FROM test_writes WHERE tbl = 'projects'") == [(0,)]
    finally:
        await client.close()


async def test_a_server_without_the_extension_gets_the_full_resync(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(no_table_resync=True)
    db_path = tmp_path / "drifting.db"
    client = await tidesync.connect(server.ws_url, str(db_path), **SYNC)  # type: ignore[arg-type]
    try:
        await _seed(client)
        _corrupt_tasks(db_path)
        client.verify_integrity()
        await eventually(holds(lambda: client.status.full_resyncs == 1), TIMEOUT)
        await client.wait_until_synced(TIMEOUT)
        status = client.status
        assert (status.repairs, status.table_repairs) == (1, 0)
        assert (status.last_repair, status.last_repair_mode) == (("tasks",), "full")
        assert _rows(db_path, "tasks") == _rows(server.db_path, "tasks")
        assert _rows(db_path, "projects") == _rows(server.db_path, "projects")
    finally:
        await client.close()
