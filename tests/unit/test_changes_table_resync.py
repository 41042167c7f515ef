"""The Changes side of a table repair: swap in some tables, keep the rest, never go back."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from tidesync.changes.worker import ChangesWorker
from tidesync.worker_sync.shared.message_types import Operation, TableChange

T0 = 1_800_000_000_000
AT = "2027-01-15T08:00:00.000Z"
LATER = "2027-01-15T09:00:00.000Z"
C = 0x10  # the client's LSN
S = 0x20  # the repair snapshot's LSN


def snap(table: str, **data: Any) -> TableChange:
    return TableChange(
        id=f"snap-{table}-{data['id']}", table=table, operation=Operation.INSERT, data=data,
        updated_at=AT,
    )  # fmt: skip


def server_change(table: str, lsn: int, op: Operation, **data: Any) -> TableChange:
    return TableChange(
        id=f"srv-{table}-{data['id']}-{lsn}", table=table, operation=op, data=data,
        updated_at=LATER, lsn=lsn, client_id="other",
    )  # fmt: skip


PROJECTS = [snap("projects", id=f"p{i}", name=f"P{i}", updated_at=AT) for i in (1, 2)]


def task(key: str, title: str, project: str = "p1") -> TableChange:
    return snap("tasks", id=key, project_id=project, title=title, done=0, updated_at=AT)


async def _opened(path: Path) -> ChangesWorker:
    """A client at LSN ``C`` holding 2 projects and 3 tasks, with a write counter per table."""
    worker = ChangesWorker(str(path), now_ms=lambda: T0)
    await worker.begin_initial_sync(C)
    await worker.stage_initial_chunk("projects", PROJECTS)
    await worker.stage_initial_chunk("tasks", [task(f"t{i}", f"T{i}") for i in (1, 2, 3)])
    await worker.commit_initial_sync(C)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE writes (tbl TEXT PRIMARY KEY, n INTEGER)")
        for table in ("projects", "tasks"):
            conn.execute("INSERT INTO writes VALUES (?, 0)", (table,))
            for event in ("INSERT", "UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER count_{table}_{event} AFTER {event} ON {table} "
                    f"BEGIN UPDATE writes SET n = n + 1 WHERE tbl = '{table}'; END"
                )
    return worker


def _writes(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT tbl, n FROM writes").fetchall())


def _behind_its_back(path: Path, *sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE _ts_ctx SET applying = 1")
        for statement in sql:
            conn.execute(statement)
        conn.execute("UPDATE _ts_ctx SET applying = 0")


async def _rows(worker: ChangesWorker, table: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: dict(r) for r in await worker.query(f"SELECT * FROM {table}")}


async def _repair(worker: ChangesWorker, table: str, rows: list[TableChange]) -> None:
    await worker.begin_initial_sync(S)
    if rows:
        await worker.stage_initial_chunk(table, rows)
    await worker.commit_table_resync([table], S)


async def test_only_the_repaired_table_is_rewritten_and_pending_changes_stay_on_top(
    tmp_path: Path,
) -> None:
    path = tmp_path / "client.db"
    worker = await _opened(path)
    try:
        _behind_its_back(
            path,
            "UPDATE tasks SET title = 'drifted' WHERE id = 't2'",
            "DELETE FROM tasks WHERE id = 't3'",
        )
        await worker.update("tasks", {"id": "t1", "title": "mine, offline"})
        await worker.insert("tasks", {"id": "local", "project_id": "p2", "title": "new"})
        projects_before = await _rows(worker, "projects")
        before = _writes(path)

        server_tasks = [task("t1", "T1 at S"), task("t2", "T2"), task("t3", "T3"), task("t4", "T4")]
        await _repair(worker, "tasks", server_tasks)

        assert _writes(path)["projects"] == before["projects"]  # not one write
        assert await _rows(worker, "projects") == projects_before
        tasks = await _rows(worker, "tasks")
        assert {k: v["title"] for k, v in tasks.items()} == {
            "t1": "mine, offline",  # pending: its column stays local until the server has it
            "t2": "T2",
            "t3": "T3",
            "t4": "T4",
            "local": "new",  # a pending insert the server does not know yet
        }
        assert (await worker.local_state()).lsn == C  # the other tables stay at their LSN
        assert (await worker.local_state()).pending_count == 2
    finally:
        await worker.close()


async def test_changes_the_snapshot_holds_are_passed_over_even_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "client.db"
    worker = await _opened(path)
    await _repair(worker, "tasks", [task("t1", "T1 at S"), task("t2", "T2"), task("t3", "T3")])
    await worker.close()

    worker = ChangesWorker(str(path), now_ms=lambda: T0)  # a restart before the LSN reaches S
    try:
        old = server_change("tasks", S - 1, Operation.UPDATE, id="t1", title="T1 before S")
        other = server_change("projects", S - 1, Operation.UPDATE, id="p1", name="P1 renamed")
        outcome = await worker.apply_server_changes([old, other], S - 1, source="catchup")
        assert outcome.lsn == S - 1
        assert (await _rows(worker, "tasks"))["t1"]["title"] == "T1 at S"  # not regressed
        assert (await _rows(worker, "projects"))["p1"]["name"] == "P1 renamed"  # still at C+

        newer = server_change("tasks", S + 1, Operation.UPDATE, id="t1", title="T1 after S")
        await worker.apply_server_changes([newer], S + 1, source="live")
        assert (await _rows(worker, "tasks"))["t1"]["title"] == "T1 after S"
    finally:
        await worker.close()


async def test_repairing_a_parent_does_not_cascade_into_its_children(tmp_path: Path) -> None:
    path = tmp_path / "client.db"
    worker = await _opened(path)
    try:
        _behind_its_back(path, "UPDATE projects SET name = 'drifted' WHERE id = 'p1'")
        tasks_before = await _rows(worker, "tasks")
        before = _writes(path)
        await _repair(worker, "projects", PROJECTS)
        assert (await _rows(worker, "projects"))["p1"]["name"] == "P1"
        assert await _rows(worker, "tasks") == tasks_before  # ON DELETE CASCADE did not fire
        assert _writes(path)["tasks"] == before["tasks"]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        await worker.close()


async def test_an_empty_snapshot_empties_the_table_but_keeps_pending_rows(tmp_path: Path) -> None:
    path = tmp_path / "client.db"
    worker = await _opened(path)
    try:
        await worker.insert("tasks", {"id": "local", "project_id": "p1", "title": "new"})
        await _repair(worker, "tasks", [])
        assert set(await _rows(worker, "tasks")) == {"local"}
    finally:
        await worker.close()


async def test_a_reinit_forgets_the_floors(tmp_path: Path) -> None:
    path = tmp_path / "client.db"
    worker = await _opened(path)
    try:
        await _repair(worker, "tasks", [task("t1", "T1")])
        await worker.reset_for_reinit()
        await worker.begin_initial_sync(3)  # a new server whose LSNs start low
        await worker.commit_initial_sync(3)
        change = server_change("tasks", 4, Operation.INSERT, id="t9", project_id=None, title="x",
                               done=0, updated_at=LATER)  # fmt: skip
        await worker.apply_server_changes([change], 4, source="live")
        assert "t9" in await _rows(worker, "tasks")
    finally:
        await worker.close()
