"""The CPython-testable parts of the Changes Worker's browser entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidesync.changes.browser_entry import _describe, conflicts_in, parse_pragmas
from tidesync.changes.worker import ChangesWorker


def test_recommended_pragmas_parse_in_order() -> None:
    pragmas = parse_pragmas(
        ["PRAGMA locking_mode=EXCLUSIVE", "PRAGMA journal_mode=WAL", "PRAGMA cache_size=-16384"]
    )
    assert list(pragmas.items()) == [
        ("locking_mode", "EXCLUSIVE"),
        ("journal_mode", "WAL"),
        ("cache_size", "-16384"),
    ]


def test_anything_but_a_plain_pragma_is_refused() -> None:
    with pytest.raises(ValueError, match="not a simple PRAGMA"):
        parse_pragmas(["PRAGMA journal_mode=WAL; DROP TABLE tasks"])


async def test_a_lost_edit_is_described_with_what_was_written_and_what_won(
    tmp_path: Path,
) -> None:
    worker = ChangesWorker(str(tmp_path / "c.db"))
    await worker.insert("projects", {"id": "p1", "name": "mine"})
    change_id = (await worker.pending_changes())[0]["id"]
    results = [
        {"id": change_id, "status": "skipped", "reason": "lww", "row": {"id": "p1", "name": "x"}},
        {"id": "other", "status": "applied", "lsn": "0/2"},
    ]
    lost = conflicts_in({"results": results})
    assert lost == [{"id": change_id, "row": {"id": "p1", "name": "x"}, "deleted": False}]
    described = await _describe(worker, lost[0])
    assert described["table"] == "projects" and described["operation"] == "insert"
    assert described["local"]["name"] == "mine" and described["row"]["name"] == "x"
    await worker.close()
