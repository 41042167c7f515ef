"""Per-table checksums catch a client table that drifted from the server, and repair it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tidesync

TIMEOUT = 30.0


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), TIMEOUT)


def _corrupt_behind_the_clients_back(db_path: Path) -> None:
    """A bug's effect: a row changed locally without being recorded or synced."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE _ts_ctx SET applying = 1")  # the recording triggers stay quiet
        conn.execute("UPDATE projects SET name = 'drifted' WHERE id = 'p1'")
        conn.execute("DELETE FROM projects WHERE id = 'p2'")
        conn.execute("UPDATE _ts_ctx SET applying = 0")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_checksum_mismatch_resyncs_and_keeps_unsent_changes(
    server: Any, tmp_path: Path
) -> None:
    db_path = tmp_path / "drifting.db"
    client = await tidesync.connect(server.ws_url, str(db_path), heartbeat_interval=0.5)
    try:
        await client.insert("projects", {"id": "p1", "name": "one"})
        await client.insert("projects", {"id": "p2", "name": "two"})
        await client.wait_until_synced(TIMEOUT)

        client.verify_integrity()  # nothing wrong yet: no repair
        await asyncio.sleep(1.0)
        assert client.status.repairs == 0

        _corrupt_behind_the_clients_back(db_path)
        client.verify_integrity()
        await _eventually(lambda: _is(client.status.repairs == 1))
        await client.wait_until_synced(TIMEOUT)
        rows = await client.query("SELECT id, name FROM projects ORDER BY id")
        assert rows == [{"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}]
    finally:
        await client.close()


async def _is(value: bool) -> bool:
    return value
