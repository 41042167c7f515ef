from __future__ import annotations

from tidesync.worker_sync.worker_thread.integrity import (
    RETRY_SOON,
    CheckVerdict,
    IntegrityChecker,
)

SUMS = {"projects": "00000000000000aa", "tasks": "00000000000000bb"}


def test_first_check_comes_shortly_after_going_live_then_every_interval() -> None:
    checker = IntegrityChecker(interval=300, first_after=10)
    assert checker.deadline() is None
    checker.went_live(100.0)
    assert checker.deadline() == 110.0
    assert not checker.due(109.0)
    assert checker.due(110.0)
    assert checker.deadline() is None  # one request outstanding at a time
    assert not checker.due(500.0)
    verdict, _ = checker.judge(
        111.0, server_lsn=7, server_sums=SUMS, local_lsn=7, local_sums=SUMS, idle=True
    )
    assert verdict is CheckVerdict.OK
    assert checker.deadline() == 411.0
    assert checker.checks == 1 and checker.repairs == 0


def test_answer_at_another_lsn_or_with_pending_changes_is_not_compared() -> None:
    checker = IntegrityChecker()
    checker.request_now(0.0)
    assert checker.due(0.0)
    verdict, _ = checker.judge(
        1.0, server_lsn=8, server_sums=SUMS, local_lsn=7, local_sums=None, idle=True
    )
    assert verdict is CheckVerdict.NOT_COMPARABLE
    assert checker.deadline() == 1.0 + RETRY_SOON
    checker.due(10.0)
    verdict, _ = checker.judge(
        10.0, server_lsn=7, server_sums=SUMS, local_lsn=7, local_sums=SUMS, idle=False
    )
    assert verdict is CheckVerdict.NOT_COMPARABLE
    assert checker.checks == 0


def test_mismatch_names_the_differing_tables_and_counts_a_repair() -> None:
    checker = IntegrityChecker()
    local = {**SUMS, "tasks": "00000000000000cc"}
    verdict, tables = checker.judge(
        0.0, server_lsn=3, server_sums=SUMS, local_lsn=3, local_sums=local, idle=True
    )
    assert verdict is CheckVerdict.MISMATCH
    assert tables == ("tasks",)
    assert checker.repairs == 1 and checker.last_mismatch == ("tasks",)


def test_connection_loss_forgets_the_outstanding_request() -> None:
    checker = IntegrityChecker(first_after=1)
    checker.went_live(0.0)
    assert checker.due(1.0)
    checker.connection_lost()
    assert checker.deadline() is None
    checker.went_live(5.0)
    assert checker.deadline() == 6.0


def test_interval_zero_only_checks_on_request() -> None:
    checker = IntegrityChecker(interval=0)
    checker.went_live(0.0)
    assert checker.deadline() is None
    checker.request_now(2.0)
    assert checker.due(2.0)
    checker.judge(2.0, server_lsn=1, server_sums={}, local_lsn=1, local_sums={}, idle=True)
    assert checker.deadline() is None
