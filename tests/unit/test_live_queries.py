from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tidesync.changes.live_queries import LiveQueries, tables_read_by
from tidesync.schema import demo_schema_sql


def _db(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "live.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(demo_schema_sql())
    conn.execute("CREATE VIEW open_tasks AS SELECT * FROM tasks WHERE done = 0")
    return conn


def _runner(conn: sqlite3.Connection):
    def run(sql: str, params: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(sql, params)]

    return run


def test_tables_read_by_reports_joined_tables_and_view_bases(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    joined = "SELECT t.title, p.name FROM tasks t JOIN projects p ON p.id = t.project_id"
    assert tables_read_by(conn, joined) == {"tasks", "projects"}
    assert "tasks" in tables_read_by(conn, "SELECT count(*) FROM open_tasks")
    assert tables_read_by(conn, "SELECT name FROM projects WHERE id = ?", ["p"]) == {"projects"}


def test_subscription_reruns_only_when_a_read_table_changes(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    emitted: list[tuple[str, list[dict[str, Any]]]] = []
    live = LiveQueries(conn, _runner(conn), lambda sid, rows: emitted.append((sid, rows)))
    live.subscribe("s1", "SELECT name FROM projects ORDER BY name")
    assert emitted == [("s1", [])]

    conn.execute("INSERT INTO tasks (id, title, updated_at) VALUES ('t', 'x', 'now')")
    assert live.tables_changed(["tasks"]) == 0
    conn.execute("INSERT INTO projects VALUES ('p1', 'Garden', 'now')")
    assert live.tables_changed(["projects"]) == 1
    assert emitted[-1] == ("s1", [{"name": "Garden"}])


def test_unchanged_results_are_not_emitted_again(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    emitted: list[str] = []
    live = LiveQueries(conn, _runner(conn), lambda sid, rows: emitted.append(sid))
    live.subscribe("s1", "SELECT count(*) AS n FROM projects WHERE name = 'none'")
    conn.execute("INSERT INTO projects VALUES ('p1', 'Garden', 'now')")
    assert live.tables_changed(["projects"]) == 0
    assert emitted == ["s1"]
    assert live.unsubscribe("s1") and len(live) == 0
