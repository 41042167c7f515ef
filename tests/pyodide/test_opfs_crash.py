"""Kill the renderer (CDP Page.crash) right after COMMIT returns, or in the middle of
a stream of commits; a new page in the same persistent profile must find every
committed row and an intact database."""

from __future__ import annotations

from typing import Any

import pytest
from browser_harness import HarnessPage

SETUP = r"""
import sqlite3
c = sqlite3.connect('/opfs/app.sqlite3', isolation_level=None)
for p in opfs_storage.recommendedPragmas:
    c.execute(p)
c.execute('CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, body TEXT NOT NULL)')
c.execute('CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, item INTEGER NOT NULL)')
def commit_one(body):
    c.execute('BEGIN')
    cur = c.execute('INSERT INTO items(body) VALUES (?)', (body,))
    c.execute('INSERT INTO log(item) VALUES (?)', (cur.lastrowid,))
    c.execute('COMMIT')
    return cur.lastrowid
for i in range(200):
    commit_one('warmup %d' % i)
True
"""

CHECK = r"""
import sqlite3
c = sqlite3.connect('/opfs/app.sqlite3', isolation_level=None)
for p in opfs_storage.recommendedPragmas:
    c.execute(p)
ids = [r[0] for r in c.execute('SELECT id FROM items ORDER BY id')]
out = {
  'integrity': c.execute('PRAGMA integrity_check').fetchone()[0],
  'count': len(ids),
  'contiguous': ids == list(range(1, len(ids) + 1)),
  'log': c.execute('SELECT count(*) FROM log').fetchone()[0],
  'last': c.execute('SELECT body FROM items ORDER BY id DESC LIMIT 1').fetchone()[0],
}
c.close()
out
"""


def _reopen_and_check(context: Any, site_url: str, opfs_dir: str) -> dict[str, Any]:
    page = HarnessPage.open(context, site_url)
    w = page.start_worker("after")
    # The crashed renderer's OPFS locks are released by the browser asynchronously.
    w.mount(dir=opfs_dir, files=["app.sqlite3"], lockTimeoutMs=20_000)
    out = w.run(CHECK)
    w.close_opfs()
    page.close()
    return out  # type: ignore[no-any-return]


@pytest.mark.parametrize("flush_on_idle", [True, False], ids=["idle-flush", "no-flush"])
def test_commit_survives_renderer_kill_right_after_commit(
    new_context: Any, site_url: str, flush_on_idle: bool
) -> None:
    context, _ = new_context()
    opfs_dir = "crash-after-commit"
    page = HarnessPage.open(context, site_url)
    w = page.start_worker("before")
    w.mount(dir=opfs_dir, files=["app.sqlite3"], flushOnIdle=flush_on_idle)
    assert w.run(SETUP) is True
    # One synchronous call: commit, then (still inside the same task, before any
    # microtask could flush) kill the renderer from JavaScript's point of view as
    # soon as the evaluate returns. With flushOnIdle=False nothing but SQLite's
    # own writes (no handle.flush()) happened since the warm-up commits.
    last_id = w.run("commit_one('the last one')")
    page.crash()
    out = _reopen_and_check(context, site_url, opfs_dir)
    assert out["integrity"] == "ok"
    assert out["count"] == 201 == last_id
    assert out["contiguous"]
    assert out["log"] == 201
    assert out["last"] == "the last one"


def test_integrity_after_kill_during_a_stream_of_commits(new_context: Any, site_url: str) -> None:
    context, _ = new_context()
    opfs_dir = "crash-mid-stream"
    page = HarnessPage.open(context, site_url)
    w = page.start_worker("before")
    w.mount(dir=opfs_dir, files=["app.sqlite3"])
    assert w.run(SETUP) is True
    # Start a long burst of commits (with big rows, to cross WAL checkpoints) and
    # kill the renderer while it runs.
    burst = "for i in range(200000):\n    commit_one(('burst %d ' % i) * 50)"
    page.page.evaluate(
        "(code) => { window.tidesyncTest.call('before', 'run', {code}).catch(() => {}); }",
        burst,
    )
    page.page.wait_for_timeout(1500)
    page.crash()
    out = _reopen_and_check(context, site_url, opfs_dir)
    assert out["integrity"] == "ok"
    assert out["contiguous"]
    assert out["count"] == out["log"]
    assert out["count"] > 200  # some burst commits happened before the kill
    print(f"\ncommits found after the mid-stream kill: {out['count'] - 200}")
