"""Initial sync, reinit and srv_changes_applied results on the Changes side."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.worker import ChangesWorker
from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    Operation,
    TableChange,
)

T0 = 1_800_000_000_000
AT = "2027-01-15T08:00:00.000Z"


def snap(table: str, **data: Any) -> TableChange:
    return TableChange(
        id=f"init-{table}-{data['id']}",
        table=table,
        operation=Operation.INSERT,
        data=data,
        updated_at=AT,
    )


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(str(tmp_path / "client.db"), now_ms=lambda: T0)
    yield w
    await w.close()


async def ids(w: ChangesWorker, table: str) -> set[str]:
    return {r["id"] for r in await w.query(f"SELECT id FROM {table}")}


async def test_staged_snapshot_is_invisible_until_commit(
    worker: ChangesWorker, tmp_path: Path
) -> None:
    await worker.begin_initial_sync(7)
    await worker.stage_initial_chunk("projects", [snap("projects", id="p1", name="P")])
    await worker.stage_initial_chunk("tasks", [snap("tasks", id="t1", project_id="p1", title="T")])
    other = sqlite3.connect(str(tmp_path / "client.db"))
    assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    assert await ids(worker, "tasks") == set()
    assert (await worker.local_state()).initialized is False
    outcome = await worker.commit_initial_sync(7)
    assert (outcome.applied, outcome.lsn) == (2, 7)
    assert other.execute("SELECT title, updated_at FROM tasks").fetchone() == ("T", AT)
    state = await worker.local_state()
    assert (state.lsn, state.initialized, state.pending_count) == (7, True, 0)


async def test_abort_drops_the_staged_rows(worker: ChangesWorker) -> None:
    await worker.begin_initial_sync(7)
    await worker.stage_initial_chunk("projects", [snap("projects", id="p1", name="P")])
    await worker.abort_initial_sync()
    await worker.begin_initial_sync(8)
    await worker.stage_initial_chunk("projects", [snap("projects", id="p2", name="Q")])
    await worker.commit_initial_sync(8)
    assert await ids(worker, "projects") == {"p2"}


async def test_snapshot_replaces_synced_rows_but_keeps_pending_ones(worker: ChangesWorker) -> None:
    await worker.begin_initial_sync(1)
    await worker.stage_initial_chunk(
        "projects", [snap("projects", id="p1", name="P"), snap("projects", id="gone", name="G")]
    )
    await worker.stage_initial_chunk("tasks", [snap("tasks", id="t1", project_id="p1", title="T")])
    await worker.commit_initial_sync(1)
    await worker.update("tasks", {"id": "t1", "title": "edited offline"})
    await worker.insert("tasks", {"id": "t-new", "project_id": "gone", "title": "child"})

    await worker.begin_initial_sync(5)
    await worker.stage_initial_chunk("projects", [snap("projects", id="p1", name="P2")])
    await worker.stage_initial_chunk(
        "tasks",
        [
            snap("tasks", id="t1", project_id="p1", title="server title", done=1),
            snap("tasks", id="t2", project_id="p1", title="new on server"),
        ],
    )
    outcome = await worker.commit_initial_sync(5)
    assert (outcome.applied, outcome.skipped) == (3, 0)
    tasks = {r["id"]: r for r in await worker.query("SELECT * FROM tasks")}
    # t1 keeps the column its pending change wrote and takes the server's others,
    # which is the row the server holds once it applies the pending change.
    assert (tasks["t1"]["title"], tasks["t1"]["done"]) == ("edited offline", 1)
    assert set(tasks) == {"t1", "t2", "t-new"}  # the pending child survived its parent's removal
    assert await ids(worker, "projects") == {"p1"}
    assert (await worker.local_state()).pending_count == 2


async def test_snapshot_leaves_a_pending_delete_deleted_and_a_pending_insert_local(
    worker: ChangesWorker,
) -> None:
    await worker.begin_initial_sync(1)
    await worker.stage_initial_chunk(
        "projects", [snap("projects", id="p1", name="P"), snap("projects", id="p2", name="Q")]
    )
    await worker.commit_initial_sync(1)
    await worker.delete("projects", "p1")
    await worker.insert("projects", {"id": "p3", "name": "mine"})

    await worker.begin_initial_sync(4)
    await worker.stage_initial_chunk(
        "projects",
        [
            snap("projects", id="p1", name="P"),
            snap("projects", id="p2", name="Q2"),
            snap("projects", id="p3", name="same id made elsewhere"),
        ],
    )
    outcome = await worker.commit_initial_sync(4)
    assert (outcome.applied, outcome.skipped) == (1, 2)
    projects = {r["id"]: r["name"] for r in await worker.query("SELECT * FROM projects")}
    assert projects == {"p2": "Q2", "p3": "mine"}
    assert (await worker.local_state()).pending_count == 2


async def test_reset_for_reinit_keeps_unsent_changes_only(worker: ChangesWorker) -> None:
    await worker.apply_server_changes(
        [
            TableChange(
                id="s1",
                table="projects",
                operation=Operation.INSERT,
                data={"id": "p1", "name": "P"},
                updated_at=AT,
                lsn=3,
            )
        ],
        3,
        source="live",
    )
    await worker.insert("projects", {"id": "mine", "name": "unsent"})
    await worker.reset_for_reinit()
    state = await worker.local_state()
    assert (state.lsn, state.initialized, state.pending_count) == (0, False, 1)
    assert await ids(worker, "projects") == {"mine"}
    [change] = await worker.unsynced_changes(10)
    assert change.data["id"] == "mine"


async def test_applied_result_marks_the_change_synced(worker: ChangesWorker) -> None:
    await worker.insert("projects", {"id": "p1", "name": "P"})
    [change] = await worker.unsynced_changes(10)
    await worker.mark_sent([change.id])
    outcome = await worker.record_results(
        [
            ChangeResult(id=change.id, status=ChangeStatus.APPLIED, lsn=12),
            ChangeResult(id="not-mine", status=ChangeStatus.APPLIED, lsn=13),
        ]
    )
    assert outcome.applied == 1
    [row] = await worker.local_changes(10)
    assert (row["state"], row["lsn"], row["attempts"], row["processed_sync"]) == (
        "synced",
        12,
        1,
        1,
    )
    assert await worker.unsynced_changes(10) == []


async def test_skipped_result_with_row_converges_on_the_server_row(worker: ChangesWorker) -> None:
    await worker.insert("projects", {"id": "p1", "name": "mine"})
    [change] = await worker.unsynced_changes(10)
    server_row = {"id": "p1", "name": "theirs", "updated_at": AT}
    outcome = await worker.record_results(
        [ChangeResult(id=change.id, status=ChangeStatus.SKIPPED, reason="lww", row=server_row)]
    )
    assert (outcome.skipped, outcome.tables) == (1, ("projects",))
    assert await worker.query("SELECT * FROM projects") == [server_row]
    [row] = await worker.local_changes(10)
    assert (row["state"], row["skip_reason"]) == ("skipped", "lww")
    assert (await worker.local_state()).pending_count == 0


async def test_skipped_result_does_not_overwrite_a_newer_pending_edit(
    worker: ChangesWorker,
) -> None:
    await worker.insert("projects", {"id": "p1", "name": "first"})
    [first] = await worker.unsynced_changes(10)
    await worker.update("projects", {"id": "p1", "name": "second"})
    await worker.record_results(
        [
            ChangeResult(
                id=first.id,
                status=ChangeStatus.SKIPPED,
                reason="lww",
                row={"id": "p1", "name": "theirs", "updated_at": AT},
            )
        ]
    )
    assert (await worker.query("SELECT name FROM projects"))[0]["name"] == "second"


async def test_rejected_insert_is_undone_and_never_resent(worker: ChangesWorker) -> None:
    await worker.insert("projects", {"id": "p1", "name": "bad"})
    [change] = await worker.unsynced_changes(10)
    outcome = await worker.record_results(
        [
            ChangeResult(
                id=change.id,
                status=ChangeStatus.REJECTED,
                reason="not allowed",
                row=None,
                row_deleted=True,
            )
        ]
    )
    assert outcome.failed == 1
    assert await worker.query("SELECT * FROM projects") == []
    [row] = await worker.local_changes(10, state="rejected")
    assert row["error"] == "not allowed"
    assert await worker.unsynced_changes(10) == []
    assert len(await worker.local_changes(10)) == 1  # the undo itself was not recorded
