"""The sans-I/O session, driven in-process against a real store (no sockets, explicit time)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tidesync.server.hub import Hub
from tidesync.server.session import Output, Phase, Session, SessionConfig, open_session
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


# --- table re-sync (extension, docs/protocol.md) ----------------------------------------------


def _write_projects(hub: Hub, client_id: str, n: int) -> None:
    hub.apply(
        client_id,
        [
            TableChange(
                id=f"{client_id}-p-{i}",
                table="projects",
                operation=Operation.INSERT,
                data={"id": f"p{i}", "name": f"P{i}"},
                updated_at="2030-01-01T00:00:00.000Z",
            )
            for i in range(n)
        ],
    )
    hub.poll()


def _resync(session: Session, client_id: str, *tables: str) -> list[mt.Message]:
    """Ask for ``tables`` and acknowledge every chunk; every message the server sent."""
    out = list(session.receive(_frame(mt.CltResyncTables, client_id, tables=tables), NOW).messages)
    sent = list(out)
    while out:
        message = out.pop(0)
        if isinstance(message, mt.SrvResyncChanges):
            seq = message.sequence
            ack = _frame(mt.CltResyncReceived, client_id, table=seq.table, chunk=seq.chunk)
            more = session.receive(ack, NOW).messages
            out += more
            sent += more
    return sent


def test_table_resync_sends_only_the_named_tables_at_one_lsn(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    _write_projects(hub, "w", 3)
    _write(hub, "w", 12)
    session = _live(hub, "c", SessionConfig(init_chunk_rows=5, init_window=1))
    sent = _resync(session, "c", "tasks")
    start, complete = sent[0], sent[-1]
    assert isinstance(start, mt.SrvResyncStart) and start.tables == ("tasks",)
    assert start.lsn == hub.current_lsn()
    assert isinstance(complete, mt.SrvResyncComplete)
    assert (complete.lsn, complete.tables) == (start.lsn, ("tasks",))
    chunks = [m for m in sent if isinstance(m, mt.SrvResyncChanges)]
    assert [(c.sequence.chunk, c.sequence.total) for c in chunks] == [(1, 3), (2, 3), (3, 3)]
    assert {c.table for m in chunks for c in m.changes} == {"tasks"}
    assert sum(len(m.changes) for m in chunks) == 12
    assert session.phase is Phase.LIVE


def test_live_batches_wait_while_a_table_resync_streams(tmp_path: Path) -> None:
    """A change newer than the snapshot must not reach the client before the swap."""
    hub = _hub(tmp_path)
    _write(hub, "w", 6)
    session = _live(hub, "c", SessionConfig(init_chunk_rows=2, init_window=1))
    out = session.receive(_frame(mt.CltResyncTables, "c", tables=("tasks",)), NOW).messages
    assert [type(m) for m in out] == [mt.SrvResyncStart, mt.SrvResyncChanges]
    _write(hub, "other", 2, prefix="late")
    assert session.history_available(NOW).messages == ()  # paused
    sent: list[mt.Message] = []
    pending = list(out[1:])
    while pending:
        message = pending.pop(0)
        if isinstance(message, mt.SrvResyncChanges):
            seq = message.sequence
            ack = _frame(mt.CltResyncReceived, "c", table=seq.table, chunk=seq.chunk)
            more = session.receive(ack, NOW).messages
            pending += more
            sent += more
    kinds = [type(m) for m in sent]
    done = kinds.index(mt.SrvResyncComplete)
    assert mt.SrvLiveChanges not in kinds[:done]
    assert kinds[done + 1 :] == [mt.SrvLiveChanges]  # live resumes right after the swap
    live = sent[done + 1]
    assert isinstance(live, mt.SrvLiveChanges)
    assert {c.data["id"] for c in live.changes} == {"late0", "late1"}


def test_an_empty_table_resyncs_with_no_chunk(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    _write(hub, "w", 2)
    session = _live(hub, "c")
    sent = _resync(session, "c", "projects")
    assert [type(m) for m in sent] == [mt.SrvResyncStart, mt.SrvResyncComplete]


def test_table_resync_refuses_unknown_tables_a_second_request_and_other_phases(
    tmp_path: Path,
) -> None:
    hub = _hub(tmp_path)
    _write(hub, "w", 4)
    session = _live(hub, "c", SessionConfig(init_chunk_rows=1, init_window=1))
    (error,) = session.receive(
        _frame(mt.CltResyncTables, "c", tables=("tasks", "sqlite_master")), NOW
    ).messages
    assert isinstance(error, mt.SrvError) and error.code == "invalid_field"
    first = session.receive(_frame(mt.CltResyncTables, "c", tables=("tasks",)), NOW).messages
    assert isinstance(first[0], mt.SrvResyncStart)
    (busy,) = session.receive(_frame(mt.CltResyncTables, "c", tables=("tasks",)), NOW).messages
    assert isinstance(busy, mt.SrvError) and busy.code == "out_of_phase"
    late = _frame(mt.CltResyncReceived, "c", table="tasks", chunk=99)
    assert session.receive(late, NOW).messages == ()  # an ack of nothing: ignored
    session.close()  # the open snapshot is released

    new, _ = open_session("n", "0/0", hub, SessionConfig(), NOW)
    assert new is not None and new.phase is Phase.INITIAL
    (refused,) = new.receive(_frame(mt.CltResyncTables, "n", tables=("tasks",)), NOW).messages
    assert isinstance(refused, mt.SrvError) and refused.code == "out_of_phase"
    new.close()


def test_a_server_without_the_extension_answers_unknown_type_like_an_old_one(
    tmp_path: Path,
) -> None:
    hub = _hub(tmp_path)
    session = _live(hub, "c", SessionConfig(table_resync=False))
    request = mt.make(mt.CltResyncTables, "c", NOW, tables=("tasks",))
    (error,) = session.receive(encode_message(request), NOW).messages
    assert isinstance(error, mt.SrvError)
    assert (error.code, error.ref_message_id) == ("unknown_type", request.message_id)


def test_one_encoding_of_a_live_batch_serves_every_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fan-out encodes a batch once; each session's frame carries the same changes."""
    hub = _hub(tmp_path)
    listeners = [_live(hub, f"l{i}") for i in range(5)]
    author = _live(hub, "author")
    encodes: list[int] = []
    encode_changes = mt.encode_changes
    monkeypatch.setattr(
        mt,
        "encode_changes",
        lambda changes: encodes.append(len(changes)) or encode_changes(changes),
    )
    _write(hub, "author", 2)
    _write(hub, "other", 1)
    frames = [encode_message(m) for s in listeners for m in s.history_available(NOW).messages]
    assert encodes == [3]  # once for five sessions
    decoded = [json.loads(f) for f in frames]
    assert {d["type"] for d in decoded} == {"srv_live_changes"}
    assert len({json.dumps(d["changes"]) for d in decoded}) == 1  # identical changes
    assert len({d["lastLSN"] for d in decoded}) == 1
    assert [d["clientId"] for d in decoded] == [f"l{i}" for i in range(5)]  # each its own
    for frame in frames:  # the spliced frame is what the normal encoder writes
        message = mt.decode_message(frame, expect="srv")
        assert isinstance(message, mt.SrvLiveChanges) and message.changes_json is None
        assert encode_message(message) == frame
    # The author's session filters its own changes out and does not use the shared text.
    (own,) = author.history_available(NOW).messages
    assert isinstance(own, mt.SrvLiveChanges) and own.changes_json is None
    assert [c.client_id for c in own.changes] == ["other"]


def test_only_file_reads_are_blocking_steps(tmp_path: Path) -> None:
    """The driver runs heartbeats, acks and the live pump on its loop (no thread hop)."""
    hub = _hub(tmp_path)
    session = _live(hub, "c")
    heartbeat = session.parse(_frame(mt.CltHeartbeat, "c", lsn=0), NOW)
    assert isinstance(heartbeat, mt.CltHeartbeat) and not session.blocking(heartbeat)
    ack = session.parse(_frame(mt.CltChangesApplied, "c", change_ids=(), last_lsn=0), NOW)
    assert isinstance(ack, mt.Message) and not session.blocking(ack)
    assert not session.live_blocking()
    send = session.parse(_frame(mt.CltSendChanges, "c", changes=()), NOW)
    assert isinstance(send, mt.Message) and session.blocking(send)
    checksums = session.parse(_frame(mt.CltRequestChecksums, "c"), NOW)
    assert isinstance(checksums, mt.Message) and session.blocking(checksums)
    bad = session.parse("{", NOW)
    assert isinstance(bad, Output) and bad.messages[0].code == "invalid_json"  # type: ignore[attr-defined]


def test_a_cursor_behind_the_ring_reads_the_file_in_a_thread(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    hub.ring_size = 2
    session = _live(hub, "behind", SessionConfig(live_window=1, live_batch_rows=1))
    _write(hub, "other", 3, "a")
    assert not session.live_blocking()  # the ring still covers its cursor
    (first,) = session.history_available(NOW).messages  # window of one: now paused
    for prefix in "bc":  # the ring moves on past the paused session
        _write(hub, "other", 3, prefix)
    assert session.live_blocking()
    ack = session.parse(
        _frame(mt.CltChangesApplied, "behind", change_ids=(), last_lsn=first.last_lsn),  # type: ignore[attr-defined]
        NOW,
    )
    assert isinstance(ack, mt.Message) and session.blocking(ack)
    (second,) = session.handle(ack, NOW).messages  # served from the file: no gap
    assert second.changes[0].lsn == first.last_lsn + 1  # type: ignore[attr-defined]


def _stream_init(session: Session, client_id: str, out: Output) -> list[mt.Message]:
    """Acknowledge every snapshot chunk until ``srv_init_complete``; the chunks sent."""
    chunks: list[mt.Message] = []
    pending = list(out.messages[1:])
    while pending:
        message = pending.pop(0)
        if isinstance(message, mt.SrvInitComplete):
            return chunks
        assert isinstance(message, mt.SrvInitChanges | mt.SrvInitRows), message
        chunks.append(message)
        seq = message.sequence
        ack = _frame(mt.CltInitReceived, client_id, table=seq.table, chunk=seq.chunk)
        pending += session.receive(ack, NOW).messages
    raise AssertionError("no srv_init_complete")


def test_a_client_asking_for_init_rows_gets_the_same_rows_as_columns_and_arrays(
    tmp_path: Path,
) -> None:
    hub = _hub(tmp_path)
    _write(hub, "w", 12)
    hub.apply(  # a row written by another program: no author, a version time of its own
        "w",
        [
            TableChange(
                id="w-odd",
                table="tasks",
                operation=Operation.INSERT,
                data={"id": "odd", "title": "y", "updated_at": "2030-01-01T00:00:00.000Z"},
                updated_at="2031-02-03T04:05:06.789Z",
            )
        ],
    )
    with sqlite3.connect(tmp_path / "s.db") as conn:  # another program: no author
        conn.executemany(
            "INSERT INTO tasks (id, title, updated_at) VALUES (?, 'z', ?)",
            [("ext1", "2030-05-05T00:00:00.000Z"), ("ext2", "2030-05-05 01:00:00")],
        )
    hub.poll()
    config = SessionConfig(init_chunk_rows=5, init_window=2)
    old, old_out = open_session("old", "0/0", hub, config, NOW)
    new, new_out = open_session("new", "0/0", hub, config, NOW, "rows")
    other, other_out = open_session("other", "0/0", hub, config, NOW, "cbor")
    assert old is not None and new is not None and other is not None
    assert [type(m) for m in new_out.messages] == [mt.SrvInitStart, mt.SrvInitRows, mt.SrvInitRows]
    assert {type(m) for m in other_out.messages[1:]} == {mt.SrvInitChanges}  # unknown: ignored
    expected = [
        (c.table, c.data, c.updated_at, c.client_id)
        for m in _stream_init(old, "old", old_out)
        if isinstance(m, mt.SrvInitChanges)
        for c in m.changes
    ]
    chunks = []
    for message in _stream_init(new, "new", new_out):
        assert isinstance(message, mt.SrvInitRows)
        decoded = mt.decode_message(encode_message(message), expect="srv")  # through the wire
        assert isinstance(decoded, mt.SrvInitRows)
        assert decoded.sequence == message.sequence
        chunks.append(decoded)
    got = []
    for decoded in chunks:
        assert list(decoded.columns) == ["id", "project_id", "title", "done", "updated_at"]
        got += [(c.table, c.data, c.updated_at, c.client_id) for c in decoded.changes()]
    assert len(got) == 15 and got == expected
    versions = {r[0]: v for m in chunks for r, v in zip(m.rows, m.versions, strict=True)}
    assert list(versions["odd"] or ()) == ["2031-02-03T04:05:06.789Z", "w"]
    assert versions["ext1"] is None  # implied: its own updated_at, no author
    assert versions["ext2"] is not None  # not a canonical time: sent normalised
    assert versions["ext2"][1] is None
    assert new.phase is Phase.INIT_WAIT
    for session in (old, new, other):
        session.close()


def test_a_server_without_init_rows_ignores_the_request(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    _write(hub, "w", 3)
    session, out = open_session("c", "0/0", hub, SessionConfig(init_rows=False), NOW, "rows")
    assert session is not None
    assert [type(m) for m in out.messages] == [mt.SrvInitStart, mt.SrvInitChanges]
    session.close()
