"""The sans-I/O session, driven in-process against a real store (no sockets, explicit time)."""

from __future__ import annotations

import json
from pathlib import Path

from tidesync.server.hub import Hub
from tidesync.server.session import Phase, Session, SessionConfig, open_session
from tidesync.server.store import Store
from tidesync.worker_sync.shared import message_types as mt
from tidesync.worker_sync.shared.message_types import Operation, TableChange, encode_message

NOW = 1_700_000_000_000


def _hub(tmp_path: Path) -> Hub:
    return Hub(Store(tmp_path / "s.db"))


def _write(hub: Hub, client_id: str, n: int, prefix: str = "t") -> None:
    changes = [
        TableChange(
            id=f"{client_id}-{prefix}-{i}",
            table="tasks",
            operation=Operation.INSERT,
            data={"id": f"{prefix}{i}", "title": "x"},
            updated_at="2030-01-01T00:00:00.000Z",
        )
        for i in range(n)
    ]
    hub.apply(client_id, changes)
    hub.poll()  # what the tailer task does after a commit


def _frame(cls: type[mt.Message], client_id: str, **fields: object) -> str:
    return encode_message(mt.make(cls, client_id, NOW, **fields))


def _live(hub: Hub, client_id: str, config: SessionConfig | None = None) -> Session:
    lsn = mt.format_lsn(hub.current_lsn())
    session, out = open_session(client_id, lsn, hub, config or SessionConfig(), NOW)
    assert session is not None, out
    if session.phase is Phase.INIT_WAIT:  # an empty store: the snapshot was empty
        session.receive(_frame(mt.CltInitProcessed, client_id), NOW)
    assert session.phase is Phase.LIVE
    return session


def test_live_window_pauses_a_slow_client_and_resumes_on_ack(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    config = SessionConfig(live_batch_rows=1, live_window=2)
    session = _live(hub, "slow", config)
    _write(hub, "other", 5)
    out = session.history_available(NOW)
    batches = [m for m in out.messages if isinstance(m, mt.SrvLiveChanges)]
    assert len(batches) == 2  # the window, not all five
    assert session.history_available(NOW).messages == ()  # paused: nothing queued
    ack = _frame(mt.CltChangesApplied, "slow", change_ids=(), last_lsn=batches[-1].last_lsn)
    resumed = session.receive(ack, NOW)
    assert [type(m) for m in resumed.messages] == [mt.SrvLiveChanges, mt.SrvLiveChanges]


def test_own_changes_only_move_the_lsn(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    session = _live(hub, "me")
    _write(hub, "me", 3)
    out = session.history_available(NOW)
    assert [type(m) for m in out.messages] == [mt.SrvLsnUpdate]
    assert out.messages[0].lsn == hub.current_lsn()  # type: ignore[attr-defined]


def test_initial_sync_sends_a_window_then_waits_for_acks(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    _write(hub, "w", 25)
    config = SessionConfig(init_chunk_rows=5, init_window=2)
    session, out = open_session("new", "0/0", hub, config, NOW)
    assert session is not None
    kinds = [type(m) for m in out.messages]
    assert kinds == [mt.SrvInitStart, mt.SrvInitChanges, mt.SrvInitChanges]
    _write(hub, "w", 3, prefix="late")  # after the snapshot: not in it
    rows = 0
    pending = list(out.messages[1:])
    while pending:
        message = pending.pop(0)
        if isinstance(message, mt.SrvInitComplete):
            break
        assert isinstance(message, mt.SrvInitChanges)
        rows += len(message.changes)
        seq = message.sequence
        ack = _frame(mt.CltInitReceived, "new", table=seq.table, chunk=seq.chunk)
        pending += session.receive(ack, NOW).messages
    assert rows == 25
    assert session.phase is Phase.INIT_WAIT
    caught = session.receive(_frame(mt.CltInitProcessed, "new"), NOW)
    chunk = caught.messages[0]
    assert isinstance(chunk, mt.SrvCatchupChanges)
    assert {c.data["id"] for c in chunk.changes} == {"late0", "late1", "late2"}
    session.close()


def test_bad_frames_answer_srv_error_and_change_nothing(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    session = _live(hub, "c")
    for frame in ("nope", json.dumps({"type": "clt_init_processed"}), "{}"):
        (error,) = session.receive(frame, NOW).messages
        assert isinstance(error, mt.SrvError)
    assert session.phase is Phase.LIVE
    (reply,) = session.receive(_frame(mt.CltHeartbeat, "c", lsn=0), NOW).messages
    assert isinstance(reply, mt.SrvHeartbeat)


def test_silent_client_is_dropped_after_three_heartbeats(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    session = _live(hub, "c", SessionConfig(heartbeat_interval_ms=1000))
    assert session.tick(NOW + 2999).close_code is None
    assert session.tick(NOW + 3000).close_code == 1001


def test_rate_limit_answers_rate_limited(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    session = _live(hub, "c", SessionConfig(rate_burst=2, rate_per_second=1))
    frame = _frame(mt.CltHeartbeat, "c", lsn=0)
    codes = [getattr(session.receive(frame, NOW).messages[0], "code", None) for _ in range(4)]
    assert codes[0] is None and codes[-1] == "rate_limited"


def test_handshake_refuses_bad_client_id_and_lsn(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    assert open_session(None, "0/0", hub, SessionConfig(), NOW)[1].close_code == 4400
    session, out = open_session("c", "x/y", hub, SessionConfig(), NOW)
    assert session is None and out.close_code == 4400
    assert out.messages[0].code == "bad_lsn"  # type: ignore[attr-defined]
    session, out = open_session("c", "1/0", hub, SessionConfig(), NOW)
    assert session is None and out.messages[0].code == "lsn_ahead"  # type: ignore[attr-defined]
