"""Changes the server tests write through the server's own apply path."""

from __future__ import annotations

from tidesync.worker_sync.shared.message_types import Operation, TableChange


def task_inserts(n: int, prefix: str) -> list[TableChange]:
    """``n`` task inserts with ids ``{prefix}0``..., each moving the server's LSN once
    (the title is non-ASCII on purpose: encoders must keep it as it is)."""
    return [
        TableChange(
            id=f"w-{prefix}-{i}",
            table="tasks",
            operation=Operation.INSERT,
            data={"id": f"{prefix}{i}", "title": f"title {i} ü"},
            updated_at="2030-01-01T00:00:00.000Z",
        )
        for i in range(n)
    ]
