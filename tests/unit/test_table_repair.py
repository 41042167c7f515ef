"""The per-table repair state machine (``repair.TableRepair``): messages, times in; actions out."""

from __future__ import annotations

import itertools

from tidesync.worker_sync.shared.message_types import (
    InitSequence,
    Operation,
    SrvError,
    SrvResyncChanges,
    SrvResyncComplete,
    SrvResyncStart,
    TableChange,
    make,
)
from tidesync.worker_sync.worker_thread.repair import (
    AbortStaging,
    AckChunk,
    BeginStaging,
    CommitTables,
    FullResync,
    RejectFrame,
    RepairStage,
    RequestTables,
    StageChunk,
    TableRepair,
)

CID = "client-a"
NOW = 1_790_000_000_000
LSN = 0x40


def machine(**options: object) -> TableRepair:
    ids = (f"req-{n}" for n in itertools.count(1))
    return TableRepair(new_id=lambda: next(ids), **options)  # type: ignore[arg-type]


def row(table: str, key: str) -> TableChange:
    return TableChange(
        id=f"{table}-{key}",
        table=table,
        operation=Operation.INSERT,
        data={"id": key, "name": key},
        updated_at="2026-11-25T10:00:00.000Z",
    )


def start(*tables: str, lsn: int = LSN) -> SrvResyncStart:
    return make(SrvResyncStart, CID, NOW, lsn=lsn, tables=tables)


def chunk(table: str, n: int, total: int, *rows: TableChange) -> SrvResyncChanges:
    changes = rows or (row(table, f"{table}{n}"),)
    seq = InitSequence(table=table, chunk=n, total=total)
    return make(SrvResyncChanges, CID, NOW, changes=changes, sequence=seq)


def complete(*tables: str, lsn: int = LSN) -> SrvResyncComplete:
    return make(SrvResyncComplete, CID, NOW, lsn=lsn, tables=tables)


def requested(m: TableRepair, *tables: str, now: float = 0.0) -> str:
    m.mismatch(tables)
    (request,) = m.poll(now, live=True, in_flight=False)
    assert isinstance(request, RequestTables)
    return request.message_id


def test_a_mismatch_asks_for_just_those_tables_once_live_and_idle() -> None:
    m = machine()
    m.mismatch(["tasks"])
    assert m.stage is RepairStage.WANTED and m.blocks_sending
    assert m.poll(0.0, live=False, in_flight=False) == []
    assert m.poll(0.0, live=True, in_flight=True) == []  # a batch of ours is in flight
    m.mismatch(["projects"])  # found before the request went out: one request for both
    assert m.poll(1.0, live=True, in_flight=False) == [
        RequestTables(("projects", "tasks"), "req-1")
    ]
    assert m.stage is RepairStage.REQUESTED and m.deadline() == 1.0 + m.answer_timeout


def test_the_happy_path_stages_acks_and_commits_then_reports() -> None:
    m = machine()
    requested(m, "projects", "tasks")
    assert m.on_start(start("projects", "tasks"), 1.0) == [BeginStaging(LSN)]
    p1 = chunk("projects", 1, 1)
    assert m.on_chunk(p1, 2.0) == [StageChunk("projects", p1.changes), AckChunk("projects", 1)]
    t1, t2 = chunk("tasks", 1, 2), chunk("tasks", 2, 2)
    assert m.on_chunk(t1, 3.0)[1] == AckChunk("tasks", 1)
    assert m.on_chunk(t2, 4.0)[1] == AckChunk("tasks", 2)
    assert m.deadline() == 4.0 + m.answer_timeout  # each chunk proves the server is working
    assert m.on_complete(complete("tasks", "projects"), 5.0) == [
        CommitTables(("projects", "tasks"), LSN)
    ]
    assert m.stage is RepairStage.COMMITTING and m.blocks_sending
    m.committed()
    assert not m.active and not m.blocks_sending
    assert (m.table_repairs, m.full_resyncs) == (1, 0)
    assert (m.last_repaired, m.last_mode) == (("projects", "tasks"), "tables")


def test_an_empty_table_needs_no_chunk() -> None:
    m = machine()
    requested(m, "projects")
    m.on_start(start("projects"), 1.0)
    assert m.on_complete(complete("projects"), 2.0) == [CommitTables(("projects",), LSN)]


def test_an_old_server_refusing_the_request_falls_back_to_the_full_resync() -> None:
    m = machine()
    request_id = requested(m, "tasks")
    other = make(SrvError, CID, NOW, code="rate_limited", error="x", ref_message_id="someone")
    assert m.on_error(other) == []  # about another message
    refusal = make(
        SrvError, CID, NOW, code="unknown_type", error="unknown", ref_message_id=request_id
    )
    (full,) = m.on_error(refusal)
    assert isinstance(full, FullResync) and full.tables == ("tasks",)
    assert "unknown_type" in full.reason
    assert not m.active and (m.table_repairs, m.full_resyncs) == (0, 1)
    assert (m.last_repaired, m.last_mode) == (("tasks",), "full")


def test_a_server_that_never_answers_gets_the_full_resync_after_the_timeout() -> None:
    m = machine(answer_timeout=10.0)
    requested(m, "tasks", now=0.0)
    assert m.poll(9.9, live=True, in_flight=False) == []
    (full,) = m.poll(10.0, live=True, in_flight=False)
    assert isinstance(full, FullResync) and "no answer" in full.reason


def test_a_stall_mid_stream_drops_the_staged_chunks_before_the_full_resync() -> None:
    m = machine(answer_timeout=10.0)
    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    m.on_chunk(chunk("tasks", 1, 3), 2.0)
    actions = m.poll(12.0, live=True, in_flight=False)
    assert [type(a) for a in actions] == [AbortStaging, FullResync]


def test_a_cut_connection_drops_the_staged_chunks_and_asks_again_once_live() -> None:
    m = machine()
    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    m.on_chunk(chunk("tasks", 1, 2), 2.0)
    assert m.connection_lost() == [AbortStaging()]
    assert m.stage is RepairStage.WANTED and m.blocks_sending and m.attempts == 1
    assert m.poll(3.0, live=False, in_flight=False) == []
    assert m.poll(4.0, live=True, in_flight=False) == [RequestTables(("tasks",), "req-2")]
    # A frame of the old attempt's stream can no longer be staged.
    (reject,) = m.on_chunk(chunk("tasks", 2, 2), 5.0)
    assert isinstance(reject, RejectFrame) and reject.code == "out_of_phase"


def test_a_repair_cut_short_max_attempts_times_falls_back_to_the_full_resync() -> None:
    m = machine(max_attempts=2)
    requested(m, "tasks")
    assert m.connection_lost() == []  # nothing was staged yet
    m.poll(1.0, live=True, in_flight=False)
    m.on_start(start("tasks"), 1.0)
    m.connection_lost()
    (full,) = m.poll(2.0, live=True, in_flight=False)
    assert isinstance(full, FullResync) and "2 times" in full.reason


def test_frames_without_a_request_are_refused_and_stage_nothing() -> None:
    m = machine()
    for actions in (
        m.on_start(start("tasks"), 0.0),
        m.on_chunk(chunk("tasks", 1, 1), 0.0),
        m.on_complete(complete("tasks"), 0.0),
    ):
        assert [type(a) for a in actions] == [RejectFrame]
    assert not m.active and m.full_resyncs == 0


def test_an_answer_that_does_not_fit_the_request_falls_back_to_the_full_resync() -> None:
    m = machine()
    requested(m, "tasks")
    actions = m.on_start(start("projects"), 1.0)
    assert [type(a) for a in actions] == [RejectFrame, FullResync]

    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    actions = m.on_chunk(chunk("tasks", 2, 2), 2.0)  # chunk 1 never came
    assert [type(a) for a in actions] == [RejectFrame, AbortStaging, FullResync]

    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    actions = m.on_chunk(chunk("tasks", 1, 1, row("projects", "p1")), 2.0)
    assert [type(a) for a in actions] == [RejectFrame, AbortStaging, FullResync]
    assert isinstance(actions[0], RejectFrame) and actions[0].code == "invalid_field"

    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    m.on_chunk(chunk("tasks", 1, 2), 2.0)
    actions = m.on_complete(complete("tasks"), 3.0)  # chunk 2 of 2 missing
    assert [type(a) for a in actions] == [RejectFrame, AbortStaging, FullResync]

    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    actions = m.on_complete(complete("tasks", lsn=LSN + 1), 3.0)
    assert [type(a) for a in actions] == [RejectFrame, AbortStaging, FullResync]
    assert m.full_resyncs == 5


def test_a_failed_swap_falls_back_to_the_full_resync() -> None:
    m = machine()
    requested(m, "tasks")
    m.on_start(start("tasks"), 1.0)
    m.on_complete(complete("tasks"), 2.0)
    actions = m.commit_failed("OperationalError: disk full")
    assert [type(a) for a in actions] == [AbortStaging, FullResync]


def test_tables_found_differing_during_a_repair_are_repaired_next() -> None:
    m = machine()
    requested(m, "tasks")
    m.mismatch(["projects"])
    m.on_start(start("tasks"), 1.0)
    m.on_complete(complete("tasks"), 2.0)
    m.committed()
    assert m.stage is RepairStage.WANTED and m.tables == ("projects",)
    assert m.poll(3.0, live=True, in_flight=False) == [RequestTables(("projects",), "req-2")]
