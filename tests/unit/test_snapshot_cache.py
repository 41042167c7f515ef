"""The server keeps an initial-sync snapshot encoded for the clients that join later.

Driven in-process against a real store (sans-I/O sessions, explicit time): what a
client receives through the wire must be what a fresh read of the database gives,
at the kept snapshot's LSN, followed by the catchup of what came after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.server_writes import task_inserts

from tidesync.server.hub import Hub
from tidesync.server.session import Output, Phase, Session, SessionConfig, open_session
from tidesync.server.snapshot_cache import SnapshotCache
from tidesync.server.store import Store
from tidesync.worker_sync.shared import message_types as mt
from tidesync.worker_sync.shared.message_types import encode_message

NOW = 1_700_000_000_000
CONFIG = SessionConfig(init_chunk_rows=4, init_window=2)


def _hub(tmp_path: Path, **cache: Any) -> Hub:
    return Hub(Store(tmp_path / "s.db"), snapshot_cache=SnapshotCache(**cache))


def _write(hub: Hub, n: int, prefix: str) -> None:
    hub.apply("w", task_inserts(n, prefix))
    hub.poll()


def _frame(cls: type[mt.Message], client_id: str, **fields: object) -> str:
    return encode_message(mt.make(cls, client_id, NOW, **fields))


def _join(
    hub: Hub, client_id: str, init_format: str | None = "rows", stop_after: int | None = None
) -> tuple[Session, int, list[tuple[Any, ...]]]:
    """Open a session at 0/0 and acknowledge its snapshot through the wire; the session,
    the snapshot's LSN and the rows received (table, data, version time, author)."""
    session, out = open_session(client_id, "0/0", hub, CONFIG, NOW, init_format)
    assert session is not None, out
    start = out.messages[0]
    assert isinstance(start, mt.SrvInitStart)
    rows: list[tuple[Any, ...]] = []
    pending = list(out.messages[1:])
    chunks = 0
    while pending:
        message = mt.decode_message(encode_message(pending.pop(0)), expect="srv")
        if isinstance(message, mt.SrvInitComplete):
            assert message.server_lsn == start.server_lsn
            break
        assert isinstance(message, mt.SrvInitRows | mt.SrvInitChanges), message
        changes = message.changes() if isinstance(message, mt.SrvInitRows) else message.changes
        rows += [(c.table, c.data, c.updated_at, c.client_id) for c in changes]
        chunks += 1
        if chunks == stop_after:
            return session, start.server_lsn, rows
        seq = message.sequence
        ack = _frame(mt.CltInitReceived, client_id, table=seq.table, chunk=seq.chunk)
        pending += session.receive(ack, NOW).messages
    assert session.phase is Phase.INIT_WAIT
    return session, start.server_lsn, rows


def _no_database_reads(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("the database was read for a snapshot")

    monkeypatch.setattr(hub, "open_snapshot", refuse)


def test_a_later_client_gets_the_first_clients_snapshot_without_reading_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path)
    assert hub.snapshot_cache is not None
    _write(hub, 10, "t")
    first, lsn, expected = _join(hub, "first")
    assert len(expected) == 10 and hub.snapshot_cache.stats()["kept"] == 1
    _no_database_reads(hub, monkeypatch)
    second, second_lsn, got = _join(hub, "second")
    assert (second_lsn, got) == (lsn, expected)
    assert hub.snapshot_cache.stats()["hits"] == 1
    for session in (first, second):
        session.close()


def test_the_kept_snapshot_gives_the_rows_a_fresh_read_gives(tmp_path: Path) -> None:
    for name in "ab":
        (tmp_path / name).mkdir()
    cached = _hub(tmp_path / "a")
    plain = Hub(Store(tmp_path / "b" / "s.db"))
    for hub in (cached, plain):
        _write(hub, 9, "t")
    _join(cached, "first")[0].close()
    from_cache = _join(cached, "second")
    from_file = _join(plain, "second")
    assert from_cache[1:] == from_file[1:]
    assert cached.snapshot_cache is not None and cached.snapshot_cache.stats()["hits"] == 1


def test_a_kept_snapshot_behind_the_server_is_followed_by_the_catchup_of_what_came_after(
    tmp_path: Path,
) -> None:
    hub = _hub(tmp_path)
    _write(hub, 20, "t")
    _join(hub, "first")[0].close()
    _write(hub, 2, "late")  # 2 changes behind: within a tenth of its 20 rows
    session, lsn, rows = _join(hub, "second")
    assert hub.snapshot_cache is not None and hub.snapshot_cache.stats()["hits"] == 1
    assert lsn < hub.current_lsn() and len(rows) == 20
    caught = session.receive(_frame(mt.CltInitProcessed, "second"), NOW)
    chunk = caught.messages[0]
    assert isinstance(chunk, mt.SrvCatchupChanges)
    assert {c.data["id"] for c in chunk.changes} == {"late0", "late1"}
    session.close()


def test_a_kept_snapshot_too_far_behind_is_read_again_and_replaced(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    cache = hub.snapshot_cache
    assert cache is not None
    _write(hub, 20, "t")
    _join(hub, "first")[0].close()
    _write(hub, 3, "late")  # 3 > 20 // 10: the catchup would outweigh the kept read
    session, lsn, rows = _join(hub, "second")
    assert lsn == hub.current_lsn() and len(rows) == 23
    assert cache.stats()["hits"] == 0 and cache.stats()["lsn"] == lsn  # the newer one is kept
    session.close()


def test_a_kept_snapshot_is_not_used_past_max_lag(tmp_path: Path) -> None:
    hub = _hub(tmp_path, max_lag=1)
    _write(hub, 40, "t")
    _join(hub, "first")[0].close()
    _write(hub, 2, "late")  # within a tenth of 40 rows, past max_lag
    assert _join(hub, "second")[1] == hub.current_lsn()
    assert hub.snapshot_cache is not None and hub.snapshot_cache.stats()["hits"] == 0


def test_a_client_that_leaves_half_way_leaves_nothing_kept(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    cache = hub.snapshot_cache
    assert cache is not None
    _write(hub, 10, "t")
    session, _, rows = _join(hub, "quitter", stop_after=1)
    assert len(rows) == 4
    session.close()  # the connection dropped
    assert cache.stats()["kept"] == 0
    _join(hub, "next")[0].close()  # records again, to the end this time
    assert cache.stats()["kept"] == 1 and cache.stats()["rows"] == 10


def test_a_snapshot_over_the_bound_is_not_kept(tmp_path: Path) -> None:
    hub = _hub(tmp_path, max_bytes=500)
    _write(hub, 10, "t")
    _join(hub, "first")[0].close()
    assert hub.snapshot_cache is not None and hub.snapshot_cache.stats()["kept"] == 0
    assert len(_join(hub, "second")[2]) == 10


def test_old_clients_and_other_chunk_sizes_read_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path)
    cache = hub.snapshot_cache
    assert cache is not None
    _write(hub, 10, "t")
    _join(hub, "first")[0].close()
    session, _, rows = _join(hub, "old", init_format=None)  # srv_init_changes
    assert len(rows) == 10 and cache.stats()["hits"] == 0
    session.close()
    other, out = open_session("other", "0/0", hub, SessionConfig(init_chunk_rows=3), NOW, "rows")
    assert other is not None and cache.stats()["hits"] == 0
    assert isinstance(out.messages[1], mt.SrvInitRows) and out.messages[1].sequence.total == 4
    other.close()


def test_two_clients_joining_at_once_both_get_every_row(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    _write(hub, 10, "t")
    a, a_out = open_session("a", "0/0", hub, CONFIG, NOW, "rows")
    b, b_out = open_session("b", "0/0", hub, CONFIG, NOW, "rows")  # a records, b reads
    assert a is not None and b is not None
    got = {}
    for name, session, out in (("a", a, a_out), ("b", b, b_out)):
        got[name] = _drain(session, name, out)
    assert got["a"] == got["b"] and len(got["a"]) == 10
    assert hub.snapshot_cache is not None and hub.snapshot_cache.stats()["kept"] == 1


def _drain(session: Session, client_id: str, out: Output) -> list[Any]:
    rows: list[Any] = []
    pending = list(out.messages[1:])
    while pending:
        message = mt.decode_message(encode_message(pending.pop(0)), expect="srv")
        if isinstance(message, mt.SrvInitComplete):
            return rows
        assert isinstance(message, mt.SrvInitRows)
        rows += [c.data for c in message.changes()]
        seq = message.sequence
        ack = _frame(mt.CltInitReceived, client_id, table=seq.table, chunk=seq.chunk)
        pending += session.receive(ack, NOW).messages
    raise AssertionError("no srv_init_complete")


def test_a_spliced_init_rows_frame_is_the_frame_encode_message_writes() -> None:
    columns = ("id", "title", "updated_at")
    rows = (("a", 'ü " \\n', "2030-01-01T00:00:00.000Z"), ("b", None, "2030-01-01 00:00:00"))
    versions = (None, ("2030-01-01T00:00:00.000Z", "w"))
    seq = mt.InitSequence(table="tasks", chunk=1, total=1)
    common: dict[str, Any] = {
        "client_id": "c",
        "message_id": "m",
        "timestamp": NOW,
        "sequence": seq,
    }
    whole = mt.SrvInitRows(**common, columns=columns, rows=rows, versions=versions)
    body = mt.encode_init_rows_body(columns, rows, versions)
    spliced = mt.SrvInitRows(**common, columns=(), rows=(), versions=(), body_json=body)
    assert json.loads(encode_message(spliced)) == json.loads(encode_message(whole))
    assert mt.decode_message(encode_message(spliced), expect="srv") == whole
    with pytest.raises(mt.ProtocolError):  # the body is checked as the message is
        mt.encode_init_rows_body(columns, rows, versions[:1])


def test_health_names_the_kept_snapshot(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    _write(hub, 10, "t")
    _join(hub, "first")[0].close()
    assert hub.snapshot_cache is not None
    stats = hub.snapshot_cache.stats()
    assert stats["lsn"] == hub.current_lsn() and stats["rows"] == 10
