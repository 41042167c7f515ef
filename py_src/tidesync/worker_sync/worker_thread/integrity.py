"""Field integrity checks: compare per-table checksums with the server's.

Every other test can miss a bug; this catches its effect in the field.  While
live and idle the Sync Worker asks for ``srv_table_checksums`` (extension, see
docs/protocol.md) now and then; the answer is only comparable when the client
stands exactly at the answer's LSN with nothing of its own pending (pending
changes make the tables differ legitimately), otherwise the round is skipped
and asked again soon.  A mismatch names the differing tables; ``repair``
re-syncs just those (falling back to a re-sync from ``0/0`` that keeps unsent
local changes, the ``lsn_ahead`` path, when the server cannot).

Pure state: times in, decisions out; the Sync Worker does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["CheckVerdict", "IntegrityChecker"]

log = logging.getLogger(__name__)

#: Skipped rounds (not comparable) are asked again after this many seconds.
RETRY_SOON = 5.0


class CheckVerdict(StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    NOT_COMPARABLE = "not_comparable"


@dataclass
class IntegrityChecker:
    """When to ask, and what an answer means.

    ``interval`` seconds between checks while live (0 turns periodic checks off;
    ``request_now`` still works).  The first check comes ``first_after`` seconds
    after going live, so a fresh connection settles first.
    """

    interval: float = 300.0
    first_after: float = 10.0
    next_due: float | None = None
    outstanding: bool = False
    checks: int = 0
    repairs: int = 0
    last_mismatch: tuple[str, ...] = field(default=())

    def went_live(self, now: float) -> None:
        if self.interval > 0 and self.next_due is None:
            self.next_due = now + self.first_after

    def connection_lost(self) -> None:
        self.outstanding = False
        self.next_due = None

    def request_now(self, now: float) -> None:
        self.next_due = now

    def deadline(self) -> float | None:
        return None if self.outstanding else self.next_due

    def due(self, now: float) -> bool:
        """True when a request should be sent now (the caller then sends it)."""
        if self.outstanding or self.next_due is None or now < self.next_due:
            return False
        self.outstanding = True
        return True

    def judge(
        self,
        now: float,
        *,
        server_lsn: int,
        server_sums: Mapping[str, str],
        local_lsn: int,
        local_sums: Mapping[str, str] | None,
        idle: bool,
    ) -> tuple[CheckVerdict, tuple[str, ...]]:
        """Compare an answer; ``local_sums`` is None when the caller could not read them."""
        self.outstanding = False
        if local_sums is None or not idle or local_lsn != server_lsn:
            self.next_due = now + RETRY_SOON
            return CheckVerdict.NOT_COMPARABLE, ()
        self.checks += 1
        self.next_due = now + self.interval if self.interval > 0 else None
        differing = tuple(
            sorted(t for t, s in server_sums.items() if t in local_sums and local_sums[t] != s)
        )
        if differing:
            self.repairs += 1
            self.last_mismatch = differing
            return CheckVerdict.MISMATCH, differing
        return CheckVerdict.OK, ()
