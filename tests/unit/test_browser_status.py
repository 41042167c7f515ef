"""The page's view of the Sync Worker's status (``browser_entry.status_to_dict``)."""

from __future__ import annotations

from tidesync.worker_sync.worker_thread.browser_entry import page_phase, status_to_dict
from tidesync.worker_sync.worker_thread.status import InitProgress, SyncPhase, SyncStatus


def test_connected_status_shows_the_sync_phase() -> None:
    status = SyncStatus(connected=True, phase=SyncPhase.CATCHUP, connection="open", lsn=0x1A)
    page = status_to_dict(status)
    assert page["phase"] == "catchup" and page["syncPhase"] == "catchup"
    assert page["lsn"] == "0/1A"


def test_disconnected_status_says_why() -> None:
    assert page_phase(SyncStatus(connection="offline")) == "offline"
    assert page_phase(SyncStatus(connection="backoff", reconnect_in=2.0)) == "backoff"
    assert page_phase(SyncStatus(connection="connecting")) == "connecting"
    assert page_phase(SyncStatus(connection="open")) == "connecting"  # socket up, no phase yet


def test_status_dict_carries_progress_countdown_and_repairs() -> None:
    status = SyncStatus(
        connection="backoff",
        reconnect_in=1.5,
        init_progress=InitProgress("tasks", 2, 5, 2000),
        repairs=1,
        last_error="cannot reach the server (1006); retrying",
    )
    page = status_to_dict(status)
    assert page["initProgress"] == {"table": "tasks", "chunk": 2, "total": 5, "rows": 2000}
    assert page["reconnectIn"] == 1.5 and page["reconnectAt"] is not None
    assert page["repairs"] == 1
    assert page["lastError"].startswith("cannot reach the server")


def test_status_dict_names_the_repaired_tables_and_how_they_were_repaired() -> None:
    page = status_to_dict(SyncStatus())
    assert (page["tableRepairs"], page["fullResyncs"], page["lastRepair"]) == (0, 0, None)
    assert page["repairing"] == []
    status = SyncStatus(
        repairs=3,
        table_repairs=2,
        full_resyncs=1,
        last_repair=("projects", "tasks"),
        last_repair_mode="tables",
        repairing=("tasks",),
    )
    page = status_to_dict(status)
    assert (page["repairs"], page["tableRepairs"], page["fullResyncs"]) == (3, 2, 1)
    assert page["lastRepair"] == {"tables": ["projects", "tasks"], "mode": "tables"}
    assert page["repairing"] == ["tasks"]
