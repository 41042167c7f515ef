"""SyncWorker: routing between socket, phases, local changes and status.

The socket is an in-memory fake of the ``Transport`` interface and the test
plays the server; the Changes side is ``FakePort``.  Short backoff, long
heartbeats (except where heartbeats are the point) keep it fast and quiet.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from fake_port import FakePort

from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    CltChangesApplied,
    CltHeartbeat,
    CltInitProcessed,
    CltInitReceived,
    CltSendChanges,
    InitSequence,
    Message,
    Operation,
    SrvCatchupCompleted,
    SrvChangesApplied,
    SrvError,
    SrvHeartbeat,
    SrvInitChanges,
    SrvInitComplete,
    SrvInitStart,
    SrvLiveChanges,
    SrvLsnUpdate,
    TableChange,
    decode_message,
    encode_message,
    make,
)
from tidesync.worker_sync.worker_thread.connection_manager import BackoffPolicy
from tidesync.worker_sync.worker_thread.status import SyncPhase, SyncStatus
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker, build_sync_url
from tidesync.worker_sync.worker_thread.transport import TransportClosed

CID = "client-a"
FAST = BackoffPolicy(base=0.01, cap=0.05, fatal_delay=0.05, healthy_after=1000.0)
WAIT = 5.0  # upper bound for "eventually"; never an assertion about speed


class FakeSocket:
    def __init__(self, network: FakeNetwork) -> None:
        self.network = network
        self.url = ""
        self.inbox: asyncio.Queue[str | TransportClosed] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

    async def open(self, url: str) -> None:
        self.url = url
        if self.network.refuse:
            raise ConnectionRefusedError("refused")

    async def send(self, text: str) -> None:
        if self.closed:
            raise TransportClosed(*self.closed)
        self.outbox.put_nowait(decode_message(text, expect="clt"))

    async def recv(self) -> str:
        item = await self.inbox.get()
        if isinstance(item, TransportClosed):
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.inbox.put_nowait(TransportClosed(code, reason))

    # --- the test's side (the server) ---

    def push(self, cls: type[Message], **values: Any) -> None:
        self.inbox.put_nowait(encode_message(make(cls, CID, 1_790_000_000_000, **values)))

    def drop(self, code: int = 1006, reason: str = "") -> None:
        self.closed = (code, reason)
        self.inbox.put_nowait(TransportClosed(code, reason))

    async def expect(self, cls: type[Message]) -> Any:
        """The next message of type ``cls`` the client sent (heartbeats skipped)."""
        while True:
            message = await asyncio.wait_for(self.outbox.get(), WAIT)
            if isinstance(message, cls):
                return message
            assert isinstance(message, CltHeartbeat), f"unexpected {message}"


class FakeNetwork:
    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []
        self.new_socket: asyncio.Queue[FakeSocket] = asyncio.Queue()
        self.refuse = False

    def factory(self) -> FakeSocket:
        sock = FakeSocket(self)
        self.sockets.append(sock)
        self.new_socket.put_nowait(sock)
        return sock

    async def next_socket(self) -> FakeSocket:
        return await asyncio.wait_for(self.new_socket.get(), WAIT)


def worker(port: FakePort, net: FakeNetwork, **kw: Any) -> SyncWorker:
    kw.setdefault("heartbeat_interval", 30.0)
    return SyncWorker(port, net.factory, url="ws://x/api/sync", backoff=FAST, **kw)


async def until(worker: SyncWorker, predicate: Any) -> SyncStatus:
    async def poll() -> SyncStatus:
        while not predicate(worker.status):
            await asyncio.sleep(0.005)
        return worker.status

    return await asyncio.wait_for(poll(), WAIT)


async def go_live(sock: FakeSocket, lsn: int = 5) -> None:
    sock.push(SrvCatchupCompleted, start_lsn=lsn, final_lsn=lsn, change_count=0)


async def live_worker() -> tuple[FakePort, FakeNetwork, SyncWorker, FakeSocket]:
    """A started worker, synced and live at LSN 5 on its first socket."""
    port, net = FakePort(lsn=5), FakeNetwork()
    w = worker(port, net)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    await w.wait_until_synced(WAIT)
    return port, net, w, sock


def change(cid: str) -> TableChange:
    return TableChange(
        id=cid,
        table="tasks",
        operation=Operation.INSERT,
        data={"id": cid},
        updated_at="2026-11-25T10:00:00.000Z",
    )


def test_url_carries_client_id_and_lsn() -> None:
    assert build_sync_url("ws://h/api/sync", "c 1", 0x1_0000_001A) == (
        "ws://h/api/sync?clientId=c%201&lsn=1/1A"
    )
    assert build_sync_url("ws://h/s?token=t", "c", 0).endswith("?token=t&clientId=c&lsn=0/0")


def test_url_asks_for_compact_snapshot_chunks_only_when_an_initial_sync_is_due() -> None:
    assert build_sync_url("ws://h/s", "c", 0, init_rows=True) == (
        "ws://h/s?clientId=c&lsn=0/0&initFormat=rows"
    )
    assert build_sync_url("ws://h/s", "c", 0x1A, init_rows=True) == "ws://h/s?clientId=c&lsn=0/1A"


async def test_fresh_client_does_initial_sync_then_goes_live() -> None:
    port, net = FakePort(), FakeNetwork()
    w = worker(port, net)
    phases: list[SyncPhase] = []
    w.on_status(lambda s: phases.append(s.phase))
    await w.start()
    sock = await net.next_socket()
    assert sock.url.endswith("clientId=client-a&lsn=0/0&initFormat=rows")
    sock.push(SrvInitStart, server_lsn=7)
    sock.push(
        SrvInitChanges,
        changes=(change("r1"), change("r2")),
        sequence=InitSequence("tasks", 1, 1),
    )
    ack = await sock.expect(CltInitReceived)
    assert (ack.table, ack.chunk) == ("tasks", 1)
    sock.push(SrvInitComplete, server_lsn=7)
    await sock.expect(CltInitProcessed)
    await go_live(sock, 7)
    status = await w.wait_until_synced(WAIT)
    assert status.lsn == 7 and status.connected
    assert set(port.rows["tasks"]) == {"r1", "r2"}
    assert phases.index(SyncPhase.INITIAL) < phases.index(SyncPhase.CATCHUP)
    assert phases.index(SyncPhase.CATCHUP) < phases.index(SyncPhase.LIVE)
    await w.stop()
    assert sock.closed == (1000, "client stopped")


async def test_local_changes_wait_for_live_then_go_one_batch_at_a_time() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    for i in range(3):
        port.add_local(f"L{i}")
    w = worker(port, net, batch_size=2)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    first = await sock.expect(CltSendChanges)
    assert [c.id for c in first.changes] == ["L0", "L1"]
    w.notify_local_change()  # must not start a second batch while one is in flight
    sock.push(
        SrvChangesApplied,
        applied_changes=("L0", "L1"),
        results=tuple(ChangeResult(id=i, status=ChangeStatus.APPLIED, lsn=6) for i in ("L0", "L1")),
    )
    second = await sock.expect(CltSendChanges)
    assert [c.id for c in second.changes] == ["L2"]
    sock.push(
        SrvChangesApplied,
        applied_changes=("L2",),
        results=(ChangeResult(id="L2", status=ChangeStatus.APPLIED, lsn=7),),
    )
    # Only our own changes were committed: the server moves our LSN (PROTOCOL.md "Live").
    sock.push(SrvLsnUpdate, lsn=7)
    status = await w.wait_until_synced(WAIT)
    assert status.pending == 0
    assert status.lsn == 7  # synced means our LSN covers our acknowledged changes
    assert port.called("mark_sent") == [["L0", "L1"], ["L2"]]
    await w.stop()


async def test_change_committed_while_live_is_sent_after_notify() -> None:
    port, _net, w, sock = await live_worker()
    port.add_local("new")
    w.notify_local_change()
    sent = await sock.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["new"]
    await w.stop()


async def test_the_status_says_up_to_which_numbered_local_commit_pending_counts() -> None:
    """``local_seq``: the Changes side shows later commits as pending itself (PageStatus)."""
    port, _net, w, sock = await live_worker()
    assert w.status.local_seq == 0
    port.add_local("new")
    w.notify_local_change(seq=3)
    await sock.expect(CltSendChanges)
    status = await until(w, lambda s: s.local_seq == 3)
    assert status.pending == 1
    w.notify_local_change(seq=2)  # an older number never moves it back
    w.notify_local_change()  # nor does a notify without one
    await until(w, lambda s: port.called("mark_sent"))
    assert w.status.local_seq == 3
    await w.stop()


async def test_local_change_goes_out_before_its_attempt_is_counted() -> None:
    """Nothing in flight: the batch is sent at once; ``mark_sent`` (a write) comes after."""
    port, _net, w, sock = await live_worker()
    counted_after_send: list[bool] = []
    mark_sent = port.mark_sent

    async def checking_mark_sent(change_ids: Any) -> None:
        counted_after_send.append(not sock.outbox.empty())
        await mark_sent(change_ids)

    port.mark_sent = checking_mark_sent  # type: ignore[method-assign]
    port.add_local("new")
    w.notify_local_change()
    sent = await sock.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["new"]
    await until(w, lambda s: port.called("mark_sent"))
    assert port.called("mark_sent") == [["new"]] and counted_after_send == [True]
    await w.stop()


async def armed(port: FakePort) -> None:
    async def poll() -> None:
        while port.armed is None:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT)


async def test_idle_worker_arms_the_port_and_sends_carried_changes_without_a_read() -> None:
    """Live and idle: the next commit's event carries its changes; no ``unsynced_changes``."""
    port, _net, w, sock = await live_worker()
    await armed(port)
    assert port.called("arm_local_changes")[-1] == 500  # the batch size
    reads = port.reads
    w.notify_local_change(port.commit_local("new"))
    sent = await sock.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["new"] and port.reads == reads
    await until(w, lambda s: port.called("mark_sent") == [["new"]])
    assert (await until(w, lambda s: s.pending == 1)).pending == 1
    sock.push(
        SrvChangesApplied,
        applied_changes=("new",),
        results=(ChangeResult(id="new", status=ChangeStatus.APPLIED, lsn=6),),
    )
    sock.push(SrvLsnUpdate, lsn=6)
    await armed(port)  # idle again: armed for the next commit, still without a read
    assert port.reads == reads
    w.notify_local_change(port.commit_local("next"))
    sent = await sock.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["next"] and port.reads == reads
    await w.stop()


async def test_carried_changes_are_read_again_when_a_later_commit_was_heard() -> None:
    """The carried read misses a commit heard after it: the batch is read instead."""
    port, _net, w, sock = await live_worker()
    await armed(port)
    reads = port.reads
    first = port.commit_local("a")
    assert first is not None and port.commit_local("b") is None  # used up by the first
    w.notify_local_change(first)
    w.notify_local_change(None)
    sent = await sock.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["a", "b"] and port.reads == reads + 1
    await w.stop()


async def test_carried_changes_while_disconnected_wait_for_the_next_connection() -> None:
    """A lost connection disarms the port; changes carried anyway are sent after a read."""
    port, net, w, sock = await live_worker()
    await armed(port)
    carried = port.commit_local("late")  # committed while the port was still armed
    sock.drop(1006)
    await until(w, lambda s: not s.connected)
    await asyncio.wait_for(_poll(lambda: port.called("arm_local_changes")[-1] == 0), WAIT)
    w.notify_local_change(carried)
    sock2 = await net.next_socket()
    reads = port.reads
    await go_live(sock2)
    sent = await sock2.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["late"] and port.reads > reads
    await w.stop()


async def test_carried_changes_are_not_sent_while_a_batch_is_in_flight() -> None:
    port, _net, w, sock = await live_worker()
    await armed(port)
    w.notify_local_change(port.commit_local("one"))
    await sock.expect(CltSendChanges)
    port.armed = 500  # a confused Changes side: carries although nobody armed it
    w.notify_local_change(port.commit_local("two"))
    await asyncio.sleep(0.05)
    assert sock.outbox.empty()  # one batch in flight at a time
    sock.push(
        SrvChangesApplied,
        applied_changes=("one",),
        results=(ChangeResult(id="one", status=ChangeStatus.APPLIED, lsn=6),),
    )
    sent = await sock.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["two"]
    await w.stop()


async def _poll(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


async def test_batch_in_flight_is_resent_after_reconnect() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    port.add_local("L0")
    w = worker(port, net)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    await sock.expect(CltSendChanges)
    sock.drop(1006)
    sock2 = await net.next_socket()
    await go_live(sock2)
    resent = await sock2.expect(CltSendChanges)
    assert [c.id for c in resent.changes] == ["L0"]
    await w.stop()


async def test_live_batch_is_applied_and_acknowledged() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    w = worker(port, net)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    sock.push(SrvLiveChanges, changes=(change("s1"),), last_lsn=9)
    ack = await sock.expect(CltChangesApplied)
    assert ack.change_ids == ("s1",) and ack.last_lsn == 9
    assert (await until(w, lambda s: s.lsn == 9)).lsn == 9
    await w.stop()


async def test_lsn_ahead_reconnects_from_zero_and_keeps_local_changes() -> None:
    port, net = FakePort(lsn=500), FakeNetwork()
    port.add_local("mine")
    w = worker(port, net)
    await w.start()
    sock = await net.next_socket()
    assert sock.url.endswith("lsn=0/1F4")
    sock.push(SrvError, code="lsn_ahead", error="server was restored")
    sock2 = await net.next_socket()
    assert sock2.url.endswith("lsn=0/0&initFormat=rows")
    assert sock.closed is not None
    sock2.push(SrvInitStart, server_lsn=0)
    sock2.push(SrvInitComplete, server_lsn=0)
    await sock2.expect(CltInitProcessed)
    await go_live(sock2, 0)
    sent = await sock2.expect(CltSendChanges)
    assert [c.id for c in sent.changes] == ["mine"]
    await w.stop()


async def test_replaced_connection_is_not_reopened() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    w = worker(port, net)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    sock.drop(4409, "replaced")
    status = await until(w, lambda s: not s.connected and s.last_error)
    assert "4409" in (status.last_error or "")
    assert status.reconnect_in is None
    await asyncio.sleep(0.1)  # several backoff periods of FAST: still one socket
    assert len(net.sockets) == 1
    await w.stop()


async def test_refused_connections_are_retried_with_backoff() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    net.refuse = True
    w = worker(port, net)
    await w.start()
    for _ in range(3):
        await net.next_socket()
    net.refuse = False
    sock = await net.next_socket()
    await go_live(sock)
    await w.wait_until_synced(WAIT)
    await w.stop()


async def test_offline_closes_and_online_reconnects() -> None:
    _port, net, w, sock = await live_worker()
    w.go_offline()
    status = await until(w, lambda s: not s.connected)
    assert status.phase is SyncPhase.DISCONNECTED and sock.closed is not None
    w.go_online()
    sock2 = await net.next_socket()
    await go_live(sock2)
    await w.wait_until_synced(WAIT)
    await w.stop()


async def test_silent_server_is_declared_dead_and_replaced_by_a_new_socket() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    w = worker(port, net, heartbeat_interval=0.02)
    await w.start()
    sock = await net.next_socket()
    heartbeat = await asyncio.wait_for(sock.outbox.get(), WAIT)
    assert isinstance(heartbeat, CltHeartbeat) and heartbeat.lsn == 5
    await net.next_socket()  # nobody answered: dead peer, reconnect
    assert sock.closed is not None and sock.closed[0] == 4000
    await w.stop()


async def test_wait_until_synced_times_out_with_the_status() -> None:
    port, net = FakePort(lsn=5), FakeNetwork()
    w = worker(port, net)
    await w.start()
    with pytest.raises(TimeoutError, match="not synced"):
        await w.wait_until_synced(0.05)
    await w.stop()


def test_sync_side_and_package_import_no_socket_library() -> None:
    code = (
        "import sys, tidesync, tidesync.worker_sync.worker_thread.sync_worker\n"
        "bad = [m for m in ('websockets', 'tidesync.server', 'tidesync.native', 'js')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_client_keeps_heartbeating_while_a_long_snapshot_commit_runs() -> None:
    class SlowCommitPort(FakePort):
        async def commit_initial_sync(self, server_lsn: int) -> Any:
            await asyncio.sleep(0.5)  # 10 heartbeat intervals, like 50k rows in Pyodide
            return await super().commit_initial_sync(server_lsn)

    port, net = SlowCommitPort(), FakeNetwork()
    w = worker(port, net, heartbeat_interval=0.05)
    await w.start()
    sock = await net.next_socket()
    sock.push(SrvInitStart, server_lsn=7)
    sock.push(SrvInitChanges, changes=(change("r1"),), sequence=InitSequence("tasks", 1, 1))
    await sock.expect(CltInitReceived)
    sock.push(SrvInitComplete, server_lsn=7)
    heartbeats = 0
    while True:
        message = await asyncio.wait_for(sock.outbox.get(), WAIT)
        if isinstance(message, CltInitProcessed):
            break
        assert isinstance(message, CltHeartbeat), message
        heartbeats += 1
        sock.push(SrvHeartbeat)  # the server answers: it is alive
    assert heartbeats >= 3  # the server would drop a client silent for 3 intervals
    await go_live(sock, 7)
    await w.wait_until_synced(WAIT)
    assert len(net.sockets) == 1 and sock.closed is None  # never declared the server dead
    await w.stop()


# --- table repair (repair.TableRepair driven by the worker) -----------------------------------


async def _mismatch_on_tasks(port: FakePort, net: FakeNetwork, **kw: Any) -> tuple[Any, Any]:
    """Live at LSN 5 with a drifted ``tasks`` row; the check runs and the repair asks."""
    from tidesync.worker_sync.shared.message_types import CltRequestChecksums, SrvTableChecksums

    port.rows = {"tasks": {"t1": {"id": "t1", "title": "drifted"}}, "projects": {}}
    w = worker(port, net, checksum_interval=0, **kw)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    await until(w, lambda s: s.phase is SyncPhase.LIVE)
    w.verify_integrity()
    await sock.expect(CltRequestChecksums)
    server_sums = await FakePort(rows={"tasks": {}, "projects": {}}).table_checksums(
        ["tasks", "projects"]
    )
    sock.push(SrvTableChecksums, lsn=5, checksums=server_sums)
    return w, sock


async def test_a_mismatch_resyncs_only_that_table_and_holds_local_changes_until_the_swap() -> None:
    from tidesync.worker_sync.shared.message_types import (
        CltResyncReceived,
        CltResyncTables,
        SrvResyncChanges,
        SrvResyncComplete,
        SrvResyncStart,
    )

    port, net = FakePort(lsn=5), FakeNetwork()
    w, sock = await _mismatch_on_tasks(port, net)
    request = await sock.expect(CltResyncTables)
    assert request.tables == ("tasks",)
    assert (await until(w, lambda s: s.repairing == ("tasks",))).synced is False
    port.add_local("meanwhile")
    w.notify_local_change()  # held back: nothing may be in flight during the repair
    sock.push(SrvResyncStart, lsn=7, tables=("tasks",))
    good = TableChange(
        id="r1", table="tasks", operation=Operation.INSERT, data={"id": "t1", "title": "T1"},
        updated_at="2026-11-25T10:00:00.000Z",
    )  # fmt: skip
    sock.push(SrvResyncChanges, changes=(good,), sequence=InitSequence("tasks", 1, 1))
    ack = await sock.expect(CltResyncReceived)
    assert (ack.table, ack.chunk) == ("tasks", 1)
    sock.push(SrvResyncComplete, lsn=7, tables=("tasks",))
    sent = await sock.expect(CltSendChanges)  # released once the swap committed
    assert [c.id for c in sent.changes] == ["meanwhile"]
    assert port.called("commit_table_resync") == [(["tasks"], 7)]
    assert port.rows["tasks"] == {"t1": {"id": "t1", "title": "T1"}}
    assert not port.called("reset_for_reinit")
    status = await until(w, lambda s: s.table_repairs == 1)
    assert (status.repairs, status.full_resyncs, status.last_repair) == (1, 0, ("tasks",))
    assert status.last_repair_mode == "tables" and status.lsn == 5  # the LSN did not move
    await w.stop()


async def test_a_local_write_landing_during_an_integrity_check_is_not_taken_for_drift() -> None:
    """The page writes while the check reads the local side: the tables then differ from the
    server's legitimately (a pending change), so the round is skipped, not repaired.  (It
    once read the LSN and pending count in one call and the checksums in another: a write
    committed in between looked like a corrupt table.)"""
    from tidesync.worker_sync.shared.message_types import CltRequestChecksums, SrvTableChecksums

    class WriteLandsOnTheFirstRead(FakePort):
        armed = False

        def _land(self) -> None:
            if self.armed:
                self.armed = False
                self.add_local("t1", title="written meanwhile")
                self.rows["tasks"]["t1"] = {"id": "t1", "title": "written meanwhile"}

        async def local_state(self) -> Any:
            state = await super().local_state()
            self._land()  # after the read: what a write between two calls did
            return state

        async def table_checksums(self, tables: Any, **kw: Any) -> Any:
            self._land()  # before the read: committed just ahead of it
            return await super().table_checksums(tables, **kw)

    port, net = WriteLandsOnTheFirstRead(lsn=5), FakeNetwork()
    port.rows = {"tasks": {}, "projects": {}}
    w = worker(port, net, checksum_interval=0)
    await w.start()
    sock = await net.next_socket()
    await go_live(sock)
    await until(w, lambda s: s.phase is SyncPhase.LIVE)
    server_sums = await FakePort(rows={"tasks": {}, "projects": {}}).table_checksums(
        ["tasks", "projects"]
    )
    w.verify_integrity()
    await sock.expect(CltRequestChecksums)
    port.armed = True
    sock.push(SrvTableChecksums, lsn=5, checksums=server_sums)
    await until(w, lambda s: not port.armed and port.called("table_checksums"))
    await asyncio.sleep(0.05)
    status = w.status
    assert (status.repairs, status.table_repairs, status.repairing) == (0, 0, ())
    assert not port.called("reset_for_reinit")
    await w.stop()


async def test_a_server_answering_unknown_type_gets_the_full_resync() -> None:
    from tidesync.worker_sync.shared.message_types import CltResyncTables

    port, net = FakePort(lsn=5), FakeNetwork()
    w, sock = await _mismatch_on_tasks(port, net)
    request = await sock.expect(CltResyncTables)
    sock.push(
        SrvError,
        code="unknown_type",
        error="unknown message type 'clt_resync_tables'",
        ref_message_id=request.message_id,
    )
    sock2 = await net.next_socket()
    assert sock2.url.endswith("lsn=0/0&initFormat=rows")
    assert port.called("reset_for_reinit") == [None]
    status = await until(w, lambda s: s.full_resyncs == 1)
    assert (status.last_repair, status.last_repair_mode) == (("tasks",), "full")
    assert status.last_error is not None and "unknown_type" in status.last_error
    await w.stop()


async def test_a_connection_lost_mid_repair_asks_again_on_the_next_connection() -> None:
    from tidesync.worker_sync.shared.message_types import CltResyncTables, SrvResyncStart

    port, net = FakePort(lsn=5), FakeNetwork()
    w, sock = await _mismatch_on_tasks(port, net)
    await sock.expect(CltResyncTables)
    sock.push(SrvResyncStart, lsn=7, tables=("tasks",))
    await until(w, lambda s: port.called("begin_initial_sync") == [7])
    sock.drop()
    sock2 = await net.next_socket()
    assert sock2.url.endswith("lsn=0/5")  # not a reinit: the other tables keep their LSN
    await until(w, lambda s: port.called("abort_initial_sync") == [None])
    await go_live(sock2)
    again = await sock2.expect(CltResyncTables)
    assert again.tables == ("tasks",)
    assert not port.called("reset_for_reinit")
    await w.stop()


async def test_settled_batch_costs_no_read_or_recount_and_a_racing_commit_still_goes_out() -> None:
    """After a batch is answered with nothing new committed, the worker neither reads the
    unsynced changes again nor recounts pending (two round trips per change in the
    browser); a commit notified while a read is on its way is still sent."""
    port, _net, w, sock = await live_worker()
    asks: list[str] = []
    read, state = port.unsynced_changes, port.local_state

    async def counting_read(limit: int) -> list[TableChange]:
        asks.append("read")
        found = await read(limit)
        if not port.called("racer") and [c.id for c in found] == ["a"]:
            port.calls.append(("racer", None))
            port.add_local("racer")  # committed after the read looked
            w.notify_local_change()
        return found

    async def counting_state() -> Any:
        asks.append("state")
        return await state()

    port.unsynced_changes = counting_read  # type: ignore[method-assign]
    port.local_state = counting_state  # type: ignore[method-assign]
    port.add_local("a")
    w.notify_local_change()
    assert [c.id for c in (await sock.expect(CltSendChanges)).changes] == ["a"]
    sock.push(
        SrvChangesApplied,
        applied_changes=("a",),
        results=(ChangeResult(id="a", status=ChangeStatus.APPLIED, lsn=6),),
    )
    assert [c.id for c in (await sock.expect(CltSendChanges)).changes] == ["racer"]
    asks.clear()
    sock.push(
        SrvChangesApplied,
        applied_changes=("racer",),
        results=(ChangeResult(id="racer", status=ChangeStatus.APPLIED, lsn=7),),
    )
    sock.push(SrvLsnUpdate, lsn=7)
    await until(w, lambda s: s.lsn == 7 and s.pending == 0)
    assert asks == []
    await w.stop()
