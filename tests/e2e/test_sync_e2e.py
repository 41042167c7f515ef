"""The whole system in real Chromium: page API -> Changes Worker (SQLite on OPFS) ->
Sync Worker (js.WebSocket) -> the real sync server on loopback -> other browsers.

Every test boots real Pyodide workers from the built site (``make site``); the
server is the real ``tidesync serve`` subprocess serving that site.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browser_harness import free_port
from tests.helpers.browser_db import page_query, server_rows

OPEN_DB = """async ({name, url}) => {
  const {TideSync} = await import('/js/tidesync.mjs');
  window.db = await TideSync.open({name, url, heartbeatInterval: 1});
  window.events = {conflicts: [], results: []};
  window.db.on('conflict', (c) => window.events.conflicts.push(c));
  return window.db.status;
}"""
LIVE_AND_IDLE = "() => window.db && db.status.phase === 'live' && db.status.pending === 0"
BOOT_TIMEOUT_MS = 90_000


@pytest.fixture
def open_client(chromium: Any, site_server: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def open_(name: str = "e2e", context: Any = None, wait_live: bool = True) -> Any:
        if context is None:
            context = chromium.new_context()
            contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(BOOT_TIMEOUT_MS)
        page.goto(site_server.http_url + "/api/health")
        page.evaluate(OPEN_DB, {"name": name, "url": site_server.ws_url})
        if wait_live:
            page.wait_for_function(LIVE_AND_IDLE, timeout=BOOT_TIMEOUT_MS)
        return page

    yield open_
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()


def _wait_rows(page: Any, sql: str, expected: list[dict[str, Any]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = page_query(page, sql)
        if rows == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{sql} -> {rows}, expected {expected}")


def test_insert_update_delete_sync_both_ways_between_two_browsers(
    open_client: Callable[..., Any],
) -> None:
    a = open_client("two-way")
    b = open_client("two-way")
    a.evaluate("db.insert('projects', {id: 'pa', name: 'From A'})")
    sql = "SELECT id, name FROM projects WHERE id = 'pa'"
    _wait_rows(b, sql, [{"id": "pa", "name": "From A"}])
    b.evaluate("db.insert('tasks', {id: 'tb', project_id: 'pa', title: 'From B'})")
    _wait_rows(
        a,
        "SELECT id, title, done FROM tasks WHERE id = 'tb'",
        [{"id": "tb", "title": "From B", "done": 0}],
    )

    b.evaluate("db.update('projects', {id: 'pa', name: 'Renamed by B'})")
    a.evaluate("db.update('tasks', {id: 'tb', done: 1})")
    _wait_rows(a, sql, [{"id": "pa", "name": "Renamed by B"}])
    _wait_rows(b, "SELECT done FROM tasks WHERE id = 'tb'", [{"done": 1}])

    a.evaluate("db.delete('tasks', {id: 'tb'})")
    _wait_rows(b, "SELECT id FROM tasks WHERE id = 'tb'", [])
    b.evaluate("db.delete('projects', {id: 'pa'})")
    _wait_rows(a, sql, [])


def test_live_query_callback_fires_for_changes_from_another_browser(
    open_client: Callable[..., Any],
) -> None:
    a = open_client("live-query")
    b = open_client("live-query")
    a.evaluate(
        """() => { window.seen = [];
        db.subscribe("SELECT name FROM projects WHERE id = 'lq'", [],
                     (rows) => seen.push(rows)); }"""
    )
    b.evaluate("db.insert('projects', {id: 'lq', name: 'watched'})")
    a.wait_for_function("() => seen.some((rows) => rows.length && rows[0].name === 'watched')")


def test_reload_keeps_data_and_pending_changes_then_syncs_them_once(
    open_client: Callable[..., Any], site_server: Any
) -> None:
    page = open_client("reload")
    page.evaluate("db.goOffline()")
    page.wait_for_function("() => !db.status.connected")
    page.evaluate("db.insert('projects', {id: 'offline-1', name: 'written offline'})")
    pending_before = page.evaluate("db.pendingChanges()")
    assert [p["table_name"] for p in pending_before] == ["projects"]

    page.reload()
    page.evaluate(OPEN_DB, {"name": "reload", "url": site_server.ws_url})
    assert page_query(page, "SELECT name FROM projects WHERE id = 'offline-1'") == [
        {"name": "written offline"}
    ]
    # The new page is online again: the pending change goes out exactly once.
    page.wait_for_function(LIVE_AND_IDLE)
    assert page.evaluate("db.pendingChanges()") == []
    assert server_rows(site_server, "SELECT name FROM projects WHERE id = 'offline-1'") == [
        ("written offline",)
    ]
    change_id = pending_before[0]["id"]
    assert server_rows(
        site_server, f"SELECT count(*) FROM _ts_change_history WHERE change_id = '{change_id}'"
    ) == [(1,)]


def test_edits_made_while_the_server_is_down_arrive_exactly_once(
    open_client: Callable[..., Any], site_server: Any
) -> None:
    a = open_client("server-down")
    b = open_client("server-down")
    site_server.stop()
    a.wait_for_function("() => !db.status.connected")
    for i in range(5):
        a.evaluate(f"db.insert('tasks', {{id: 'down-{i}', title: 'task {i}'}})")
    a.evaluate("db.update('tasks', {id: 'down-0', title: 'edited while down'})")
    assert a.evaluate("db.status.pending") >= 1
    site_server.start()
    a.wait_for_function(LIVE_AND_IDLE, timeout=60_000)
    expected = [{"id": f"down-{i}"} for i in range(5)]
    _wait_rows(b, "SELECT id FROM tasks WHERE id LIKE 'down-%' ORDER BY id", expected, 60)
    assert page_query(b, "SELECT title FROM tasks WHERE id = 'down-0'") == [
        {"title": "edited while down"}
    ]
    dupes = server_rows(
        site_server,
        "SELECT change_id FROM _ts_change_history GROUP BY change_id HAVING count(*) > 1",
    )
    assert dupes == []


def test_renderer_killed_right_after_commit_keeps_the_row_and_integrity(
    new_context: Callable[..., Any], site_server: Any
) -> None:
    context, _ = new_context()
    page = context.new_page()
    page.set_default_timeout(BOOT_TIMEOUT_MS)
    page.goto(site_server.http_url + "/api/health")
    page.evaluate(OPEN_DB, {"name": "crash", "url": site_server.ws_url})
    page.evaluate("db.goOffline()")
    page.evaluate("db.insert('projects', {id: 'crash-1', name: 'committed before crash'})")
    crashed: list[bool] = []
    page.on("crash", lambda _page: crashed.append(True))
    cdp = context.new_cdp_session(page)
    with contextlib.suppress(Exception):
        cdp.send("Page.crash", timeout=2000)  # never answers: the renderer dies
    deadline = time.monotonic() + 10
    while not crashed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert crashed, "the renderer did not crash"
    again = context.new_page()
    again.set_default_timeout(BOOT_TIMEOUT_MS)
    again.goto(site_server.http_url + "/api/health")
    again.evaluate(OPEN_DB, {"name": "crash", "url": site_server.ws_url})
    assert page_query(again, "SELECT name FROM projects WHERE id = 'crash-1'") == [
        {"name": "committed before crash"}
    ]
    assert page_query(again, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    # and the change recorded with it is still there to be synced
    again.wait_for_function(LIVE_AND_IDLE)
    assert server_rows(site_server, "SELECT name FROM projects WHERE id = 'crash-1'") == [
        ("committed before crash",)
    ]


@pytest.mark.timeout(360)  # boots Pyodide three times (two tabs, one takeover) on 2 cores
def test_second_tab_works_through_the_owner_and_takes_over_when_it_closes(
    chromium: Any, open_client: Callable[..., Any]
) -> None:
    context = chromium.new_context()
    try:
        first = open_client("tabs", context=context)
        second = open_client("tabs", context=context, wait_live=False)
        assert first.evaluate("db.status.role") == "leader"
        assert second.evaluate("db.status.role") == "follower"
        second.evaluate("db.insert('projects', {id: 'tab2', name: 'via the leader'})")
        assert page_query(first, "SELECT name FROM projects WHERE id = 'tab2'") == [
            {"name": "via the leader"}
        ]
        second.evaluate(
            """() => { window.seen = [];
            db.subscribe("SELECT count(*) AS n FROM projects WHERE id LIKE 'tab%'", [],
                         (rows) => seen.push(rows[0].n)); }"""
        )
        first.evaluate("db.insert('projects', {id: 'tab1', name: 'by the leader'})")
        second.wait_for_function("() => seen.includes(2)")

        first.close()
        second.wait_for_function("() => db.status.role === 'leader'", timeout=BOOT_TIMEOUT_MS)
        second.wait_for_function(LIVE_AND_IDLE, timeout=BOOT_TIMEOUT_MS)
        assert page_query(second, "SELECT count(*) AS n FROM projects WHERE id LIKE 'tab%'") == [
            {"n": 2}
        ]
        second.evaluate("db.insert('projects', {id: 'tab3', name: 'after takeover'})")
        second.wait_for_function("() => seen.includes(3)")
    finally:
        context.close()


class _FakeServer:
    """A WebSocket server that answers a client with garbage, and records what it hears."""

    FRAMES = [
        "this is not json",
        "[1, 2, 3]",
        json.dumps(
            {"type": "srv_no_such_type", "messageId": "m1", "timestamp": 1, "clientId": "x"}
        ),
        json.dumps(
            {
                "type": "srv_live_changes",
                "messageId": "m2",
                "timestamp": 1,
                "clientId": "x",
                "changes": "nope",
                "lastLSN": "0/5",
            }
        ),
        json.dumps(
            {
                "type": "srv_catchup_changes",
                "messageId": "m3",
                "timestamp": 1,
                "clientId": "x",
                "changes": [],
                "lastLSN": "zz",
                "sequence": {"chunk": 1, "total": 1},
            }
        ),
        "{" * 5000,
        json.dumps(
            {
                "type": "srv_live_changes",
                "messageId": "m4",
                "timestamp": 1,
                "clientId": "x",
                "changes": [
                    {
                        "id": "c",
                        "table": "x; DROP TABLE tasks",
                        "operation": "insert",
                        "data": {"id": "1"},
                        "updated_at": "2026-01-01T00:00:00Z",
                        "lsn": "0/9",
                    }
                ],
                "lastLSN": "0/9",
            }
        ),
    ]

    def __init__(self) -> None:
        from websockets.sync.server import serve

        self.port = free_port()
        self.heard: list[str] = []
        self._server = serve(self._handle, "127.0.0.1", self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, ws: Any) -> None:
        for frame in self.FRAMES:
            ws.send(frame)
        ws.send(b"\x00\x01binary")
        with contextlib.suppress(Exception):
            for _ in range(30):
                self.heard.append(str(ws.recv(timeout=2)))

    def close(self) -> None:
        self._server.shutdown()


def test_malformed_frames_from_a_server_do_not_crash_the_worker(
    chromium: Any, site_server: Any
) -> None:
    fake = _FakeServer()
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(BOOT_TIMEOUT_MS)
        page.goto(site_server.http_url + "/api/health")
        page.evaluate(OPEN_DB, {"name": "fake", "url": f"ws://127.0.0.1:{fake.port}/api/sync"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("clt_error" in h for h in fake.heard):
            time.sleep(0.2)
        assert any("clt_error" in h for h in fake.heard), fake.heard
        # The worker is alive: local reads and writes still work, nothing was applied.
        page.evaluate("db.insert('projects', {id: 'still-alive', name: 'yes'})")
        assert page_query(page, "SELECT name FROM projects WHERE id = 'still-alive'") == [
            {"name": "yes"}
        ]
        assert page_query(page, "SELECT count(*) AS n FROM tasks") == [{"n": 0}]
        assert page.evaluate("db.status.lastError") is not None
    finally:
        context.close()
        fake.close()


CHANGE_ORDER = """async (id) => {
  const seen = [];
  const off = db.on('change', (c) => seen.push(`change ${c.tables.join(',')} ${c.source}`));
  await db.insert('projects', {id, name: 'events'});
  seen.push('resolved');
  off();
  return seen;
}"""


def test_a_local_write_reports_its_tables_before_it_resolves_in_every_tab(
    chromium: Any, open_client: Callable[..., Any], site_server: Any
) -> None:
    """The write's ``tables_changed`` rides on its reply (browser_entry.PageEvents): the
    page still hears ``change`` before the call resolves, a follower tab hears it too,
    and a page without sync (no Sync Worker) gets the same."""
    context = chromium.new_context()
    try:
        first = open_client("events", context=context)
        second = open_client("events", context=context, wait_live=False)
        second.evaluate("() => { window.changes = []; db.on('change', (c) => changes.push(c)); }")
        assert first.evaluate(CHANGE_ORDER, "ev-leader") == ["change projects local", "resolved"]
        second.wait_for_function(
            "() => changes.some((c) => c.source === 'local' && c.tables.includes('projects'))"
        )
        assert second.evaluate(CHANGE_ORDER, "ev-follower") == [
            "change projects local",
            "resolved",
        ]
        _wait_rows(
            first,
            "SELECT id FROM projects WHERE id LIKE 'ev-%' ORDER BY id",
            [{"id": "ev-follower"}, {"id": "ev-leader"}],
        )
        first.wait_for_function(LIVE_AND_IDLE)  # both were sent to the server
        assert server_rows(
            site_server, "SELECT id FROM projects WHERE id LIKE 'ev-%' ORDER BY id"
        ) == [("ev-follower",), ("ev-leader",)]
        local = context.new_page()
        local.set_default_timeout(BOOT_TIMEOUT_MS)
        local.goto(site_server.http_url + "/api/health")
        local.evaluate(
            """async () => { const {TideSync} = await import('/js/tidesync.mjs');
            window.db = await TideSync.open({name: 'events-local', sync: false}); }"""
        )
        assert local.evaluate(CHANGE_ORDER, "ev-local") == ["change projects local", "resolved"]
        assert page_query(local, "SELECT count(*) AS n FROM local_changes") == [{"n": 1}]
        local.evaluate("db.close()")
    finally:
        context.close()


PENDING_AFTER_EACH_WRITE = """async (count) => {
  const idle = () => new Promise((resolve) => {
    const check = () => (db.status.pending === 0 ? resolve() : setTimeout(check, 2));
    check();
  });
  const seen = [];
  for (let i = 0; i < count; i++) {
    await idle();
    await db.insert('projects', {id: `pn-${i}`, name: 'pending at once'});
    seen.push(db.status.pending);
  }
  return seen;
}"""


def test_a_resolved_write_shows_as_pending_until_the_server_has_it(
    open_client: Callable[..., Any], site_server: Any
) -> None:
    """Right after ``await db.insert(...)`` the status already counts the write, before the
    Sync Worker has heard of it (browser_entry.PageStatus): "live, nothing pending" means
    the server has every write, without polling the server."""
    page = open_client("pending-now")
    assert all(n >= 1 for n in page.evaluate(PENDING_AFTER_EACH_WRITE, 20))
    page.wait_for_function(LIVE_AND_IDLE)
    assert server_rows(site_server, "SELECT count(*) FROM projects WHERE id LIKE 'pn-%'") == [(20,)]


SPY_CHANNEL = """(name) => {
  window.spied = [];
  window.spy = new BroadcastChannel(`tidesync:${name}`);
  spy.onmessage = (ev) => { if (ev.data?.type === 'event') spied.push(ev.data.data.event); };
}"""


@pytest.mark.timeout(360)  # boots Pyodide four times (three tabs, one takeover) on 2 cores
def test_the_owner_tab_forwards_events_only_while_another_tab_follows_it(
    chromium: Any, open_client: Callable[..., Any]
) -> None:
    """A post on the BroadcastChannel crosses the browser process (~0.1 ms): a tab alone
    forwards nothing, a follower tab gets every event once it is there (after the owner
    closes, a tab still following the new owner too), and a tab that closed stops it."""
    context = chromium.new_context()
    try:
        first = open_client("fwd", context=context)
        first.evaluate(SPY_CHANNEL, "fwd")
        first.evaluate("db.insert('projects', {id: 'fwd-alone', name: 'nobody follows'})")
        first.evaluate("new Promise((r) => setTimeout(r, 300))")
        assert first.evaluate("spied") == []

        second = open_client("fwd", context=context, wait_live=False)
        third = open_client("fwd", context=context, wait_live=False)
        assert second.evaluate("db.status.role") == third.evaluate("db.status.role") == "follower"
        for tab in (second, third):
            tab.evaluate("() => { window.changes = []; db.on('change', (c) => changes.push(c)); }")
        first.evaluate("db.insert('projects', {id: 'fwd-followed', name: 'two follow'})")
        for tab in (second, third):
            tab.wait_for_function("() => changes.some((c) => c.tables.includes('projects'))")
        assert "tables_changed" in first.evaluate("spied")

        first.close()  # one of the followers takes over; the other must still hear it
        deadline = time.monotonic() + BOOT_TIMEOUT_MS / 1000
        roles: set[str] = set()
        while time.monotonic() < deadline:
            roles = {second.evaluate("db.status.role"), third.evaluate("db.status.role")}
            if roles == {"leader", "follower"}:
                break
            time.sleep(0.2)
        assert roles == {"leader", "follower"}
        leads = second.evaluate("db.status.role") == "leader"
        owner, follower = (second, third) if leads else (third, second)
        owner.wait_for_function("() => db.status.ready", timeout=BOOT_TIMEOUT_MS)
        follower.evaluate("() => { changes.length = 0; }")
        owner.evaluate("db.insert('projects', {id: 'fwd-new-owner', name: 'after takeover'})")
        follower.wait_for_function("() => changes.some((c) => c.tables.includes('projects'))")

        follower.evaluate("db.close()")
        owner.evaluate(SPY_CHANNEL, "fwd")
        owner.evaluate("new Promise((r) => setTimeout(r, 300))")  # the bye arrives
        owner.evaluate("() => { spied.length = 0; }")
        owner.evaluate("db.insert('projects', {id: 'fwd-alone-again', name: 'alone again'})")
        owner.evaluate("new Promise((r) => setTimeout(r, 300))")
        assert owner.evaluate("spied") == []
    finally:
        context.close()


def test_the_sync_worker_adopts_the_socket_its_bootstrap_opened_before_python(
    open_client: Callable[..., Any], site_server: Any
) -> None:
    """The Changes Worker's ready event names the URL; sync_socket.openEarly connects while
    the Sync Worker restores Pyodide; Python adopts that socket (one connection, no 4409)."""
    page = open_client("early-socket")
    status = page.evaluate("db.status")
    assert status["earlySocket"] == "adopted"
    client = status["clientId"]
    connected = [
        line
        for line in site_server.log_path.read_text().splitlines()
        if f"client {client} connected" in line
    ]
    assert len(connected) == 1, connected
    assert f"client {client}: newer connection" not in site_server.log_path.read_text()
