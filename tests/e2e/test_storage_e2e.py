"""Storage end to end: the OPFS database survives quitting and relaunching Chromium
with the same profile, and a second tab cannot mount it while the first holds it."""

from __future__ import annotations

from typing import Any

import pytest
from browser_harness import HarnessPage

WRITE = r"""
import sqlite3
c = sqlite3.connect('/opfs/app.sqlite3', isolation_level=None)
for p in opfs_storage.recommendedPragmas:
    c.execute(p)
c.execute('CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)')
for i in range(100):
    c.execute('INSERT INTO notes(body) VALUES (?)', ('note %d' % i,))
c.close()
"""

READ = r"""
import sqlite3
c = sqlite3.connect('/opfs/app.sqlite3', isolation_level=None)
for p in opfs_storage.recommendedPragmas:
    c.execute(p)
r = [c.execute('SELECT count(*), max(body) FROM notes').fetchone(),
     c.execute('PRAGMA integrity_check').fetchone()[0]]
c.close()
r
"""


def test_database_survives_browser_restart_and_tab_handoff(new_context: Any, site_url: str) -> None:
    ctx, profile = new_context()
    tab1 = HarnessPage.open(ctx, site_url)
    w1 = tab1.start_worker("w1")
    w1.mount(dir="e2e", files=["app.sqlite3"])
    w1.run(WRITE)

    tab2 = HarnessPage.open(ctx, site_url)
    w2 = tab2.start_worker("w2")
    with pytest.raises(Exception, match="another tab or worker"):
        w2.mount(dir="e2e", files=["app.sqlite3"], lockTimeoutMs=500)
    tab1.close()  # closing the tab releases the handles without closeOpfs()
    w2.mount(dir="e2e", files=["app.sqlite3"], lockTimeoutMs=20_000)
    assert w2.run(READ) == [[100, "note 99"], "ok"]
    w2.close_opfs()
    ctx.close()

    ctx2, _ = new_context(profile)
    tab3 = HarnessPage.open(ctx2, site_url)
    w3 = tab3.start_worker("w3")
    w3.mount(dir="e2e", files=["app.sqlite3"])
    assert w3.run(READ) == [[100, "note 99"], "ok"]
    w3.close_opfs()
