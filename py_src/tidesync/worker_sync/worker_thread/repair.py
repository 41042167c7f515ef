"""Per-table repair after a checksum mismatch: the client's half of ``clt_resync_tables``.

PowerSync repairs a bucket whose checksum differs by re-downloading that bucket;
this does the same for a table.  The integrity check (``integrity``) names the
tables that differ; this machine asks the server for a snapshot of just those
(extension, docs/protocol.md), stages its chunks, and has the Changes side swap
them in (``ChangesPort.commit_table_resync``).  The client's other tables stay
at its LSN; the repaired ones carry a floor there so they never go back.

Consistency rules it enforces on the client side:

* the request goes out only while live with no batch of ours in flight, and no
  batch is sent until the repair ends (``blocks_sending``): a result for one of
  our changes could otherwise land between the snapshot's LSN and its commit and
  be overwritten by it; local writes made meanwhile stay pending and are kept on
  top of the snapshot (as in the initial sync), then sent;
* the server sends no live batch while the re-sync streams (its half of the
  rule), so nothing newer than the snapshot reaches those tables before the swap;
* a frame that does not belong to the repair in progress is refused with
  ``clt_error`` and nothing is staged; a broken answer (wrong tables, chunks out
  of order or missing, changes that are not inserts of the table) abandons the
  table repair for the old remedy, a full re-sync from ``0/0``;
* the server refusing the request (``srv_error`` naming it: an old server
  answers ``unknown_type``) or not answering within ``answer_timeout`` falls
  back to the full re-sync too;
* a connection lost mid-repair drops what was staged and asks again once live;
  after ``max_attempts`` interrupted tries it falls back to the full re-sync.

Pure state: messages and times in, actions out; the Sync Worker does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from tidesync.worker_sync.shared.message_types import (
    ErrorCode,
    Operation,
    SrvError,
    SrvResyncChanges,
    SrvResyncComplete,
    SrvResyncStart,
    TableChange,
    new_message_id,
)

__all__ = [
    "AbortStaging",
    "AckChunk",
    "BeginStaging",
    "CommitTables",
    "FullResync",
    "RejectFrame",
    "RepairAction",
    "RepairStage",
    "RequestTables",
    "StageChunk",
    "TableRepair",
]

log = logging.getLogger(__name__)


class RepairStage(StrEnum):
    IDLE = "idle"
    WANTED = "wanted"  # tables to repair; waiting to be live with nothing in flight
    REQUESTED = "requested"  # clt_resync_tables sent
    STREAMING = "streaming"  # srv_resync_start received; chunks being staged
    COMMITTING = "committing"  # srv_resync_complete received; the swap is running


@dataclass(frozen=True)
class RequestTables:
    """Send ``clt_resync_tables`` for ``tables`` with this ``message_id``."""

    tables: tuple[str, ...]
    message_id: str


@dataclass(frozen=True)
class BeginStaging:
    lsn: int


@dataclass(frozen=True)
class StageChunk:
    table: str
    changes: tuple[TableChange, ...]


@dataclass(frozen=True)
class AckChunk:
    """Send ``clt_resync_received`` (after the chunk is staged)."""

    table: str
    chunk: int


@dataclass(frozen=True)
class CommitTables:
    """Swap the staged snapshot of ``tables`` in; report with ``committed`` or ``commit_failed``."""

    tables: tuple[str, ...]
    lsn: int


@dataclass(frozen=True)
class AbortStaging:
    """Drop whatever was staged."""


@dataclass(frozen=True)
class FullResync:
    """The old remedy: keep unsent changes, clear synced data, reconnect with ``0/0``."""

    tables: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RejectFrame:
    """Answer the frame with ``clt_error`` (nothing of it was used)."""

    code: str
    text: str
    ref_message_id: str


RepairAction = (
    RequestTables
    | BeginStaging
    | StageChunk
    | AckChunk
    | CommitTables
    | AbortStaging
    | FullResync
    | RejectFrame
)


@dataclass
class TableRepair:
    """One repair at a time; see the module docstring for the rules."""

    answer_timeout: float = 30.0
    max_attempts: int = 3
    new_id: Callable[[], str] = new_message_id
    stage: RepairStage = RepairStage.IDLE
    tables: tuple[str, ...] = ()
    attempts: int = 0  # tries of the current repair cut short by a lost connection
    request_id: str | None = None
    lsn: int | None = None
    deadline_at: float | None = None
    chunks: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (chunk, total)
    queued: frozenset[str] = frozenset()  # found differing while a repair ran
    # Reporting (status): repairs done table by table, fallbacks, the latest repair.
    table_repairs: int = 0
    full_resyncs: int = 0
    last_repaired: tuple[str, ...] = ()
    last_mode: str | None = None  # "tables" | "full"

    @property
    def active(self) -> bool:
        return self.stage is not RepairStage.IDLE

    @property
    def blocks_sending(self) -> bool:
        """No batch of local changes may go out (module docstring, first rule)."""
        return self.active

    def deadline(self) -> float | None:
        waiting = self.stage in (RepairStage.REQUESTED, RepairStage.STREAMING)
        return self.deadline_at if waiting else None

    # --- inputs -------------------------------------------------------------------------------

    def mismatch(self, tables: Iterable[str]) -> None:
        """The integrity check found ``tables`` differing: repair them when possible."""
        found = frozenset(tables)
        if not found:
            return
        if self.stage is RepairStage.IDLE:
            self.stage, self.tables, self.attempts = RepairStage.WANTED, tuple(sorted(found)), 0
        elif self.stage is RepairStage.WANTED:
            self.tables = tuple(sorted(found | set(self.tables)))
        else:
            self.queued |= found

    def poll(self, now: float, *, live: bool, in_flight: bool) -> list[RepairAction]:
        """Send the request when it may go out; give up on a server that does not answer."""
        if self.stage is RepairStage.WANTED and live and not in_flight:
            if self.attempts >= self.max_attempts:
                return self._give_up(f"table repair cut short {self.attempts} times")
            self.request_id = self.new_id()
            self.stage = RepairStage.REQUESTED
            self.deadline_at = now + self.answer_timeout
            log.warning("repairing %s: asking the server for them", ", ".join(self.tables))
            return [RequestTables(self.tables, self.request_id)]
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return self._give_up(f"no answer to the table repair in {self.answer_timeout:g} s")
        return []

    def on_start(self, msg: SrvResyncStart, now: float) -> list[RepairAction]:
        if self.stage is not RepairStage.REQUESTED:
            return [self._reject(msg.message_id, "srv_resync_start without a request")]
        if tuple(sorted(msg.tables)) != self.tables:
            text = f"srv_resync_start names {list(msg.tables)}, asked for {list(self.tables)}"
            return [self._reject(msg.message_id, text), *self._give_up(text)]
        self.stage, self.lsn, self.chunks = RepairStage.STREAMING, msg.lsn, {}
        self.deadline_at = now + self.answer_timeout
        return [BeginStaging(msg.lsn)]

    def on_chunk(self, msg: SrvResyncChanges, now: float) -> list[RepairAction]:
        if self.stage is not RepairStage.STREAMING:
            return [self._reject(msg.message_id, "srv_resync_changes without a re-sync")]
        seq = msg.sequence
        problem = self._chunk_problem(msg)
        if problem is not None:
            reject = self._reject(msg.message_id, problem, ErrorCode.INVALID_FIELD)
            return [reject, *self._give_up(problem)]
        previous, _ = self.chunks.get(seq.table, (0, 0))
        if seq.chunk != previous + 1 or seq.chunk > seq.total:
            text = f"chunk {seq.chunk}/{seq.total} of {seq.table} after chunk {previous}"
            return [self._reject(msg.message_id, text), *self._give_up(text)]
        self.chunks[seq.table] = (seq.chunk, seq.total)
        self.deadline_at = now + self.answer_timeout
        return [StageChunk(seq.table, msg.changes), AckChunk(seq.table, seq.chunk)]

    def on_complete(self, msg: SrvResyncComplete, now: float) -> list[RepairAction]:
        if self.stage is not RepairStage.STREAMING:
            return [self._reject(msg.message_id, "srv_resync_complete without a re-sync")]
        missing = [t for t, (chunk, total) in self.chunks.items() if chunk != total]
        if msg.lsn != self.lsn or tuple(sorted(msg.tables)) != self.tables or missing:
            text = "srv_resync_complete does not match its start" + (
                f" ({', '.join(missing)} incomplete)" if missing else ""
            )
            return [self._reject(msg.message_id, text), *self._give_up(text)]
        self.stage = RepairStage.COMMITTING
        return [CommitTables(self.tables, msg.lsn)]

    def committed(self) -> None:
        """The swap committed: the repair is done."""
        log.warning("repaired %s from the server's snapshot", ", ".join(self.tables))
        self.table_repairs += 1
        self.last_repaired, self.last_mode = self.tables, "tables"
        self._finish()

    def commit_failed(self, reason: str) -> list[RepairAction]:
        return self._give_up(f"the swap failed: {reason}")

    def on_error(self, msg: SrvError) -> list[RepairAction]:
        """An ``srv_error`` answering our request means the server will not repair tables."""
        waiting = self.stage in (RepairStage.REQUESTED, RepairStage.STREAMING)
        if not waiting or msg.ref_message_id is None or msg.ref_message_id != self.request_id:
            return []
        return self._give_up(f"the server refused the table repair ({msg.code}: {msg.error})")

    def connection_lost(self) -> list[RepairAction]:
        """Staged chunks are dropped; the repair is asked for again on the next connection."""
        if self.stage in (RepairStage.IDLE, RepairStage.WANTED):
            return []
        staged = self.stage is RepairStage.STREAMING
        self.attempts += 1
        self.stage = RepairStage.WANTED
        self.request_id = self.lsn = self.deadline_at = None
        self.tables = tuple(sorted(set(self.tables) | self.queued))
        self.queued = frozenset()
        self.chunks = {}
        return [AbortStaging()] if staged else []

    # --- helpers ------------------------------------------------------------------------------

    def _chunk_problem(self, msg: SrvResyncChanges) -> str | None:
        seq = msg.sequence
        if seq.table not in self.tables:
            return f"chunk of {seq.table!r}, which is not being re-synced"
        for index, change in enumerate(msg.changes):
            if change.operation is not Operation.INSERT or change.table != seq.table:
                return f"changes[{index}] must be an insert into {seq.table!r}"
        return None

    def _reject(self, ref: str, text: str, code: str = ErrorCode.OUT_OF_PHASE) -> RejectFrame:
        log.warning("table repair: refused a frame: %s", text)
        return RejectFrame(str(code), text, ref)

    def _give_up(self, reason: str) -> list[RepairAction]:
        """Fall back to the full re-sync (it reconnects, so nothing else is left to do)."""
        out: list[RepairAction] = []
        if self.stage in (RepairStage.STREAMING, RepairStage.COMMITTING):
            out.append(AbortStaging())
        tables = tuple(sorted(set(self.tables) | self.queued))
        log.warning("table repair of %s abandoned (%s): full re-sync", ", ".join(tables), reason)
        out.append(FullResync(tables, reason))
        self.full_resyncs += 1
        self.last_repaired, self.last_mode = tables, "full"
        self.queued = frozenset()
        self._finish()
        return out

    def _finish(self) -> None:
        queued = self.queued
        self.stage, self.tables, self.attempts = RepairStage.IDLE, (), 0
        self.request_id = self.lsn = self.deadline_at = None
        self.chunks, self.queued = {}, frozenset()
        if queued:
            self.mismatch(queued)
