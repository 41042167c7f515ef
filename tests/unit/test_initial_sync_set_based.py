"""The set-based snapshot path: one JSON text per chunk, typed stage, one INSERT ... SELECT.

``InitialSync.stage_json`` stages rows that certainly fit the schema in bulk (checked
column by column) and sends everything else through the per-row path; these tests pin
that the two paths give the same database (values, refusals, pending merges), that
names never reach SQL unchecked, and that the port carries one string per chunk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes import initial_sync as initial_sync_module
from tidesync.changes import worker as worker_module
from tidesync.changes.worker import ChangesWorker
from tidesync.changes.worker_processor import handle_request
from tidesync.worker_sync.shared.message_types import Operation, TableChange
from tidesync.worker_sync.shared.port_codec import RemoteChangesPort

T0 = 1_800_000_000_000
AT = "2027-01-15T08:00:00.000Z"


def wire(table: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": f"init-{table}-{data.get('id')}",
        "table": table,
        "operation": "insert",
        "data": data,
        "updated_at": AT,
        **extra,
    }


def task(i: int | str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"t{i}",
        "project_id": "p1",
        "title": f"T{i}",
        "done": 0,
        "updated_at": AT,
    }
    row.update(over)
    return row


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(str(tmp_path / "client.db"), now_ms=lambda: T0)
    yield w
    await w.close()


def staged_counts(w: ChangesWorker) -> tuple[int, int]:
    """(rows in the typed tasks stage, rows in the per-row stage)."""
    conn = w._conn
    typed = conn.execute('SELECT count(*) FROM temp."_ts_stage_tasks"').fetchone()[0]
    generic = conn.execute("SELECT count(*) FROM temp._ts_stage").fetchone()[0]
    return int(typed), int(generic)


async def rows(w: ChangesWorker, table: str) -> list[dict[str, Any]]:
    return await w.query(f"SELECT * FROM {table} ORDER BY id")


async def test_full_rows_take_the_typed_stage_and_commit_in_one_statement(
    worker: ChangesWorker,
) -> None:
    await worker.begin_initial_sync(9)
    await worker.stage_initial_json(
        "projects", json.dumps([wire("projects", {"id": "p1", "name": "P", "updated_at": AT})])
    )
    await worker.stage_initial_json(
        "tasks", json.dumps([wire("tasks", task(i)) for i in range(50)])
    )
    assert staged_counts(worker) == (50, 0)
    outcome = await worker.commit_initial_sync(9)
    assert (outcome.applied, outcome.skipped, outcome.failed) == (51, 0, 0)
    got = await rows(worker, "tasks")
    assert len(got) == 50 and got[0] == task(0)
    state = await worker.local_state()
    assert (state.lsn, state.initialized) == (9, True)
    assert await worker.pending_count() == 0  # snapshot rows are not local changes


async def test_typed_and_per_row_paths_store_the_same_values(
    worker: ChangesWorker, tmp_path: Path
) -> None:
    """Odd values go per row; the result equals staging every row per row."""
    odd = [
        task(1, done=True),
        task(2, done=False, project_id=None),
        task(3, done=2.5),  # a finite real: stored as it is
        task(4, done="7"),  # text in an INTEGER column: refused per row
        task(5, done=2**63),  # out of 64-bit range: refused
        task(6, title=None),  # NOT NULL: refused
        task(7, title=12),  # a number in a TEXT column: stored as text
        {k: v for k, v in task(8).items() if k != "done"},  # absent column with a default
        {k: v for k, v in task(9).items() if k != "updated_at"},  # absent: the change's time
        task(10, title="ünïcødé ✓ \U0001f600 'quoted' \"dq\""),
        task(11, extra="column"),  # unknown column: refused
        task(12, done=-(2**63)),
    ]
    await worker.begin_initial_sync(3)
    await worker.stage_initial_json(
        "projects", json.dumps([wire("projects", {"id": "p1", "name": "P", "updated_at": AT})])
    )
    await worker.stage_initial_json("tasks", json.dumps([wire("tasks", r) for r in odd]))
    assert staged_counts(worker) == (7, 5)
    outcome = await worker.commit_initial_sync(3)

    reference = ChangesWorker(str(tmp_path / "reference.db"), now_ms=lambda: T0)
    try:
        await reference.begin_initial_sync(3)
        reference._initial._write_stage(
            "projects", None, [], [wire("projects", {"id": "p1", "name": "P", "updated_at": AT})]
        )
        reference._initial._write_stage("tasks", None, [], [wire("tasks", r) for r in odd])
        expected = await reference.commit_initial_sync(3)
        assert await rows(worker, "tasks") == await rows(reference, "tasks")
        assert (outcome.applied, outcome.failed) == (expected.applied, expected.failed)
    finally:
        await reference.close()
    assert outcome.failed == 4
    stored = {r["id"]: r for r in await rows(worker, "tasks")}
    assert stored["t1"]["done"] == 1 and stored["t7"]["title"] == "12"
    assert stored["t8"]["done"] == 0 and stored["t9"]["updated_at"] == AT
    assert stored["t12"]["done"] == -(2**63)


async def test_set_based_swap_keeps_pending_local_changes(worker: ChangesWorker) -> None:
    project = wire("projects", {"id": "p1", "name": "P", "updated_at": AT})
    await worker.begin_initial_sync(1)
    await worker.stage_initial_json("projects", json.dumps([project]))
    await worker.stage_initial_json("tasks", json.dumps([wire("tasks", task(i)) for i in (1, 2)]))
    await worker.commit_initial_sync(1)
    await worker.update("tasks", {"id": "t1", "title": "edited offline"})
    await worker.delete("tasks", "t2")
    await worker.insert("tasks", {"id": "t3", "project_id": "p1", "title": "mine"})

    await worker.begin_initial_sync(5)
    await worker.stage_initial_json("projects", json.dumps([project]))
    snapshot = [
        task(1, title="server title", done=1),
        task(2, title="server keeps it"),
        task(3, title="same id made elsewhere"),
        task(4),
    ]
    await worker.stage_initial_json("tasks", json.dumps([wire("tasks", r) for r in snapshot]))
    assert staged_counts(worker) == (4, 0)
    outcome = await worker.commit_initial_sync(5)
    got = {r["id"]: r for r in await rows(worker, "tasks")}
    # The pending update's column stays local, the others come from the snapshot.
    assert (got["t1"]["title"], got["t1"]["done"]) == ("edited offline", 1)
    assert "t2" not in got  # the pending delete keeps it deleted
    assert got["t3"]["title"] == "mine"  # a pending insert stays local
    assert got["t4"] == task(4)
    assert (outcome.applied, outcome.skipped) == (3, 2)
    assert await worker.pending_count() == 3


async def test_a_repeated_key_keeps_the_last_row(worker: ChangesWorker) -> None:
    await worker.begin_initial_sync(2)
    chunk = [wire("tasks", task(1, title="first")), wire("tasks", task(1, title="last"))]
    await worker.stage_initial_json("tasks", json.dumps(chunk))
    await worker.commit_initial_sync(2)
    assert [r["title"] for r in await rows(worker, "tasks")] == ["last"]


async def test_names_from_the_wire_never_reach_sql(worker: ChangesWorker, tmp_path: Path) -> None:
    evil = 'tasks"; DROP TABLE projects; --'
    await worker.begin_initial_sync(4)
    await worker.stage_initial_json(evil, json.dumps([wire(evil, {"id": "x", "name": "n"})]))
    bad_column = task(1)
    bad_column['title" = 1; DROP TABLE tasks; --'] = "x"
    await worker.stage_initial_json(
        "tasks", json.dumps([wire("tasks", bad_column), wire("tasks", task(2))])
    )
    outcome = await worker.commit_initial_sync(4)
    assert (outcome.applied, outcome.failed) == (1, 2)
    assert [r["id"] for r in await rows(worker, "tasks")] == ["t2"]
    other = sqlite3.connect(str(tmp_path / "client.db"))
    names = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"projects", "tasks"} <= names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[{", "not valid JSON"),
        ('{"rows": []}', "JSON array"),
        ('{"changes": {}}', "JSON array"),
        ('"text"', "JSON array"),
    ],
)
async def test_a_chunk_that_is_not_a_json_array_is_refused(
    worker: ChangesWorker, text: str, message: str
) -> None:
    await worker.begin_initial_sync(4)
    with pytest.raises(ValueError, match=message):
        await worker.stage_initial_json("tasks", text)
    assert staged_counts(worker) == (0, 0)


async def test_non_objects_and_non_inserts_in_a_chunk_are_counted_failed(
    worker: ChangesWorker,
) -> None:
    await worker.begin_initial_sync(4)
    chunk: list[Any] = [
        5,
        "x",
        None,
        wire("tasks", task(1), operation="delete"),
        {"id": "no-data", "table": "tasks", "operation": "insert", "updated_at": AT},
        wire("tasks", task(2)),
    ]
    await worker.stage_initial_json("tasks", json.dumps(chunk))
    assert staged_counts(worker) == (1, 5)
    outcome = await worker.commit_initial_sync(4)
    assert [r["id"] for r in await rows(worker, "tasks")] == ["t1", "t2"]
    # Non-objects and the change without data fail; the ``delete`` is re-checked per row
    # only for its data (the Sync side refuses a non-insert in ``srv_init_changes``).
    assert (outcome.applied, outcome.failed) == (2, 4)


async def test_the_port_carries_one_json_string_per_chunk(worker: ChangesWorker) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    async def call(cmd: str, args: dict[str, Any]) -> Any:
        sent.append((cmd, args))
        reply = await handle_request(worker, {"id": 1, "cmd": cmd, "args": args})
        assert reply["ok"], reply
        return reply["result"]

    port = RemoteChangesPort(call)
    await port.begin_initial_sync(6)
    changes = [TableChange.from_wire(wire("tasks", task(i))) for i in range(3)]
    await port.stage_initial_chunk("tasks", changes)
    cmd, args = sent[-1]
    assert cmd == "port.stage_initial_chunk" and isinstance(args["changes_json"], str)
    assert "changes" not in args
    # NaN is not JSON: that chunk falls back to the list form and the row is refused.
    nan = TableChange(
        id="n",
        table="tasks",
        operation=Operation.INSERT,
        data=task(9, done=float("nan")),
        updated_at=AT,
    )
    await port.stage_initial_chunk("tasks", [nan])
    assert isinstance(sent[-1][1]["changes"], list)
    outcome = await port.commit_initial_sync(6)
    assert (outcome.applied, outcome.failed) == (3, 1)


async def test_a_server_batch_crosses_the_port_as_one_json_string(worker: ChangesWorker) -> None:
    """Catchup/live batches take the same one-string form; a bad string is refused clearly."""
    sent: list[dict[str, Any]] = []

    async def call(cmd: str, args: dict[str, Any]) -> Any:
        sent.append(args)
        reply = await handle_request(worker, {"id": 1, "cmd": cmd, "args": args})
        if not reply["ok"]:
            raise RuntimeError(reply["error"]["message"])
        return reply["result"]

    port = RemoteChangesPort(call)
    batch = [
        TableChange(
            id=f"c{i}",
            table="tasks",
            operation=Operation.INSERT,
            data=task(i),
            updated_at=AT,
            lsn=10 + i,
        )
        for i in range(3)
    ]
    outcome = await port.apply_server_changes(batch, 12, source="catchup")
    assert isinstance(sent[-1]["changes_json"], str) and "changes" not in sent[-1]
    assert (outcome.applied, outcome.lsn) == (3, 12)
    assert [r["id"] for r in await rows(worker, "tasks")] == ["t0", "t1", "t2"]
    with pytest.raises(RuntimeError, match="changes_json"):
        await call("port.apply_server_changes", {"changes_json": "[{", "last_lsn": 20})
    with pytest.raises(RuntimeError, match=r"changes_json\[0\]"):
        await call("port.apply_server_changes", {"changes_json": "[5]", "last_lsn": 20})
    assert (await worker.local_state()).lsn == 12


# --- srv_init_rows (extension): columns once, rows as arrays ------------------------------

TASK_COLUMNS = ["id", "project_id", "title", "done", "updated_at"]


def rows_frame(
    table: str,
    columns: list[str],
    values: list[list[Any]],
    versions: list[Any] | None = None,
) -> str:
    """An ``srv_init_rows`` frame as the Sync Worker forwards it (the whole frame's text)."""
    return json.dumps(
        {
            "type": "srv_init_rows",
            "clientId": "c",
            "messageId": "m",
            "timestamp": T0,
            "sequence": {"table": table, "chunk": 1, "total": 1},
            "columns": columns,
            "rows": values,
            "versions": versions if versions is not None else [None] * len(values),
        }
    )


async def _stage_both_ways(tmp_path: Path, rows_: list[dict[str, Any]], columns: list[str]) -> Any:
    """The same rows staged as ``srv_init_rows`` and as ``srv_init_changes`` (reference)."""
    project = {"id": "p1", "name": "P", "updated_at": AT}
    results = []
    for name in ("rows", "changes"):
        w = ChangesWorker(str(tmp_path / f"{name}.db"), now_ms=lambda: T0)
        try:
            await w.begin_initial_sync(3)
            if name == "rows":
                await w.stage_initial_json(
                    "projects", rows_frame("projects", list(project), [list(project.values())])
                )
                values = [[r.get(c) for c in columns] for r in rows_]
                versions = [None if "updated_at" in columns else [AT, None] for _ in rows_]
                await w.stage_initial_json("tasks", rows_frame("tasks", columns, values, versions))
                counts = staged_counts(w)
            else:
                await w.stage_initial_json("projects", json.dumps([wire("projects", project)]))
                changes = [wire("tasks", {c: r.get(c) for c in columns}) for r in rows_]
                await w.stage_initial_json("tasks", json.dumps(changes))
            outcome = await w.commit_initial_sync(3)
            results.append((await rows(w, "tasks"), outcome.applied, outcome.failed))
        finally:
            await w.close()
    assert results[0] == results[1]
    return counts, results[0]


async def test_init_rows_in_schema_order_go_to_the_typed_stage_as_they_are(
    worker: ChangesWorker,
) -> None:
    await worker.begin_initial_sync(9)
    project = {"id": "p1", "name": "P", "updated_at": AT}
    await worker.stage_initial_json(
        "projects", rows_frame("projects", list(project), [list(project.values())])
    )
    values = [[task(i)[c] for c in TASK_COLUMNS] for i in range(50)]
    await worker.stage_initial_json("tasks", rows_frame("tasks", TASK_COLUMNS, values))
    assert staged_counts(worker) == (50, 0)
    outcome = await worker.commit_initial_sync(9)
    assert (outcome.applied, outcome.failed) == (51, 0)
    assert await rows(worker, "tasks") == sorted(
        (task(i) for i in range(50)), key=lambda r: r["id"]
    )
    assert await worker.pending_count() == 0


async def test_init_rows_with_odd_values_store_what_the_changes_form_stores(
    tmp_path: Path,
) -> None:
    """Values the bulk check cannot vouch for take the per-row path, as in the changes form."""
    odd = [
        task(1, done=True),
        task(2, project_id=None),
        task(3, done=2.5),
        task(4, done="7"),  # text in an INTEGER column: refused per row
        task(5, done=2**63),  # out of 64-bit range: refused
        task(6, title=None),  # NOT NULL: refused
        task(7, title=12),
        task(8, id=None),  # a null primary key: refused
        task(9, title="ünïcødé ✓ \U0001f600 'quoted' \"dq\""),
    ]
    counts, (_, applied, failed) = await _stage_both_ways(tmp_path, odd, TASK_COLUMNS)
    assert counts == (5, 4)
    assert (applied, failed) == (6, 4)  # 5 tasks and the project; 4 refused


@pytest.mark.parametrize(
    ("columns", "counts"),
    [
        (["updated_at", "title", "done", "project_id", "id"], (4, 0)),  # another order
        (["id", "project_id", "title", "done"], (4, 0)),  # no updated_at: the versions' time
        (["id", "title", "updated_at"], (0, 4)),  # columns left to their defaults
        (["id", "project_id", "title", "done", "updated_at", "extra"], (0, 4)),  # refused
    ],
)
async def test_init_rows_with_other_columns_store_what_the_changes_form_stores(
    tmp_path: Path, columns: list[str], counts: tuple[int, int]
) -> None:
    """Columns that are not the schema's, in its order, become changes (``_stage_items``)."""
    rows_ = [task(i, extra="x") for i in range(4)]
    staged, _ = await _stage_both_ways(tmp_path, rows_, columns)
    assert staged == counts


async def test_init_rows_keep_pending_local_changes(worker: ChangesWorker) -> None:
    project = {"id": "p1", "name": "P", "updated_at": AT}
    await worker.begin_initial_sync(1)
    await worker.stage_initial_json("projects", json.dumps([wire("projects", project)]))
    await worker.stage_initial_json("tasks", json.dumps([wire("tasks", task(i)) for i in (1, 2)]))
    await worker.commit_initial_sync(1)
    await worker.update("tasks", {"id": "t1", "title": "edited offline"})
    await worker.delete("tasks", "t2")

    await worker.begin_initial_sync(5)
    await worker.stage_initial_json(
        "projects", rows_frame("projects", list(project), [list(project.values())])
    )
    snapshot = [task(1, title="server title", done=1), task(2), task(4)]
    values = [[r[c] for c in TASK_COLUMNS] for r in snapshot]
    await worker.stage_initial_json("tasks", rows_frame("tasks", TASK_COLUMNS, values))
    await worker.commit_initial_sync(5)
    got = {r["id"]: r for r in await rows(worker, "tasks")}
    assert (got["t1"]["title"], got["t1"]["done"]) == ("edited offline", 1)
    assert "t2" not in got and got["t4"] == task(4)
    assert await worker.pending_count() == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"columns": "id"},
        {"rows": {"a": 1}},
        {"versions": None},
        {"versions": []},  # not one per row
        {"rows": [["t1", "p1"]]},  # not one value per column
        {"columns": [1, 2, 3, 4, 5]},
    ],
)
async def test_an_init_rows_chunk_that_does_not_fit_is_refused_and_stages_nothing(
    worker: ChangesWorker, fields: dict[str, Any]
) -> None:
    frame = json.loads(rows_frame("tasks", TASK_COLUMNS, [[task(1)[c] for c in TASK_COLUMNS]]))
    frame.update(fields)
    await worker.begin_initial_sync(2)
    with pytest.raises(ValueError, match="srv_init_rows"):
        await worker.stage_initial_json("tasks", json.dumps(frame))
    assert staged_counts(worker) == (0, 0)


async def test_the_snapshot_commit_leaves_its_checkpoint_for_a_moment_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The auto-checkpoint is not on the path to live, not even on the next commit (the
    catchup's first batch); the WAL is copied in soon after and the setting is back."""
    monkeypatch.setattr(worker_module, "CHECKPOINT_DELAY_S", 0.05)
    path = tmp_path / "ckpt.db"
    w = ChangesWorker(str(path), now_ms=lambda: T0)
    try:
        w._conn.execute("PRAGMA wal_autocheckpoint = 10")  # pages: the snapshot is far more
        w._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = path.stat().st_size
        await w.begin_initial_sync(7)
        await w.stage_initial_json(
            "projects", json.dumps([wire("projects", {"id": "p1", "name": "P", "updated_at": AT})])
        )
        await w.stage_initial_json(
            "tasks", json.dumps([wire("tasks", task(i)) for i in range(2000)])
        )
        await w.commit_initial_sync(7)
        await w.advance_lsn(8)  # a commit right after: still no checkpoint
        assert path.stat().st_size == before  # all of it still in the WAL
        for _ in range(200):
            if path.stat().st_size > before:
                break
            await asyncio.sleep(0.01)
        assert path.stat().st_size > before, "the WAL was never checkpointed"
        assert w._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10
        assert len(await rows(w, "tasks")) == 2000
    finally:
        await w.close()


@pytest.mark.parametrize("setting", [-16384, 500, -262144])
async def test_the_snapshot_commit_runs_with_a_large_page_cache_and_gives_it_back(
    tmp_path: Path, setting: int
) -> None:
    """A cache smaller than ``COMMIT_CACHE_KIB`` (KiB or pages) is raised for the copy only;
    a larger one is left alone; either way the connection's own setting is back after."""
    w = ChangesWorker(str(tmp_path / "cache.db"), now_ms=lambda: T0)
    seen: list[int] = []
    try:
        w._conn.execute(f"PRAGMA cache_size = {setting}")
        copy_stage = w._initial._copy_stage

        def spy(*args: Any) -> None:
            seen.append(int(w._conn.execute("PRAGMA cache_size").fetchone()[0]))
            copy_stage(*args)

        w._initial._copy_stage = spy  # type: ignore[method-assign]
        await w.begin_initial_sync(3)
        await w.stage_initial_json("tasks", json.dumps([wire("tasks", task(i)) for i in range(3)]))
        await w.commit_initial_sync(3)
        raised = -initial_sync_module.COMMIT_CACHE_KIB
        assert seen == [raised, raised] if setting > raised else seen == [setting, setting]
        assert w._conn.execute("PRAGMA cache_size").fetchone()[0] == setting
        assert len(await rows(w, "tasks")) == 3
    finally:
        await w.close()


async def test_the_copy_into_an_empty_table_rebuilds_its_plain_indexes_and_keeps_unique_ones(
    tmp_path: Path,
) -> None:
    """The app's non-unique indexes of an empty table are dropped for the snapshot's copy and
    built again after it in the same transaction (same SQL, same entries); a unique index
    stays and still refuses what it refused; a table that holds rows keeps its indexes."""
    w = ChangesWorker(str(tmp_path / "idx.db"), now_ms=lambda: T0)
    try:
        w._conn.execute("CREATE UNIQUE INDEX tasks_title_unique ON tasks(title)")
        w._conn.execute("CREATE INDEX projects_name ON projects(name)")
        await w.insert("projects", {"id": "p0", "name": "local", "updated_at": AT})

        def indexes() -> list[tuple[str, str]]:
            return [
                tuple(r)
                for r in w._conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                    "ORDER BY name"
                )
            ]

        before = indexes()
        dropped: list[str] = []
        drop = w._initial._drop_plain_indexes

        def spy(table: Any) -> list[str]:
            found = drop(table)
            dropped.extend(found)
            return found

        w._initial._drop_plain_indexes = spy  # type: ignore[method-assign]
        await w.begin_initial_sync(5)
        await w.stage_initial_json(
            "projects", json.dumps([wire("projects", {"id": "p1", "name": "P", "updated_at": AT})])
        )
        await w.stage_initial_json("tasks", json.dumps([wire("tasks", task(i)) for i in range(40)]))
        await w.commit_initial_sync(5)
        assert dropped == ["CREATE INDEX tasks_project_id ON tasks(project_id)"]  # projects: rows
        assert indexes() == before
        assert w._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        plan = w._conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE project_id = 'p1'"
        ).fetchall()
        assert "tasks_project_id" in str([tuple(r) for r in plan])
        assert len(await rows(w, "tasks")) == 40
        with pytest.raises(sqlite3.IntegrityError):
            await w.insert("tasks", task(99, title="T1"))  # the unique index is still there
    finally:
        await w.close()


async def test_the_copy_skips_the_recording_insert_trigger_and_puts_it_back_unchanged(
    tmp_path: Path,
) -> None:
    """The snapshot's copy runs without tidesync's ``AFTER INSERT`` recording trigger (it
    would record nothing, yet its ``WHEN`` ran per row) and the commit holds it again with
    the same SQL: the snapshot records no local change, a local insert after it does, and an
    app trigger on the same table still fires during the copy."""
    w = ChangesWorker(str(tmp_path / "trg.db"), now_ms=lambda: T0)
    try:
        # The app's trigger also notes whether the recording trigger exists as it runs.
        w._conn.execute("CREATE TABLE app_log (task_id TEXT, recording INTEGER)")
        w._conn.execute(
            "CREATE TRIGGER app_tasks_log AFTER INSERT ON tasks BEGIN INSERT INTO app_log "
            "SELECT NEW.id, count(*) FROM sqlite_master WHERE name = '_ts_lc_tasks_insert'; END"
        )

        def triggers() -> list[tuple[str, str]]:
            return [
                tuple(r)
                for r in w._conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
                )
            ]

        before = triggers()
        assert any(name == "_ts_lc_tasks_insert" for name, _ in before)
        await w.begin_initial_sync(5)
        await w.stage_initial_json("tasks", json.dumps([wire("tasks", task(i)) for i in range(30)]))
        await w.commit_initial_sync(5)
        assert triggers() == before
        assert w._conn.execute("SELECT count(*) FROM local_changes").fetchone()[0] == 0
        logged = w._conn.execute("SELECT count(*), max(recording) FROM app_log").fetchone()
        assert tuple(logged) == (30, 0)  # the app trigger ran per row, the recording one did not
        await w.insert("tasks", task("local", project_id=None))
        recorded = w._conn.execute(
            "SELECT table_name, operation FROM local_changes WHERE from_server = 0"
        ).fetchall()
        assert [tuple(r) for r in recorded] == [("tasks", "insert")]
    finally:
        await w.close()
