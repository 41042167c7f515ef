"""Startup from Pyodide's memory snapshot (js_shim/boot.mjs) in real Chromium.

``make site`` ships a snapshot, taken at build time under Node (build/make_snapshot.mjs):
a first visit restores it instead of booting normally, when it was made from the site's
own Pyodide, stdlib and wheel, and stores it for the next start.

Without a usable one (a site built with ``TIDESYNC_SITE_SNAPSHOT=0``, a new wheel deployed
without a new snapshot, a broken file) the first open boots Pyodide normally in the
Changes Worker and takes a snapshot of its heap with tidesync imported, stored in the
background (the database does not wait for it). Either way the Sync Worker, started once
local data is readable, restores that heap (handed over by the page, with the compiled
wasm), and every later open boots from the stored one. The snapshot is keyed by the
wheel's SHA-256 (a new wheel never restores the old one's modules) and a snapshot that
does not load falls back to a normal boot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_harness import CHROMIUM, CHROMIUM_ARGS, ROOT, SITE_DIR, require_site

OPEN_DB = """async ({name, url, snapshot = true}) => {
  const {TideSync} = await import('/js/tidesync.mjs');
  window.db = await TideSync.open({name, url, heartbeatInterval: 1, snapshot});
  return db.status;
}"""
LIVE = "() => window.db && db.status.phase === 'live' && db.status.pending === 0"
SNAPSHOT_KEYS = """async () => {
  const cache = await caches.open('tidesync-pyodide-snapshot');
  return (await cache.keys()).map((r) => r.url);
}"""
TIMEOUT_MS = 120_000


@pytest.fixture
def site_copy(tmp_path: Path) -> Path:
    """A private copy of _site, so a test can swap the wheel under the same origin."""
    require_site()
    dst = tmp_path / "site"
    shutil.copytree(SITE_DIR, dst)
    return dst


@pytest.fixture
def server(server_factory: Callable[..., Any], site_copy: Path) -> Any:
    return server_factory(site=str(site_copy), heartbeat=1, seed_demo=True)


@pytest.fixture
def context(playwright_sync: Any) -> Iterator[Any]:
    browser = playwright_sync.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser.new_context()
    finally:
        with contextlib.suppress(Exception):
            browser.close()


def _open(context: Any, server: Any) -> Any:
    """A new page in the same browser context (same HTTP cache, OPFS and Cache Storage)."""
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.http_url + "/api/health")
    page.evaluate(OPEN_DB, {"name": "snap", "url": server.ws_url})
    page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
    return page


def _stored_snapshot(page: Any) -> list[str]:
    """The snapshot keys once the background store has put one (it never blocks the open)."""
    page.wait_for_function(f"({SNAPSHOT_KEYS})().then((keys) => keys.length > 0)")
    return page.evaluate(SNAPSHOT_KEYS)  # type: ignore[no-any-return]


def _close(page: Any) -> None:
    page.evaluate("db.close()")
    page.close()


def _boot(page: Any) -> dict[str, str]:
    page.wait_for_function("() => db.status.boot.sync !== undefined", timeout=TIMEOUT_MS)
    return page.evaluate("db.status.boot")  # type: ignore[no-any-return]


def _tasks(page: Any) -> list[dict[str, Any]]:
    return page.evaluate(  # type: ignore[no-any-return]
        "db.query('SELECT id, title FROM tasks ORDER BY id')"
    )


def _manifest(site: Path) -> dict[str, Any]:
    return json.loads((site / "manifest.json").read_text())  # type: ignore[no-any-return]


def _without_site_snapshot(site: Path) -> None:
    """What a site built with ``TIDESYNC_SITE_SNAPSHOT=0`` serves: no shipped heap."""
    manifest = _manifest(site)
    manifest.pop("snapshot", None)
    (site / "manifest.json").write_text(json.dumps(manifest))


def _deploy_new_wheel(site: Path, mark: int) -> dict[str, Any]:
    """Deploy a different wheel at the same origin (one more file in the archive) and
    return the manifest naming its hash; everything else in the manifest is kept."""
    manifest = _manifest(site)
    wheel = site / manifest["wheel"]
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("tidesync/_deployed_marker.py", f"MARK = {mark}\n")
    manifest["wheelSha256"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (site / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_warm_start_boots_both_workers_from_the_snapshot(
    context: Any, server: Any, site_copy: Path
) -> None:
    _without_site_snapshot(site_copy)
    page = _open(context, server)
    # Cold, no snapshot shipped: the Changes Worker takes one before opening the database
    # and the Sync Worker (started after it) boots from that heap, running the wasm the
    # Changes Worker compiled.
    assert _boot(page) == {"changes": "made", "sync": "loaded", "syncWasm": "shared"}
    page.evaluate("db.insert('tasks', {id: 'snap-1', title: 'written before the reload'})")
    page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
    before = _tasks(page)
    assert {"id": "snap-1", "title": "written before the reload"} in before
    keys = _stored_snapshot(page)
    assert len(keys) == 1 and keys[0].endswith(_manifest(site_copy)["wheelSha256"])
    _close(page)

    page = _open(context, server)
    assert _boot(page) == {"changes": "loaded", "sync": "loaded", "syncWasm": "shared"}
    assert _tasks(page) == before
    # The restored interpreters still write, sync and take server changes.
    page.evaluate("db.insert('tasks', {id: 'snap-2', title: 'after a warm start'})")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    titles: set[str] = set()
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
            query = "SELECT title FROM tasks WHERE id LIKE 'snap-%'"
            titles = {r[0] for r in conn.execute(query)}
        if len(titles) == 2:
            break
        time.sleep(0.2)
    assert titles == {"written before the reload", "after a warm start"}
    _close(page)


def test_a_new_wheel_never_boots_from_the_old_snapshot(
    context: Any, server: Any, site_copy: Path
) -> None:
    site = site_copy
    page = _open(context, server)
    _stored_snapshot(page)  # the snapshot of the first wheel
    _close(page)
    old_sha = _manifest(site)["wheelSha256"]

    manifest = _deploy_new_wheel(site, mark=2)

    page = _open(context, server)
    assert _boot(page) == {"changes": "made", "sync": "loaded", "syncWasm": "shared"}
    new_key = f"(k) => k.endsWith('{manifest['wheelSha256']}')"
    page.wait_for_function(f"({SNAPSHOT_KEYS})().then((keys) => keys.some({new_key}))")
    keys = page.evaluate(SNAPSHOT_KEYS)
    assert len(keys) == 1 and keys[0].endswith(manifest["wheelSha256"]), keys
    assert not any(old_sha in k for k in keys)
    _close(page)


def test_a_snapshot_that_does_not_load_falls_back_to_a_normal_boot(
    context: Any, server: Any
) -> None:
    page = _open(context, server)
    _stored_snapshot(page)
    page.evaluate("db.insert('tasks', {id: 'snap-3', title: 'still here'})")
    page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
    # Replace the stored heap with garbage of a plausible size (the length check passes).
    page.evaluate(
        """async () => {
      const cache = await caches.open('tidesync-pyodide-snapshot');
      const [key] = await cache.keys();
      const bytes = new Uint8Array(1 << 20).fill(7);
      const headers = {'x-tidesync-snapshot-bytes': String(bytes.length)};
      await cache.put(key, new Response(bytes, {headers}));
    }"""
    )
    _close(page)

    page = _open(context, server)
    # The Changes Worker could not restore it, booted normally and stored a new one.
    assert _boot(page) == {"changes": "made", "sync": "loaded", "syncWasm": "shared"}
    assert {"id": "snap-3", "title": "still here"} in _tasks(page)
    _stored_snapshot(page)
    _close(page)

    page = _open(context, server)
    assert _boot(page) == {"changes": "loaded", "sync": "loaded", "syncWasm": "shared"}
    _close(page)


def test_without_the_snapshot_both_workers_boot_normally_and_share_the_compiled_wasm(
    context: Any, server: Any
) -> None:
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.http_url + "/api/health")
    page.evaluate(OPEN_DB, {"name": "nosnap", "url": server.ws_url, "snapshot": False})
    page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
    assert _boot(page) == {"changes": "none", "sync": "none", "syncWasm": "shared"}
    page.evaluate("db.insert('tasks', {id: 'nosnap-1', title: 'synced without a snapshot'})")
    assert _server_titles(server, "nosnap-1") == [("synced without a snapshot",)]
    assert page.evaluate(SNAPSHOT_KEYS) == []
    _close(page)


def _server_titles(server: Any, task_id: str) -> list[tuple[str]]:
    """The server's row for ``task_id`` once it has arrived (the status event that says a
    write is pending can come after the write resolved, so LIVE alone may pass too early)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    found: list[tuple[str]] = []
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
            found = conn.execute("SELECT title FROM tasks WHERE id = ?", (task_id,)).fetchall()
        if found:
            break
        time.sleep(0.1)
    return found


def _ship_site_snapshot(site: Path) -> dict[str, Any]:
    """The snapshot ``make site`` ships (``TIDESYNC_SITE_SNAPSHOT=1``, the default): the
    real build, run on this copy, so the test holds for a site built without one too
    (nothing else in it changes: the wheel and stdlib stamps match)."""
    env = {**os.environ, "TIDESYNC_SITE_DIR": str(site), "TIDESYNC_SITE_SNAPSHOT": "1"}
    subprocess.run(
        [sys.executable, str(ROOT / "build" / "build_site.py")],
        check=True,
        env=env,
        capture_output=True,
    )
    shipped = _manifest(site)["snapshot"]
    assert (site / shipped["file"]).exists()
    return shipped  # type: ignore[no-any-return]


def test_a_first_visit_restores_the_snapshot_the_site_ships(
    context: Any, server: Any, site_copy: Path
) -> None:
    shipped = _ship_site_snapshot(site_copy)
    assert shipped["wheelSha256"] == _manifest(site_copy)["wheelSha256"]
    page = _open(context, server)
    # Nothing stored yet: the Changes Worker restored the site's heap (no normal boot)
    # and the Sync Worker the same heap, handed over.
    assert _boot(page) == {"changes": "site", "sync": "loaded", "syncWasm": "shared"}
    page.evaluate("db.insert('tasks', {id: 'site-1', title: 'from a site snapshot boot'})")
    assert _server_titles(server, "site-1") == [("from a site snapshot boot",)]
    # Stored for the next start, under this wheel's key.
    keys = _stored_snapshot(page)
    assert len(keys) == 1 and keys[0].endswith(_manifest(site_copy)["wheelSha256"])
    before = _tasks(page)
    _close(page)

    page = _open(context, server)
    assert _boot(page) == {"changes": "loaded", "sync": "loaded", "syncWasm": "shared"}
    assert _tasks(page) == before
    _close(page)


def test_a_site_snapshot_of_another_wheel_or_a_broken_one_is_not_restored(
    context: Any, server: Any, site_copy: Path
) -> None:
    site = site_copy
    shipped = _ship_site_snapshot(site)
    # A new wheel deployed without a new snapshot: the manifest's snapshot names the old one.
    manifest = _deploy_new_wheel(site, mark=3)
    page = _open(context, server)
    assert _boot(page) == {"changes": "made", "sync": "loaded", "syncWasm": "shared"}
    page.evaluate("db.insert('tasks', {id: 'site-2', title: 'kept'})")
    assert _server_titles(server, "site-2") == [("kept",)]
    _close(page)

    # A matching entry whose file is cut short (a broken deploy): the first visit of a new
    # context boots normally (a gzip stream that ends early never reaches Python).
    manifest["snapshot"] = {**shipped, "wheelSha256": manifest["wheelSha256"]}
    (site / "manifest.json").write_text(json.dumps(manifest))
    blob = (site / shipped["file"]).read_bytes()
    (site / shipped["file"]).write_bytes(blob[: len(blob) // 2])
    fresh = context.browser.new_context()
    try:
        page = _open(fresh, server)
        assert _boot(page) == {"changes": "made", "sync": "loaded", "syncWasm": "shared"}
        assert {"id": "site-2", "title": "kept"} in _tasks(page)
        _close(page)
    finally:
        fresh.close()
