"""The wire contract (PROTOCOL.md) against the real server, with a raw JSON client.

The client here is hand-written on purpose: it speaks JSON frames over
``websockets`` and shares no code with tidesync's own client, so these tests pin
the protocol itself.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websockets
from tests.helpers.server_process import ServerHandle

from tidesync.server.session_types import SessionConfig

TIMEOUT = 10.0


def _iso(offset_s: float = 0.0) -> str:
    moment = datetime.now(tz=UTC) + timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


class RawClient:
    def __init__(self, ws: Any, client_id: str) -> None:
        self.ws = ws
        self.client_id = client_id
        self.backlog: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls, server: ServerHandle, client_id: str | None = None, lsn: str = "0/0"
    ) -> RawClient:
        cid = client_id or str(uuid.uuid4())
        ws = await websockets.connect(f"{server.ws_url}?clientId={cid}&lsn={lsn}")
        return cls(ws, cid)

    async def send(self, type_: str, **fields: Any) -> str:
        message_id = str(uuid.uuid4())
        body = {
            "type": type_,
            "messageId": message_id,
            "timestamp": 1,
            "clientId": self.client_id,
            **fields,
        }
        await self.ws.send(json.dumps(body))
        return message_id

    async def recv(self, type_: str | None = None) -> dict[str, Any]:
        """The next message (of ``type_``), keeping others for later reads."""
        for i, message in enumerate(self.backlog):
            if type_ is None or message["type"] == type_:
                return self.backlog.pop(i)
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if type_ is None or message["type"] == type_:
                return message
            self.backlog.append(message)

    async def initial_sync(self) -> tuple[str, dict[str, list[dict[str, Any]]]]:
        """Run the initial sync; returns serverLSN and the rows per table."""
        start = await self.recv("srv_init_start")
        rows: dict[str, list[dict[str, Any]]] = {}
        while True:
            message = await self.recv()
            if message["type"] == "srv_init_complete":
                break
            assert message["type"] == "srv_init_changes", message
            seq = message["sequence"]
            rows.setdefault(seq["table"], []).extend(c["data"] for c in message["changes"])
            await self.send("clt_init_received", table=seq["table"], chunk=seq["chunk"])
        assert message["serverLSN"] == start["serverLSN"]
        await self.send("clt_init_processed")
        done = await self.recv("srv_catchup_completed")
        assert done["success"] is True
        return start["serverLSN"], rows

    async def send_changes(self, *changes: dict[str, Any]) -> dict[str, Any]:
        await self.send("clt_send_changes", changes=list(changes))
        received = await self.recv("srv_changes_received")
        assert received["changeIds"] == [c["id"] for c in changes]
        return await self.recv("srv_changes_applied")

    async def close(self) -> None:
        await self.ws.close()


def change(
    table: str, operation: str, data: dict[str, Any], updated_at: str | None = None
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "table": table,
        "operation": operation,
        "data": data,
        "updated_at": updated_at or _iso(),
    }


def task(task_id: str, title: str = "t", project_id: str | None = None) -> dict[str, Any]:
    return {"id": task_id, "title": title, "project_id": project_id, "done": False}


def db_rows(server: ServerHandle, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(server.db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def external_write(server: ServerHandle, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(server.db_path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


async def live_client(server: ServerHandle, client_id: str | None = None) -> RawClient:
    client = await RawClient.connect(server, client_id)
    await client.initial_sync()
    return client


# --- initial sync and catchup ---------------------------------------------------------------


async def test_initial_sync_sends_every_row_in_acknowledged_chunks(server: ServerHandle) -> None:
    from tidesync.cli import seed_tasks

    # More tasks than the window of chunks holds (the server's default chunk size).
    chunk_rows = SessionConfig().init_chunk_rows
    total = 4 * chunk_rows + chunk_rows // 2
    seed_tasks(server.db_path, total)
    client = await RawClient.connect(server)
    start = await client.recv("srv_init_start")
    assert _lsn(start["serverLSN"]) > 0
    # Without acknowledgements the server stops after a small window of chunks.
    first: list[dict[str, Any]] = []
    with pytest.raises(TimeoutError):
        while True:
            first.append(json.loads(await asyncio.wait_for(client.ws.recv(), 1.0)))
    assert 1 <= len(first) <= 4
    assert first[0]["sequence"]["table"] == "projects"  # parents first
    client.backlog.extend(first)
    rows: dict[str, list[Any]] = {}
    chunks: dict[str, list[int]] = {}
    while True:
        message = await client.recv()
        if message["type"] == "srv_init_complete":
            break
        seq = message["sequence"]
        rows.setdefault(seq["table"], []).extend(message["changes"])
        chunks.setdefault(seq["table"], []).append(seq["chunk"])
        assert all(c["operation"] == "insert" for c in message["changes"])
        await client.send("clt_init_received", table=seq["table"], chunk=seq["chunk"])
    assert message["serverLSN"] == start["serverLSN"]
    assert len(rows["tasks"]) == total
    assert chunks["tasks"] == [1, 2, 3, 4, 5]
    assert len({c["data"]["id"] for c in rows["tasks"]}) == total
    await client.send("clt_init_processed")
    done = await client.recv("srv_catchup_completed")
    assert done["changeCount"] == 0
    await client.close()


async def test_catchup_sends_changes_after_the_client_lsn(server: ServerHandle) -> None:
    writer = await live_client(server)
    first = await writer.send_changes(change("tasks", "insert", task("a", "first")))
    mark = first["results"][0]["lsn"]
    await writer.send_changes(change("tasks", "insert", task("b", "second")))
    await writer.send_changes(change("tasks", "update", {"id": "a", "title": "first!"}))
    reader = await RawClient.connect(server, lsn=mark)
    chunk = await reader.recv("srv_catchup_changes")
    assert [(c["operation"], c["data"]["id"]) for c in chunk["changes"]] == [
        ("insert", "b"),
        ("update", "a"),
    ]
    assert all(c["clientId"] == writer.client_id for c in chunk["changes"])
    assert all(_lsn(c["lsn"]) > _lsn(mark) for c in chunk["changes"])
    await reader.send("clt_catchup_received", chunk=1, lsn=chunk["lastLSN"])
    done = await reader.recv("srv_catchup_completed")
    assert (done["startLSN"], done["finalLSN"], done["changeCount"]) == (
        mark,
        chunk["lastLSN"],
        2,
    )
    await reader.close()
    await writer.close()


async def test_client_at_the_server_lsn_goes_live_at_once(
    server_factory: Callable[..., ServerHandle],
) -> None:
    server = server_factory(seed_demo=True)
    lsn = server.health()["lsn"]
    client = await RawClient.connect(server, lsn=lsn)
    done = await client.recv("srv_catchup_completed")
    assert done["changeCount"] == 0 and done["finalLSN"] == lsn
    await client.close()


async def test_catchup_leaves_out_own_changes_but_covers_their_lsn(
    server_factory: Callable[..., ServerHandle],
) -> None:
    server = server_factory(seed_demo=True)  # a non-zero LSN to catch up from
    me = str(uuid.uuid4())
    client = await live_client(server, me)
    start = server.health()["lsn"]
    result = await client.send_changes(change("tasks", "insert", task("mine")))
    await client.close()
    again = await RawClient.connect(server, me, lsn=start)
    chunk = await again.recv("srv_catchup_changes")
    assert chunk["changes"] == []
    assert chunk["lastLSN"] == result["results"][0]["lsn"]
    await again.close()


# --- live -----------------------------------------------------------------------------------


async def test_live_changes_fan_out_to_other_clients(server: ServerHandle) -> None:
    alice = await live_client(server)
    bob = await live_client(server)
    applied = await alice.send_changes(change("tasks", "insert", task("x", "hello")))
    assert applied["appliedChanges"] == [applied["results"][0]["id"]]
    live = await bob.recv("srv_live_changes")
    (sent,) = live["changes"]
    assert sent["data"]["title"] == "hello"
    assert sent["clientId"] == alice.client_id
    assert sent["lsn"] == live["lastLSN"] == applied["results"][0]["lsn"]
    assert sent["updated_at"]
    await bob.send("clt_changes_applied", changeIds=[sent["id"]], lastLSN=live["lastLSN"])
    # Alice gets only an LSN update for her own change.
    update = await alice.recv("srv_lsn_update")
    assert update["lsn"] == live["lastLSN"]
    assert not [m for m in alice.backlog if m["type"] == "srv_live_changes"]
    await alice.close()
    await bob.close()


async def test_external_sqlite_write_reaches_live_clients(server: ServerHandle) -> None:
    client = await live_client(server)
    external_write(
        server,
        "INSERT INTO tasks(id, title, done, updated_at) VALUES (?, ?, 0, ?)",
        "ext",
        "from a script",
        "2030-01-01T00:00:00.000Z",
    )
    live = await client.recv("srv_live_changes")
    (sent,) = live["changes"]
    assert sent["data"]["id"] == "ext" and sent["operation"] == "insert"
    assert "clientId" not in sent
    assert sent["updated_at"] == "2030-01-01T00:00:00.000Z"
    await client.close()


# --- client changes -------------------------------------------------------------------------


async def test_resent_change_applies_once(server: ServerHandle) -> None:
    client = await live_client(server)
    insert = change("tasks", "insert", task("r", "once"))
    first = await client.send_changes(insert)
    assert first["results"][0]["status"] == "applied"
    second = await client.send_changes(insert)
    (result,) = second["results"]
    assert result["status"] == "skipped" and result["reason"] == "duplicate"
    assert result["row"]["title"] == "once"
    assert second["appliedChanges"] == []
    assert db_rows(
        server, "SELECT COUNT(*) FROM _ts_change_history WHERE change_id = ?", insert["id"]
    ) == [(1,)]
    await client.close()


async def test_older_write_loses_and_gets_the_current_row(server: ServerHandle) -> None:
    alice = await live_client(server)
    bob = await live_client(server)
    await alice.send_changes(change("tasks", "insert", task("w", "new"), _iso(10)))
    stale = await bob.send_changes(change("tasks", "update", {"id": "w", "title": "old"}, _iso(0)))
    (result,) = stale["results"]
    assert (result["status"], result["reason"]) == ("skipped", "lww")
    assert result["row"]["title"] == "new"
    assert db_rows(server, "SELECT title FROM tasks WHERE id = 'w'") == [("new",)]
    await alice.close()
    await bob.close()


async def test_equal_times_go_to_the_larger_client_id(server: ServerHandle) -> None:
    low = await live_client(server, "00000000-aaaa")
    high = await live_client(server, "ffffffff-aaaa")
    when = _iso(5)
    await low.send_changes(change("tasks", "insert", task("tie", "low"), when))
    won = await high.send_changes(change("tasks", "update", {"id": "tie", "title": "high"}, when))
    assert won["results"][0]["status"] == "applied"
    lost = await low.send_changes(change("tasks", "update", {"id": "tie", "title": "low2"}, when))
    assert lost["results"][0]["status"] == "skipped"
    assert db_rows(server, "SELECT title FROM tasks WHERE id = 'tie'") == [("high",)]
    await low.close()
    await high.close()


async def test_newer_delete_beats_older_update(server: ServerHandle) -> None:
    client = await live_client(server)
    await client.send_changes(change("tasks", "insert", task("d"), _iso(0)))
    await client.send_changes(change("tasks", "delete", {"id": "d"}, _iso(20)))
    other = await live_client(server)
    late = await other.send_changes(
        change("tasks", "update", {"id": "d", "title": "zombie"}, _iso(10))
    )
    (result,) = late["results"]
    assert result["status"] == "skipped" and result["row"] is None
    assert db_rows(server, "SELECT COUNT(*) FROM tasks WHERE id = 'd'") == [(0,)]
    await client.close()
    await other.close()


@pytest.mark.parametrize(
    ("bad", "reason_part"),
    [
        (change("nope", "insert", {"id": "1"}), "unknown table"),
        (
            change("tasks", "insert", {"id": "1", "title": "x", 'title" = 1; --': 1}),
            "unknown column",
        ),
        (change("tasks", "update", {"title": "no key"}), "primary key"),
        (change("tasks", "insert", {"id": "1", "title": "x", "done": "yes"}), "cannot hold"),
        (change("tasks", "insert", {"id": "1", "title": {"nested": 1}}), "plain values"),
        (change("tasks", "insert", {"id": "1"}), "required"),
        (change("tasks", "insert", {"id": "1", "title": "x", "project_id": "missing"}), "refused"),
    ],
)
async def test_invalid_change_is_rejected_with_a_reason(
    server: ServerHandle, bad: dict[str, Any], reason_part: str
) -> None:
    client = await live_client(server)
    good = change("tasks", "insert", task("good"))
    answer = await client.send_changes(bad, good)
    rejected, applied = answer["results"]
    assert rejected["status"] == "rejected" and reason_part in rejected["reason"]
    assert applied["status"] == "applied"  # one bad change does not sink the batch
    assert answer["appliedChanges"] == [good["id"]]
    assert db_rows(server, "SELECT id FROM tasks") == [("good",)]
    await client.close()


async def test_rejected_change_carries_the_current_row(server: ServerHandle) -> None:
    client = await live_client(server)
    await client.send_changes(change("tasks", "insert", task("k", "kept")))
    answer = await client.send_changes(change("tasks", "update", {"id": "k", "done": "bad"}))
    (result,) = answer["results"]
    assert result["status"] == "rejected" and result["row"]["title"] == "kept"
    await client.close()


# --- errors and the handshake ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        (
            json.dumps({"type": "clt_bogus", "messageId": "m", "timestamp": 1, "clientId": "c"}),
            "unknown_type",
        ),
        (json.dumps({"type": "clt_heartbeat", "messageId": "m", "timestamp": 1}), "missing_field"),
        ("[1, 2]", "invalid_message"),
    ],
)
async def test_malformed_frame_gets_srv_error_and_the_connection_still_works(
    server: ServerHandle, frame: str, code: str
) -> None:
    client = await live_client(server)
    before = server.health()["lsn"]
    await client.ws.send(frame)
    error = await client.recv("srv_error")
    assert error["code"] == code
    assert server.health()["lsn"] == before
    await client.send("clt_heartbeat", lsn=before, active=True)
    await client.recv("srv_heartbeat")
    await client.close()


async def test_out_of_phase_and_foreign_client_messages_get_srv_error(server: ServerHandle) -> None:
    client = await live_client(server)
    ref = await client.send("clt_init_received", table="tasks", chunk=1)
    error = await client.recv("srv_error")
    assert (error["code"], error["refMessageId"]) == ("out_of_phase", ref)
    body = {
        "type": "clt_send_changes",
        "messageId": "m2",
        "timestamp": 1,
        "clientId": "someone-else",
        "changes": [change("tasks", "insert", task("spoof"))],
    }
    await client.ws.send(json.dumps(body))
    error = await client.recv("srv_error")
    assert error["refMessageId"] == "m2"
    assert db_rows(server, "SELECT COUNT(*) FROM tasks") == [(0,)]
    await client.send("clt_heartbeat", lsn="0/0", active=True)
    await client.recv("srv_heartbeat")
    await client.close()


async def test_oversized_frame_gets_frame_too_large(server: ServerHandle) -> None:
    client = await live_client(server)
    await client.send("clt_heartbeat", lsn="0/0", active=True, padding="x" * (1 << 20))
    error = await client.recv("srv_error")
    assert error["code"] == "frame_too_large"
    await client.close()


async def _closed_with(ws: Any) -> tuple[list[dict[str, Any]], int | None]:
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
    except websockets.ConnectionClosed as exc:
        return messages, exc.rcvd.code if exc.rcvd else None


async def test_bad_lsn_gets_srv_error_and_close_4400(server: ServerHandle) -> None:
    ws = await websockets.connect(f"{server.ws_url}?clientId=c1&lsn=zz")
    messages, code = await _closed_with(ws)
    assert [m["code"] for m in messages] == ["bad_lsn"]
    assert code == 4400


async def test_missing_client_id_closes_4400(server: ServerHandle) -> None:
    ws = await websockets.connect(f"{server.ws_url}?lsn=0/0")
    _, code = await _closed_with(ws)
    assert code == 4400


async def test_lsn_ahead_of_the_server_gets_lsn_ahead(server: ServerHandle) -> None:
    ws = await websockets.connect(f"{server.ws_url}?clientId=c1&lsn=5/0")
    messages, _ = await _closed_with(ws)
    assert [m["code"] for m in messages] == ["lsn_ahead"]


async def test_second_connection_replaces_the_first_with_4409(server: ServerHandle) -> None:
    me = str(uuid.uuid4())
    first = await live_client(server, me)
    second = await live_client(server, me)
    _, code = await _closed_with(first.ws)
    assert code == 4409
    await second.send("clt_heartbeat", lsn="0/0", active=True)
    await second.recv("srv_heartbeat")
    await second.close()


async def test_restart_keeps_data_and_lsn(server: ServerHandle) -> None:
    client = await live_client(server)
    await client.send_changes(change("tasks", "insert", task("keep", "me")))
    await client.close()
    lsn = server.health()["lsn"]
    server.kill()
    server.start()
    assert server.health()["lsn"] == lsn
    again = await RawClient.connect(server)
    server_lsn, rows = await again.initial_sync()
    assert server_lsn == lsn
    assert [r["id"] for r in rows["tasks"]] == ["keep"]
    await again.close()


async def test_checksums_match_a_client_computing_the_same(server: ServerHandle) -> None:
    from tidesync.checksums import table_checksum
    from tidesync.schema import Schema

    client = await live_client(server)
    await client.send_changes(change("tasks", "insert", task("c1", "one")))
    await client.send("clt_request_checksums", tables=[])
    answer = await client.recv("srv_table_checksums")
    schema = Schema.demo()
    conn = sqlite3.connect(server.db_path)
    try:
        mine = {t: table_checksum(conn.cursor(), schema.tables[t]) for t in schema.order}
    finally:
        conn.close()
    assert answer["checksums"] == mine
    await client.close()


async def test_heartbeat_silence_drops_the_client(
    server_factory: Callable[..., ServerHandle],
) -> None:
    server = server_factory(heartbeat=0.2)
    client = await RawClient.connect(server)
    _, code = await _closed_with(client.ws)
    assert code is not None
