"""Browser faults in real Chromium against the real sync server.

What a browser does to a local-first app that a server never sees: the renderer
killed in the middle of a transaction, a reload while the initial snapshot
streams in, the site's storage quota running out, and a long offline stretch
with hundreds of edits racing an online client.  Each test drives the real
page API (``js_shim/tidesync.mjs``) -> Changes Worker (SQLite on OPFS) -> Sync
Worker -> ``tidesync serve`` and checks the database afterwards on the client
and on the server.  Malformed frames and a second tab are in test_sync_e2e.py.

Figures from these tests are in docs/reliability.md ("Browser faults").
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser_harness import SITE_DIR
from tests.helpers.browser_db import page_query, server_rows

OPEN_DB = """async ({name, url, bootstrap = true}) => {
  const {TideSync} = await import('/js/tidesync.mjs');
  window.db = await TideSync.open({name, url, heartbeatInterval: 1, bootstrap});
  return window.db.status;
}"""
LIVE_AND_IDLE = "() => window.db && db.status.phase === 'live' && db.status.pending === 0"
BOOT_TIMEOUT_MS = 120_000
SYNC_TIMEOUT_MS = 180_000
# The machine may be loaded: generous, never a timing assertion.
pytestmark = pytest.mark.timeout(600)


def _open(
    context: Any, server: Any, name: str, wait_live: bool = True, bootstrap: bool = True
) -> Any:
    page = context.new_page()
    page.set_default_timeout(BOOT_TIMEOUT_MS)
    page.goto(server.http_url + "/api/health")
    page.evaluate(OPEN_DB, {"name": name, "url": server.ws_url, "bootstrap": bootstrap})
    if wait_live:
        page.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    return page


def _scalar(page: Any, sql: str, params: list[Any] | None = None) -> Any:
    return next(iter(page_query(page, sql, params)[0].values()))


def _integrity(page: Any) -> str:
    return str(_scalar(page, "PRAGMA integrity_check"))


def _crash(context: Any, page: Any) -> None:
    """Kill the page's renderer process (and its workers) like a tab crash."""
    crashed: list[bool] = []
    page.on("crash", lambda _page: crashed.append(True))
    cdp = context.new_cdp_session(page)
    with contextlib.suppress(Exception):
        cdp.send("Page.crash", timeout=2000)  # never answers: the renderer dies
    deadline = time.monotonic() + 15
    while not crashed and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            page.wait_for_timeout(50)  # lets Playwright deliver the crash event
    assert crashed, "the renderer did not crash"


def _no_duplicate_changes(server: Any) -> None:
    dupes = server_rows(
        server, "SELECT change_id FROM _ts_change_history GROUP BY change_id HAVING count(*) > 1"
    )
    assert dupes == []


# --------------------------------------------------------------------------- renderer kill

TX_ROWS = 3000
# The page reports each write whose promise resolved; a report can only be lost, never
# invented, so "resolved" below is a lower bound of what was committed.
WRITE_LOOP = """(n) => {
  window.stopWrites = false;
  (async () => {
    for (let k = 0; !window.stopWrites; k++) {
      console.log(`tx-start ${k}`);
      await db.transaction((tx) => {
        for (let j = 0; j < n; j++) tx.insert('tasks', {id: `tx${k}-${j}`, title: `tx ${k} ${j}`});
      });
      console.log(`tx-done ${k}`);
      await db.insert('tasks', {id: `single-${k}`, title: `single ${k}`});
      console.log(`single-done ${k}`);
    }
  })().catch((e) => console.log(`loop-error ${e}`));
}"""


def test_renderer_killed_mid_transaction_keeps_whole_transactions_and_syncs_them_once(
    new_context: Callable[..., Any], site_server: Any
) -> None:
    context, _ = new_context()
    page = _open(context, site_server, "crash-tx")
    events: list[tuple[float, str]] = []
    page.on("console", lambda m: events.append((time.monotonic(), m.text)))
    page.evaluate(WRITE_LOOP, TX_ROWS)

    def seen(prefix: str) -> list[int]:
        return [int(text.split()[1]) for _, text in events if text.startswith(prefix + " ")]

    deadline = time.monotonic() + 240
    while len(seen("tx-done")) < 2 and time.monotonic() < deadline:
        assert not seen("loop-error"), events
        page.wait_for_timeout(50)  # (console events arrive while Playwright waits)
    assert len(seen("tx-done")) >= 2, events
    # Aim at the next transaction not started yet, 40% into its predecessors' duration.
    starts = {int(t.split()[1]): at for at, t in events if t.startswith("tx-start ")}
    dones = {int(t.split()[1]): at for at, t in events if t.startswith("tx-done ")}
    duration = sum(dones[k] - starts[k] for k in dones) / len(dones)
    target = max(seen("tx-start")) + 1
    while target not in seen("tx-start") and time.monotonic() < deadline:
        page.wait_for_timeout(10)
    started_at = next(at for at, t in events if t == f"tx-start {target}")
    page.wait_for_timeout(max(0.0, started_at + 0.4 * duration - time.monotonic()) * 1000)
    _crash(context, page)
    started, committed, singles = set(seen("tx-start")), set(seen("tx-done")), seen("single-done")
    in_flight = started - committed
    assert in_flight, "the crash did not land while a transaction was in flight"

    again = _open(context, site_server, "crash-tx", wait_live=False)
    assert _integrity(again) == "ok"
    counts = {
        k: _scalar(again, "SELECT count(*) FROM tasks WHERE id LIKE ?", [f"tx{k}-%"])
        for k in range(max(started) + 2)
    }
    for k in committed:
        assert counts[k] == TX_ROWS, f"committed transaction {k} lost rows: {counts[k]}"
    for k, n in counts.items():
        assert n in (0, TX_ROWS), f"transaction {k} is partial: {n} of {TX_ROWS} rows"
    present_singles = {
        int(r["id"].split("-")[1])
        for r in page_query(again, "SELECT id FROM tasks WHERE id LIKE 'single-%'")
    }
    assert set(singles) <= present_singles
    # every row present has exactly one recorded change, and nothing else was recorded
    rows_present = sum(counts.values()) + len(present_singles)
    recorded = _scalar(
        again,
        "SELECT count(*) FROM local_changes WHERE from_server = 0 "
        "AND table_name = 'tasks' AND operation = 'insert'",
    )
    assert recorded == rows_present
    print(
        f"\ncrash: {len(committed)} transactions resolved, in flight {sorted(in_flight)} "
        f"({TX_ROWS} rows each, ~{duration:.2f}s each) -> counts {counts}; "
        f"singles resolved {len(singles)}, present {len(present_singles)}"
    )

    again.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    server_count = server_rows(
        site_server, "SELECT count(*) FROM tasks WHERE id LIKE 'tx%' OR id LIKE 'single-%'"
    )[0][0]
    assert server_count == rows_present
    history = server_rows(
        site_server,
        "SELECT count(*) FROM _ts_change_history "
        "WHERE table_name = 'tasks' AND operation = 'insert' AND client_id = ?",
        (_scalar(again, "SELECT value FROM sync_state WHERE key = 'client_id'"),),
    )[0][0]
    assert history == rows_present
    _no_duplicate_changes(site_server)


# --------------------------------------------------------------------------- initial sync

SEED_TASKS = 50_000
SAMPLER = """() => {
  window.samples = [];
  window.stopSampling = false;
  (async () => {
    while (!window.stopSampling) {
      const s = db.status;
      const [{n}] = await db.query('SELECT count(*) AS n FROM tasks');
      const after = db.status;
      window.samples.push({n, phase: s.phase, after: after.phase, lsn: s.lsn,
                           progress: s.initProgress, t: performance.now()});
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
}"""


def test_reload_during_initial_sync_never_shows_half_a_snapshot_then_goes_live(
    contexts: Callable[[], Any], server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    from tidesync.server.seed import seed_tasks

    db_path = tmp_path / "seeded.db"
    seed_tasks(db_path, SEED_TASKS)
    server = server_factory(site=str(SITE_DIR), heartbeat=1, db=str(db_path))
    total = server_rows(server, "SELECT count(*) FROM tasks")[0][0]
    assert total == SEED_TASKS

    # The streamed initial sync (a new database would otherwise start from the server's image).
    page = _open(contexts(), server, "reload-initial", wait_live=False, bootstrap=False)
    page.evaluate(SAMPLER)
    page.wait_for_function(
        "() => db.status.initProgress && db.status.initProgress.chunk >= 3", timeout=SYNC_TIMEOUT_MS
    )
    before = page.evaluate("() => ({status: db.status, samples: window.samples})")
    progress_at_reload = before["status"]["initProgress"]
    assert progress_at_reload["chunk"] < progress_at_reload["total"], "snapshot already complete"
    assert before["status"]["phase"] == "initial"
    assert {s["n"] for s in before["samples"]} == {0}, "staged chunks showed up in tasks"

    page.reload()
    reopened = page.evaluate(
        OPEN_DB, {"name": "reload-initial", "url": server.ws_url, "bootstrap": False}
    )
    page.evaluate(SAMPLER)
    page.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    page.wait_for_function("() => samples.some((s) => s.phase === 'live')")
    page.evaluate("window.stopSampling = true")
    samples = page.evaluate("window.samples")

    counts = [s["n"] for s in samples]
    assert set(counts) <= {0, total}, f"half a snapshot visible: {sorted(set(counts))}"
    assert counts == sorted(counts), "the snapshot went away again"
    assert _scalar(page, "SELECT count(*) FROM tasks") == total
    # While chunks stream in again, the page shows progress and 0 synced tasks at LSN 0/0.
    streaming = [
        s
        for s in samples
        if s["phase"] == s["after"] == "initial"
        and s["progress"]
        and s["progress"]["chunk"] < s["progress"]["total"]
    ]
    assert streaming, "no sample taken while the snapshot streamed in again"
    assert all(s["n"] == 0 and s["lsn"] == "0/0" for s in streaming)
    # It started over (the staged chunks died with the page): the server began a second
    # snapshot of the same size for this client. (Not read off the progress counter: the
    # first sample taken after the reopen may already be past the chunk the reload cut.)
    client_id = _scalar(page, "SELECT value FROM sync_state WHERE key = 'client_id'")
    starts = [
        line
        for line in server.log_path.read_text().splitlines()
        if f"client {client_id}: snapshot chunks as" in line
    ]
    assert len(starts) == 2, starts
    assert all(s["progress"]["total"] == progress_at_reload["total"] for s in streaming)
    assert reopened["phase"] in ("starting", "connecting", "initial")
    phases = list(dict.fromkeys(s["phase"] for s in samples))
    assert phases.index("live") > phases.index("initial")
    # no reconnect: the long commit of the snapshot does not make the client look dead
    assert "backoff" not in phases, phases
    assert all(s["n"] == total for s in samples if s["phase"] == "live")
    assert page.evaluate("db.status.lastError") is None
    assert _integrity(page) == "ok"
    commit_wait = min(s["t"] for s in samples if s["n"] == total) - streaming[-1]["t"]
    print(
        f"\nreload at chunk {progress_at_reload['chunk']}/{progress_at_reload['total']} "
        f"({progress_at_reload['rows']} rows staged); after reload: "
        f"phases {phases}, first progress seen {streaming[0]['progress']}, "
        f"{len(streaming)} samples while "
        f"streaming, all 0 rows; last chunk -> rows visible {commit_wait / 1000:.1f}s; "
        f"timings {page.evaluate('db.status.timings')}"
    )


# --------------------------------------------------------------------------- quota

FULL_MESSAGE = re.compile(r"disk is full|quota|no space", re.I)
FILL_WRITES = """async (limit) => {
  const pad = 'x'.repeat(4000);
  for (let i = 0; i < limit; i++) {
    try {
      await db.insert('tasks', {id: `fill-${i}`, title: `${i} ${pad}`});
    } catch (e) {
      return {written: i, name: e.name, type: e.pythonType, message: e.message};
    }
  }
  return {written: limit, name: null};
}"""


def test_quota_exceeded_rejects_the_write_clearly_without_corruption_and_recovers(
    contexts: Callable[[], Any], site_server: Any
) -> None:
    context = contexts()
    page = _open(context, site_server, "quota")
    for i in range(20):
        page.evaluate("(i) => db.insert('tasks', {id: `before-${i}`, title: `before ${i}`})", i)
    page.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)

    origin = site_server.http_url
    cdp = context.new_cdp_session(page)
    usage = cdp.send("Storage.getUsageAndQuota", {"origin": origin})["usage"]
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": usage + (3 << 20)})
    failed = page.evaluate(FILL_WRITES, 5000)
    assert failed["name"] == "TideSyncError", failed
    assert FULL_MESSAGE.search(failed["message"]), failed
    written = failed["written"]
    assert written > 0
    # All or nothing under a full disk too: a transaction either fits whole or is absent.
    tx = page.evaluate(
        """async () => {
        try {
          await db.transaction((tx) => { for (let j = 0; j < 200; j++)
            tx.insert('tasks', {id: `fulltx-${j}`, title: 'y'.repeat(4000)}); });
          return null;
        } catch (e) { return e.message; }
      }"""
    )
    assert tx is not None and FULL_MESSAGE.search(tx), tx
    assert _scalar(page, "SELECT count(*) FROM tasks WHERE id LIKE 'fulltx-%'") == 0
    assert _integrity(page) == "ok"
    assert _scalar(page, "SELECT count(*) FROM tasks WHERE id LIKE 'before-%'") == 20
    assert _scalar(page, "SELECT count(*) FROM tasks WHERE id LIKE 'fill-%'") == written
    assert server_rows(site_server, "SELECT count(*) FROM tasks WHERE id LIKE 'before-%'") == [
        (20,)
    ]
    usage_full = cdp.send("Storage.getUsageAndQuota", {"origin": origin})["usage"]

    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin})  # lifted
    page.evaluate("db.insert('tasks', {id: 'after-quota', title: 'room again'})")
    page.evaluate(FILL_WRITES.replace("fill-", "refill-"), 50)
    page.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    assert _integrity(page) == "ok"
    for prefix, n in (("before-", 20), ("fill-", written), ("refill-", 50), ("after-", 1)):
        assert server_rows(
            site_server, "SELECT count(*) FROM tasks WHERE id LIKE ?", (prefix + "%",)
        ) == [(n,)], prefix
    _no_duplicate_changes(site_server)
    print(
        f"\nquota: usage {usage} B, quota set to +3 MiB; {written} 4 KB inserts succeeded, "
        f"then: {failed['type']}: {failed['message']!r}; usage at full {usage_full} B"
    )


# --------------------------------------------------------------------------- long offline

SHARED = 40
OFFLINE_EDITS = """async () => {
  let n = 0;
  const edit = async (op, row) => { await db[op]('tasks', row); n++; };
  for (let i = 0; i < 10; i++) await edit('update', {id: `sh-${i}`, title: `A late ${i}`});
  for (let i = 10; i < 20; i++) await edit('update', {id: `sh-${i}`, title: `A early ${i}`});
  for (let i = 30; i < 35; i++) await edit('delete', {id: `sh-${i}`});
  for (let i = 35; i < 40; i++) await edit('update', {id: `sh-${i}`, done: 1});
  for (let i = 0; i < 300; i++) {
    await edit('insert', {id: `off-${i}`, project_id: 'p-home', title: `offline ${i}`});
  }
  for (let i = 0; i < 100; i++) {
    await edit('update', {id: `off-${i}`, title: `offline ${i} edited`, done: i % 2});
  }
  for (let i = 250; i < 300; i++) await edit('delete', {id: `off-${i}`});
  return n;
}"""
TASKS = "SELECT id, project_id, title, done FROM tasks ORDER BY id"


def test_hundreds_of_offline_edits_racing_an_online_client_converge_exactly_once(
    contexts: Callable[[], Any], site_server: Any
) -> None:
    a = _open(contexts(), site_server, "offline-long")
    b = _open(contexts(), site_server, "offline-long")
    a.evaluate(
        """async (n) => { for (let i = 0; i < n; i++)
        await db.insert('tasks', {id: `sh-${i}`, project_id: 'p-work', title: `shared ${i}`}); }""",
        SHARED,
    )
    b.wait_for_function(
        f"async () => (await db.query(\"SELECT count(*) AS n FROM tasks WHERE id LIKE 'sh-%'\"))"
        f"[0].n === {SHARED}",
        timeout=SYNC_TIMEOUT_MS,
        polling=200,
    )
    a.evaluate("db.goOffline()")
    a.wait_for_function("() => !db.status.connected && db.status.phase === 'offline'")

    # B edits sh-0..9 before A's offline edits (A's later edits win), sh-10..19 after
    # them (B wins), updates rows A deleted and deletes rows A updated.
    b.evaluate(
        """async () => { for (let i = 0; i < 10; i++)
        await db.update('tasks', {id: `sh-${i}`, title: `B early ${i}`}); }"""
    )
    b.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    edits = a.evaluate(OFFLINE_EDITS)
    assert edits == 480
    assert a.evaluate("db.status.phase") == "offline"
    pending = a.evaluate("db.status.pending")
    assert pending >= 400
    # inserts from before going offline whose acknowledgement had not arrived yet
    unacked = _scalar(
        a,
        "SELECT count(*) FROM local_changes WHERE from_server = 0 AND state = 'pending' "
        "AND operation = 'insert' AND data LIKE '%\"sh-%'",
    )
    b.evaluate(
        """async () => {
        for (let i = 10; i < 20; i++)
          await db.update('tasks', {id: `sh-${i}`, title: `B late ${i}`});
        for (let i = 30; i < 35; i++)
          await db.update('tasks', {id: `sh-${i}`, title: `B after A's delete ${i}`});
        for (let i = 35; i < 40; i++) await db.delete('tasks', {id: `sh-${i}`});
      }"""
    )
    b.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    assert server_rows(site_server, "SELECT count(*) FROM tasks WHERE id LIKE 'off-%'") == [(0,)]

    started = time.monotonic()
    a.evaluate("db.goOnline()")
    a.wait_for_function(LIVE_AND_IDLE, timeout=SYNC_TIMEOUT_MS)
    synced_in = time.monotonic() - started
    server = [
        {"id": r[0], "project_id": r[1], "title": r[2], "done": r[3]}
        for r in server_rows(site_server, TASKS)
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if page_query(a, TASKS) == server and page_query(b, TASKS) == server:
            break
        time.sleep(0.5)
    assert page_query(a, TASKS) == server
    assert page_query(b, TASKS) == server
    assert a.evaluate("db.pendingChanges()") == []
    assert b.evaluate("db.pendingChanges()") == []

    titles = {r["id"]: r["title"] for r in server}
    assert [titles[f"sh-{i}"] for i in range(10)] == [f"A late {i}" for i in range(10)]
    assert [titles[f"sh-{i}"] for i in range(10, 20)] == [f"B late {i}" for i in range(10, 20)]
    assert not any(f"sh-{i}" in titles for i in range(35, 40))  # B's later deletes win
    assert sum(1 for k in titles if k.startswith("off-")) == 250
    assert all(titles[f"off-{i}"] == f"offline {i} edited" for i in range(100))

    # Exactly once: no change twice in the log, and every offline change of A that the
    # server took is in it once; the rest were answered "skipped" (lost last-write-wins).
    _no_duplicate_changes(site_server)
    mine = page_query(
        a,
        "SELECT id, state FROM local_changes WHERE from_server = 0 AND id IN "
        "(SELECT id FROM local_changes WHERE from_server = 0 ORDER BY seq DESC LIMIT ?)",
        [edits],
    )
    states: dict[str, int] = {}
    for change in mine:
        states[change["state"]] = states.get(change["state"], 0) + 1
    ids = [c["id"] for c in mine if c["state"] == "synced"]
    logged = server_rows(
        site_server,
        f"SELECT count(*) FROM _ts_change_history WHERE change_id IN ({','.join('?' * len(ids))})",
        tuple(ids),
    )[0][0]
    assert logged == len(ids)
    assert set(states) <= {"synced", "skipped"}, states
    print(
        f"\noffline: {edits} edits ({pending} pending, {unacked} of them unacknowledged "
        f"inserts from before going offline) synced in {synced_in:.1f}s after "
        f"goOnline; A's changes: {states}; {len(server)} tasks on both clients and the server"
    )
