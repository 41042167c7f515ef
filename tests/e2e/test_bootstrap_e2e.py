"""A new database starting from the server's image of it (``GET /api/bootstrap``), in
real Chromium against the real server: downloaded while Pyodide boots, checked, adopted,
then caught up over the WebSocket; and a bad image ends on the streamed initial sync."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser_harness import SITE_DIR
from tests.helpers.browser_db import page_query, server_rows

SEEDED = 3000  # above the 1,000-row floor for images these servers get
OPEN_DB = """async ({name, url, bootstrap}) => {
  const {TideSync} = await import('/js/tidesync.mjs');
  window.db = await TideSync.open({name, url, heartbeatInterval: 1, bootstrap});
  window.readyStatus = JSON.parse(JSON.stringify(db.status));
  window.readyTasks = (await db.query('SELECT count(*) AS n FROM tasks'))[0].n;
  return window.readyStatus;
}"""
LIVE_AND_IDLE = "() => window.db && db.status.phase === 'live' && db.status.pending === 0"
TIMEOUT_MS = 90_000


@pytest.fixture
def seeded_server(tmp_path: Path, server_factory: Callable[..., Any]) -> Any:
    from tidesync.server.seed import seed_tasks

    db_path = tmp_path / "seeded.db"
    seed_tasks(db_path, SEEDED)
    return server_factory(site=str(SITE_DIR), heartbeat=1, db=str(db_path), bootstrap_min_rows=1000)


def _open(context: Any, server: Any, name: str, bootstrap: bool = True) -> tuple[Any, Any]:
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.http_url + "/api/health")
    status = page.evaluate(OPEN_DB, {"name": name, "url": server.ws_url, "bootstrap": bootstrap})
    page.wait_for_function(LIVE_AND_IDLE, timeout=TIMEOUT_MS)
    return page, status


def _count(page: Any, sql: str) -> int:
    return int(next(iter(page_query(page, sql)[0].values())))


def _server_count(server: Any, sql: str) -> int:
    return int(server_rows(server, sql)[0][0])


def test_a_new_database_starts_from_the_image_catches_up_and_syncs_both_ways(
    contexts: Callable[[], Any], seeded_server: Any
) -> None:
    a, status_a = _open(contexts(), seeded_server, "boot-a")
    assert status_a["bootstrap"]["used"] is True, status_a["bootstrap"]
    assert status_a["bootstrap"]["rows"] == SEEDED + 10  # the seed's 10 projects
    # Readable means synced: every task was there before the Sync Worker started.
    assert a.evaluate("window.readyTasks") == SEEDED
    image_lsn = status_a["bootstrap"]["lsn"]

    # A change after the image was built: the next new client gets the same image and
    # this row in its catchup.
    a.evaluate("db.insert('tasks', {id: 'after-image', project_id: null, title: 'late'})")
    a.wait_for_function(LIVE_AND_IDLE)
    b, status_b = _open(contexts(), seeded_server, "boot-b")
    assert status_b["bootstrap"]["used"] is True
    assert status_b["bootstrap"]["lsn"] == image_lsn
    assert b.evaluate("window.readyTasks") == SEEDED
    assert page_query(b, "SELECT title FROM tasks WHERE id = 'after-image'") == [{"title": "late"}]
    assert _count(b, "SELECT count(*) FROM tasks") == _server_count(
        seeded_server, "SELECT count(*) FROM tasks"
    )
    # Each client has its own id, and the server's checksums agreed with the image's rows.
    ids = {a.evaluate("db.status.clientId"), b.evaluate("db.status.clientId")}
    assert len(ids) == 2 and None not in ids
    assert b.evaluate("db.status.repairs") == 0
    assert seeded_server.health()["bootstrap"]["built"] == 1

    b.evaluate("db.update('tasks', {id: 'after-image', title: 'edited in B'})")
    a.wait_for_function(
        "async () => (await db.query(\"SELECT title FROM tasks WHERE id = 'after-image'\"))[0]"
        ".title === 'edited in B'"
    )
    assert server_rows(seeded_server, "SELECT title FROM tasks WHERE id = 'after-image'") == [
        ("edited in B",)
    ]


def test_a_reopened_database_does_not_download_the_image_again(
    contexts: Callable[[], Any], seeded_server: Any
) -> None:
    context = contexts()
    page, first = _open(context, seeded_server, "boot-reopen")
    assert first["bootstrap"]["used"] is True
    page.evaluate("db.close()")
    page.close()
    again, second = _open(context, seeded_server, "boot-reopen")
    assert second["bootstrap"] is None  # the database existed: nothing was fetched
    assert again.evaluate("window.readyTasks") == SEEDED
    assert seeded_server.health()["bootstrap"]["served"] == 1


def test_a_bad_image_is_refused_and_the_initial_sync_streams_instead(
    contexts: Callable[[], Any], seeded_server: Any
) -> None:
    context = contexts()
    # What a broken proxy or a hostile server might send: not a database.
    context.route(
        "**/api/bootstrap*",
        lambda route: route.fulfill(
            status=200,
            body=b"SQLite format 3\x00" + b"\x07" * 5000,
            headers={"Access-Control-Allow-Origin": "*"},
        ),
    )
    page, status = _open(context, seeded_server, "boot-bad")
    report = status["bootstrap"]
    assert report["used"] is False and report["reason"], report
    assert page.evaluate("window.readyTasks") == 0  # nothing of it reached the database
    assert _count(page, "SELECT count(*) FROM tasks") == SEEDED  # streamed
    assert page.evaluate("db.status.repairs") == 0


def test_bootstrap_false_streams_the_initial_sync(
    contexts: Callable[[], Any], seeded_server: Any
) -> None:
    page, status = _open(contexts(), seeded_server, "boot-off", bootstrap=False)
    assert status["bootstrap"] is None
    assert page.evaluate("window.readyTasks") == 0
    assert _count(page, "SELECT count(*) FROM tasks") == SEEDED
    assert seeded_server.health()["bootstrap"]["served"] == 0
