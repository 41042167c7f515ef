"""The session's plain types: phases, config, output, the data source, close codes.

Kept apart from ``session.py`` so the driver, the hub and tests can name them
without the state machine, and so each module stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    "LiveBatch",
    "Output",
    "Phase",
    "SessionConfig",
    "SessionSource",
    "SnapshotRows",
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


@dataclass
class LiveBatch:
    """History rows ``(after, last_lsn]`` as changes, shared by every live session at ``after``.

    Live sessions mostly sit at the same cursor, so the hub builds one batch per
    cursor and every session sends it; ``encoded()`` runs the JSON encoding once
    for all of them.  A session whose client wrote some of the rows (``authors``)
    filters its own changes out and encodes its smaller batch itself.
    """

    last_lsn: int
    changes: tuple[mt.TableChange, ...]
    authors: frozenset[str | None]
    _json: str | None = field(default=None, repr=False)

    def encoded(self) -> str:
        # Two threads may both encode once: the same text, no lock needed.
        if self._json is None:
            self._json = mt.encode_changes(self.changes)
        return self._json


class SnapshotRows(Protocol):
    """A snapshot read as ``srv_init_rows`` chunk bodies: a new ``Snapshot`` or a kept one
    (``snapshot_cache.py``)."""

    lsn: int

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables with rows, in the order they are sent."""

    def chunks_of(self, table: str, chunk_rows: int) -> int: ...
    def read_body(self, table: str, chunk_rows: int) -> str: ...
    def close(self) -> None: ...


class SessionSource(Protocol):
    """What a session reads and writes; ``hub.Hub`` implements it."""

    def current_lsn(self) -> int: ...
    def open_snapshot(self) -> Snapshot: ...
    def open_snapshot_rows(self, chunk_rows: int) -> SnapshotRows:
        """The snapshot for an ``srv_init_rows`` initial sync (may be a kept one)."""

    def history(self, after: int, limit: int, upto: int | None = None) -> list[HistoryRow]: ...
    def live_batch(self, after: int, limit: int) -> LiveBatch | None:
        """The next live batch past ``after`` (at most ``limit`` rows), None when none."""

    def in_memory(self, after: int) -> bool:
        """``history``/``live_batch`` past ``after`` is served from memory (no file read)."""

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
    # Snapshot chunks as ``srv_init_rows`` to clients that ask (extension, docs/protocol.md);
    # off only to stand in for an old server.
    init_rows: bool = True


@dataclass(frozen=True)
class Output:
    messages: tuple[Message, ...] = ()
    close_code: int | None = None
    close_reason: str = ""
