"""worker_processor: checked commands from the page / Sync Worker, JSON-able replies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.worker import ChangesWorker
from tidesync.changes.worker_processor import (
    CommandError,
    Delete,
    Execute,
    Query,
    Transaction,
    command_from_dict,
    handle_request,
    write_now,
)
from tidesync.worker_sync.shared.port_codec import RemoteChangesPort, channel_text


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[ChangesWorker]:
    w = ChangesWorker(str(tmp_path / "client.db"), now_ms=lambda: 1_800_000_000_000)
    yield w
    await w.close()


async def call(worker: ChangesWorker, cmd: str, **args: Any) -> dict[str, Any]:
    reply = await handle_request(worker, {"id": 7, "cmd": cmd, "args": args})
    json.dumps(reply)  # every reply crosses postMessage: it must be JSON-able
    assert reply["id"] == 7
    return reply


def test_commands_are_parsed_into_typed_dataclasses() -> None:
    assert command_from_dict({"cmd": "query", "args": {"sql": "SELECT 1"}}) == Query("SELECT 1")
    assert command_from_dict({"cmd": "execute", "args": {"sql": "x", "params": [1]}}) == Execute(
        "x", (1,)
    )
    assert command_from_dict({"cmd": "delete", "args": {"table": "t", "row": {"id": 1}}}) == Delete(
        "t", {"id": 1}
    )
    tx = command_from_dict({"cmd": "transaction", "args": {"ops": [{"op": "execute", "sql": "x"}]}})
    assert isinstance(tx, Transaction) and tx.ops[0].sql == "x"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"cmd": "nope"}, "unknown command"),
        ({"cmd": "query", "args": {}}, "'sql'"),
        ({"cmd": "query", "args": {"sql": "x", "params": 5}}, "'params'"),
        ({"cmd": "insert", "args": {"table": "t", "row": [1]}}, "'row'"),
        ({"cmd": "transaction", "args": {"ops": [{"op": "drop"}]}}, "ops[0]"),
        ({"cmd": "localChanges", "args": {"limit": -1}}, "'limit'"),
        ({"cmd": "query", "args": "x"}, "'args'"),
    ],
)
def test_invalid_requests_name_the_bad_field(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("[", r"\[")):
        command_from_dict(request_)


async def test_write_and_read_round_trip(worker: ChangesWorker) -> None:
    assert (await call(worker, "insert", table="projects", row={"id": "p1", "name": "P"}))["ok"]
    reply = await call(
        worker,
        "transaction",
        ops=[
            {"op": "insert", "table": "tasks", "row": {"id": "t1", "title": "a"}},
            {"op": "execute", "sql": "UPDATE tasks SET done = ?", "params": [1]},
        ],
    )
    assert reply["result"][1]["rowsAffected"] == 1
    reply = await call(worker, "query", sql="SELECT id, done FROM tasks")
    assert reply["result"] == [{"id": "t1", "done": 1}]
    assert len((await call(worker, "pendingChanges"))["result"]) == 3
    assert len((await call(worker, "localChanges", limit=2))["result"]) == 2
    status = (await call(worker, "status"))["result"]
    assert status["pending"] == 3 and status["lsn"] == "0/0"
    checksums = (await call(worker, "tableChecksums", tables=["tasks"]))["result"]
    assert list(checksums) == ["tasks"]


async def test_errors_become_replies_and_nothing_is_written(worker: ChangesWorker) -> None:
    reply = await call(worker, "insert", table="tasks", row={"id": "t1"})
    assert reply == {
        "id": 7,
        "ok": False,
        "error": {"type": "WriteError", "message": "column 'title' is required"},
    }
    reply = await call(worker, "execute", sql="SELEC nonsense")
    assert reply["error"]["type"] == "OperationalError"
    assert (await call(worker, "pendingChanges"))["result"] == []


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("insert", {"table": "projects", "row": {"id": "p2", "name": "Q"}}),
        ("upsert", {"table": "projects", "row": {"id": "p1", "name": "R"}}),
        ("update", {"table": "projects", "row": {"id": "p1", "name": "S"}}),
        ("delete", {"table": "projects", "row": {"id": "p1"}}),
        ("insert", {"table": "projects", "row": {"id": "p3"}}),  # name is required
        ("insert", {"table": "nope", "row": {"id": "x"}}),
        ("insert", {"row": {"id": "x"}}),
        ("update", {"table": "projects", "row": [1]}),
    ],
)
async def test_a_one_row_write_run_now_replies_and_records_as_the_queued_path(
    tmp_path: Path, cmd: str, args: dict[str, Any]
) -> None:
    """``write_now`` (the page's hot path) and ``handle_request`` give the same reply,
    the same rows and the same ``local_changes`` records for the same request."""
    outcomes = []
    for name, run_now in (("queued", False), ("now", True)):
        w = ChangesWorker(str(tmp_path / f"{name}.db"), now_ms=lambda: 1_800_000_000_000)
        try:
            await w.insert("projects", {"id": "p1", "name": "P"})
            request = {"id": 3, "cmd": cmd, "args": args}
            reply = write_now(w, request) if run_now else await handle_request(w, request)
            assert reply is not None
            rows = await w.query("SELECT * FROM projects ORDER BY id")
            changes = await w.query(
                "SELECT table_name, operation, pk, data, updated_at, state FROM local_changes "
                "ORDER BY seq"
            )
            outcomes.append((reply, rows, changes))
        finally:
            await w.close()
    assert outcomes[0] == outcomes[1]


async def test_write_now_leaves_a_busy_worker_and_other_commands_to_the_queue(
    worker: ChangesWorker,
) -> None:
    insert = {
        "id": 1,
        "cmd": "insert",
        "args": {"table": "projects", "row": {"id": "p", "name": "P"}},
    }
    assert write_now(worker, {"id": 2, "cmd": "query", "args": {"sql": "SELECT 1"}}) is None
    assert write_now(worker, {"id": 2, "cmd": "insert", "args": "x"}) is None
    async with worker.transaction():  # holds the database, as a queued request would
        assert write_now(worker, insert) is None
    assert (await call(worker, "pendingChanges"))["result"] == []
    assert write_now(worker, insert) == {
        "id": 1,
        "ok": True,
        "result": {"rowsAffected": 1, "lastInsertRowid": 1},
    }


def channel_port(worker: ChangesWorker) -> RemoteChangesPort:
    """The Sync Worker's port to ``worker`` with every call crossing as JSON, as over the
    MessageChannel (each answer must be ``ok``)."""

    async def over_the_channel(cmd: str, args: dict[str, Any]) -> Any:
        reply = await handle_request(
            worker, {"id": 1, "cmd": cmd, "args": json.loads(json.dumps(args))}
        )
        assert reply["ok"], reply
        return reply["result"]

    return RemoteChangesPort(over_the_channel)


async def test_port_calls_reach_the_changes_port(worker: ChangesWorker) -> None:
    port = channel_port(worker)
    await worker.insert("projects", {"id": "p1", "name": "P"})
    state = await port.local_state()
    assert state.client_id == worker.client_id and state.pending_count == 1
    [change] = await port.unsynced_changes(10)
    assert change.table == "projects"
    await port.advance_lsn(5)
    assert (await worker.local_state()).lsn == 5


async def test_checksums_for_an_integrity_check_are_read_only_when_idle_at_that_lsn(
    worker: ChangesWorker,
) -> None:
    """``if_idle_at``: the LSN and the pending count are checked in the checksums' own read."""

    port = channel_port(worker)
    await port.advance_lsn(5)
    idle = await port.table_checksums(["tasks", "projects"], if_idle_at=5)
    assert idle is not None and set(idle) == {"tasks", "projects"}
    assert await port.table_checksums(["tasks"], if_idle_at=6) is None  # another LSN
    await worker.insert("projects", {"id": "p1", "name": "P"})
    assert await port.table_checksums(["tasks"], if_idle_at=5) is None  # a pending change
    plain = await port.table_checksums(["projects"])  # no condition: always read
    assert plain is not None and plain["projects"] != idle["projects"]


async def test_a_table_repair_crosses_the_channel_like_an_initial_sync(
    worker: ChangesWorker,
) -> None:
    """The browser's Sync Worker stages and swaps a table repair over the MessageChannel."""
    from tidesync.worker_sync.shared.message_types import Operation, TableChange

    port = channel_port(worker)
    row = {"id": "p1", "name": "from the server", "updated_at": "2027-01-01T00:00:00.000Z"}
    snapshot = TableChange(
        id="s1",
        table="projects",
        operation=Operation.INSERT,
        data=row,
        updated_at=row["updated_at"],
    )
    await port.begin_initial_sync(9)
    await port.stage_initial_chunk("projects", [snapshot])
    outcome = await port.commit_table_resync(["projects"], 9)
    assert (outcome.applied, outcome.tables, outcome.lsn) == (1, ("projects",), 0)
    assert await worker.query("SELECT id, name FROM projects") == [
        {"id": "p1", "name": "from the server"}
    ]
    reply = await handle_request(
        worker, {"id": 2, "cmd": "port.commit_table_resync", "args": {"tables": "projects"}}
    )
    assert not reply["ok"] and "tables" in reply["error"]["message"]


async def test_server_time_is_posted_one_way_in_order_and_only_when_it_grows(
    worker: ChangesWorker,
) -> None:
    """With ``notify``, observing a server time is not a round trip on the live path."""
    queued: list[dict[str, Any]] = []  # the channel: FIFO, one-way posts and calls alike
    waited: list[str] = []

    async def over_the_channel(cmd: str, args: dict[str, Any]) -> Any:
        waited.append(cmd)
        while queued:  # what was posted earlier is handled first
            assert "id" not in (one_way := queued.pop(0))
            assert (await handle_request(worker, one_way))["ok"]
        return (await handle_request(worker, {"id": 1, "cmd": cmd, "args": args}))["result"]

    port = RemoteChangesPort(
        over_the_channel, lambda cmd, args: queued.append({"cmd": cmd, "args": args})
    )
    far_ahead = 1_900_000_000_000
    await port.observe_server_time(far_ahead)
    await port.observe_server_time(far_ahead - 5)  # older: the clock keeps its maximum anyway
    await port.observe_server_time(far_ahead)
    assert queued == [{"cmd": "port.observe_server_time", "args": {"millis": far_ahead}}]
    assert waited == []  # nothing waited for an answer
    await port.local_state()
    await worker.insert("projects", {"id": "p1", "name": "P"})
    [change] = await port.unsynced_changes(10)
    assert change.updated_at >= "2030-03-17T17:46:40.000Z"  # the posted time fed the clock


async def test_live_query_subscription_sees_writes(worker: ChangesWorker) -> None:
    seen: list[tuple[str, Any]] = []
    worker.on_query_result(lambda sub_id, rows: seen.append((sub_id, rows)))
    reply = await call(worker, "subscribe", subId="s1", sql="SELECT id FROM projects")
    assert reply["result"] == []
    await worker.insert("projects", {"id": "p1", "name": "P"})
    assert seen[-1] == ("s1", [{"id": "p1"}])
    assert (await call(worker, "unsubscribe", subId="s1"))["result"] is True


async def test_pending_count_command_reports_unacknowledged_changes(
    worker: ChangesWorker,
) -> None:
    await call(worker, "insert", table="projects", row={"id": "p1", "name": "P"})
    assert await call(worker, "pendingCount") == {"id": 7, "ok": True, "result": 1}
    reply = await call(worker, "query", sql="DELETE FROM projects")
    assert reply["ok"] is False and "read-only" in reply["error"]["message"]


def test_channel_text_carries_port_messages_exactly_or_declines() -> None:
    """Between the workers a message crosses as JSON text when that is exact."""
    message = {"id": 7, "ok": True, "result": [{"big": 2**63 - 1, "f": 0.1, "s": "ä\u2028"}]}
    text = channel_text(message)
    assert text is not None and json.loads(text) == message
    assert channel_text({"result": [{"blob": b"\x00"}]}) is None  # bytes: posted as an object
    assert channel_text({"result": [float("nan")]}) is None  # NaN is not JSON


async def test_arming_is_posted_one_way_and_the_commit_carries_what_a_read_returns(
    worker: ChangesWorker,
) -> None:
    """``arm_local_changes`` crosses as a one-way port call; the carried changes cross the
    channel in the wire form and come back equal to the read's."""
    from tidesync.worker_sync.shared.port_codec import changes_from_wire, changes_to_wire
    from tidesync.worker_sync.worker_thread.browser_entry import carried_changes

    posted: list[dict[str, Any]] = []
    heard: list[Any] = []
    worker.on_local_change(heard.append)

    async def over_the_channel(cmd: str, args: dict[str, Any]) -> Any:
        return (await handle_request(worker, {"id": 1, "cmd": cmd, "args": args}))["result"]

    port = RemoteChangesPort(
        over_the_channel, lambda cmd, args: posted.append({"cmd": cmd, "args": args})
    )
    await port.arm_local_changes(50)
    assert posted == [{"cmd": "port.arm_local_changes", "args": {"limit": 50}}]
    assert (await handle_request(worker, json.loads(json.dumps(posted[0]))))["ok"]
    await worker.insert("projects", {"id": "p1", "name": "P"})
    [carried] = heard
    wire = json.loads(channel_text({"event": "local_change", "changes": changes_to_wire(carried)}))
    assert carried_changes(wire["changes"]) == await port.unsynced_changes(50) == carried
    assert changes_from_wire(wire["changes"]) == carried
    assert carried_changes(None) is None
    assert carried_changes([{"id": "x"}]) is None  # does not decode: read instead
    bad = {"id": 1, "cmd": "port.arm_local_changes", "args": {"limit": "many"}}
    assert not (await handle_request(worker, bad))["ok"]


async def test_a_batch_carries_the_frame_time_to_the_clock_without_a_post(
    worker: ChangesWorker,
) -> None:
    from tidesync.worker_sync.shared.message_types import Operation, TableChange

    posted: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def over_the_channel(cmd: str, args: dict[str, Any]) -> Any:
        sent.append(args)
        reply = await handle_request(worker, {"id": 1, "cmd": cmd, "args": args})
        assert reply["ok"], reply
        return reply["result"]

    port = RemoteChangesPort(
        over_the_channel, lambda cmd, args: posted.append({"cmd": cmd, "args": args})
    )
    far_ahead = 1_900_000_000_000
    batch = [
        TableChange(
            id="s1",
            table="projects",
            operation=Operation.INSERT,
            data={"id": "p1", "name": "P"},
            updated_at="2026-11-25T10:00:00.000Z",
            lsn=3,
        )
    ]
    await port.apply_server_changes(batch, 3, source="live", server_time=far_ahead)
    assert posted == [] and sent[-1]["server_time"] == far_ahead
    await port.apply_server_changes([], 4, source="live", server_time=far_ahead)
    assert "server_time" not in sent[-1]  # not above the last one sent
    await port.observe_server_time(far_ahead)
    assert posted == []  # already fed
    await worker.insert("projects", {"id": "p2", "name": "P"})
    mine = [c for c in await port.unsynced_changes(10) if c.data["id"] == "p2"]
    assert mine[0].updated_at >= "2030-03-17T17:46:40.000Z"  # the batch's time fed the clock
