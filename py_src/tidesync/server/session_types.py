"""The session's plain types: phases, config, output, the data source, close codes.

Kept apart from ``session.py`` so the driver, the hub and tests can name them
without the state machine, and so each module stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tidesync.server.snapshot import Snapshot
from tidesync.server.store import HistoryRow
from tidesync.worker_sync.shared import message_types as mt
from tidesync.worker_sync.shared.message_types import Message

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL",
    "CLOSE_REPLACED",
    "Output",
    "Phase",
    "SessionConfig",
    "SessionSource",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 4400
CLOSE_REPLACED = 4409


class Phase(StrEnum):
    INITIAL = "initial"
    INIT_WAIT = "init_wait"
    CATCHUP = "catchup"
    LIVE = "live"
    CLOSED = "closed"


class SessionSource(Protocol):
    """What a session reads and writes; ``hub.ServerSource`` implements it."""

    def current_lsn(self) -> int: ...
    def open_snapshot(self) -> Snapshot: ...
    def history(self, after: int, limit: int, upto: int | None = None) -> list[HistoryRow]: ...
    def count_history(self, after: int, upto: int) -> int: ...
    def apply(self, client_id: str, changes: Sequence[mt.TableChange]) -> list[mt.ChangeResult]: ...
    def checksums(self, tables: Sequence[str]) -> tuple[int, dict[str, str]]: ...


@dataclass(frozen=True)
class SessionConfig:
    # ~700 KB frames of the demo's rows: fewer per-chunk round trips (ack, status, port
    # calls) for a big snapshot, still under the 1 MiB frame limit the server applies.
    init_chunk_rows: int = 2500
    catchup_chunk_rows: int = 1000
    live_batch_rows: int = 500
    init_window: int = 4
    catchup_window: int = 4
    live_window: int = 8
    heartbeat_interval_ms: int = 5000
    max_frame_bytes: int = 1 << 20
    rate_per_second: float = 200.0
    rate_burst: float = 1000.0
    # The table re-sync extension (docs/protocol.md); off only to stand in for an old server.
    table_resync: bool = True


@dataclass(frozen=True)
class Output:
    messages: tuple[Message, ...] = ()
    close_code: int | None = None
    close_reason: str = ""
