"""Native clients on real SQLite files against the real sync server (a subprocess).

Each test starts the server through the ``server`` / ``server_factory``
fixtures (``tests/conftest.py``) and opens clients with ``tidesync.connect``.
Waits are "until this is true, at most N seconds"; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.waits import eventually, holds

import tidesync
from tidesync.native.client import Client
from tidesync.native.websockets_transport import WebsocketsTransport
from tidesync.worker_sync.worker_thread.status import SyncPhase, SyncStatus

pytest.importorskip("tidesync.changes.worker")

HEARTBEAT = 0.3
SYNC_TIMEOUT = 30.0

Open = Callable[..., Awaitable[Client]]


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[Open]:
    """Opens native clients on files in ``tmp_path``; closes them all at the end."""
    clients: list[Client] = []

    async def open_(server: Any, name: str, **kw: Any) -> Client:
        kw.setdefault("heartbeat_interval", HEARTBEAT)
        client = await tidesync.connect(server.ws_url, str(tmp_path / f"{name}.db"), **kw)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.close()


def server_rows(server: Any, table: str) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(server.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return {row["id"]: dict(row) for row in conn.execute(f"SELECT * FROM {table}")}
    finally:
        conn.close()


async def rows(client: Client, table: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: dict(row) for row in await client.query(f"SELECT * FROM {table}")}


def strip(rows_: dict[str, dict[str, Any]], *columns: str) -> dict[str, dict[str, Any]]:
    return {key: {c: row[c] for c in columns} for key, row in rows_.items()}


async def seed_projects(client: Client, count: int, prefix: str = "p") -> list[str]:
    ids = [f"{prefix}{i:05d}" for i in range(count)]
    async with client.transaction() as tx:
        for pid in ids:
            await tx.insert("projects", {"id": pid, "name": f"project {pid}"})
    return ids


async def test_initial_sync_of_thousands_of_rows_arrives_in_chunks(
    server: Any, open_client: Open
) -> None:
    writer = await open_client(server, "writer")
    await seed_projects(writer, 3000)
    await writer.wait_until_synced(SYNC_TIMEOUT)
    assert len(server_rows(server, "projects")) == 3000

    seen: list[SyncStatus] = []
    # Streamed (a new file would otherwise start from the server's image: the next test).
    reader = await open_client(server, "reader", bootstrap=False)
    reader.on_status(seen.append)
    await reader.wait_until_synced(SYNC_TIMEOUT)
    assert strip(await rows(reader, "projects"), "name") == strip(
        server_rows(server, "projects"), "name"
    )
    assert reader.status.lsn == writer.status.lsn
    progress = [s.init_progress for s in seen if s.init_progress is not None]
    assert progress, "the initial sync reported no progress"
    assert progress[-1].rows == 3000 and progress[-1].chunk == progress[-1].total


async def test_a_new_file_starts_from_the_servers_image_then_catches_up_and_syncs(
    server_factory: Callable[..., Any], open_client: Open, tmp_path: Path
) -> None:
    """``GET /api/bootstrap`` for the native client: no snapshot streamed (no progress),
    the image's rows, the changes written after the image in the catchup, and a write
    from the new client reaches the others."""
    server = server_factory(bootstrap_min_rows=1000)
    writer = await open_client(server, "writer")
    ids = await seed_projects(writer, 1500)
    await writer.wait_until_synced(SYNC_TIMEOUT)
    first = await open_client(server, "first")  # builds the image
    await first.wait_until_synced(SYNC_TIMEOUT)
    assert server.health()["bootstrap"]["built"] == 1
    await writer.update("projects", {"id": ids[3], "name": "after the image"})
    await writer.wait_until_synced(SYNC_TIMEOUT)

    seen: list[SyncStatus] = []
    late = await open_client(server, "late")
    late.on_status(seen.append)
    await late.wait_until_synced(SYNC_TIMEOUT)
    assert server.health()["bootstrap"] == {
        **server.health()["bootstrap"],
        "served": 2,
        "built": 1,
    }
    assert not [s for s in seen if s.init_progress is not None], "a snapshot was streamed"
    for table in ("projects", "tasks"):
        assert await rows(late, table) == server_rows(server, table)
    assert late.status.lsn == writer.status.lsn
    assert late.client_id not in (first.client_id, writer.client_id)
    await late.insert("projects", {"id": "from-late", "name": "late"})
    await late.wait_until_synced(SYNC_TIMEOUT)
    await eventually(lambda: _has(writer, "projects", "from-late"))
    # The image's WAL was checkpointed into the file a moment later.
    await eventually(lambda: _file_holds_rows(tmp_path / "late.db"))


async def _file_holds_rows(path: Path) -> bool:
    return path.stat().st_size > 50_000  # 1,500 projects; an empty file is one page


@pytest.mark.parametrize(
    ("server_rows_format", "client_rows_format"),
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["new-new", "new-server-old-client", "old-server-new-client", "old-old"],
)
async def test_initial_sync_of_old_and_new_clients_and_servers_gives_the_same_rows(
    server_factory: Any, open_client: Open, server_rows_format: bool, client_rows_format: bool
) -> None:
    """``srv_init_rows`` (extension): used only when both sides have it; same result always."""
    server = server_factory(no_init_rows=not server_rows_format)
    writer = await open_client(server, "writer", init_rows=client_rows_format)
    ids = await seed_projects(writer, 1200)
    async with writer.transaction() as tx:
        for i in range(300):
            await tx.insert("tasks", {"id": f"t{i}", "project_id": ids[i], "title": f"task {i}"})
    await writer.wait_until_synced(SYNC_TIMEOUT)
    conn = sqlite3.connect(server.db_path)  # rows another program writes have no author
    with conn:
        conn.execute(
            "INSERT INTO projects (id, name, updated_at) VALUES ('ext', 'outside', "
            "'2026-01-02 03:04:05')"
        )
    conn.close()
    await eventually(lambda: _has(writer, "projects", "ext"))

    reader = await open_client(server, "reader", init_rows=client_rows_format)
    await reader.wait_until_synced(SYNC_TIMEOUT)
    for table in ("projects", "tasks"):
        assert await rows(reader, table) == server_rows(server, table)
    assert reader.status.lsn == writer.status.lsn
    log = server.log_path.read_text(encoding="utf-8")
    rows_format = server_rows_format and client_rows_format
    assert ("snapshot chunks as srv_init_rows" in log) is rows_format, log[-2000:]
    assert ("snapshot chunks as srv_init_changes" in log) is not rows_format, log[-2000:]

    # Live afterwards, both ways. (A new row, not an edit: the writer's clock ran ahead
    # by 1 ms a row while it wrote 1,500 rows, and an edit of them now would lose.)
    await reader.insert("tasks", {"id": "from-reader", "project_id": "ext", "title": "r"})
    await reader.wait_until_synced(SYNC_TIMEOUT)
    await eventually(lambda: _has(writer, "tasks", "from-reader"))


async def test_clients_joining_later_get_the_kept_snapshot_and_the_changes_after_it(
    server: Any, open_client: Open
) -> None:
    """The server keeps the first initial sync's chunks encoded (``snapshot_cache.py``);
    a later client gets them, then catches up on what was written since."""
    writer = await open_client(server, "writer")
    ids = await seed_projects(writer, 300)
    await writer.wait_until_synced(SYNC_TIMEOUT)
    first = await open_client(server, "first")
    await first.wait_until_synced(SYNC_TIMEOUT)
    assert server.health()["snapshotCache"]["kept"] == 1
    async with writer.transaction() as tx:  # after the kept snapshot, within its tenth
        for i in range(5):
            await tx.insert("tasks", {"id": f"late{i}", "project_id": ids[i], "title": "late"})
        await tx.update("projects", {"id": ids[7], "name": "renamed"})
        await tx.delete("projects", {"id": ids[8]})
    await writer.wait_until_synced(SYNC_TIMEOUT)
    late = await open_client(server, "late")
    await late.wait_until_synced(SYNC_TIMEOUT)
    assert server.health()["snapshotCache"]["hits"] == 1
    for table in ("projects", "tasks"):
        assert await rows(late, table) == server_rows(server, table)
    assert late.status.lsn == writer.status.lsn


async def _has(client: Client, table: str, key: str) -> bool:
    return bool(await client.query(f"SELECT 1 FROM {table} WHERE id = ?", [key]))


async def test_catchup_after_offline_edits_on_both_sides(server: Any, open_client: Open) -> None:
    a = await open_client(server, "a")
    b = await open_client(server, "b")
    await seed_projects(a, 20)
    await a.wait_until_synced(SYNC_TIMEOUT)
    await eventually(lambda: _count(b, "projects", 20))

    b.go_offline()
    await eventually(holds(lambda: not b.status.connected))
    for i in range(10):
        await a.update("projects", {"id": f"p{i:05d}", "name": f"from a {i}"})
    for i in range(10, 15):
        await b.update("projects", {"id": f"p{i:05d}", "name": f"from b {i}"})
    await b.insert("projects", {"id": "b-new", "name": "made offline"})
    assert await b.pending_count() == 6
    await a.wait_until_synced(SYNC_TIMEOUT)

    b.go_online()
    await b.wait_until_synced(SYNC_TIMEOUT)
    await eventually(lambda: _count(a, "projects", 21))
    expected = strip(server_rows(server, "projects"), "name")
    assert expected["p00003"]["name"] == "from a 3"
    assert expected["p00012"]["name"] == "from b 12"
    assert strip(await rows(a, "projects"), "name") == expected
    assert strip(await rows(b, "projects"), "name") == expected


async def test_live_changes_fan_out_to_ten_clients(server: Any, open_client: Open) -> None:
    clients = [await open_client(server, f"c{i}") for i in range(10)]
    for client in clients:
        await client.wait_until_synced(SYNC_TIMEOUT)
    await clients[3].insert("projects", {"id": "fan", "name": "to everyone"})
    await clients[7].insert("projects", {"id": "fan2", "name": "and back"})
    for client in clients:
        await eventually(lambda c=client: _count(c, "projects", 2))  # type: ignore[misc]
        assert set(await rows(client, "projects")) == {"fan", "fan2"}


async def test_own_changes_are_not_sent_back_but_lsn_still_moves(
    server: Any, open_client: Open
) -> None:
    author = await open_client(server, "author")
    await author.wait_until_synced(SYNC_TIMEOUT)
    received: list[str] = []
    original = author.changes.apply_server_changes

    async def spy(changes: Any, last_lsn: int, *, source: str) -> Any:
        received.extend(change.id for change in changes)
        return await original(changes, last_lsn, source=source)

    author.changes.apply_server_changes = spy  # type: ignore[method-assign]
    await seed_projects(author, 5)
    await author.wait_until_synced(SYNC_TIMEOUT)
    server_lsn = _server_lsn(server)
    await eventually(holds(lambda: author.status.lsn == server_lsn))
    assert received == []


async def test_conflicting_offline_edits_converge_everywhere(
    server: Any, open_client: Open
) -> None:
    a = await open_client(server, "a")
    b = await open_client(server, "b")
    watcher = await open_client(server, "watcher")
    await a.insert("projects", {"id": "p", "name": "original"})
    await a.wait_until_synced(SYNC_TIMEOUT)
    await eventually(lambda: _count(b, "projects", 1))
    a.go_offline()
    b.go_offline()
    await eventually(holds(lambda: not a.status.connected and not b.status.connected))
    await a.update("projects", {"id": "p", "name": "a wins?"})
    await b.update("projects", {"id": "p", "name": "b wins?"})
    await a.update("projects", {"id": "p", "name": "a again"})
    a.go_online()
    b.go_online()
    for client in (a, b):
        await client.wait_until_synced(SYNC_TIMEOUT)

    async def converged() -> bool:
        names = {(await rows(c, "projects"))["p"]["name"] for c in (a, b, watcher)}
        return names == {server_rows(server, "projects")["p"]["name"]}

    await eventually(converged)


class _LoseFirstResult(WebsocketsTransport):
    """Cuts the connection instead of delivering the first ``srv_changes_applied``."""

    armed = True

    async def recv(self) -> str:
        text = await super().recv()
        if _LoseFirstResult.armed and json.loads(text).get("type") == "srv_changes_applied":
            _LoseFirstResult.armed = False
            await self.close(4000, "test cuts the line")
            raise tidesync.TransportClosed(1006, "cut")
        return text


async def test_batch_cut_mid_flight_is_resent_and_applied_once(
    server: Any, open_client: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tidesync.native.client.WebsocketsTransport", _LoseFirstResult)
    _LoseFirstResult.armed = True
    client = await open_client(server, "flaky")
    await client.wait_until_synced(SYNC_TIMEOUT)
    await seed_projects(client, 50)
    await client.wait_until_synced(SYNC_TIMEOUT)
    assert not _LoseFirstResult.armed, "the cut never happened"
    assert len(server_rows(server, "projects")) == 50
    conn = sqlite3.connect(server.db_path)
    try:
        counts = conn.execute(
            "SELECT change_id, COUNT(*) FROM _ts_change_history GROUP BY change_id"
        ).fetchall()
    finally:
        conn.close()
    assert len(counts) == 50
    assert all(count == 1 for _, count in counts)
    assert await client.pending_count() == 0


async def test_server_restart_mid_catchup_loses_nothing(server: Any, open_client: Open) -> None:
    writer = await open_client(server, "writer")
    behind = await open_client(server, "behind")
    await behind.wait_until_synced(SYNC_TIMEOUT)
    behind.go_offline()
    await eventually(holds(lambda: not behind.status.connected))
    for batch in range(6):
        await seed_projects(writer, 500, prefix=f"b{batch}-")
    await writer.wait_until_synced(SYNC_TIMEOUT)

    restarted = asyncio.Event()

    def on_status(status: SyncStatus) -> None:
        if status.phase is SyncPhase.CATCHUP and not restarted.is_set():
            restarted.set()

    behind.on_status(on_status)
    behind.go_online()
    await asyncio.wait_for(restarted.wait(), SYNC_TIMEOUT)
    await asyncio.to_thread(server.kill)  # a crash, in the middle of the catchup
    await asyncio.to_thread(server.start)
    await behind.wait_until_synced(SYNC_TIMEOUT)
    assert len(await rows(behind, "projects")) == 3000
    assert strip(await rows(behind, "projects"), "name") == strip(
        server_rows(server, "projects"), "name"
    )


async def test_lsn_ahead_resyncs_from_scratch_and_keeps_unsent_changes(
    server: Any, open_client: Open
) -> None:
    client = await open_client(server, "survivor")
    await seed_projects(client, 10)
    await client.wait_until_synced(SYNC_TIMEOUT)
    old_lsn = client.status.lsn
    assert old_lsn > 0

    client.go_offline()
    await eventually(holds(lambda: not client.status.connected))
    await client.insert("projects", {"id": "unsent", "name": "made while the server was reset"})
    await asyncio.to_thread(server.stop)
    for suffix in ("", "-wal", "-shm"):
        Path(str(server.db_path) + suffix).unlink(missing_ok=True)
    await asyncio.to_thread(server.start)  # same port, an empty database

    client.go_online()
    await client.wait_until_synced(SYNC_TIMEOUT)
    assert set(server_rows(server, "projects")) == {"unsent"}
    assert set(await rows(client, "projects")) == {"unsent"}
    assert client.status.lsn < old_lsn or client.status.lsn == _server_lsn(server)


# --- helpers ------------------------------------------------------------------------------------


async def _count(client: Client, table: str, n: int) -> bool:
    return len(await client.query(f"SELECT id FROM {table}")) == n


def _server_lsn(server: Any) -> int:
    conn = sqlite3.connect(server.db_path)
    try:
        return int(
            conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM _ts_change_history").fetchone()[0]
        )
    finally:
        conn.close()
