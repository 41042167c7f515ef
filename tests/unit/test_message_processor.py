"""MessageProcessor: the phase table and each server message's effect on the port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fake_port import FakePort

from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    ChunkSequence,
    CltCatchupReceived,
    CltChangesApplied,
    CltError,
    CltInitProcessed,
    CltInitReceived,
    InitSequence,
    Message,
    MessageType,
    Operation,
    SrvCatchupChanges,
    SrvCatchupCompleted,
    SrvChangesApplied,
    SrvChangesReceived,
    SrvError,
    SrvHeartbeat,
    SrvInitChanges,
    SrvInitComplete,
    SrvInitRows,
    SrvInitStart,
    SrvLiveChanges,
    SrvLsnUpdate,
    SrvResyncChanges,
    SrvResyncComplete,
    SrvResyncStart,
    SrvTableChecksums,
    TableChange,
    encode_message,
    make,
)
from tidesync.worker_sync.worker_thread.client_changes import ClientChanges
from tidesync.worker_sync.worker_thread.message_processor import (
    PHASE_TABLE,
    FlushLocalChanges,
    Instruction,
    MessageProcessor,
    Reconnect,
    Send,
)
from tidesync.worker_sync.worker_thread.status import InitProgress, SyncPhase

CID = "client-a"
NOW = 1_790_000_000_000
P = SyncPhase
MUTATING = (
    "begin_initial_sync",
    "stage_initial_chunk",
    "commit_initial_sync",
    "apply_server_changes",
    "advance_lsn",
    "record_results",
    "reset_for_reinit",
)


def change(cid: str, lsn: int | None = None, op: Operation = Operation.INSERT) -> TableChange:
    return TableChange(
        id=cid,
        table="tasks",
        operation=op,
        data={"id": f"row-{cid}", "title": cid},
        updated_at="2026-11-25T10:00:00.000Z",
        lsn=lsn,
    )


def srv(cls: type[Message], **values: Any) -> str:
    return encode_message(make(cls, CID, NOW, **values))


SAMPLES: dict[MessageType, str] = {
    MessageType.SRV_INIT_START: srv(SrvInitStart, server_lsn=10),
    MessageType.SRV_INIT_CHANGES: srv(
        SrvInitChanges, changes=(change("a"),), sequence=InitSequence("tasks", 1, 1)
    ),
    MessageType.SRV_INIT_ROWS: srv(
        SrvInitRows,
        sequence=InitSequence("tasks", 1, 1),
        columns=("id", "title", "updated_at"),
        rows=(("row-a", "a", "2026-11-25T10:00:00.000Z"),),
        versions=(None,),
    ),
    MessageType.SRV_INIT_COMPLETE: srv(SrvInitComplete, server_lsn=10),
    MessageType.SRV_CATCHUP_CHANGES: srv(
        SrvCatchupChanges, changes=(change("b", 11),), last_lsn=11, sequence=ChunkSequence(1, 1)
    ),
    MessageType.SRV_CATCHUP_COMPLETED: srv(
        SrvCatchupCompleted, start_lsn=5, final_lsn=11, change_count=1
    ),
    MessageType.SRV_LIVE_CHANGES: srv(SrvLiveChanges, changes=(change("c", 12),), last_lsn=12),
    MessageType.SRV_LSN_UPDATE: srv(SrvLsnUpdate, lsn=13),
    MessageType.SRV_CHANGES_RECEIVED: srv(SrvChangesReceived, change_ids=("x1",)),
    MessageType.SRV_CHANGES_APPLIED: srv(
        SrvChangesApplied,
        applied_changes=("x1",),
        results=(ChangeResult(id="x1", status=ChangeStatus.APPLIED, lsn=14),),
    ),
    MessageType.SRV_HEARTBEAT: srv(SrvHeartbeat),
    MessageType.SRV_ERROR: srv(SrvError, code="rate_limited", error="slow down"),
    MessageType.SRV_TABLE_CHECKSUMS: srv(SrvTableChecksums, lsn=1, checksums={"tasks": "ab"}),
    MessageType.SRV_RESYNC_START: srv(SrvResyncStart, lsn=20, tables=("tasks",)),
    MessageType.SRV_RESYNC_CHANGES: srv(
        SrvResyncChanges, changes=(change("r"),), sequence=InitSequence("tasks", 1, 1)
    ),
    MessageType.SRV_RESYNC_COMPLETE: srv(SrvResyncComplete, lsn=20, tables=("tasks",)),
}


def processor(
    port: FakePort | None = None, phase: SyncPhase = P.CONNECTING, lsn: int = 5
) -> tuple[MessageProcessor, FakePort, ClientChanges]:
    port = port or FakePort(lsn=lsn)
    cc = ClientChanges()
    proc = MessageProcessor(port, cc, client_id=CID, wall_ms=lambda: NOW)
    proc.begin(lsn)
    proc.phase = phase
    if phase is P.INITIAL:
        port.staged = []
    return proc, port, cc


def sent(out: list[Instruction]) -> list[Message]:
    return [item.message for item in out if isinstance(item, Send)]


def errors(out: list[Instruction]) -> list[CltError]:
    return [m for m in sent(out) if isinstance(m, CltError)]


def test_samples_cover_every_server_message() -> None:
    assert set(SAMPLES) == {t for t in MessageType if t.value.startswith("srv_")}


@pytest.mark.parametrize("phase", list(SyncPhase))
@pytest.mark.parametrize("mtype", list(SAMPLES))
async def test_every_server_message_in_every_phase(phase: SyncPhase, mtype: MessageType) -> None:
    proc, port, _ = processor(phase=phase)
    out = await proc.handle_text(SAMPLES[mtype])
    expected = PHASE_TABLE.get((phase, mtype))
    if expected is None:
        assert [e.code for e in errors(out)] == ["out_of_phase"]
        assert not any(port.called(name) for name in MUTATING)
        assert proc.phase is phase
    else:
        assert not any(e.code == "out_of_phase" for e in errors(out))
        assert proc.phase is expected


async def test_server_timestamps_feed_the_clock() -> None:
    proc, port, _ = processor()
    await proc.handle_text(SAMPLES[MessageType.SRV_HEARTBEAT])
    assert port.server_times == [NOW]


async def test_a_live_batch_feeds_the_clock_with_its_apply_not_a_post_of_its_own() -> None:
    """One message between the workers in front of a live batch, not two."""
    proc, port, _ = processor(phase=P.LIVE)
    await proc.handle_text(SAMPLES[MessageType.SRV_LIVE_CHANGES])
    assert port.server_times == [NOW]  # fed once, by ``apply_server_changes``
    assert port.called("apply_server_changes") == [("live", ["c"], 12)]
    await proc.handle_text(SAMPLES[MessageType.SRV_LIVE_CHANGES])  # a replay: nothing applied
    assert port.server_times == [NOW, NOW]  # its time still reaches the clock
    assert len(port.called("apply_server_changes")) == 1


async def test_initial_sync_stages_chunks_acks_each_and_commits_at_the_end() -> None:
    proc, port, _ = processor(lsn=0)
    assert await proc.handle_text(srv(SrvInitStart, server_lsn=40)) == []
    rows = [change(f"r{i}") for i in range(5)]
    out1 = await proc.handle_text(
        srv(SrvInitChanges, changes=tuple(rows[:3]), sequence=InitSequence("tasks", 1, 2))
    )
    out2 = await proc.handle_text(
        srv(SrvInitChanges, changes=tuple(rows[3:]), sequence=InitSequence("tasks", 2, 2))
    )
    acks = sent(out1) + sent(out2)
    assert all(isinstance(m, CltInitReceived) for m in acks)
    assert [(m.table, m.chunk) for m in acks if isinstance(m, CltInitReceived)] == [
        ("tasks", 1),
        ("tasks", 2),
    ]
    assert proc.init_progress == InitProgress("tasks", 2, 2, 5)
    assert port.rows == {}  # nothing visible before the commit
    out = await proc.handle_text(srv(SrvInitComplete, server_lsn=40))
    assert [type(m) for m in sent(out)] == [CltInitProcessed]
    assert len(port.rows["tasks"]) == 5 and port.lsn == 40 and proc.lsn == 40
    assert proc.phase is P.CATCHUP


async def test_init_chunk_that_is_not_an_insert_is_refused_and_not_staged() -> None:
    proc, port, _ = processor(phase=P.INITIAL)
    bad = srv(
        SrvInitChanges,
        changes=(change("a", op=Operation.DELETE),),
        sequence=InitSequence("tasks", 1, 1),
    )
    out = await proc.handle_text(bad)
    assert [e.code for e in errors(out)] == ["invalid_field"]
    assert port.called("stage_initial_chunk") == []


class SlowStagePort(FakePort):
    """Stages only when ``release`` is set; ``fail`` makes the next stage raise."""

    def __init__(self) -> None:
        super().__init__(lsn=0)
        self.release = asyncio.Event()
        self.fail = False
        self.started: list[str] = []

    async def stage_initial_json(self, table: str, changes_json: str) -> None:
        self.started.append(table)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("disk full")
        await super().stage_initial_json(table, changes_json)


def chunk(n: int, total: int) -> str:
    rows = (change(f"c{n}"),)
    return srv(SrvInitChanges, changes=rows, sequence=InitSequence("tasks", n, total))


async def test_a_chunk_is_acknowledged_once_handed_over_and_the_commit_waits_for_every_stage() -> (
    None
):
    port = SlowStagePort()
    proc, _, _ = processor(port, lsn=0)
    await proc.handle_text(srv(SrvInitStart, server_lsn=40))
    acks = []
    for n in (1, 2):  # STAGE_AHEAD chunks are acknowledged before any is staged
        acks += sent(await proc.handle_text(chunk(n, 3)))
    assert [(m.table, m.chunk) for m in acks if isinstance(m, CltInitReceived)] == [
        ("tasks", 1),
        ("tasks", 2),
    ]
    assert port.started == ["tasks", "tasks"] and port.called("stage_initial_chunk") == []
    third = asyncio.ensure_future(proc.handle_text(chunk(3, 3)))
    await asyncio.sleep(0.01)
    assert not third.done()  # two in flight: the third waits for the oldest
    port.release.set()
    assert [type(m) for m in sent(await third)] == [CltInitReceived]
    out = await proc.handle_text(srv(SrvInitComplete, server_lsn=40))
    assert [type(m) for m in sent(out)] == [CltInitProcessed]
    assert sorted(port.rows["tasks"]) == ["row-c1", "row-c2", "row-c3"] and port.lsn == 40


async def test_a_failed_stage_ends_the_connection_and_the_snapshot_is_aborted() -> None:
    port = SlowStagePort()
    proc, _, _ = processor(port, lsn=0)
    await proc.handle_text(srv(SrvInitStart, server_lsn=40))
    await proc.handle_text(chunk(1, 2))
    await proc.handle_text(chunk(2, 2))
    port.fail = True
    port.release.set()
    out = await proc.handle_text(srv(SrvInitComplete, server_lsn=40))
    assert [e.code for e in errors(out)] == ["internal"]
    assert any(isinstance(item, Reconnect) for item in out)
    assert port.called("commit_initial_sync") == []
    await proc.connection_lost()
    assert port.called("abort_initial_sync") == [None]
    assert port.rows == {} and port.lsn == 0


async def test_disconnect_with_chunks_in_flight_aborts_after_them() -> None:
    port = SlowStagePort()
    proc, _, _ = processor(port, lsn=0)
    await proc.handle_text(srv(SrvInitStart, server_lsn=40))
    await proc.handle_text(chunk(1, 2))
    await proc.connection_lost()  # the stage is cancelled, then the snapshot aborted
    assert port.called("abort_initial_sync") == [None]
    assert port.staged is None and proc.phase is P.DISCONNECTED


async def test_disconnect_mid_initial_aborts_the_snapshot() -> None:
    proc, port, _ = processor(lsn=0)
    await proc.handle_text(srv(SrvInitStart, server_lsn=40))
    await proc.connection_lost()
    assert port.called("abort_initial_sync") == [None]
    assert proc.phase is P.DISCONNECTED


async def test_disconnect_when_live_does_not_abort_anything() -> None:
    proc, port, _ = processor(phase=P.LIVE)
    await proc.connection_lost()
    assert port.called("abort_initial_sync") == []


async def test_catchup_chunk_is_applied_then_acknowledged_with_its_lsn() -> None:
    proc, port, _ = processor(lsn=5)
    out = await proc.handle_text(SAMPLES[MessageType.SRV_CATCHUP_CHANGES])
    assert port.called("apply_server_changes") == [("catchup", ["b"], 11)]
    (ack,) = sent(out)
    assert isinstance(ack, CltCatchupReceived) and (ack.chunk, ack.lsn) == (1, 11)


async def test_catchup_completed_goes_live_moves_to_final_lsn_and_flushes() -> None:
    proc, port, _ = processor(phase=P.CATCHUP, lsn=5)
    out = await proc.handle_text(SAMPLES[MessageType.SRV_CATCHUP_COMPLETED])
    assert proc.phase is P.LIVE
    assert port.called("advance_lsn") == [11]
    assert out == [FlushLocalChanges()]


async def test_failed_catchup_records_the_error_and_reconnects() -> None:
    proc, _, _ = processor(phase=P.CATCHUP)
    out = await proc.handle_text(
        srv(
            SrvCatchupCompleted,
            start_lsn=5,
            final_lsn=5,
            change_count=0,
            success=False,
            error="boom",
        )
    )
    assert any(isinstance(item, Reconnect) for item in out)
    assert proc.last_error is not None and "boom" in proc.last_error
    assert proc.phase is not P.LIVE


async def test_live_batch_is_applied_then_acknowledged_with_ids_and_lsn() -> None:
    proc, port, _ = processor(phase=P.LIVE, lsn=11)
    out = await proc.handle_text(SAMPLES[MessageType.SRV_LIVE_CHANGES])
    assert port.called("apply_server_changes") == [("live", ["c"], 12)]
    (ack,) = sent(out)
    assert isinstance(ack, CltChangesApplied)
    assert ack.change_ids == ("c",) and ack.last_lsn == 12


async def test_replayed_live_batch_is_acknowledged_but_not_applied_again() -> None:
    proc, port, _ = processor(phase=P.LIVE, lsn=12)
    out = await proc.handle_text(SAMPLES[MessageType.SRV_LIVE_CHANGES])
    assert port.called("apply_server_changes") == []
    assert [type(m) for m in sent(out)] == [CltChangesApplied]


async def test_lsn_update_advances_only_forward() -> None:
    proc, port, _ = processor(phase=P.LIVE, lsn=20)
    await proc.handle_text(srv(SrvLsnUpdate, lsn=13))
    assert port.called("advance_lsn") == []
    await proc.handle_text(srv(SrvLsnUpdate, lsn=21))
    assert port.called("advance_lsn") == [21] and proc.lsn == 21


async def test_changes_applied_records_known_results_and_asks_for_more() -> None:
    proc, port, cc = processor(phase=P.LIVE)
    cc.start_batch([change("x1"), change("x2")], "m1")
    await proc.handle_text(SAMPLES[MessageType.SRV_CHANGES_RECEIVED])
    out = await proc.handle_text(
        srv(
            SrvChangesApplied,
            applied_changes=("x1", "x2"),
            results=(
                ChangeResult(id="x1", status=ChangeStatus.APPLIED, lsn=14),
                ChangeResult(id="x2", status=ChangeStatus.REJECTED, reason="bad"),
                ChangeResult(id="ghost", status=ChangeStatus.APPLIED, lsn=15),
            ),
        )
    )
    assert port.called("record_results") == [[("x1", "applied"), ("x2", "rejected")]]
    assert out == [FlushLocalChanges()]
    assert cc.can_send()


async def test_lsn_ahead_resets_for_reinit_and_reconnects() -> None:
    proc, port, _ = processor(lsn=99)
    port.add_local("keep-me")
    out = await proc.handle_text(srv(SrvError, code="lsn_ahead", error="server was reset"))
    assert port.called("reset_for_reinit") == [None]
    assert [type(i) for i in out] == [Reconnect]
    assert proc.lsn == 0 and port.lsn == 0
    assert [c.id for c in port.local] == ["keep-me"]


async def test_bad_lsn_also_reinitializes() -> None:
    proc, port, _ = processor()
    await proc.handle_text(srv(SrvError, code="bad_lsn", error="?"))
    assert port.called("reset_for_reinit") == [None]


async def test_other_server_errors_are_recorded_only() -> None:
    proc, port, _ = processor(phase=P.LIVE)
    out = await proc.handle_text(SAMPLES[MessageType.SRV_ERROR])
    assert out == []
    assert proc.last_error == "rate_limited: slow down"
    assert not any(port.called(name) for name in MUTATING)


async def test_server_error_naming_our_batch_frees_it_for_a_resend() -> None:
    proc, _, cc = processor(phase=P.LIVE)
    cc.start_batch([change("x1")], "batch-msg")
    await proc.handle_text(
        srv(SrvError, code="frame_too_large", error="too big", ref_message_id="batch-msg")
    )
    assert cc.can_send()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ("[1]", "invalid_message"),
        (
            json.dumps({"type": "srv_nope", "messageId": "m", "timestamp": 1, "clientId": CID}),
            "unknown_type",
        ),
        (
            json.dumps(
                {
                    "type": "clt_heartbeat",
                    "messageId": "m",
                    "timestamp": 1,
                    "clientId": CID,
                    "lsn": "0/1",
                }
            ),
            "unknown_type",
        ),
        (
            json.dumps(
                {"type": "srv_lsn_update", "messageId": "m", "timestamp": 1, "clientId": CID}
            ),
            "missing_field",
        ),
        (
            json.dumps(
                {
                    "type": "srv_lsn_update",
                    "messageId": "m",
                    "timestamp": 1,
                    "clientId": CID,
                    "lsn": "zz",
                }
            ),
            "invalid_field",
        ),
    ],
)
async def test_malformed_frames_get_clt_error_and_change_nothing(text: str, code: str) -> None:
    proc, port, _ = processor(phase=P.LIVE)
    out = await proc.handle_text(text)
    assert [e.code for e in errors(out)] == [code]
    assert not any(port.called(name) for name in MUTATING)
    assert proc.phase is P.LIVE
    assert proc.last_error is not None and code in proc.last_error  # shown in the status


async def test_port_failure_is_not_acknowledged_and_triggers_reconnect() -> None:
    port = FakePort(lsn=11, fail_apply=True)
    proc, _, _ = processor(port=port, phase=P.LIVE, lsn=11)
    out = await proc.handle_text(SAMPLES[MessageType.SRV_LIVE_CHANGES])
    assert not any(isinstance(m, CltChangesApplied) for m in sent(out))
    assert [e.code for e in errors(out)] == ["internal"]
    assert any(isinstance(item, Reconnect) for item in out)
    assert proc.lsn == 11
