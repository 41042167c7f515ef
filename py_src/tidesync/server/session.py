"""One client connection as a sans-I/O state machine (PROTOCOL.md "Phases of a connection").

No socket and no clock inside: the driver (``app.py``) feeds it frames
(``receive``, or ``parse`` then ``handle``), the news that history grew
(``history_available``) and the time (``tick``), and sends the ``Output`` it
gets back, closing the socket when ``close_code`` is set.  Data comes from a
``SessionSource`` (the hub), whose calls are local SQLite reads, reads of its
in-memory ring, and the one write path (``apply``).  ``blocking`` and
``live_blocking`` tell the driver which steps may touch the file (those go to a
thread; the rest, heartbeats, acknowledgements and the live fan-out, are
cheap enough to run on the event loop, with no thread hop per message).

Phases::

    open_session --lsn 0/0--> INITIAL --all chunks acked--> INIT_WAIT
    INIT_WAIT --clt_init_processed--> CATCHUP (from the snapshot's LSN)
    open_session --lsn behind/equal--> CATCHUP --all chunks acked--> LIVE
    LIVE --clt_resync_tables--> LIVE re-syncing those tables (live paused)
         --all chunks acked--> srv_resync_complete, live resumes
    any --heartbeat silence / replaced--> CLOSED

Invariants: every chunk's ``lastLSN`` covers every history row up to it, the
client's own rows included, so the client's LSN never moves past a change it
was not sent and never stays behind its own; at most ``*_window`` chunks or
batches are unacknowledged at a time, so a slow client costs the server no
memory: a live client whose window is full is paused (nothing queued) and
resumes from its cursor when it acknowledges; history is on disk.  While a
table re-sync (extension, docs/protocol.md) streams, no live batch is sent: a
change above the re-sync's LSN that reached the client before the snapshot's
commit would be overwritten by it.  The snapshot's LSN is at or above the
cursor, so what live sends afterwards is either in the snapshot (the client
skips it for those tables) or newer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidesync.server.session_types import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_REPLACED,
    Output,
    Phase,
    SessionConfig,
    SessionSource,
    SnapshotRows,
)
from tidesync.server.snapshot import Snapshot
from tidesync.server.store import HistoryRow
from tidesync.worker_sync.shared import message_types as mt
from tidesync.worker_sync.shared.lsn_manager import LsnError, format_lsn, parse_lsn
from tidesync.worker_sync.shared.message_types import ErrorCode, Message, make

__all__ = [
    "CLOSE_PROTOCOL",
    "CLOSE_REPLACED",
    "Output",
    "Phase",
    "Session",
    "SessionConfig",
    "SessionSource",
    "open_session",
]

log = logging.getLogger(__name__)


def _valid_client_id(raw: object) -> bool:
    return isinstance(raw, str) and 0 < len(raw) <= mt.MAX_ID_LENGTH


# Messages each phase accepts; the rest are answered with ``out_of_phase``.
_ANY_PHASE = {
    mt.MessageType.CLT_SEND_CHANGES,
    mt.MessageType.CLT_HEARTBEAT,
    mt.MessageType.CLT_ERROR,
    mt.MessageType.CLT_REQUEST_CHECKSUMS,
    mt.MessageType.CLT_CHANGES_RECEIVED,
}
_NEVER_BLOCKS = {
    mt.MessageType.CLT_HEARTBEAT,
    mt.MessageType.CLT_ERROR,
    mt.MessageType.CLT_CHANGES_RECEIVED,
}
_PHASE_ONLY = {
    mt.MessageType.CLT_INIT_RECEIVED: Phase.INITIAL,
    mt.MessageType.CLT_INIT_PROCESSED: Phase.INIT_WAIT,
    mt.MessageType.CLT_CATCHUP_RECEIVED: Phase.CATCHUP,
    mt.MessageType.CLT_CHANGES_APPLIED: Phase.LIVE,
    mt.MessageType.CLT_RESYNC_TABLES: Phase.LIVE,
    mt.MessageType.CLT_RESYNC_RECEIVED: Phase.LIVE,
}
#: The table re-sync extension; a server configured without it answers like an old one.
_RESYNC_TYPES = {mt.MessageType.CLT_RESYNC_TABLES, mt.MessageType.CLT_RESYNC_RECEIVED}


#: ``initFormat`` query value asking for ``srv_init_rows`` chunks (extension, docs/protocol.md).
INIT_FORMAT_ROWS = "rows"


def open_session(
    client_id: object,
    lsn_text: object,
    source: SessionSource,
    config: SessionConfig,
    now_ms: int,
    init_format: object = None,
) -> tuple[Session | None, Output]:
    """The handshake: a started session, or None and the error/close to send.

    ``init_format`` is the ``initFormat`` query parameter: ``"rows"`` asks for the
    compact snapshot chunks; anything else (or none) gets ``srv_init_changes``.
    """
    if not _valid_client_id(client_id):
        return None, Output(close_code=CLOSE_PROTOCOL, close_reason="clientId missing or invalid")
    assert isinstance(client_id, str)
    try:
        lsn = parse_lsn(lsn_text)
    except LsnError as exc:
        error = make(mt.SrvError, client_id, now_ms, code=ErrorCode.BAD_LSN, error=str(exc))
        return None, Output((error,), CLOSE_PROTOCOL, "bad lsn")
    current = source.current_lsn()
    if lsn > current:
        text = f"client lsn {format_lsn(lsn)} is ahead of the server's {format_lsn(current)}"
        error = make(mt.SrvError, client_id, now_ms, code=ErrorCode.LSN_AHEAD, error=text)
        # Not 4400: the client is expected to reset and reconnect with 0/0 at once.
        return None, Output((error,), CLOSE_NORMAL, "lsn_ahead")
    session = Session(client_id, lsn, source, config, now_ms)
    session.init_rows = config.init_rows and init_format == INIT_FORMAT_ROWS
    return session, session.start(now_ms)


@dataclass
class _Init:
    """A snapshot streamed table after table in acknowledged chunks (initial sync, re-sync)."""

    snapshot: Snapshot | SnapshotRows  # ``SnapshotRows`` for ``srv_init_rows``
    tables: list[str]  # those with rows, in foreign-key order
    table_index: int = 0
    chunk: int = 0
    unacked: list[tuple[str, int]] = field(default_factory=list)

    def next_chunks(
        self, read: Callable[[str, int], Any], rows: int, window: int
    ) -> list[tuple[Any, mt.InitSequence]]:
        """The chunks to send now: as many as the window of unacknowledged ones allows,
        each read by ``read(table, rows)`` (``Snapshot.read_chunk``, or ``read_body`` of a
        ``SnapshotRows`` for ``srv_init_rows``)."""
        out: list[tuple[Any, mt.InitSequence]] = []
        while len(self.unacked) < window and self.table_index < len(self.tables):
            table = self.tables[self.table_index]
            total = self.snapshot.chunks_of(table, rows)
            chunk = read(table, rows)
            self.chunk += 1
            out.append((chunk, mt.InitSequence(table=table, chunk=self.chunk, total=total)))
            self.unacked.append((table, self.chunk))
            if self.chunk >= total:
                self.table_index += 1
                self.chunk = 0
        return out

    def ack(self, table: str, chunk: int) -> bool:
        """Acknowledge a chunk and those before it; False for a repeated or unknown ack."""
        key = (table, chunk)
        if key not in self.unacked:
            return False
        del self.unacked[: self.unacked.index(key) + 1]
        return True

    @property
    def done(self) -> bool:
        """Every chunk sent and acknowledged."""
        return not self.unacked and self.table_index >= len(self.tables)


@dataclass
class _Resync(_Init):
    """A table re-sync in progress: like ``_Init``, for the named tables only."""

    names: tuple[str, ...] = ()  # as announced, in foreign-key order


@dataclass
class _Catchup:
    start: int
    final: int
    total: int
    chunk: int = 0
    changes: int = 0
    unacked: list[int] = field(default_factory=list)


class Session:
    """Per-connection protocol state; every method returns what to send."""

    def __init__(
        self, client_id: str, lsn: int, source: SessionSource, config: SessionConfig, now_ms: int
    ) -> None:
        self.client_id = client_id
        self.client_lsn = lsn
        self.source = source
        self.config = config
        self.phase = Phase.CATCHUP
        self.cursor = lsn  # every history row <= cursor has been sent or covered
        self.last_heard = now_ms
        self._tokens = config.rate_burst
        self._tokens_at = now_ms
        self._init: _Init | None = None
        self._catchup: _Catchup | None = None
        self._resync: _Resync | None = None
        self._live_unacked: list[int] = []
        self._paused = False
        self._now = now_ms  # the timestamp of messages being built
        #: Send the snapshot as ``srv_init_rows`` (the client asked; ``open_session``).
        self.init_rows = False

    # --- driver entry points ------------------------------------------------------------------

    def start(self, now_ms: int) -> Output:
        self._now = now_ms
        if self.client_lsn == 0:
            snapshot: Snapshot | SnapshotRows = (
                self.source.open_snapshot_rows(self.config.init_chunk_rows)
                if self.init_rows
                else self.source.open_snapshot()
            )
            self._init = _Init(snapshot, list(snapshot.tables))
            self._set_phase(Phase.INITIAL)
            kind = mt.SrvInitRows if self.init_rows else mt.SrvInitChanges
            log.info("client %s: snapshot chunks as %s", self.client_id, kind.TYPE.value)
            out: list[Message] = [self._make(mt.SrvInitStart, server_lsn=snapshot.lsn)]
            out += self._pump_init(now_ms)
            return Output(tuple(out))
        return Output(tuple(self._begin_catchup(self.client_lsn, now_ms)))

    def receive(self, text: str | bytes, now_ms: int) -> Output:
        """One frame from the client: ``parse`` and, when it is acceptable, ``handle``."""
        parsed = self.parse(text, now_ms)
        return parsed if isinstance(parsed, Output) else self.handle(parsed, now_ms)

    def parse(self, text: str | bytes, now_ms: int) -> Message | Output:
        """Limits, decoding, clientId and phase checks: the message, or what to answer.

        Pure CPU (no source call), so the driver can always run it on its loop.
        """
        self.last_heard = now_ms
        if self.phase is Phase.CLOSED:
            return Output()
        limit = self.config.max_frame_bytes
        size = len(text)
        if isinstance(text, str) and 4 * size > limit:  # <= 4 UTF-8 bytes a code point
            size = len(text.encode("utf-8"))
        if size > limit:
            return self._error(ErrorCode.FRAME_TOO_LARGE, f"frame over {limit} bytes", None, now_ms)
        if not self._take_token(now_ms):
            return self._error(ErrorCode.RATE_LIMITED, "too many messages; slow down", None, now_ms)
        try:
            message = mt.decode_message(text, expect="clt")
        except mt.ProtocolError as exc:
            log.info("client %s sent a bad frame: %s", self.client_id, exc.message)
            return self._error(exc.code, exc.message, exc.ref_message_id, now_ms)
        if message.client_id != self.client_id:
            text_ = f"clientId {message.client_id[:60]!r} is not this connection's client"
            return self._error(ErrorCode.INVALID_FIELD, text_, message.message_id, now_ms)
        if message.type in _RESYNC_TYPES and not self.config.table_resync:
            text_ = f"unknown message type {message.type.value!r}"
            return self._error(ErrorCode.UNKNOWN_TYPE, text_, message.message_id, now_ms)
        wanted = _PHASE_ONLY.get(message.type)
        if message.type not in _ANY_PHASE and wanted is not self.phase:
            text_ = f"{message.type.value} does not fit phase {self.phase.value}"
            return self._error(ErrorCode.OUT_OF_PHASE, text_, message.message_id, now_ms)
        return message

    def handle(self, message: Message, now_ms: int) -> Output:
        """A message ``parse`` accepted."""
        if self.phase is Phase.CLOSED:
            return Output()
        handler = getattr(self, f"_on_{message.type.value}")
        result: Output = handler(message, now_ms)
        return result

    def blocking(self, message: Message) -> bool:
        """Whether ``handle(message)`` may read or write the database file.

        Heartbeats, errors and receipts never do; an acknowledgement of live
        changes only pumps the next batch, from memory unless this session's
        cursor fell behind the hub's ring.  Everything else (applying changes,
        snapshots, catchup, checksums) does.
        """
        if message.type in _NEVER_BLOCKS:
            return False
        if message.type is mt.MessageType.CLT_CHANGES_APPLIED:
            return self.live_blocking()
        return True

    def live_blocking(self) -> bool:
        """Whether ``history_available`` may read the file (the cursor is behind the ring)."""
        return self.phase is Phase.LIVE and not self.source.in_memory(self.cursor)

    def history_available(self, now_ms: int) -> Output:
        """New history rows exist; a live session sends what its window allows."""
        if self.phase is not Phase.LIVE:
            return Output()
        return Output(tuple(self._pump_live(now_ms)))

    def tick(self, now_ms: int) -> Output:
        """Drop a client silent for three heartbeat intervals (PROTOCOL.md "Heartbeat")."""
        if self.phase is not Phase.CLOSED and now_ms >= self.next_deadline:
            log.info("client %s silent for 3 heartbeat intervals; dropping", self.client_id)
            self.close()
            return Output(close_code=CLOSE_GOING_AWAY, close_reason="heartbeat timeout")
        return Output()

    @property
    def next_deadline(self) -> int:
        return self.last_heard + 3 * self.config.heartbeat_interval_ms

    def replaced(self) -> Output:
        self.close()
        return Output(close_code=CLOSE_REPLACED, close_reason="replaced by a newer connection")

    def close(self) -> None:
        """Release the snapshot, if any; idempotent."""
        if self._init is not None:
            self._init.snapshot.close()
            self._init = None
        if self._resync is not None:
            self._resync.snapshot.close()
            self._resync = None
        self._set_phase(Phase.CLOSED)

    # --- helpers ------------------------------------------------------------------------------

    def _make(self, cls: type[mt.M], **values: Any) -> mt.M:
        return make(cls, self.client_id, self._now, **values)

    def _set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            log.info("client %s: %s -> %s", self.client_id, self.phase.value, phase.value)
            self.phase = phase

    def _error(self, code: str, text: str, ref: str | None, now_ms: int) -> Output:
        self._now = now_ms
        return Output((self._make(mt.SrvError, code=str(code), error=text, ref_message_id=ref),))

    def _take_token(self, now_ms: int) -> bool:
        elapsed = max(0, now_ms - self._tokens_at) / 1000.0
        self._tokens_at = now_ms
        self._tokens = min(
            self.config.rate_burst, self._tokens + elapsed * self.config.rate_per_second
        )
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # --- initial sync -------------------------------------------------------------------------

    def _pump_init(self, now_ms: int) -> list[Message]:
        self._now = now_ms
        state = self._init
        assert state is not None
        rows, window = self.config.init_chunk_rows, self.config.init_window
        out: list[Message]
        snapshot = state.snapshot
        if isinstance(snapshot, Snapshot) and not self.init_rows:
            out = [
                self._make(mt.SrvInitChanges, changes=changes, sequence=seq)
                for changes, seq in state.next_chunks(snapshot.read_chunk, rows, window)
            ]
        else:
            # Encoded once (a kept snapshot's text is shared), spliced into this frame.
            out = [
                self._make(
                    mt.SrvInitRows, sequence=seq, columns=(), rows=(), versions=(), body_json=body
                )
                for body, seq in state.next_chunks(snapshot.read_body, rows, window)
            ]
        if state.done:
            lsn = state.snapshot.lsn
            state.snapshot.close()
            self._init = None
            self.cursor = lsn
            self._set_phase(Phase.INIT_WAIT)
            out.append(self._make(mt.SrvInitComplete, server_lsn=lsn))
            log.info("client %s: snapshot at %s sent", self.client_id, format_lsn(lsn))
        return out

    def _on_clt_init_received(self, msg: mt.CltInitReceived, now_ms: int) -> Output:
        state = self._init
        assert state is not None
        if not state.ack(msg.table, msg.chunk):
            return Output()  # a repeated ack: nothing left to do
        return Output(tuple(self._pump_init(now_ms)))

    def _on_clt_init_processed(self, msg: mt.CltInitProcessed, now_ms: int) -> Output:
        return Output(tuple(self._begin_catchup(self.cursor, now_ms)))

    # --- catchup ------------------------------------------------------------------------------

    def _begin_catchup(self, start: int, now_ms: int) -> list[Message]:
        final = self.source.current_lsn()
        rows = self.source.count_history(start, final)
        total = (rows + self.config.catchup_chunk_rows - 1) // self.config.catchup_chunk_rows
        self._catchup = _Catchup(start=start, final=final, total=total)
        self.cursor = start
        self._set_phase(Phase.CATCHUP)
        log.info(
            "client %s: catchup %s -> %s (%d history rows)",
            self.client_id,
            format_lsn(start),
            format_lsn(final),
            rows,
        )
        return self._pump_catchup(now_ms)

    def _pump_catchup(self, now_ms: int) -> list[Message]:
        self._now = now_ms
        state = self._catchup
        assert state is not None
        out: list[Message] = []
        while len(state.unacked) < self.config.catchup_window and self.cursor < state.final:
            rows = self.source.history(self.cursor, self.config.catchup_chunk_rows, state.final)
            if not rows:
                self.cursor = state.final
                break
            state.chunk += 1
            changes = self._filter(rows)
            state.changes += len(changes)
            self.cursor = rows[-1].lsn
            seq = mt.ChunkSequence(chunk=state.chunk, total=max(state.total, state.chunk))
            out.append(
                self._make(
                    mt.SrvCatchupChanges, changes=changes, last_lsn=self.cursor, sequence=seq
                )
            )
            state.unacked.append(state.chunk)
        if not state.unacked and self.cursor >= state.final:
            self.cursor = state.final
            out.append(
                self._make(
                    mt.SrvCatchupCompleted,
                    start_lsn=state.start,
                    final_lsn=state.final,
                    change_count=state.changes,
                    success=True,
                )
            )
            log.info("client %s: catchup done, %d change(s)", self.client_id, state.changes)
            self._catchup = None
            self._set_phase(Phase.LIVE)
            out += self._pump_live(now_ms)
        return out

    def _on_clt_catchup_received(self, msg: mt.CltCatchupReceived, now_ms: int) -> Output:
        state = self._catchup
        assert state is not None
        if msg.chunk not in state.unacked:
            return Output()
        del state.unacked[: state.unacked.index(msg.chunk) + 1]
        return Output(tuple(self._pump_catchup(now_ms)))

    # --- live ---------------------------------------------------------------------------------

    def _filter(self, rows: Sequence[HistoryRow]) -> tuple[mt.TableChange, ...]:
        return tuple(r.to_change() for r in rows if r.client_id != self.client_id)

    def _pump_live(self, now_ms: int) -> list[Message]:
        """Send what the window allows, at once: nothing here waits to batch.

        Batching adapts to load by itself: an idle session sends each commit as
        it arrives; a busy one (window full) resumes on its acknowledgement with
        everything committed meanwhile, up to ``live_batch_rows`` per batch.
        """
        self._now = now_ms
        out: list[Message] = []
        if self._resync is not None:
            return out  # paused until the re-sync is complete (module docstring)
        own_only_to = 0
        while len(self._live_unacked) < self.config.live_window:
            batch = self.source.live_batch(self.cursor, self.config.live_batch_rows)
            if batch is None:
                break
            self.cursor = batch.last_lsn
            if self.client_id in batch.authors:
                changes = tuple(c for c in batch.changes if c.client_id != self.client_id)
                shared = None
            else:
                changes, shared = batch.changes, batch.encoded()
            if changes:
                out.append(
                    self._make(
                        mt.SrvLiveChanges,
                        changes=changes,
                        last_lsn=self.cursor,
                        changes_json=shared,
                    )
                )
                self._live_unacked.append(self.cursor)
                own_only_to = 0
            else:
                own_only_to = self.cursor
        if own_only_to:
            out.append(self._make(mt.SrvLsnUpdate, lsn=own_only_to))
        paused = len(self._live_unacked) >= self.config.live_window
        if paused and not self._paused:
            log.info("client %s: live window full at %s; paused", self.client_id, self.cursor)
        self._paused = paused
        return out

    def _on_clt_changes_applied(self, msg: mt.CltChangesApplied, now_ms: int) -> Output:
        self._live_unacked = [lsn for lsn in self._live_unacked if lsn > msg.last_lsn]
        return Output(tuple(self._pump_live(now_ms)))

    # --- any phase ----------------------------------------------------------------------------

    def _on_clt_send_changes(self, msg: mt.CltSendChanges, now_ms: int) -> Output:
        self._now = now_ms
        ids = tuple(c.id for c in msg.changes)
        received = self._make(mt.SrvChangesReceived, change_ids=ids)
        try:
            results = self.source.apply(self.client_id, msg.changes)
        except Exception as exc:  # e.g. the database is locked by another program
            log.exception("client %s: applying %d change(s) failed", self.client_id, len(ids))
            failed = self._make(
                mt.SrvChangesApplied, applied_changes=(), success=False, error=str(exc), results=()
            )
            return Output((received, failed))
        applied = tuple(r.id for r in results if r.status is mt.ChangeStatus.APPLIED)
        log.info(
            "client %s: %d change(s) received, %d applied", self.client_id, len(ids), len(applied)
        )
        done = self._make(
            mt.SrvChangesApplied, applied_changes=applied, success=True, results=tuple(results)
        )
        return Output((received, done))

    def _on_clt_heartbeat(self, msg: mt.CltHeartbeat, now_ms: int) -> Output:
        self._now = now_ms
        return Output((self._make(mt.SrvHeartbeat),))

    def _on_clt_error(self, msg: mt.CltError, now_ms: int) -> Output:
        log.warning("client %s reports %s: %s", self.client_id, msg.code, msg.error)
        return Output()

    def _on_clt_changes_received(self, msg: mt.CltChangesReceived, now_ms: int) -> Output:
        return Output()

    def _on_clt_request_checksums(self, msg: mt.CltRequestChecksums, now_ms: int) -> Output:
        self._now = now_ms
        lsn, sums = self.source.checksums(msg.tables)
        return Output((self._make(mt.SrvTableChecksums, lsn=lsn, checksums=sums),))

    # --- table re-sync (extension, docs/protocol.md) -------------------------------------------

    def _on_clt_resync_tables(self, msg: mt.CltResyncTables, now_ms: int) -> Output:
        """Open a snapshot and stream the named tables at its LSN, pausing live meanwhile."""
        if self._resync is not None:
            text = "a table re-sync is already in progress"
            return self._error(ErrorCode.OUT_OF_PHASE, text, msg.message_id, now_ms)
        snapshot = self.source.open_snapshot()
        unknown = [t for t in msg.tables if t not in snapshot.schema.tables]
        if unknown:
            snapshot.close()
            text = f"unknown table {unknown[0][:60]!r}"
            return self._error(ErrorCode.INVALID_FIELD, text, msg.message_id, now_ms)
        if snapshot.lsn < self.cursor:  # cannot happen: the cursor only follows committed rows
            snapshot.close()
            log.error("client %s: snapshot behind the live cursor", self.client_id)
            text = "snapshot behind the live cursor; re-sync refused"
            return self._error(ErrorCode.INTERNAL, text, msg.message_id, now_ms)
        names = tuple(t for t in snapshot.schema.order if t in msg.tables)
        tables = [t for t in names if snapshot.counts.get(t, 0) > 0]
        self._resync = _Resync(snapshot, tables, names=names)
        log.info(
            "client %s: re-syncing %s at %s",
            self.client_id,
            ", ".join(names),
            format_lsn(snapshot.lsn),
        )
        self._now = now_ms
        start = self._make(mt.SrvResyncStart, lsn=snapshot.lsn, tables=names)
        return Output((start, *self._pump_resync(now_ms)))

    def _pump_resync(self, now_ms: int) -> list[Message]:
        self._now = now_ms
        state = self._resync
        assert state is not None and isinstance(state.snapshot, Snapshot)
        out: list[Message] = [
            self._make(mt.SrvResyncChanges, changes=changes, sequence=seq)
            for changes, seq in state.next_chunks(
                state.snapshot.read_chunk, self.config.init_chunk_rows, self.config.init_window
            )
        ]
        if state.done:
            lsn = state.snapshot.lsn
            state.snapshot.close()
            self._resync = None
            out.append(self._make(mt.SrvResyncComplete, lsn=lsn, tables=state.names))
            log.info("client %s: re-sync at %s sent", self.client_id, format_lsn(lsn))
            out += self._pump_live(now_ms)
        return out

    def _on_clt_resync_received(self, msg: mt.CltResyncReceived, now_ms: int) -> Output:
        state = self._resync
        if state is None or not state.ack(msg.table, msg.chunk):
            return Output()  # a repeated or late ack: nothing left to do
        return Output(tuple(self._pump_resync(now_ms)))
