"""Applying server batches: atomic with the LSN, retried, LWW against pending local changes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.retry_manager import RetryPolicy
from tidesync.changes.worker import ChangesWorker
from tidesync.worker_sync.shared.hlc import format_timestamp
from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    Operation,
    TableChange,
)

T0 = 1_800_000_000_000
OTHER = "ffffffff-other-client"


def change(
    cid: str, lsn: int, op: str, table: str = "tasks", *, at: int = T0, by: str = OTHER, **data: Any
) -> TableChange:
    return TableChange(
        id=cid,
        table=table,
        operation=Operation(op),
        data=data,
        updated_at=format_timestamp(at),
        lsn=lsn,
        client_id=by,
    )


class Sleeper:
    """The injected sleep: records delays and runs a hook (e.g. the disk recovers)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.hook: Any = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hook:
            self.hook()


@pytest.fixture
def sleeper() -> Sleeper:
    return Sleeper()


@pytest.fixture
async def worker(tmp_path: Path, sleeper: Sleeper) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(
        str(tmp_path / "client.db"),
        now_ms=lambda: T0,
        sleep=sleeper,
        retry_policy=RetryPolicy(base=0.01, max_attempts=3, jitter=0),
    )
    yield w
    await w.close()


@pytest.fixture
def side(tmp_path: Path, worker: ChangesWorker) -> sqlite3.Connection:
    """A second connection to the same file: a test-only failure switch on tasks."""
    conn = sqlite3.connect(str(tmp_path / "client.db"), isolation_level=None)
    conn.executescript(
        "CREATE TABLE fail_ids (id TEXT PRIMARY KEY);"
        "CREATE TRIGGER fail_tasks BEFORE INSERT ON tasks "
        "WHEN NEW.id IN (SELECT id FROM fail_ids) BEGIN SELECT RAISE(ABORT, 'disk says no'); END;"
    )
    return conn


async def rows(w: ChangesWorker, table: str = "tasks") -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in await w.query(f"SELECT * FROM {table}")}


async def server_history(w: ChangesWorker) -> dict[str, dict[str, Any]]:
    found = await w.query("SELECT * FROM local_changes WHERE from_server = 1")
    return {r["id"]: r for r in found}


async def test_batch_applies_with_its_lsn_and_records_history(worker: ChangesWorker) -> None:
    batch = [
        change("s1", 3, "insert", "projects", id="p1", name="P"),
        change("s2", 4, "insert", id="t1", project_id="p1", title="T"),
        change("s3", 5, "update", id="t1", done=1),
    ]
    outcome = await worker.apply_server_changes(batch, 6, source="live")
    assert (outcome.lsn, outcome.applied, outcome.tables) == (6, 3, ("projects", "tasks"))
    assert (await worker.local_state()).lsn == 6
    assert (await rows(worker))["t1"]["done"] == 1
    history = await server_history(worker)
    assert {h["state"] for h in history.values()} == {"applied"}
    assert history["s2"]["lsn"] == 4 and history["s2"]["client_id"] == OTHER
    assert (await worker.local_state()).pending_count == 0  # triggers were off


async def test_resent_change_applies_once(worker: ChangesWorker) -> None:
    first = change("s1", 3, "insert", id="t1", title="T")
    await worker.apply_server_changes([first], 3, source="live")
    await worker.execute("UPDATE tasks SET title = 'local edit'")
    again = await worker.apply_server_changes([first], 3, source="catchup")
    assert (again.applied, again.lsn) == (0, 3)
    assert (await rows(worker))["t1"]["title"] == "local edit"


async def test_lsn_never_moves_without_changes_and_a_retry_applies_the_batch(
    worker: ChangesWorker, side: sqlite3.Connection, sleeper: Sleeper
) -> None:
    side.execute("INSERT INTO fail_ids VALUES ('t2')")
    seen: list[Any] = []

    def recover() -> None:
        # While the batch waits for its retry nothing of it is visible, the LSN included.
        seen.append(side.execute("SELECT count(*) FROM tasks").fetchone()[0])
        seen.append(side.execute("SELECT value FROM sync_state WHERE key = 'lsn'").fetchone())
        seen.append(
            side.execute(
                "SELECT state, attempts, error FROM local_changes WHERE id = 's2'"
            ).fetchone()
        )
        side.execute("DELETE FROM fail_ids")

    sleeper.hook = recover
    batch = [
        change("s1", 1, "insert", id="t1", title="a"),
        change("s2", 2, "insert", id="t2", title="b"),
    ]
    outcome = await worker.apply_server_changes(batch, 2, source="live")
    assert seen[0] == 0 and seen[1] is None
    assert seen[2][0:2] == ("retrying", 1) and "disk says no" in seen[2][2]
    assert len(sleeper.delays) == 1
    assert (outcome.applied, outcome.lsn) == (2, 2)
    history = await server_history(worker)
    assert history["s2"]["state"] == "applied" and history["s2"]["attempts"] == 1


async def test_a_change_that_always_fails_is_marked_failed_and_the_lsn_moves_on(
    worker: ChangesWorker, side: sqlite3.Connection, sleeper: Sleeper
) -> None:
    side.execute("INSERT INTO fail_ids VALUES ('t2')")
    batch = [
        change("s1", 1, "insert", id="t1", title="a"),
        change("s2", 2, "insert", id="t2", title="b"),
        change("s3", 3, "insert", id="t3", title="c"),
    ]
    outcome = await worker.apply_server_changes(batch, 3, source="live")
    assert (outcome.applied, outcome.failed, outcome.lsn) == (2, 1, 3)
    assert len(sleeper.delays) == 3 and sleeper.delays == sorted(sleeper.delays)
    assert set(await rows(worker)) == {"t1", "t3"}
    history = await server_history(worker)
    assert history["s2"]["state"] == "failed" and "disk says no" in history["s2"]["error"]
    assert (await worker.local_state()).lsn == 3


async def test_changes_that_do_not_fit_the_schema_fail_with_a_reason(worker: ChangesWorker) -> None:
    batch = [
        change("s1", 1, "insert", "nope", id="x"),
        change("s2", 2, "insert", id="t1", title="a", **{'title" = 1; --': 1}),
        change("s3", 3, "insert", id="t2", title="ok"),
    ]
    outcome = await worker.apply_server_changes(batch, 3, source="catchup")
    assert (outcome.applied, outcome.failed, outcome.lsn) == (1, 2, 3)
    history = await server_history(worker)
    assert "unknown table" in history["s1"]["error"]
    assert "unknown column" in history["s2"]["error"]


async def test_server_change_loses_to_a_newer_pending_local_change(worker: ChangesWorker) -> None:
    await worker.apply_server_changes(
        [change("s1", 1, "insert", id="t1", title="a")], 1, source="live"
    )
    await worker.update("tasks", {"id": "t1", "title": "mine"})  # at T0 + 1 (HLC)
    older = change("s2", 2, "update", at=T0 - 5_000, id="t1", title="theirs")
    outcome = await worker.apply_server_changes([older], 2, source="live")
    assert (outcome.skipped, outcome.lsn) == (1, 2)
    assert (await rows(worker))["t1"]["title"] == "mine"
    history = await server_history(worker)
    assert history["s2"]["state"] == "skipped"
    assert history["s2"]["skip_reason"] == "lost LWW to pending local change"


async def test_newer_server_change_beats_a_pending_local_change(worker: ChangesWorker) -> None:
    await worker.insert("tasks", {"id": "t1", "title": "mine"})
    newer = change("s1", 1, "update", at=T0 + 60_000, id="t1", title="theirs")
    outcome = await worker.apply_server_changes([newer], 1, source="live")
    assert outcome.applied == 1
    assert (await rows(worker))["t1"]["title"] == "theirs"


async def test_equal_times_are_broken_by_the_larger_client_id(worker: ChangesWorker) -> None:
    await worker.insert("tasks", {"id": "t1", "title": "mine"})
    [mine] = await worker.pending_changes()
    same_time = json.loads(mine["data"])["updated_at"]
    low = TableChange(
        id="s1",
        table="tasks",
        operation=Operation.UPDATE,
        data={"id": "t1", "title": "low"},
        updated_at=same_time,
        lsn=1,
        client_id="0",
    )
    assert (await worker.apply_server_changes([low], 1, source="live")).skipped == 1
    high = TableChange(
        id="s2",
        table="tasks",
        operation=Operation.UPDATE,
        data={"id": "t1", "title": "high"},
        updated_at=same_time,
        lsn=2,
        client_id="~",
    )
    assert (await worker.apply_server_changes([high], 2, source="live")).applied == 1
    assert (await rows(worker))["t1"]["title"] == "high"


async def test_losing_server_update_still_sets_columns_the_local_change_left_alone(
    worker: ChangesWorker,
) -> None:
    await worker.apply_server_changes(
        [change("s1", 1, "insert", id="t1", title="a")], 1, source="live"
    )
    await worker.update("tasks", {"id": "t1", "title": "mine"})
    older = change("s2", 2, "update", at=T0 - 5_000, id="t1", title="theirs", done=1)
    assert (await worker.apply_server_changes([older], 2, source="live")).applied == 1
    row = (await rows(worker))["t1"]
    assert (row["title"], row["done"]) == ("mine", 1)


async def test_pending_local_delete_wins_against_an_older_server_update(
    worker: ChangesWorker,
) -> None:
    await worker.apply_server_changes(
        [change("s1", 1, "insert", id="t1", title="a")], 1, source="live"
    )
    await worker.delete("tasks", "t1")
    older = change("s2", 2, "insert", at=T0 - 5_000, id="t1", title="back")
    assert (await worker.apply_server_changes([older], 2, source="live")).skipped == 1
    assert await rows(worker) == {}


async def test_change_acked_at_a_later_lsn_is_not_overwritten_by_an_earlier_one(
    worker: ChangesWorker,
) -> None:
    await worker.apply_server_changes(
        [change("s1", 1, "insert", id="t1", title="a")], 1, source="live"
    )
    await worker.update("tasks", {"id": "t1", "title": "mine"})
    [mine] = await worker.unsynced_changes(10)
    await worker.record_results([ChangeResult(id=mine.id, status=ChangeStatus.APPLIED, lsn=9)])
    # A change committed on the server before ours (LSN 5 < 9) arrives in catchup later.
    earlier = change("s2", 5, "update", at=T0 + 90_000, id="t1", title="theirs", done=1)
    await worker.apply_server_changes([earlier], 9, source="catchup")
    row = (await rows(worker))["t1"]
    assert (row["title"], row["done"]) == ("mine", 1)


async def test_server_upsert_of_a_parent_does_not_cascade_to_children(
    worker: ChangesWorker,
) -> None:
    await worker.apply_server_changes(
        [
            change("s1", 1, "insert", "projects", id="p1", name="P"),
            change("s2", 2, "insert", id="t1", project_id="p1", title="T"),
            change("s3", 3, "insert", "projects", id="p1", name="renamed"),
        ],
        3,
        source="live",
    )
    assert set(await rows(worker)) == {"t1"}
    assert (await rows(worker, "projects"))["p1"]["name"] == "renamed"


async def test_batch_with_child_before_parent_commits(worker: ChangesWorker) -> None:
    batch = [
        change("s1", 1, "insert", id="t1", project_id="p1", title="T"),
        change("s2", 2, "insert", "projects", id="p1", name="P"),
    ]
    assert (await worker.apply_server_changes(batch, 2, source="catchup")).applied == 2


async def test_advance_lsn_only_moves_forward(worker: ChangesWorker) -> None:
    await worker.advance_lsn(10)
    await worker.advance_lsn(4)
    assert (await worker.local_state()).lsn == 10


async def test_local_writes_go_on_while_a_failed_batch_waits_for_its_retry(
    tmp_path: Path,
) -> None:
    wrote: list[str] = []
    holder: dict[str, Any] = {}

    async def sleep(_delay: float) -> None:
        # Runs while the batch waits: the database must be free for the app.
        w: ChangesWorker = holder["worker"]
        await w.insert("projects", {"id": "p-during", "name": "written during backoff"})
        wrote.append("done")
        holder["side"].execute("DELETE FROM fail_ids")

    w = ChangesWorker(
        str(tmp_path / "client.db"),
        now_ms=lambda: T0,
        sleep=sleep,
        retry_policy=RetryPolicy(base=0.01, max_attempts=3, jitter=0),
    )
    holder["worker"] = w
    side = sqlite3.connect(str(tmp_path / "client.db"), isolation_level=None)
    side.executescript(
        "CREATE TABLE fail_ids (id TEXT PRIMARY KEY); INSERT INTO fail_ids VALUES ('t1');"
        "CREATE TRIGGER fail_tasks BEFORE INSERT ON tasks "
        "WHEN NEW.id IN (SELECT id FROM fail_ids) BEGIN SELECT RAISE(ABORT, 'disk says no'); END;"
    )
    holder["side"] = side
    outcome = await w.apply_server_changes(
        [change("s1", 1, "insert", id="t1", title="a")], 1, source="live"
    )
    assert wrote == ["done"] and (outcome.applied, outcome.lsn) == (1, 1)
    assert await w.pending_count() == 1
    side.close()
    await w.close()


async def test_a_change_with_a_bad_time_fails_alone(worker: ChangesWorker) -> None:
    bad = TableChange(
        id="s1",
        table="tasks",
        operation=Operation.INSERT,
        data={"id": "t1", "title": "a"},
        updated_at="yesterday",
        lsn=1,
    )
    outcome = await worker.apply_server_changes(
        [bad, change("s2", 2, "insert", id="t2", title="b")], 2, source="live"
    )
    assert (outcome.applied, outcome.failed, outcome.lsn) == (1, 1, 2)
    history = await server_history(worker)
    assert history["s1"]["state"] == "failed" and "updated_at" in history["s1"]["error"]
