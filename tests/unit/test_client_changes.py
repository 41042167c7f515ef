"""ClientChanges: one batch in flight, oldest first, acks, resend after disconnect."""

from __future__ import annotations

import logging

import pytest

from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ChangeStatus,
    Operation,
    TableChange,
)
from tidesync.worker_sync.worker_thread.client_changes import ClientChanges


def changes(n: int) -> list[TableChange]:
    return [
        TableChange(
            id=f"c{i}",
            table="tasks",
            operation=Operation.INSERT,
            data={"id": f"t{i}"},
            updated_at="2026-11-25T10:00:00.000Z",
        )
        for i in range(n)
    ]


def applied(*ids: str) -> list[ChangeResult]:
    return [ChangeResult(id=i, status=ChangeStatus.APPLIED, lsn=1) for i in ids]


def test_batch_of_large_rows_stays_under_the_byte_budget() -> None:
    big = [
        TableChange(
            id=f"c{i}",
            table="tasks",
            operation=Operation.INSERT,
            data={"id": f"t{i}", "title": "x" * 8000},
            updated_at="2026-11-25T10:00:00.000Z",
        )
        for i in range(400)
    ]
    cc = ClientChanges(batch_bytes=100_000)
    batch = cc.start_batch(big, "m1")
    assert 1 < len(batch) < 400
    assert sum(len(c.data["title"]) for c in batch) <= 100_000
    huge = ClientChanges(batch_bytes=10)
    assert [c.id for c in huge.start_batch(big, "m2")] == ["c0"]  # never an empty batch


def test_batch_takes_the_oldest_changes_up_to_the_batch_size() -> None:
    cc = ClientChanges(batch_size=3)
    batch = cc.start_batch(changes(5), "m1")
    assert [c.id for c in batch] == ["c0", "c1", "c2"]
    assert cc.in_flight == ("c0", "c1", "c2")
    assert cc.batch_message_id == "m1"


def test_only_one_batch_is_in_flight_at_a_time() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(2), "m1")
    assert not cc.can_send()
    with pytest.raises(RuntimeError, match="in flight"):
        cc.start_batch(changes(2), "m2")


def test_applied_results_clear_the_batch_and_allow_the_next() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(2), "m1")
    cc.on_received(["c0", "c1"])
    assert not cc.can_send()
    known = cc.on_applied(applied("c0", "c1"))
    assert [r.id for r in known] == ["c0", "c1"]
    assert cc.can_send() and cc.batch_message_id is None


def test_partial_results_keep_the_rest_in_flight() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(3), "m1")
    cc.on_applied(applied("c1"))
    assert cc.in_flight == ("c0", "c2")
    assert not cc.can_send()


def test_applied_ids_without_results_also_clear() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(2), "m1")
    assert cc.on_applied([], ["c0", "c1"]) == []
    assert cc.can_send()


def test_result_for_unknown_id_is_ignored_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    cc = ClientChanges()
    cc.start_batch(changes(1), "m1")
    with caplog.at_level(logging.INFO):
        known = cc.on_applied(applied("zzz"))
    assert known == []
    assert cc.in_flight == ("c0",)
    assert "zzz" in caplog.text


def test_disconnect_makes_everything_in_flight_unsent_again() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(2), "m1")
    assert cc.on_disconnect() == ("c0", "c1")
    assert cc.can_send() and cc.in_flight == ()
    # The same changes come back from the database and go out again.
    assert [c.id for c in cc.start_batch(changes(2), "m2")] == ["c0", "c1"]


def test_late_result_from_before_the_disconnect_is_ignored() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(1), "m1")
    cc.on_disconnect()
    assert cc.on_applied(applied("c0")) == []


def test_failed_batch_frees_the_slot() -> None:
    cc = ClientChanges()
    cc.start_batch(changes(2), "m1")
    assert cc.fail_batch() == ("c0", "c1")
    assert cc.can_send()


def test_empty_batch_puts_nothing_in_flight() -> None:
    cc = ClientChanges()
    assert cc.start_batch([], "m1") == ()
    assert cc.can_send() and cc.batch_message_id is None


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ClientChanges(batch_size=0)


def test_backlog_says_when_the_pending_count_and_the_next_read_are_known() -> None:
    cc = ClientChanges(batch_size=3)
    assert cc.backlog and cc.pending() is None  # nothing read yet: ask the database
    cc.reading()
    cc.start_batch(changes(2), "m1")  # the read returned less than the limit: all of it
    assert not cc.backlog and cc.pending() == 2
    cc.on_applied(applied("c0", "c1"))
    assert cc.pending() == 0  # results settle them; nothing else waits
    cc.local_commit()
    assert cc.backlog and cc.pending() is None


def test_a_commit_heard_of_while_the_read_is_on_its_way_keeps_the_backlog() -> None:
    cc = ClientChanges()
    cc.reading()
    cc.local_commit()  # its event arrived before the read's answer
    cc.start_batch(changes(1), "m1")
    assert cc.backlog


def test_anything_left_pending_outside_the_batch_sets_the_backlog() -> None:
    full = ClientChanges(batch_size=2)
    full.reading()
    full.start_batch(changes(2), "m1")  # the read hit its limit: more may wait
    assert full.backlog
    for leave in ("applied_ids", "fail", "disconnect"):
        cc = ClientChanges()
        cc.reading()
        cc.start_batch(changes(2), "m1")
        assert not cc.backlog
        if leave == "applied_ids":
            cc.on_applied(applied("c0"), ["c0", "c1"])  # c1 cleared without a result
        elif leave == "fail":
            cc.fail_batch()
        else:
            cc.on_disconnect()
        assert cc.backlog, leave
