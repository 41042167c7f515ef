"""Demo data for the demo schema: a little sample data, or N tasks for large-data mode.

Both write through the normal tables (a separate connection, one transaction),
so the capture triggers put every row in the history like any other program's
write, and the running server's tailer fans it out.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["MAX_SEED_TASKS", "seed_demo", "seed_tasks"]

#: What ``POST /api/seed`` accepts at most (the CLI has no limit).
MAX_SEED_TASKS = 200_000


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _open(db: str | Path, schema_sql: str | None) -> sqlite3.Connection:
    from tidesync.server.store import Store, connect

    Store(db, schema_sql).close()  # creates tables and triggers when missing
    return connect(db)


def seed_demo(db: str | Path, schema_sql: str | None = None) -> int:
    """Sample projects and tasks, only when both tables are empty; returns rows added."""
    conn = _open(db, schema_sql)
    try:
        has = conn.execute(
            "SELECT (SELECT COUNT(*) FROM projects) + (SELECT COUNT(*) FROM tasks)"
        ).fetchone()[0]
        if has:
            return 0
        now = datetime.now(tz=UTC)
        projects = [("p-home", "Home"), ("p-work", "Work"), ("p-garden", "Garden")]
        titles = [
            ("p-home", "Buy milk"),
            ("p-home", "Fix the tap"),
            ("p-home", "Call grandma"),
            ("p-work", "Write the sync server"),
            ("p-work", "Review pull requests"),
            ("p-work", "Plan the sprint"),
            ("p-work", "Update the docs"),
            ("p-garden", "Water the tomatoes"),
            ("p-garden", "Mow the lawn"),
            ("p-garden", "Plant tulips"),
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO projects(id, name, updated_at) VALUES (?, ?, ?)",
            [(pid, name, _iso(now)) for pid, name in projects],
        )
        conn.executemany(
            "INSERT INTO tasks(id, project_id, title, done, updated_at) VALUES (?, ?, ?, ?, ?)",
            [
                (f"t-{i + 1}", pid, title, int(i % 4 == 0), _iso(now + timedelta(milliseconds=i)))
                for i, (pid, title) in enumerate(titles)
            ],
        )
        conn.execute("COMMIT")
        return len(projects) + len(titles)
    finally:
        conn.close()


def seed_tasks(db: str | Path, count: int, schema_sql: str | None = None) -> int:
    """Add ``count`` tasks (and a few projects for them) in one transaction."""
    conn = _open(db, schema_sql)
    try:
        now = datetime.now(tz=UTC)
        stamp = _iso(now)
        projects = [(f"bulk-{uuid.uuid4().hex[:8]}", f"Bulk project {i + 1}") for i in range(10)]
        rng = random.Random(count)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO projects(id, name, updated_at) VALUES (?, ?, ?)",
            [(pid, name, stamp) for pid, name in projects],
        )
        conn.executemany(
            "INSERT INTO tasks(id, project_id, title, done, updated_at) VALUES (?, ?, ?, ?, ?)",
            (
                (
                    str(uuid.uuid4()),
                    projects[i % len(projects)][0],
                    f"Task {i + 1}",
                    int(rng.random() < 0.3),
                    stamp,
                )
                for i in range(count)
            ),
        )
        conn.execute("COMMIT")
        return count
    finally:
        conn.close()
