"""The server store, capture triggers, apply and checksums, in-process on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tidesync.checksums import combine, row_hash, table_checksum
from tidesync.server.apply import apply_changes
from tidesync.server.store import Store, read_history
from tidesync.worker_sync.shared.message_types import ChangeStatus, Operation, TableChange


def _change(cid: str, op: str, data: dict[str, object], at: str = "2030-01-01T00:00:00.000Z"):
    return TableChange(id=cid, table="tasks", operation=Operation(op), data=data, updated_at=at)


def test_reopening_keeps_rows_and_lsn(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    apply_changes(
        store.writer, store.schema, "c", [_change("1", "insert", {"id": "a", "title": "x"})]
    )
    lsn = store.current_lsn()
    store.close()
    again = Store(tmp_path / "s.db")
    assert again.current_lsn() == lsn > 0
    assert again.writer.execute("SELECT title FROM tasks").fetchall() == [("x",)]


def test_plain_sqlite_writes_land_in_history_without_author(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    other = sqlite3.connect(tmp_path / "s.db")
    other.execute(
        "INSERT INTO tasks(id, title, updated_at) VALUES ('e', 'ext', '2030-01-01 10:00:00')"
    )
    other.execute("UPDATE tasks SET id = 'f' WHERE id = 'e'")
    other.commit()
    rows = read_history(store.writer, 0, 10)
    assert [(r.operation, r.data["id"]) for r in rows] == [
        ("insert", "e"),
        ("delete", "e"),
        ("insert", "f"),
    ]
    assert all(r.client_id is None for r in rows)
    assert rows[0].updated_at == "2030-01-01T10:00:00.000Z"  # normalized for the wire
    assert len({r.change_id for r in rows}) == 3


def test_applied_change_is_recorded_with_its_id_author_and_lsn(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    (result,) = apply_changes(
        store.writer, store.schema, "alice", [_change("ch-1", "insert", {"id": "a", "title": "x"})]
    )
    assert result.status is ChangeStatus.APPLIED
    (row,) = read_history(store.writer, 0, 10)
    assert (row.change_id, row.client_id, row.lsn) == ("ch-1", "alice", result.lsn)
    assert row.data["updated_at"] == "2030-01-01T00:00:00.000Z"  # taken from the change
    ctx = store.writer.execute("SELECT change_id, client_id FROM _ts_context").fetchone()
    assert ctx == (None, None)  # other writers never see the context filled


def test_failed_change_leaves_no_partial_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    results = apply_changes(
        store.writer,
        store.schema,
        "c",
        [
            _change("bad", "insert", {"id": "a", "title": "x", "project_id": "nope"}),
            _change("ok", "insert", {"id": "b", "title": "y"}),
        ],
    )
    assert [r.status for r in results] == [ChangeStatus.REJECTED, ChangeStatus.APPLIED]
    assert store.writer.execute("SELECT id FROM tasks").fetchall() == [("b",)]
    assert [r.change_id for r in read_history(store.writer, 0, 10)] == ["ok"]
    applied = store.writer.execute("SELECT change_id FROM _ts_applied_changes").fetchall()
    assert applied == [("ok",)]


def test_insert_onto_existing_row_upserts_without_cascading(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    w = store.writer
    w.execute("INSERT INTO projects VALUES ('p', 'P', '2020-01-01T00:00:00.000Z')")
    w.execute("INSERT INTO tasks(id, project_id, title, updated_at) VALUES ('t', 'p', 'T', 'x')")
    project = TableChange(
        id="up",
        table="projects",
        operation=Operation.INSERT,
        data={"id": "p", "name": "P2"},
        updated_at="2030-01-01T00:00:00.000Z",
    )
    (result,) = apply_changes(w, store.schema, "c", [project])
    assert result.status is ChangeStatus.APPLIED
    assert w.execute("SELECT COUNT(*) FROM tasks").fetchone() == (1,)  # child survived


def test_update_of_missing_row_is_skipped_as_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    (result,) = apply_changes(
        store.writer, store.schema, "c", [_change("u", "update", {"id": "ghost", "title": "x"})]
    )
    assert result.status is ChangeStatus.SKIPPED and result.row_deleted


def test_table_checksum_ignores_row_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    w = store.writer
    for tid in ("a", "b", "c"):
        w.execute("INSERT INTO tasks(id, title, updated_at) VALUES (?, 't', 'x')", (tid,))
    other = Store(tmp_path / "o.db")
    for tid in ("c", "a", "b"):
        other.writer.execute(
            "INSERT INTO tasks(id, title, updated_at) VALUES (?, 't', 'x')", (tid,)
        )
    table = store.schema.tables["tasks"]
    assert table_checksum(w.cursor(), table) == table_checksum(other.writer.cursor(), table)
    w.execute("UPDATE tasks SET done = 1 WHERE id = 'a'")
    assert table_checksum(w.cursor(), table) != table_checksum(other.writer.cursor(), table)
    assert combine([]) == "0" * 16
    assert combine([row_hash({"a": 1}), row_hash({"b": 2})]) == combine(
        [row_hash({"b": 2}), row_hash({"a": 1})]
    )
