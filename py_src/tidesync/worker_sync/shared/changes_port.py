"""What the Sync Worker asks of the Changes Worker: the one interface between them.

The Sync Worker owns the socket, the Changes Worker owns the database (one owner
per resource).  In the browser each call below travels over a MessageChannel as
a typed command (``tidesync.changes.worker_processor``); natively the Changes
Worker object is called directly.  Either way the Sync side only ever awaits
these methods, so its logic is the same in both places.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tidesync.worker_sync.shared.message_types import ChangeResult, TableChange

__all__ = ["ApplyOutcome", "ChangesPort", "LocalState"]


@dataclass(frozen=True)
class LocalState:
    """What the Sync Worker needs to (re)connect."""

    client_id: str
    lsn: int
    pending_count: int  # local changes not yet acknowledged by the server
    initialized: bool  # an initial sync has committed at least once


@dataclass(frozen=True)
class ApplyOutcome:
    """What applying server data did; ``tables`` feeds live queries and status."""

    lsn: int
    applied: int = 0
    skipped: int = 0
    failed: int = 0
    tables: tuple[str, ...] = ()


class ChangesPort(Protocol):
    """Every method commits (or rolls back) before it returns."""

    async def local_state(self) -> LocalState: ...

    async def observe_server_time(self, millis: int) -> None:
        """Feed the hybrid logical clock with a server timestamp."""

    async def begin_initial_sync(self, server_lsn: int) -> None:
        """Start staging a snapshot; nothing staged is visible until commit."""

    async def stage_initial_chunk(self, table: str, changes: Sequence[TableChange]) -> None: ...

    async def stage_initial_json(self, table: str, changes_json: str | bytes) -> None:
        """``stage_initial_chunk`` with the changes as the JSON text of their wire form.

        The form that crosses the MessageChannel (one string per chunk, or its UTF-8
        bytes); the Changes side validates it as it would the decoded changes.
        """

    async def commit_initial_sync(self, server_lsn: int) -> ApplyOutcome:
        """Replace synced data with the snapshot and set the LSN, in one transaction.

        Rows with unsent local changes keep their local state.
        """

    async def abort_initial_sync(self) -> None:
        """Drop whatever was staged (disconnect mid-snapshot)."""

    async def apply_server_changes(
        self, changes: Sequence[TableChange], last_lsn: int, *, source: str, server_time: int = 0
    ) -> ApplyOutcome:
        """Apply a catchup/live batch and ``last_lsn`` in one transaction.

        ``server_time`` (the frame's timestamp, 0 for none) feeds the clock first, as
        ``observe_server_time`` would: the frame that carries a batch needs no post
        of its own for it.

        Follows PROTOCOL.md's client convergence rules (a server change loses to
        a pending local change that wins last-write-wins).  A failing batch is
        rolled back, recorded and retried with backoff; changes that can never
        apply end up ``failed`` and the LSN moves past them, so this returns.
        """

    async def advance_lsn(self, lsn: int) -> None:
        """``srv_lsn_update``: only our own changes were committed up to ``lsn``."""

    async def unsynced_changes(self, limit: int) -> list[TableChange]:
        """Local changes to send, oldest first (each with its id and updated_at)."""

    async def mark_sent(self, change_ids: Sequence[str]) -> None:
        """Count an attempt for each change (``attempts``)."""

    async def arm_local_changes(self, limit: int) -> None:
        """Let the next local commit hand its ``on_local_change`` listeners the changes.

        What ``unsynced_changes(limit)`` would answer right after that commit (at
        most ``limit``), read once, after which the port is disarmed again; so is it
        by ``unsynced_changes`` and by ``limit`` 0.  The Sync side arms it only while
        it is live with nothing in flight and nothing unread.
        """

    async def record_results(self, results: Sequence[ChangeResult]) -> ApplyOutcome:
        """Apply ``srv_changes_applied`` results to ``local_changes`` and the rows."""

    async def reset_for_reinit(self) -> None:
        """``lsn_ahead``: keep unsent local changes, clear synced data, LSN to 0/0."""

    async def commit_table_resync(self, tables: Sequence[str], server_lsn: int) -> ApplyOutcome:
        """Table repair: replace only ``tables``' synced rows with the staged snapshot.

        Staged through ``begin_initial_sync``/``stage_initial_chunk`` (dropped with
        ``abort_initial_sync``).  Pending local changes stay on top as in the initial
        sync; the LSN does not move; from then on server changes to ``tables`` at or
        below ``server_lsn`` are passed over (the snapshot holds them), also after a
        restart.  One transaction.
        """

    async def table_checksums(
        self, tables: Sequence[str], *, if_idle_at: int | None = None
    ) -> dict[str, str] | None:
        """``tidesync.checksums`` of the named synced tables, read in one transaction.

        With ``if_idle_at``: None instead, unless the local LSN is exactly that and no
        local change is pending, decided in the same transaction as the read.  (An
        integrity check compares only such a state with the server's; read apart, a
        local write committed between the two reads looked like a corrupt table.)
        """
