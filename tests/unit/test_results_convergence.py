"""A refused or losing local change with a newer pending one: the client still converges.

Seeds 106 and 204 of the simulation (5 clients x 2,000 operations) found it: a
client's pending insert beat another client's insert of the same row, so that
server change was skipped locally; the server then refused the insert (its
parent was gone there) and answered with its own row, which the client ignored
because a later local update of the row was still pending.  That update, sent
with only its changed columns, was applied on top of the server's row; the
client kept the refused insert's values in the other columns, for good.

Here the real server ``apply_changes`` and the real ``ChangesWorker`` replay
that sequence without a network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.worker import ChangesWorker
from tidesync.server.apply import apply_changes, current_row
from tidesync.server.store import Store, read_history
from tidesync.worker_sync.shared.hlc import format_timestamp
from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    Operation,
    TableChange,
)

T0 = 1_800_000_000_000


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(str(tmp_path / "client.db"), now_ms=lambda: T0)
    yield w
    await w.close()


@pytest.fixture
def server(tmp_path: Path) -> Store:
    return Store(tmp_path / "server.db")


def server_task(store: Store, task_id: str) -> dict[str, Any] | None:
    table = store.schema.table("tasks")
    assert table is not None
    return current_row(store.writer, table, (task_id,))


async def client_task(w: ChangesWorker, task_id: str) -> dict[str, Any] | None:
    found = await w.query("SELECT * FROM tasks WHERE id = ?", (task_id,))
    return dict(found[0]) if found else None


async def receive_all(w: ChangesWorker, store: Store) -> None:
    history = read_history(store.writer, 0, 100)
    changes = [row.to_change() for row in history]
    await w.apply_server_changes(changes, store.current_lsn(), source="live")


async def send_tasks(w: ChangesWorker, store: Store) -> list[ChangeResult]:
    """Send the client's pending task changes (not its project) and settle the results."""
    batch = [c for c in await w.unsynced_changes(10) if c.table == "tasks"]
    results = apply_changes(store.writer, store.schema, w.client_id, batch)
    await w.record_results(results)
    return results


async def test_rejected_insert_then_applied_partial_update_converges(
    client: ChangesWorker, server: Store
) -> None:
    bob = TableChange(
        id="bob-1",
        table="tasks",
        operation=Operation.INSERT,
        data={"id": "t1", "project_id": None, "title": "theirs", "done": 1},
        updated_at=format_timestamp(T0 - 5_000),
    )
    [result] = apply_changes(server.writer, server.schema, "bob", [bob])
    assert result.status is ChangeStatus.APPLIED

    # The client's parent exists only here, so the server refuses the task insert.
    await client.insert("projects", {"id": "p-local", "name": "P"})
    await client.insert("tasks", {"id": "t1", "project_id": "p-local", "title": "mine"})
    await client.update("tasks", {"id": "t1", "done": 5})
    await receive_all(client, server)  # bob's older insert loses to the pending one
    assert (await client_task(client, "t1") or {})["title"] == "mine"

    results = await send_tasks(client, server)
    assert [r.status for r in results] == [ChangeStatus.REJECTED, ChangeStatus.APPLIED]
    theirs = server_task(server, "t1")
    assert theirs is not None and (theirs["title"], theirs["done"]) == ("theirs", 5)
    assert await client_task(client, "t1") == theirs


async def test_losing_update_then_applied_update_of_other_columns_converges(
    client: ChangesWorker, server: Store
) -> None:
    first = TableChange(
        id="srv-1",
        table="tasks",
        operation=Operation.INSERT,
        data={"id": "t1", "title": "a", "done": 0},
        updated_at=format_timestamp(T0 - 60_000),
    )
    apply_changes(server.writer, server.schema, "bob", [first])
    await receive_all(client, server)
    await client.update("tasks", {"id": "t1", "title": "mine"})  # at T0
    await client.update("tasks", {"id": "t1", "done": 7})  # at T0 + 1 ms
    # Bob's title, between the client's two updates, reaches the server first.
    bob = TableChange(
        id="bob-2",
        table="tasks",
        operation=Operation.UPDATE,
        data={"id": "t1", "title": "theirs"},
        updated_at=format_timestamp(T0),
    )
    apply_changes(server.writer, server.schema, "~bob", [bob])  # wins the tie on client id

    results = await send_tasks(client, server)
    assert [r.status for r in results] == [ChangeStatus.SKIPPED, ChangeStatus.APPLIED]
    theirs = server_task(server, "t1")
    assert theirs is not None and (theirs["title"], theirs["done"]) == ("theirs", 7)
    assert await client_task(client, "t1") == theirs


async def test_a_pending_delete_keeps_the_row_absent(client: ChangesWorker, server: Store) -> None:
    first = TableChange(
        id="srv-1",
        table="tasks",
        operation=Operation.INSERT,
        data={"id": "t1", "title": "a", "done": 0},
        updated_at=format_timestamp(T0 - 60_000),
    )
    apply_changes(server.writer, server.schema, "bob", [first])
    await receive_all(client, server)
    await client.update("tasks", {"id": "t1", "title": "mine"})
    [update] = await client.unsynced_changes(10)
    await client.delete("tasks", "t1")
    row = {"id": "t1", "project_id": None, "title": "theirs", "done": 0, "updated_at": "x"}
    await client.record_results(
        [ChangeResult(id=update.id, status=ChangeStatus.SKIPPED, reason="lww", row=row)]
    )
    assert await client_task(client, "t1") is None
