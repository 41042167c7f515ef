"""Local writes: each one records exactly its local_changes row in the same transaction."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes import local_schema
from tidesync.changes.db import stored_clock
from tidesync.changes.worker import ChangesWorker
from tidesync.changes.writes import WriteError, WriteOp
from tidesync.worker_sync.shared.hlc import parse_timestamp

T0 = 1_800_000_000_000


def fixed_clock(start: int = T0) -> Callable[[], int]:
    return lambda: start


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(str(tmp_path / "client.db"), now_ms=fixed_clock())
    yield w
    await w.close()


async def changes(w: ChangesWorker) -> list[dict[str, Any]]:
    rows = await w.query("SELECT * FROM local_changes ORDER BY seq")
    for row in rows:
        row["data"] = json.loads(row["data"])
    return rows


async def seed(w: ChangesWorker) -> None:
    await w.insert("projects", {"id": "p1", "name": "P"})
    await w.insert("tasks", {"id": "t1", "project_id": "p1", "title": "T", "done": 0})


async def test_insert_records_the_whole_row_once(worker: ChangesWorker) -> None:
    await worker.insert("projects", {"id": "p1", "name": "P"})
    [change] = await changes(worker)
    assert change["operation"] == "insert"
    assert change["table_name"] == "projects"
    assert change["state"] == "pending" and change["from_server"] == 0
    assert change["data"] == {"id": "p1", "name": "P", "updated_at": change["updated_at"]}
    assert change["pk"] == '["p1"]'
    assert uuid.UUID(change["id"]).version == 7


async def test_change_ids_are_uuid7_of_the_change_time_and_sort_in_write_order(
    worker: ChangesWorker,
) -> None:
    # Time first: the UNIQUE index on local_changes.id grows at its right edge (one page of it
    # per checkpoint, not one per commit); the random tail keeps ids from clients apart.
    for i in range(50):
        await worker.insert("projects", {"id": f"p{i}", "name": "P"})
    await worker.update("projects", {"id": "p0", "name": "Q"})
    await worker.delete("projects", {"id": "p1"})
    rows = await changes(worker)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids) == 52
    for row in rows:
        parsed = uuid.UUID(row["id"])
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert str(parsed) == row["id"]  # canonical: lower case, hyphens where they belong
        assert parsed.int >> 80 == parse_timestamp(row["updated_at"])  # ms of the change time
    assert ids == sorted(ids)  # the HLC moves forward, so the time fields do too


async def test_update_records_only_changed_columns_including_null(worker: ChangesWorker) -> None:
    await seed(worker)
    await worker.update("tasks", {"id": "t1", "project_id": None, "title": "T"})
    change = (await changes(worker))[-1]
    assert change["operation"] == "update"
    assert change["data"] == {"id": "t1", "project_id": None, "updated_at": change["updated_at"]}


async def test_raw_execute_is_recorded_and_unchanged_rows_are_not(worker: ChangesWorker) -> None:
    await seed(worker)
    result = await worker.execute("UPDATE tasks SET done = ? WHERE id = ?", [1, "t1"])
    assert result["rowsAffected"] == 1
    before = await worker.query("SELECT updated_at FROM tasks WHERE id = 't1'")
    await worker.execute("UPDATE tasks SET done = 1")  # no value changes: nothing to record
    rows = await changes(worker)
    assert len(rows) == 3
    # Raw SQL left updated_at alone: the change and the row both take the change's time,
    # as the server will (the author never gets its own change back to correct it).
    assert rows[-1]["data"] == {"id": "t1", "done": 1, "updated_at": rows[-1]["updated_at"]}
    assert await worker.query("SELECT updated_at FROM tasks WHERE id = 't1'") == before
    assert before == [{"updated_at": rows[-1]["updated_at"]}]


async def test_primary_key_change_is_recorded_as_delete_then_insert(worker: ChangesWorker) -> None:
    await seed(worker)
    await worker.execute("UPDATE tasks SET id = 't2' WHERE id = 't1'")
    delete, insert = (await changes(worker))[-2:]
    assert (delete["operation"], delete["data"]) == ("delete", {"id": "t1"})
    assert insert["operation"] == "insert" and insert["data"]["id"] == "t2"
    assert insert["data"]["title"] == "T"


async def test_delete_records_the_key(worker: ChangesWorker) -> None:
    await seed(worker)
    await worker.delete("tasks", "t1")
    assert (await changes(worker))[-1]["data"] == {"id": "t1"}


async def test_failing_write_records_nothing(worker: ChangesWorker) -> None:
    await seed(worker)
    with pytest.raises(sqlite3.IntegrityError):
        await worker.insert("tasks", {"id": "t1", "title": "dup"})
    with pytest.raises(sqlite3.IntegrityError):
        await worker.run_transaction(
            [
                WriteOp("insert", "tasks", {"id": "t9", "title": "ok"}),
                WriteOp("insert", "tasks", {"id": "t1", "title": "dup"}),
            ]
        )
    assert len(await changes(worker)) == 2
    assert [r["id"] for r in await worker.query("SELECT id FROM tasks")] == ["t1"]


async def test_transaction_context_commits_all_or_nothing(worker: ChangesWorker) -> None:
    await seed(worker)
    with pytest.raises(RuntimeError):
        async with worker.transaction() as tx:
            await tx.insert("tasks", {"id": "t2", "title": "a"})
            raise RuntimeError("app bug")
    async with worker.transaction() as tx:
        await tx.insert("tasks", {"id": "t3", "title": "b"})
        await tx.update("tasks", {"id": "t3", "done": 1})
        assert len(await tx.query("SELECT * FROM tasks")) == 2
    ids = [r["id"] for r in await worker.query("SELECT id FROM tasks ORDER BY id")]
    assert ids == ["t1", "t3"]
    assert len(await changes(worker)) == 4


async def test_identifiers_with_sql_in_them_are_rejected(worker: ChangesWorker) -> None:
    with pytest.raises(WriteError):
        await worker.insert("tasks; DROP TABLE tasks", {"id": "x", "title": "x"})
    with pytest.raises(WriteError):
        await worker.insert("tasks", {"id": "x", "title": "x", 'title" = 1; --': 1})
    with pytest.raises(WriteError):
        await worker.update("tasks", {"id": "x", "done": {"nested": 1}})
    assert await changes(worker) == []


async def test_raw_sql_cannot_touch_sync_tables_or_the_transaction(worker: ChangesWorker) -> None:
    await seed(worker)
    for sql in ("DELETE FROM local_changes", "UPDATE sync_state SET value = 'x'", "COMMIT"):
        with pytest.raises(sqlite3.DatabaseError):
            await worker.execute(sql)
    assert len(await changes(worker)) == 2


async def test_each_write_gets_a_later_time_and_updated_at_matches(worker: ChangesWorker) -> None:
    await seed(worker)
    await worker.update("tasks", {"id": "t1", "done": 1})
    times = [parse_timestamp(r["updated_at"]) for r in await changes(worker)]
    assert times == sorted(times) and len(set(times)) == len(times)
    [task] = await worker.query("SELECT updated_at FROM tasks")
    assert task["updated_at"] == (await changes(worker))[-1]["updated_at"]


async def test_local_change_listeners_hear_commits_only(worker: ChangesWorker) -> None:
    heard: list[Any] = []
    worker.on_local_change(lambda _carried: heard.append("local"))
    worker.on_tables_changed(lambda tables, source: heard.append((tables, source)))
    await seed(worker)
    await worker.query("SELECT * FROM tasks")
    with pytest.raises(WriteError):
        await worker.insert("nope", {"id": 1})
    assert heard == ["local", (("projects",), "local"), "local", (("tasks",), "local")]


async def test_an_armed_worker_hands_the_next_commit_its_unsynced_changes(
    worker: ChangesWorker,
) -> None:
    """``arm_local_changes``: the next commit's listeners get what a read would return, once."""
    carried: list[Any] = []
    worker.on_local_change(carried.append)
    await worker.insert("projects", {"id": "p1", "name": "P"})
    await worker.arm_local_changes(10)
    await worker.insert("projects", {"id": "p2", "name": "P"})
    await worker.insert("projects", {"id": "p3", "name": "P"})  # used up: not carried
    assert carried[0] is None and carried[2] is None
    assert carried[1] == (await worker.unsynced_changes(10))[:2]
    assert [c.data["id"] for c in carried[1]] == ["p1", "p2"]  # oldest first, all pending
    await worker.arm_local_changes(1)
    await worker.insert("projects", {"id": "p4", "name": "P"})
    assert [c.data["id"] for c in carried[3]] == ["p1"]  # at most the limit
    await worker.arm_local_changes(10)
    await worker.unsynced_changes(10)  # the Sync side read for itself: disarmed
    await worker.insert("projects", {"id": "p5", "name": "P"})
    await worker.arm_local_changes(10)
    await worker.arm_local_changes(0)  # disarmed
    await worker.insert("projects", {"id": "p6", "name": "P"})
    await worker.arm_local_changes(10)
    with pytest.raises(WriteError):
        await worker.insert("nope", {"id": 1})  # rolled back: no event, still armed
    await worker.query("SELECT 1")
    await worker.insert("projects", {"id": "p7", "name": "P"})
    assert carried[4] is None and carried[5] is None
    assert [c.data["id"] for c in carried[6]][-1] == "p7" and len(carried) == 7


async def test_client_id_and_clock_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "client.db")
    first = ChangesWorker(path, now_ms=fixed_clock())
    await first.insert("projects", {"id": "p1", "name": "P"})
    await first.insert("projects", {"id": "p2", "name": "P"})
    state = await first.local_state()
    last = (await changes(first))[-1]["updated_at"]
    await first.close()
    # The wall clock went backwards across the restart: times must still move forward.
    second = ChangesWorker(path, now_ms=fixed_clock(T0 - 60_000))
    await second.insert("projects", {"id": "p3", "name": "P"})
    assert (await second.local_state()).client_id == state.client_id
    newest = (await changes(second))[-1]["updated_at"]
    assert parse_timestamp(newest) > parse_timestamp(last)
    await second.close()


async def test_upsert_records_an_insert_then_only_the_changed_columns(
    worker: ChangesWorker,
) -> None:
    await worker.upsert("projects", {"id": "p1", "name": "P"})
    await worker.upsert("projects", {"id": "p1", "name": "renamed"})
    first, second = await changes(worker)
    assert first["operation"] == "insert" and first["data"]["name"] == "P"
    assert second["operation"] == "update"
    assert second["data"] == {"id": "p1", "name": "renamed", "updated_at": second["updated_at"]}


async def test_query_refuses_writes_but_allows_reporting_pragmas(worker: ChangesWorker) -> None:
    await seed(worker)
    for sql in ("DELETE FROM tasks", "CREATE TABLE x (a)", "PRAGMA foreign_keys = OFF", "BEGIN"):
        with pytest.raises(WriteError, match="read-only"):
            await worker.query(sql)
    assert len(await worker.query("SELECT * FROM tasks")) == 1
    assert await worker.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    assert {r["name"] for r in await worker.query("PRAGMA table_info(tasks)")} >= {"id", "title"}
    assert (await worker.query("PRAGMA foreign_keys"))[0]["foreign_keys"] == 1
    assert len(await changes(worker)) == 2


async def test_pending_count_counts_unacknowledged_local_changes(worker: ChangesWorker) -> None:
    await seed(worker)
    await worker.update("tasks", {"id": "t1", "done": 1})
    assert await worker.pending_count() == 3
    [first, *_] = await worker.unsynced_changes(10)
    await worker.mark_sent([first.id])
    assert await worker.pending_count() == 3  # sent is not acknowledged
    [sent] = await worker.query("SELECT attempts FROM local_changes WHERE id = ?", [first.id])
    assert sent["attempts"] == 1


async def test_unsynced_changes_come_oldest_first_with_their_ids_and_times(
    worker: ChangesWorker,
) -> None:
    await seed(worker)
    await worker.delete("tasks", "t1")
    sent = await worker.unsynced_changes(2)
    recorded = (await changes(worker))[:2]
    assert [c.id for c in sent] == [r["id"] for r in recorded]
    assert [c.updated_at for c in sent] == [r["updated_at"] for r in recorded]
    assert [(c.table, str(c.operation)) for c in sent] == [
        ("projects", "insert"),
        ("tasks", "insert"),
    ]


async def test_an_older_local_changes_table_is_migrated_on_open(tmp_path: Path) -> None:
    path = str(tmp_path / "client.db")
    first = ChangesWorker(path, now_ms=fixed_clock())
    await first.insert("projects", {"id": "p1", "name": "P"})
    await first.close()
    old = sqlite3.connect(path)
    old.execute("ALTER TABLE local_changes RENAME COLUMN modified_at TO updated_at_row")
    old.commit()
    old.close()
    second = ChangesWorker(path, now_ms=fixed_clock())
    [change] = await changes(second)
    assert change["modified_at"] and "updated_at_row" not in change
    await second.close()


async def test_a_local_commit_persists_the_clock_in_ts_ctx_not_in_a_page_of_its_own(
    tmp_path: Path,
) -> None:
    """The clock rides on ``_ts_ctx`` (written by every transaction anyway), so a local
    write touches no ``sync_state`` page; reopened behind the wall clock, the clock is
    still >= every time recorded in ``local_changes``."""
    path = str(tmp_path / "client.db")
    ticks = iter(range(T0, T0 + 1_000_000, 7))
    first = ChangesWorker(path, now_ms=lambda: next(ticks))
    for i in range(20):
        await first.insert("projects", {"id": f"p{i}", "name": "P"})
    await first.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM sync_state WHERE key = 'hlc_last'").fetchone() is None
    recorded = max(
        parse_timestamp(r[0]) for r in conn.execute("SELECT updated_at FROM local_changes")
    )
    assert stored_clock(conn) == recorded
    conn.close()
    second = ChangesWorker(path, now_ms=fixed_clock(T0 - 60_000))
    await second.insert("projects", {"id": "late", "name": "P"})
    newest = (await changes(second))[-1]["updated_at"]
    assert parse_timestamp(newest) == recorded + 1
    await second.close()


async def test_a_database_from_before_ts_ctx_hlc_keeps_its_clock(tmp_path: Path) -> None:
    path = str(tmp_path / "client.db")
    first = ChangesWorker(path, now_ms=fixed_clock())
    await first.insert("projects", {"id": "p1", "name": "P"})
    await first.close()
    # Make it look like an earlier version's file: no _ts_ctx.hlc, the clock in sync_state.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE _ts_ctx DROP COLUMN hlc")
    conn.execute(
        "INSERT OR REPLACE INTO sync_state (key, value) VALUES ('hlc_last', ?)", (str(T0 + 5000),)
    )
    conn.close()
    second = ChangesWorker(path, now_ms=fixed_clock(T0 - 60_000))
    await second.insert("projects", {"id": "p2", "name": "P"})
    newest = (await changes(second))[-1]["updated_at"]
    assert parse_timestamp(newest) == T0 + 5001
    await second.close()


async def test_a_local_changes_table_with_autoincrement_is_rebuilt_without_it(
    tmp_path: Path,
) -> None:
    """Files made when ``seq`` was AUTOINCREMENT (a ``sqlite_sequence`` write per commit)
    are rebuilt on open: every row and seq kept, triggers and indexes back, new changes
    after the old ones."""
    path = str(tmp_path / "client.db")
    old = sqlite3.connect(path)
    old.executescript(
        local_schema.LOCAL_DDL.replace(
            "seq INTEGER PRIMARY KEY,", "seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        )
    )
    for seq, state in ((1, "synced"), (2, "pending"), (5, "pending")):
        old.execute(
            "INSERT INTO local_changes (seq, id, table_name, operation, pk, data, updated_at, "
            "state) VALUES (?, ?, 'projects', 'insert', ?, '{}', '2025-01-01T00:00:00.000Z', ?)",
            (seq, f"c{seq}", f'["p{seq}"]', state),
        )
    old.commit()
    assert old.execute("SELECT seq FROM sqlite_sequence").fetchone() == (5,)
    old.close()

    worker = ChangesWorker(path, now_ms=fixed_clock())
    await worker.insert("projects", {"id": "new", "name": "N"})
    rows = await changes(worker)
    assert [(r["seq"], r["id"]) for r in rows[:3]] == [(1, "c1"), (2, "c2"), (5, "c5")]
    assert rows[3]["seq"] == 6 and rows[3]["pk"] == '["new"]'  # recorded by the trigger
    assert [c.id for c in await worker.unsynced_changes(10)] == ["c2", "c5", rows[3]["id"]]
    await worker.close()

    conn = sqlite3.connect(path)
    [sql] = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'local_changes'").fetchone()
    assert "AUTOINCREMENT" not in sql.upper()
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(local_changes)")}
    assert {"local_changes_unsynced", "local_changes_row"} <= indexes
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    again = ChangesWorker(path, now_ms=fixed_clock())  # nothing left to migrate
    assert len(await changes(again)) == 4
    await again.close()


@pytest.mark.parametrize("op", ["insert", "upsert"])
@pytest.mark.parametrize(
    "row",
    [
        {"id": "t9", "project_id": None, "title": "T", "done": 1},
        {"id": None, "project_id": None, "title": "T", "done": 0},
        {"id": "t9", "project_id": None, "title": None, "done": 0},
        {"id": "t9", "project_id": None, "title": "T", "done": "yes"},
        {"id": "t9", "project_id": None, "title": "T", "done": 1 << 63},
        {"id": "t9", "project_id": None, "title": "T", "done": float("nan")},
        {"id": "t9", "project_id": None, "title": "T", "done": True},
        {"id": "t9", "project_id": None, "title": 5, "done": 2.5},
        {"id": "t9", "project_id": None, "title": b"T", "done": 0},
        {"id": "t9", "project_id": None, "title": "T", "done": [1]},
    ],
)
async def test_a_known_column_list_is_checked_as_the_first_row_of_it_was(
    tmp_path: Path, op: str, row: dict[str, Any]
) -> None:
    """Inserts/upserts keep a plan per column list (``LocalWriter._write_row``): a row
    written with a known list gets the same error, or the same row and record, as the
    first row of that list, which is checked in full (``validate_change_data``)."""
    outcomes = []
    for warm in (False, True):
        w = ChangesWorker(str(tmp_path / f"{op}-{warm}.db"), now_ms=fixed_clock())
        try:
            if warm:  # the same column list, in the same order, written once before
                await w.run_transaction(
                    [WriteOp(op, "tasks", {"id": "t0", "project_id": None, "title": "", "done": 0})]
                )
                await w.execute("DELETE FROM tasks")
            try:
                result: Any = await w.run_transaction([WriteOp(op, "tasks", dict(row))])
            except (WriteError, sqlite3.Error) as exc:
                result = (type(exc).__name__, str(exc))
            rows = await w.query("SELECT id, project_id, title, done FROM tasks")
            records = [
                (c["operation"], {k: v for k, v in c["data"].items() if k != "updated_at"})
                for c in (await changes(w))[2 if warm else 0 :]
            ]
            outcomes.append((result, rows, records))
        finally:
            await w.close()
    assert outcomes[0] == outcomes[1]


async def test_a_row_that_names_updated_at_is_stamped_in_its_place(worker: ChangesWorker) -> None:
    for i in range(2):  # the second write goes through the plan the first one made
        row = {"id": f"p{i}", "updated_at": "2000-01-01T00:00:00.000Z", "name": "P"}
        await worker.insert("projects", row)
        await worker.upsert("projects", row)
    rows = await worker.query("SELECT id, name, updated_at FROM projects ORDER BY id")
    stamped = [r["updated_at"] for r in rows]
    assert all(parse_timestamp(t) >= T0 for t in stamped)
    records = await changes(worker)
    assert [r["data"]["updated_at"] for r in records] == [r["updated_at"] for r in records]
    assert row == {"id": "p1", "updated_at": "2000-01-01T00:00:00.000Z", "name": "P"}


async def test_a_local_write_commits_ts_ctx_as_other_programs_need_it(
    worker: ChangesWorker,
) -> None:
    """Committed state after a local write: ``applying = 0, now = NULL`` (another program's
    write gets the wall clock) and the clock persisted in ``hlc``."""
    from tidesync.changes.worker_processor import write_now

    request = {"id": 1, "cmd": "insert", "args": {"table": "projects", "row": {"id": "p"}}}
    request["args"]["row"]["name"] = "P"  # type: ignore[index]
    assert write_now(worker, request) is not None
    await worker.insert("projects", {"id": "q", "name": "Q"})
    ctx = await worker.query("SELECT applying, now, hlc FROM _ts_ctx")
    assert ctx == [{"applying": 0, "now": None, "hlc": worker._hlc.last}]
    assert worker._hlc.last == T0 + 1
