"""The server's new-client database images (``server/bootstrap.py``): built from one
consistent snapshot, kept while the changes since are few, one build for concurrent
requests, none for a small snapshot, not kept past the size bound."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from pathlib import Path

import pytest
from tests.helpers.server_writes import task_inserts

from tidesync.changes.bootstrap_image import adopt_image
from tidesync.changes.db import open_connection
from tidesync.schema import Schema
from tidesync.server.bootstrap import BootstrapImages
from tidesync.server.store import Store

BROWSER = {"page_size": 2048, "locking_mode": "EXCLUSIVE", "journal_mode": "WAL"}


def _write(store: Store, n: int, prefix: str) -> None:
    """``n`` task inserts through the server's own apply path (each moves the LSN)."""
    from tidesync.server.apply import apply_changes

    with store.write_lock:
        apply_changes(store.writer, store.schema, "writer", task_inserts(n, prefix))


def _client(tmp_path: Path, name: str, image: bytes) -> sqlite3.Connection:
    conn = open_connection(str(tmp_path / name), BROWSER)
    adopt_image(conn, Schema.demo(), image)
    return conn


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "server.db")


def test_an_image_holds_the_servers_rows_at_its_lsn_and_adopts(
    store: Store, tmp_path: Path
) -> None:
    _write(store, 40, "a")
    images = BootstrapImages(store, min_rows=10)
    image = asyncio.run(images.get(2048))
    assert image is not None
    assert image.lsn == store.current_lsn() and image.rows == 40
    conn = _client(tmp_path, "c.db", gzip.decompress(image.gzipped))
    server = sorted(store.connect().execute("SELECT id, title FROM tasks").fetchall())
    assert sorted(map(tuple, conn.execute("SELECT id, title FROM tasks"))) == server
    assert images.stats() == {
        "served": 1,
        "built": 1,
        "lsn": image.lsn,
        "rows": 40,
        "bytes": len(image.gzipped),
    }


def test_the_image_is_kept_while_few_changes_follow_it_then_built_again(store: Store) -> None:
    _write(store, 100, "a")
    images = BootstrapImages(store, min_rows=10)

    async def scenario() -> None:
        first = await images.get(2048)
        assert first is not None
        _write(store, 10, "b")  # a tenth of its rows: the catchup brings them
        again = await images.get(2048)
        assert again is first and images.built == 1
        _write(store, 1, "c")  # one more: past a tenth, a new image is cheaper
        newer = await images.get(2048)
        assert newer is not None and newer is not first
        assert newer.lsn == store.current_lsn() and newer.rows == 111
        assert images.built == 2

    asyncio.run(scenario())


def test_concurrent_requests_share_one_build_and_page_sizes_have_their_own(
    store: Store,
) -> None:
    _write(store, 30, "a")
    images = BootstrapImages(store, min_rows=10)

    async def scenario() -> None:
        got = await asyncio.gather(*(images.get(2048) for _ in range(5)))
        assert all(g is got[0] for g in got) and images.built == 1
        other = await images.get(4096)
        assert other is not None and other.page_size == 4096 and images.built == 2

    asyncio.run(scenario())


def test_a_small_snapshot_gets_no_image(store: Store) -> None:
    _write(store, 5, "a")
    images = BootstrapImages(store, min_rows=10)
    assert asyncio.run(images.get(2048)) is None
    assert images.stats()["served"] == 0 and images.built == 0


def test_an_image_over_the_bound_is_served_but_not_kept(store: Store) -> None:
    _write(store, 30, "a")
    images = BootstrapImages(store, min_rows=10, max_bytes=100)

    async def scenario() -> None:
        first = await images.get(2048)
        second = await images.get(2048)
        assert first is not None and second is not None and second is not first
        assert images.built == 2 and images.stats()["bytes"] == 0

    asyncio.run(scenario())


def test_a_page_size_sqlite_cannot_use_is_refused(store: Store) -> None:
    images = BootstrapImages(store)
    for bad in (0, 1000, 256, 1 << 17):
        with pytest.raises(ValueError, match="page size"):
            asyncio.run(images.get(bad))


class _Bytes:
    """A ``Uint8Array`` as Python sees it: ``to_bytes()`` copies it out."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def to_bytes(self) -> bytes:
        return self._data


def _download(**fields: object) -> object:
    """``bootstrap_fetch.mjs``'s promise, as ``adopt_download`` awaits it."""
    from types import SimpleNamespace

    async def result() -> object:
        return SimpleNamespace(fetchMs=12.3, **fields)

    return result()


def test_adopt_download_reports_what_happened_and_streams_on_anything_but_a_good_image(
    store: Store, tmp_path: Path
) -> None:
    """The Changes Worker's start (``browser_entry.adopt_download``): an existing database
    reports nothing; no image or a bad one leaves the database empty with the reason; a
    good one is adopted and named in the page's ``status.bootstrap``."""
    from tidesync.changes.browser_entry import adopt_download

    _write(store, 30, "a")
    image = asyncio.run(BootstrapImages(store, min_rows=10).get(2048))
    assert image is not None
    good = gzip.decompress(image.gzipped)
    schema = Schema.demo()

    def run(name: str, **fields: object) -> tuple[object, sqlite3.Connection]:
        conn = open_connection(str(tmp_path / name), BROWSER)
        return asyncio.run(adopt_download(conn, schema, _download(**fields))), conn

    assert run("existing.db", existing=True, skipped="the database exists")[0] is None
    report, conn = run("none.db", skipped="HTTP 204")
    assert report == {"used": False, "fetchMs": 12, "reason": "HTTP 204"}
    report, conn = run("bad.db", bytes=_Bytes(good[: len(good) // 2]))
    assert isinstance(report, dict) and report["used"] is False
    assert "pages the header names" in report["reason"]
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    report, conn = run("good.db", bytes=_Bytes(good))
    assert isinstance(report, dict) and report["used"] is True
    assert (report["rows"], report["bytes"]) == (30, len(good))
    assert report["lsn"] == f"0/{image.lsn:X}"
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 30


@pytest.mark.parametrize(
    ("sync_url", "expected"),
    [
        ("ws://h:1/api/sync", "http://h:1/api/bootstrap?pageSize=4096"),
        ("wss://h/app/api/sync?token=t", "https://h/app/api/bootstrap?token=t&pageSize=4096"),
        ("ws://h/api/sync?pageSize=1", "http://h/api/bootstrap?pageSize=4096"),
        ("ftp://h/api/sync", None),
        ("not a url", None),
    ],
)
def test_the_native_client_asks_for_the_image_beside_its_sync_endpoint(
    sync_url: str, expected: str | None
) -> None:
    from tidesync.native.bootstrap import bootstrap_url

    assert bootstrap_url(sync_url, 4096) == expected


def test_an_adopted_image_is_checkpointed_a_moment_later_not_on_open(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image lands in the WAL; neither the adoption nor the worker's open (nor the
    first statement after them) copies it into the file: the deferred checkpoint does,
    and puts SQLite's auto-checkpoint back."""
    from tidesync.changes import worker as worker_module
    from tidesync.changes.worker import ChangesWorker

    monkeypatch.setattr(worker_module, "CHECKPOINT_DELAY_S", 0.05)
    _write(store, 2000, "a")  # ~90 pages of 2 KiB in the image: over the threshold below
    image = asyncio.run(BootstrapImages(store, min_rows=10).get(2048))
    assert image is not None
    path = tmp_path / "ckpt.db"
    conn = open_connection(str(path), {**BROWSER, "wal_autocheckpoint": 10})
    raw = gzip.decompress(image.gzipped)
    adopt_image(conn, Schema.demo(), raw)

    async def scenario() -> None:
        worker = ChangesWorker(conn, Schema.demo(), defer_checkpoint=True)
        await worker.insert("projects", {"id": "local", "name": "a local write"})
        assert path.stat().st_size <= 2048, "the image was copied into the file on open"
        for _ in range(200):
            if path.stat().st_size > 2048:
                break
            await asyncio.sleep(0.01)
        assert path.stat().st_size >= len(raw), "the WAL was never checkpointed"
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10
        await worker.close()

    asyncio.run(scenario())
