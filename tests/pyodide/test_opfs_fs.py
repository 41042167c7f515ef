"""OPFSFS (js_shim/opfs_fs.mjs) as a POSIX file system and under SQLite, in real Chromium."""

from __future__ import annotations

import pytest
from browser_harness import HarnessPage

POSIX = r"""
import os, errno
p = '/opfs/f.bin'
with open(p, 'wb') as f:
    f.write(b'hello ' * 1000)
    f.flush()
    os.fsync(f.fileno())
with open(p, 'r+b') as f:
    f.seek(6000)
    f.write(b'TAIL')
    f.seek(2)
    head = f.read(4)
size_after_write = os.stat(p).st_size
os.truncate(p, 10)
with open(p, 'rb') as f:
    after_trunc = f.read()
with open(p, 'ab') as f:
    f.write(b'!')
unknown = None
try:
    open('/opfs/not-preopened.txt', 'w')
except OSError as e:
    unknown = errno.errorcode.get(e.errno)
listing_before = sorted(os.listdir('/opfs'))
open('/opfs/g.bin', 'wb').write(b'gone soon')
os.unlink('/opfs/g.bin')
{
  'head': head.decode(), 'size_after_write': size_after_write,
  'after_trunc': after_trunc.decode(), 'size': os.path.getsize(p),
  'unknown': unknown, 'listing_before': listing_before,
  'listing': sorted(os.listdir('/opfs')), 'g_exists': os.path.exists('/opfs/g.bin'),
}
"""


def test_posix_ops_and_remount(harness_page: HarnessPage, opfs_dir: str) -> None:
    w = harness_page.start_worker("a")
    m = w.mount(dir=opfs_dir, files=["f.bin", "g.bin"], suffixes=[""])
    assert m["existing"] == []
    r = w.run(POSIX)
    assert r["head"] == "llo "
    assert r["size_after_write"] == 6004
    assert r["after_trunc"] == "hello hell"
    assert r["size"] == 11
    assert r["unknown"] == "EPERM"
    assert r["listing_before"] == ["f.bin"]
    assert r["listing"] == ["f.bin"]
    assert r["g_exists"] is False
    assert w.stats()["flushes"] >= 1  # os.fsync -> handle.flush()
    w.close_opfs()
    w.terminate()

    assert harness_page.list_opfs(opfs_dir) == {"f.bin": 11, "g.bin": 0}

    w2 = harness_page.start_worker("b")
    m2 = w2.mount(dir=opfs_dir, files=["f.bin", "g.bin"], suffixes=[""])
    assert m2["existing"] == ["f.bin"]  # the 0-byte (deleted) file stays absent
    assert w2.run("open('/opfs/f.bin','rb').read().decode()") == "hello hell!"
    assert w2.run("import os; os.path.exists('/opfs/g.bin')") is False
    w2.close_opfs()


def test_second_mount_waits_for_lock_and_reports_it(
    harness_page: HarnessPage, opfs_dir: str
) -> None:
    a = harness_page.start_worker("a")
    b = harness_page.start_worker("b")
    a.mount(dir=opfs_dir, files=["x.db"])
    with pytest.raises(Exception, match="another tab or worker"):
        b.mount(dir=opfs_dir, files=["x.db"], lockTimeoutMs=300)
    a.close_opfs()
    assert b.mount(dir=opfs_dir, files=["x.db"], lockTimeoutMs=2000)["files"][0] == "x.db"
    b.close_opfs()


MODES = {
    "recommended": None,  # RECOMMENDED_PRAGMAS from opfs_fs.mjs
    "wal-shm": ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"],
    "delete": ["PRAGMA journal_mode=DELETE", "PRAGMA synchronous=FULL"],
    "truncate": ["PRAGMA journal_mode=TRUNCATE", "PRAGMA synchronous=FULL"],
    "persist": ["PRAGMA journal_mode=PERSIST", "PRAGMA synchronous=FULL"],
}

WRITE = r"""
import sqlite3
def write(path, PRAGMAS):
    pragmas = list(opfs_storage.recommendedPragmas) if PRAGMAS is None else PRAGMAS
    c = sqlite3.connect(path, isolation_level=None)
    for p in pragmas:
        c.execute(p)
    c.execute('CREATE TABLE items(id INTEGER PRIMARY KEY, body TEXT NOT NULL)')
    c.execute('CREATE TABLE log(id INTEGER PRIMARY KEY, item INTEGER)')
    for i in range(50):
        c.execute('BEGIN')
        cur = c.execute('INSERT INTO items(body) VALUES (?)', ('x' * (i * 40),))
        c.execute('INSERT INTO log(item) VALUES (?)', (cur.lastrowid,))
        c.execute('COMMIT')
    c.execute('BEGIN')
    c.executemany('INSERT INTO items(body) VALUES (?)', (('bulk %d' % i,) for i in range(3000)))
    c.execute('COMMIT')
    mode = c.execute('PRAGMA journal_mode').fetchone()[0]
    c.close()
    return mode
"""

READ = r"""
import sqlite3, os
def read(path, PRAGMAS):
    pragmas = list(opfs_storage.recommendedPragmas) if PRAGMAS is None else PRAGMAS
    c = sqlite3.connect(path, isolation_level=None)
    for p in pragmas:
        c.execute(p)
    out = {
      'items': c.execute('SELECT count(*) FROM items').fetchone()[0],
      'log': c.execute('SELECT count(*) FROM log').fetchone()[0],
      'integrity': c.execute('PRAGMA integrity_check').fetchone()[0],
      'mode': c.execute('PRAGMA journal_mode').fetchone()[0],
    }
    c.close()
    return out
"""

EXPECTED_MODE = {
    "recommended": "wal",
    "wal-shm": "wal",
    "delete": "delete",
    "truncate": "truncate",
    "persist": "persist",
}


def test_sqlite_every_journal_mode_survives_close_and_remount(
    harness_page: HarnessPage, opfs_dir: str
) -> None:
    files = [f"{mode}.sqlite3" for mode in MODES]
    w = harness_page.start_worker("writer")
    w.mount(dir=opfs_dir, files=files)
    w.run(WRITE)
    for mode, pragmas in MODES.items():
        assert w.run(f"write('/opfs/{mode}.sqlite3', {pragmas!r})") == EXPECTED_MODE[mode], mode
    w.close_opfs()
    w.terminate()

    sizes = harness_page.list_opfs(opfs_dir)
    for mode in MODES:
        assert sizes[f"{mode}.sqlite3"] > 3000 * 8, mode
        # a clean close checkpoints and deletes the WAL (0 bytes = deleted)
        assert sizes[f"{mode}.sqlite3-wal"] == 0, mode

    r = harness_page.start_worker("reader")
    r.mount(dir=opfs_dir, files=files)
    r.run(READ)
    for mode, pragmas in MODES.items():
        out = r.run(f"read('/opfs/{mode}.sqlite3', {pragmas!r})")
        assert out == {
            "items": 3050,
            "log": 50,
            "integrity": "ok",
            "mode": EXPECTED_MODE[mode],
        }, mode
    r.close_opfs()


PAGE_SIZES = r"""
import sqlite3
def open_db(path):
    c = sqlite3.connect(path, isolation_level=None)
    for p in opfs_storage.recommendedPragmas:
        c.execute(p)
    return c
def fill(c, n):
    c.execute('CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, body TEXT NOT NULL)')
    for i in range(n):
        c.execute('BEGIN')
        c.execute('INSERT INTO items(body) VALUES (?)', ('x' * (i % 300),))
        c.execute('COMMIT')
def report(c):
    return [c.execute('PRAGMA page_size').fetchone()[0],
            c.execute('SELECT count(*) FROM items').fetchone()[0],
            c.execute('PRAGMA integrity_check').fetchone()[0],
            c.execute('PRAGMA journal_mode').fetchone()[0]]
"""


def test_new_databases_get_2k_pages_and_a_4k_database_keeps_its_size(
    harness_page: HarnessPage, opfs_dir: str
) -> None:
    """RECOMMENDED_PRAGMAS' page_size applies to a new file only: a database made with
    4 KiB pages (the earlier default) opens, writes and checks out as before."""
    w = harness_page.start_worker("pages")
    w.mount(dir=opfs_dir, files=["new.sqlite3", "old.sqlite3"])
    w.run(PAGE_SIZES)
    w.run("new = open_db('/opfs/new.sqlite3'); fill(new, 300); new.close()")
    w.run(
        "old = sqlite3.connect('/opfs/old.sqlite3', isolation_level=None); "
        "old.execute('PRAGMA page_size=4096'); old.execute('PRAGMA locking_mode=EXCLUSIVE'); "
        "old.execute('PRAGMA journal_mode=WAL'); fill(old, 300); old.close()"
    )
    w.run("old = open_db('/opfs/old.sqlite3'); fill(old, 200)")  # reopened as the app would
    assert w.run("report(old)") == [4096, 500, "ok", "wal"]
    w.run("old.close(); new = open_db('/opfs/new.sqlite3')")
    assert w.run("report(new)") == [2048, 300, "ok", "wal"]
    w.run("new.close()")
    w.close_opfs()


GROUP_SETUP = r"""
import sqlite3
c = sqlite3.connect('/opfs/g.sqlite3', isolation_level=None)
for p in opfs_storage.recommendedPragmas:
    c.execute(p)
c.execute('CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, body TEXT)')
def commit_one(body):
    c.execute('BEGIN')
    c.execute('INSERT INTO items(body) VALUES (?)', (body,))
    c.execute('COMMIT')
True
"""


def test_group_flush_coalesces_idle_flushes_and_flush_all_and_close_still_flush(
    harness_page: HarnessPage, opfs_dir: str
) -> None:
    """flushDelayMs: one flush round per window instead of one per request (each w.run
    is one request that returns to JavaScript); flushAll() flushes at once; close()
    cancels the timer (and flushes every handle itself)."""
    w = harness_page.start_worker("g")
    w.mount(dir=opfs_dir, files=["g.sqlite3"], flushDelayMs=2000)
    assert w.run(GROUP_SETUP) is True
    w.stats(reset=True)
    for i in range(20):
        w.run(f"commit_one('row {i}')")
    within = w.stats()
    assert within["writes"] > 0
    assert within["idleFlushes"] == 0  # all 20 requests inside one 2 s window
    assert within["flushes"] <= within["barrierFlushes"]  # no idle flush yet
    assert w.js("return ctx.storage.flushAll()") >= 1  # the WAL was dirty: flushed now
    assert w.js("return ctx.storage.flushAll()") == 0
    harness_page.page.wait_for_timeout(2300)
    assert w.stats()["idleFlushes"] == 1  # the window's timer ran (nothing left to flush)
    w.run("commit_one('last'); c.close()")
    w.close_opfs()  # timer pending: cancelled, and the handles are flushed by close
    harness_page.page.wait_for_timeout(200)
    w.mount(dir=opfs_dir, files=["g.sqlite3"])
    assert w.run(
        "import sqlite3; c = sqlite3.connect('/opfs/g.sqlite3');"
        "c.execute('SELECT count(*), max(body) FROM items').fetchone()"
    ) == [21, "row 9"]
    w.close_opfs()


def test_group_flush_delay_is_checked(harness_page: HarnessPage, opfs_dir: str) -> None:
    w = harness_page.start_worker("h")
    with pytest.raises(Exception, match="flushDelayMs"):
        w.mount(dir=opfs_dir, files=["h.sqlite3"], flushDelayMs=-1)
