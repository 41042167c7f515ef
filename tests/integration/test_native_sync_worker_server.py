"""SyncWorker + WebsocketsTransport against the real server subprocess.

The Changes side here is the in-memory ``FakePort`` (a fake of the interface
the Sync side calls), so these tests pin the Sync side's half of the protocol
against the real server independently of the ChangesWorker; the full stack is
``test_native_sync.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tidesync.native.websockets_transport import WebsocketsTransport
from tidesync.worker_sync.worker_thread.connection_manager import BackoffPolicy
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from fake_port import FakePort

TIMEOUT = 30.0
FAST = BackoffPolicy(base=0.05, cap=0.5)


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[..., Any]]:
    workers: list[SyncWorker] = []

    async def start(server: Any, port: FakePort) -> SyncWorker:
        worker = SyncWorker(
            port, WebsocketsTransport, url=server.ws_url, heartbeat_interval=0.3, backoff=FAST
        )
        workers.append(worker)
        await worker.start()
        return worker

    yield start
    for worker in workers:
        await worker.stop()


def write_on_server(server: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(server.db_path, timeout=10)
    try:
        with conn:
            conn.executemany(sql, rows)
    finally:
        conn.close()


def server_lsn(server: Any) -> int:
    conn = sqlite3.connect(server.db_path)
    try:
        return int(
            conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM _ts_change_history").fetchone()[0]
        )
    finally:
        conn.close()


async def test_initial_sync_of_rows_written_by_another_program(
    server: Any, start_worker: Any
) -> None:
    rows = [(f"p{i:05d}", f"project {i}", "2026-11-25T10:00:00.000Z") for i in range(3000)]
    write_on_server(server, "INSERT INTO projects(id, name, updated_at) VALUES (?, ?, ?)", rows)
    port = FakePort(client_id="reader")
    worker = await start_worker(server, port)
    status = await worker.wait_until_synced(TIMEOUT)
    assert len(port.rows["projects"]) == 3000
    assert status.lsn == server_lsn(server) > 0
    assert port.called("stage_initial_chunk")


async def test_local_change_reaches_the_other_client_but_not_its_author(
    server: Any, start_worker: Any
) -> None:
    author, other = FakePort(client_id="author"), FakePort(client_id="other")
    a = await start_worker(server, author)
    b = await start_worker(server, other)
    await a.wait_until_synced(TIMEOUT)
    await b.wait_until_synced(TIMEOUT)
    author.add_local("chg-1", table="projects", name="hello")
    a.notify_local_change()
    await a.wait_until_synced(TIMEOUT)

    async def arrived() -> None:
        while "chg-1" not in other.rows.get("projects", {}):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(arrived(), TIMEOUT)
    lsn = server_lsn(server)

    async def author_caught_up() -> None:
        while a.status.lsn < lsn:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(author_caught_up(), TIMEOUT)
    applied_to_author = [ids for _, ids, _ in author.called("apply_server_changes")]
    assert all("chg-1" not in ids for ids in applied_to_author)
    assert author.called("record_results") == [[("chg-1", "applied")]]


async def test_lsn_ahead_of_the_server_reinitializes_and_keeps_local_changes(
    server: Any, start_worker: Any
) -> None:
    port = FakePort(client_id="time-traveller", lsn=10_000, initialized=True)
    port.rows = {"projects": {"stale": {"id": "stale", "name": "from an old server"}}}
    port.add_local("keep", table="projects", name="not yet sent")
    worker = await start_worker(server, port)
    await worker.wait_until_synced(TIMEOUT)
    assert port.called("reset_for_reinit") == [None]
    assert "stale" not in port.rows.get("projects", {})
    conn = sqlite3.connect(server.db_path)
    try:
        names = dict(conn.execute("SELECT id, name FROM projects").fetchall())
    finally:
        conn.close()
    assert names == {"keep": "not yet sent"}
