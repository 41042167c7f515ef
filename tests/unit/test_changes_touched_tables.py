"""After a local commit the listeners hear exactly the tables whose changes it recorded.

Typed writes name their table without a query (``changes/touched.py``); these tests
pin the cases where the name alone would be wrong: a cascade, an app trigger, raw SQL,
and the schema changing under it through raw SQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.worker import ChangesWorker
from tidesync.changes.writes import WriteOp


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(str(tmp_path / "client.db"), now_ms=lambda: 1_800_000_000_000)
    yield w
    await w.close()


def listen(worker: ChangesWorker) -> list[Any]:
    heard: list[Any] = []
    worker.on_tables_changed(lambda tables, _source: heard.append(tables))
    return heard


async def recorded_tables(worker: ChangesWorker, after: int) -> tuple[str, ...]:
    rows = await worker.query(
        "SELECT DISTINCT table_name AS t FROM local_changes WHERE seq > ? ORDER BY t", [after]
    )
    return tuple(r["t"] for r in rows)


async def max_seq(worker: ChangesWorker) -> int:
    return int((await worker.query("SELECT max(seq) AS m FROM local_changes"))[0]["m"] or 0)


async def test_typed_writes_name_their_table(worker: ChangesWorker) -> None:
    heard = listen(worker)
    await worker.insert("projects", {"id": "p1", "name": "P"})
    await worker.insert("tasks", {"id": "t1", "project_id": "p1", "title": "T"})
    await worker.update("tasks", {"id": "t1", "done": 1})
    await worker.upsert("tasks", {"id": "t2", "title": "U"})
    await worker.delete("tasks", "t2")
    assert heard == [("projects",), ("tasks",), ("tasks",), ("tasks",), ("tasks",)]


async def test_writes_that_change_nothing_are_not_announced(worker: ChangesWorker) -> None:
    heard = listen(worker)
    await worker.delete("tasks", "missing")
    await worker.update("tasks", {"id": "missing", "done": 1})
    assert heard == []


async def test_a_cascading_delete_names_the_child_table_too(worker: ChangesWorker) -> None:
    await worker.insert("projects", {"id": "p1", "name": "P"})
    await worker.insert("tasks", {"id": "t1", "project_id": "p1", "title": "T"})
    heard = listen(worker)
    before = await max_seq(worker)
    await worker.delete("projects", "p1")
    assert await recorded_tables(worker, before) == ("projects", "tasks")
    assert heard == [("projects", "tasks")]


async def test_raw_sql_names_what_it_wrote(worker: ChangesWorker) -> None:
    heard = listen(worker)
    await worker.run_transaction(
        [
            WriteOp("insert", "projects", {"id": "p1", "name": "P"}),
            WriteOp(
                "execute", sql="INSERT INTO tasks (id, title, updated_at) VALUES ('t', 'x', '')"
            ),
        ]
    )
    await worker.execute("SELECT 1")
    assert heard == [("projects", "tasks")]


async def test_an_app_trigger_made_by_raw_sql_is_seen(worker: ChangesWorker) -> None:
    await worker.insert("projects", {"id": "p1", "name": "P"})  # loads the schema facts
    await worker.execute(
        "CREATE TRIGGER app_touch AFTER INSERT ON tasks BEGIN "
        "UPDATE projects SET name = name || '+' WHERE id = NEW.project_id; END"
    )
    heard = listen(worker)
    before = await max_seq(worker)
    await worker.insert("tasks", {"id": "t1", "project_id": "p1", "title": "T"})
    assert await recorded_tables(worker, before) == ("projects", "tasks")
    assert heard == [("projects", "tasks")]


async def test_an_app_trigger_in_the_file_is_seen_on_open(tmp_path: Path) -> None:
    path = str(tmp_path / "client.db")
    first = ChangesWorker(path)
    await first.insert("projects", {"id": "p1", "name": "P"})
    await first.execute(
        "CREATE TRIGGER app_touch AFTER UPDATE ON tasks BEGIN "
        "UPDATE projects SET name = 'seen' WHERE id = NEW.project_id; END"
    )
    await first.insert("tasks", {"id": "t1", "project_id": "p1", "title": "T"})
    await first.close()
    again = ChangesWorker(path)
    try:
        heard = listen(again)
        await again.update("tasks", {"id": "t1", "done": 1})
        assert heard == [("projects", "tasks")]
    finally:
        await again.close()
