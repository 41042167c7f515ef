"""What the page (and Python callers) can read about sync: immutable snapshots.

A new ``SyncStatus`` is published whenever anything in it changes; readers
never see a half-updated status because there is nothing to update in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tidesync.worker_sync.shared.lsn_manager import format_lsn

__all__ = ["InitProgress", "SyncPhase", "SyncStatus"]


class SyncPhase(StrEnum):
    """Where the current connection is in PROTOCOL.md "Phases of a connection"."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # socket open, no phase message yet
    INITIAL = "initial"
    CATCHUP = "catchup"
    LIVE = "live"


@dataclass(frozen=True)
class InitProgress:
    """The initial sync's position: the last chunk staged and rows staged so far."""

    table: str
    chunk: int
    total: int
    rows: int


@dataclass(frozen=True)
class SyncStatus:
    connected: bool = False
    phase: SyncPhase = SyncPhase.DISCONNECTED
    lsn: int = 0
    pending: int = 0  # local changes not yet acknowledged by the server
    last_error: str | None = None
    reconnect_in: float | None = None  # seconds until the next attempt, when backing off
    init_progress: InitProgress | None = None
    repairs: int = 0  # integrity checks that found a table differing (each one repaired)
    # The socket's side of the story while not connected: "backoff" (waiting to
    # reconnect), "offline" (toggle or no network), "connecting", "stopped"...
    connection: str = "disconnected"
    # How repairs went: re-syncing just the differing tables, or (a server without
    # the extension, or a repair that kept failing) everything from 0/0.
    table_repairs: int = 0
    full_resyncs: int = 0
    last_repair: tuple[str, ...] = ()  # the tables of the latest repair
    last_repair_mode: str | None = None  # "tables" | "full"
    repairing: tuple[str, ...] = ()  # tables being repaired right now
    # The Changes Worker numbers its local commits (the ``seq`` of its ``local_change``
    # events): ``pending`` counts every commit up to this one.  The Changes Worker
    # reads it to show a commit as pending before this worker has heard of it.
    local_seq: int = 0

    @property
    def lsn_text(self) -> str:
        return format_lsn(self.lsn)

    @property
    def synced(self) -> bool:
        """Live, nothing left to send, no table under repair: what ``wait_until_synced`` awaits."""
        return (
            self.connected
            and self.phase is SyncPhase.LIVE
            and self.pending == 0
            and not self.repairing
        )
