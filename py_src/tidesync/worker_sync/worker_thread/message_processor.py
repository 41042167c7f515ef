"""The phase table and the handling of every server message (PROTOCOL.md "Phases").

Frames go in one at a time, in order (``handle_text``); each is decoded with the
shared codec, checked against ``PHASE_TABLE``, turned into ``ChangesPort`` calls
and answered.  What the driver must do is returned as instructions (``Send``,
``Reconnect``, ``FlushLocalChanges``); this module never touches a socket.

Invariants:

* A frame that does not decode or does not fit the phase is answered with
  ``clt_error``, logged, and never applied; the processor never raises for
  anything the server sends.
* The LSN moves only through the port, together with the data it covers
  (``commit_initial_sync``, ``apply_server_changes``, ``advance_lsn``); the
  copy kept here only filters replays.
* A snapshot is committed or aborted: ``connection_lost`` during the initial
  phase calls ``abort_initial_sync``.
* A snapshot chunk is acknowledged once handed to the port, before it is
  staged, so the server sends the next one while the Changes side stages this
  one (at most ``STAGE_AHEAD`` chunks are handed over and not yet staged).  The
  commit waits for every stage; a stage that failed ends the connection
  (``Reconnect``), and ``connection_lost`` aborts the snapshot: it starts again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from tidesync.worker_sync.shared.changes_port import ChangesPort
from tidesync.worker_sync.shared.lsn_manager import LsnManager, format_lsn
from tidesync.worker_sync.shared.message_types import (
    CltCatchupReceived,
    CltChangesApplied,
    CltError,
    CltInitProcessed,
    CltInitReceived,
    ErrorCode,
    InitChunkFrame,
    Message,
    MessageType,
    Operation,
    ProtocolError,
    SrvCatchupChanges,
    SrvCatchupCompleted,
    SrvChangesApplied,
    SrvChangesReceived,
    SrvError,
    SrvInitChanges,
    SrvInitComplete,
    SrvInitRows,
    SrvInitStart,
    SrvLiveChanges,
    SrvLsnUpdate,
    SrvResyncChanges,
    SrvResyncComplete,
    SrvResyncStart,
    SrvTableChecksums,
    TableChange,
    decode_server_frame,
    encode_message,
    make,
)
from tidesync.worker_sync.worker_thread.client_changes import ClientChanges
from tidesync.worker_sync.worker_thread.status import InitProgress, SyncPhase

__all__ = [
    "PHASE_TABLE",
    "REINIT_ERROR_CODES",
    "FlushLocalChanges",
    "Instruction",
    "MessageProcessor",
    "Reconnect",
    "RepairFrame",
    "Send",
    "VerifyChecksums",
]

log = logging.getLogger(__name__)

#: Snapshot chunks handed to the port and not yet staged, at most: enough for the
#: Changes side never to wait for the next chunk, few enough to bound the memory
#: they hold (each ~0.7 MB of JSON text, as the server's ``init_window`` sends them).
STAGE_AHEAD = 2

#: ``srv_error`` codes after which the client starts over from ``0/0``.
REINIT_ERROR_CODES = frozenset({ErrorCode.LSN_AHEAD.value, ErrorCode.BAD_LSN.value})


@dataclass(frozen=True)
class Send:
    message: Message


@dataclass(frozen=True)
class Reconnect:
    """Drop this connection and connect again at once (after a reinit: with ``0/0``)."""

    reason: str


@dataclass(frozen=True)
class FlushLocalChanges:
    """Live and nothing in flight: send the next batch of local changes, if any."""


@dataclass(frozen=True)
class VerifyChecksums:
    """The server's table checksums at ``lsn``: compare with ours (see ``integrity``)."""

    lsn: int
    checksums: dict[str, str]


@dataclass(frozen=True)
class RepairFrame:
    """A table re-sync frame (or an ``srv_error``) for the repair machine (``repair``)."""

    message: SrvResyncStart | SrvResyncChanges | SrvResyncComplete | SrvError


Instruction = Send | Reconnect | FlushLocalChanges | VerifyChecksums | RepairFrame

P, T = SyncPhase, MessageType
_ANY_CONNECTED = (P.CONNECTING, P.INITIAL, P.CATCHUP, P.LIVE)

#: (phase, message type) -> phase after handling it.  A pair missing here is out of
#: phase: answered with ``clt_error`` ``out_of_phase`` and not applied.
PHASE_TABLE: dict[tuple[SyncPhase, MessageType], SyncPhase] = {
    (P.CONNECTING, T.SRV_INIT_START): P.INITIAL,
    (P.CONNECTING, T.SRV_CATCHUP_CHANGES): P.CATCHUP,
    (P.CONNECTING, T.SRV_CATCHUP_COMPLETED): P.LIVE,
    (P.INITIAL, T.SRV_INIT_CHANGES): P.INITIAL,
    (P.INITIAL, T.SRV_INIT_ROWS): P.INITIAL,
    (P.INITIAL, T.SRV_INIT_COMPLETE): P.CATCHUP,
    (P.CATCHUP, T.SRV_CATCHUP_CHANGES): P.CATCHUP,
    (P.CATCHUP, T.SRV_CATCHUP_COMPLETED): P.LIVE,
    (P.LIVE, T.SRV_LIVE_CHANGES): P.LIVE,
    (P.LIVE, T.SRV_LSN_UPDATE): P.LIVE,
    (P.LIVE, T.SRV_CHANGES_RECEIVED): P.LIVE,
    (P.LIVE, T.SRV_CHANGES_APPLIED): P.LIVE,
    **{(phase, T.SRV_HEARTBEAT): phase for phase in _ANY_CONNECTED},
    **{(phase, T.SRV_ERROR): phase for phase in _ANY_CONNECTED},
    # Compared only when live (see ``integrity``); elsewhere harmless and ignored.
    **{(phase, T.SRV_TABLE_CHECKSUMS): phase for phase in _ANY_CONNECTED},
    # Table repair (extension): only ever asked for while live; judged by ``repair``.
    (P.LIVE, T.SRV_RESYNC_START): P.LIVE,
    (P.LIVE, T.SRV_RESYNC_CHANGES): P.LIVE,
    (P.LIVE, T.SRV_RESYNC_COMPLETE): P.LIVE,
}


class MessageProcessor:
    """One connection's view of the server's phases; reset with ``begin`` per connection."""

    def __init__(
        self,
        port: ChangesPort,
        client_changes: ClientChanges,
        *,
        client_id: str,
        wall_ms: Callable[[], int],
    ) -> None:
        self._port = port
        self._client_changes = client_changes
        self._client_id = client_id
        self._wall_ms = wall_ms
        self._lsn = LsnManager()
        self.phase = SyncPhase.DISCONNECTED
        self.last_error: str | None = None
        # Highest LSN the server gave one of our applied changes: "synced" waits
        # until our LSN covers it (``srv_lsn_update`` comes after the results).
        self.acked_lsn = 0
        self.init_progress: InitProgress | None = None
        self._init_rows = 0
        self._staging: list[asyncio.Future[None]] = []  # oldest first

    @property
    def lsn(self) -> int:
        return self._lsn.current

    def begin(self, lsn: int) -> None:
        """A socket opened, announcing ``lsn``: wait for the server's first phase message."""
        self._lsn = LsnManager(lsn)
        self.phase = SyncPhase.CONNECTING
        self.init_progress = None
        self._init_rows = 0

    async def connection_lost(self) -> None:
        """The connection ended: a snapshot not yet committed is dropped."""
        staging, self._staging = self._staging, []
        for task in staging:
            task.cancel()  # one not yet posted never is; a posted one runs before the abort
        if staging:
            await asyncio.gather(*staging, return_exceptions=True)
        if self.phase is SyncPhase.INITIAL:
            log.info("connection lost during the initial sync; the snapshot is dropped")
            await self._port.abort_initial_sync()
        self.phase = SyncPhase.DISCONNECTED
        self.init_progress = None

    async def handle_text(self, text: str) -> list[Instruction]:
        """Decode, check the phase, apply, answer.  Never raises for server input."""
        try:
            message = decode_server_frame(text)
        except ProtocolError as exc:
            log.warning("undecodable server frame (%s): %s", exc.code, exc.message)
            return [self._error_reply(exc.code, exc.message, exc.ref_message_id)]
        return await self.handle(message)

    async def handle(self, message: Message | InitChunkFrame) -> list[Instruction]:
        next_phase = PHASE_TABLE.get((self.phase, message.type))
        if next_phase is None:
            text = f"{message.type.value} does not fit phase {self.phase.value}"
            log.warning("out-of-phase server message: %s", text)
            return [self._error_reply(ErrorCode.OUT_OF_PHASE, text, message.message_id)]
        try:
            if message.timestamp > 0 and message.type not in _TIMED_BY_APPLY:
                await self._port.observe_server_time(message.timestamp)
            handler = _HANDLERS.get(message.type)
            out = await handler(self, message) if handler else []
        except Exception as exc:  # the port failed: never ack what was not applied
            log.exception("handling %s failed", message.type.value)
            self.last_error = f"{message.type.value}: {exc}"
            reply = self._error_reply(ErrorCode.INTERNAL, self.last_error, message.message_id)
            return [reply, Reconnect(f"local failure on {message.type.value}")]
        if self.phase is not SyncPhase.DISCONNECTED and not _ends_connection(out):
            self.phase = next_phase
        return out

    # --- initial sync (PROTOCOL.md "Initial sync") --------------------------------------------

    async def _on_init_start(self, msg: SrvInitStart) -> list[Instruction]:
        await self._port.begin_initial_sync(msg.server_lsn)
        self._init_rows = 0
        return []

    async def _on_init_changes(
        self, msg: SrvInitChanges | SrvInitRows | InitChunkFrame
    ) -> list[Instruction]:
        seq = msg.sequence
        if isinstance(msg, InitChunkFrame):  # the Changes side decodes the rows
            rows = msg.rows
            await self._stage_ahead(self._port.stage_initial_json(seq.table, msg.text))
        elif isinstance(msg, SrvInitRows):  # decoded already (not through ``handle_text``)
            rows = len(msg.rows)
            text = encode_message(msg)
            await self._stage_ahead(self._port.stage_initial_json(seq.table, text))
        else:
            for index, change in enumerate(msg.changes):
                if change.operation is not Operation.INSERT or change.table != seq.table:
                    text = f"changes[{index}] must be an insert into {seq.table!r}"
                    log.warning("malformed srv_init_changes: %s", text)
                    return [self._error_reply(ErrorCode.INVALID_FIELD, text, msg.message_id)]
            rows = len(msg.changes)
            await self._stage_ahead(self._port.stage_initial_chunk(seq.table, msg.changes))
        self._init_rows += rows
        self.init_progress = InitProgress(seq.table, seq.chunk, seq.total, self._init_rows)
        return [Send(self._make(CltInitReceived, table=seq.table, chunk=seq.chunk))]

    async def _stage_ahead(self, stage: Coroutine[Any, Any, None]) -> None:
        """Hand a chunk to the port without waiting for it to be staged (module docstring).

        Waits first for the oldest stages while ``STAGE_AHEAD`` are in flight (a
        failed one raises here).  The new stage's task gets one loop turn before
        this returns, so its port call is posted before any call made after it.
        """
        while len(self._staging) >= STAGE_AHEAD:
            await self._staging.pop(0)
        self._staging.append(asyncio.ensure_future(stage))
        await asyncio.sleep(0)

    async def _on_init_complete(self, msg: SrvInitComplete) -> list[Instruction]:
        while self._staging:  # every chunk staged before the commit; a failure raises
            await self._staging.pop(0)
        outcome = await self._port.commit_initial_sync(msg.server_lsn)
        self._lsn = LsnManager(max(outcome.lsn, msg.server_lsn))
        log.info("initial sync committed at %s (%d rows)", format_lsn(self.lsn), self._init_rows)
        return [Send(self._make(CltInitProcessed))]

    # --- catchup and live (PROTOCOL.md "Catchup", "Live") -------------------------------------

    async def _apply(
        self, changes: Sequence[TableChange], last_lsn: int, source: str, server_time: int
    ) -> None:
        """Apply a batch; the frame's time feeds the clock with it (``_TIMED_BY_APPLY``)."""
        fresh = [c for c in changes if c.lsn is None or self._lsn.is_new(c.lsn)]
        if not fresh and not self._lsn.is_new(last_lsn):
            log.info("%s batch up to %s already applied; acknowledging only", source, last_lsn)
            if server_time > 0:
                await self._port.observe_server_time(server_time)
            return
        outcome = await self._port.apply_server_changes(
            fresh, last_lsn, source=source, server_time=server_time
        )
        self._lsn.advance(max(outcome.lsn, last_lsn))

    async def _on_catchup_changes(self, msg: SrvCatchupChanges) -> list[Instruction]:
        await self._apply(msg.changes, msg.last_lsn, "catchup", msg.timestamp)
        reply = self._make(CltCatchupReceived, chunk=msg.sequence.chunk, lsn=msg.last_lsn)
        return [Send(reply)]

    async def _on_catchup_completed(self, msg: SrvCatchupCompleted) -> list[Instruction]:
        if not msg.success:
            self.last_error = f"catchup failed on the server: {msg.error or 'no reason given'}"
            log.warning(self.last_error)
            self.phase = SyncPhase.CONNECTING
            return [Reconnect("catchup failed")]
        if self._lsn.is_new(msg.final_lsn):
            # Everything up to finalLSN was sent (our own changes left out): move on.
            await self._port.advance_lsn(msg.final_lsn)
            self._lsn.advance(msg.final_lsn)
        self.init_progress = None
        log.info("live at %s after %d catchup change(s)", format_lsn(self.lsn), msg.change_count)
        return [FlushLocalChanges()]

    async def _on_live_changes(self, msg: SrvLiveChanges) -> list[Instruction]:
        await self._apply(msg.changes, msg.last_lsn, "live", msg.timestamp)
        ids = tuple(change.id for change in msg.changes)
        return [Send(self._make(CltChangesApplied, change_ids=ids, last_lsn=msg.last_lsn))]

    async def _on_lsn_update(self, msg: SrvLsnUpdate) -> list[Instruction]:
        if self._lsn.is_new(msg.lsn):
            await self._port.advance_lsn(msg.lsn)
            self._lsn.advance(msg.lsn)
        return []

    # --- our changes (PROTOCOL.md "Client changes") -------------------------------------------

    async def _on_changes_received(self, msg: SrvChangesReceived) -> list[Instruction]:
        self._client_changes.on_received(msg.change_ids)
        return []

    async def _on_changes_applied(self, msg: SrvChangesApplied) -> list[Instruction]:
        known = self._client_changes.on_applied(msg.results, msg.applied_changes)
        if known:
            await self._port.record_results(known)
            self.acked_lsn = max([self.acked_lsn, *(r.lsn or 0 for r in known)])
        if not msg.success:
            self.last_error = f"server failed to apply changes: {msg.error or 'no reason given'}"
            log.warning(self.last_error)
            if not msg.results:
                self._client_changes.fail_batch()  # resent on the next flush or connection
                return []
        return [FlushLocalChanges()] if self._client_changes.can_send() else []

    # --- errors (PROTOCOL.md "Errors") --------------------------------------------------------

    async def _on_table_checksums(self, msg: SrvTableChecksums) -> list[Instruction]:
        if self.phase is not SyncPhase.LIVE:
            return []
        return [VerifyChecksums(msg.lsn, dict(msg.checksums))]

    async def _on_error(self, msg: SrvError) -> list[Instruction]:
        if msg.code in REINIT_ERROR_CODES:
            log.warning(
                "server says %s (%s): clearing synced data, resyncing from 0/0", msg.code, msg.error
            )
            await self._port.reset_for_reinit()
            self.acked_lsn = 0
            self._lsn.reset()
            self.last_error = None
            self.phase = SyncPhase.DISCONNECTED
            return [Reconnect(f"reinit after {msg.code}")]
        self.last_error = f"{msg.code}: {msg.error}"
        log.warning("server error %s", self.last_error)
        batch_id = self._client_changes.batch_message_id
        if batch_id is not None and msg.ref_message_id == batch_id:
            self._client_changes.fail_batch()  # the batch was refused as a whole
        # It may answer a table repair request (an old server: ``unknown_type``).
        return [RepairFrame(msg)] if msg.ref_message_id is not None else []

    async def _on_resync(
        self, msg: SrvResyncStart | SrvResyncChanges | SrvResyncComplete
    ) -> list[Instruction]:
        return [RepairFrame(msg)]

    # --- helpers ------------------------------------------------------------------------------

    def _make(self, cls: type[Message], **values: object) -> Message:
        return make(cls, self._client_id, self._wall_ms(), **values)

    def _error_reply(self, code: str, text: str, ref: str | None) -> Send:
        """Answer a frame we cannot use with ``clt_error``, and show it in the status."""
        if self.last_error is None or code != ErrorCode.INTERNAL:
            self.last_error = f"bad frame from the server ({code}): {text[:200]}"
        return Send(self._make(CltError, code=str(code), error=text[:500], ref_message_id=ref))


#: Frames whose time reaches the clock with their ``apply_server_changes`` call rather
#: than with an ``observe_server_time`` post before it: one message less between the
#: workers in front of every live batch.
_TIMED_BY_APPLY = frozenset({T.SRV_LIVE_CHANGES, T.SRV_CATCHUP_CHANGES})


def _ends_connection(out: list[Instruction]) -> bool:
    return any(isinstance(item, Reconnect) for item in out)


_Handler = Callable[[MessageProcessor, Any], Awaitable[list[Instruction]]]

_HANDLERS: dict[MessageType, _Handler] = {
    T.SRV_INIT_START: MessageProcessor._on_init_start,
    T.SRV_INIT_CHANGES: MessageProcessor._on_init_changes,
    T.SRV_INIT_ROWS: MessageProcessor._on_init_changes,
    T.SRV_INIT_COMPLETE: MessageProcessor._on_init_complete,
    T.SRV_CATCHUP_CHANGES: MessageProcessor._on_catchup_changes,
    T.SRV_CATCHUP_COMPLETED: MessageProcessor._on_catchup_completed,
    T.SRV_LIVE_CHANGES: MessageProcessor._on_live_changes,
    T.SRV_LSN_UPDATE: MessageProcessor._on_lsn_update,
    T.SRV_CHANGES_RECEIVED: MessageProcessor._on_changes_received,
    T.SRV_CHANGES_APPLIED: MessageProcessor._on_changes_applied,
    T.SRV_ERROR: MessageProcessor._on_error,
    T.SRV_TABLE_CHECKSUMS: MessageProcessor._on_table_checksums,
    T.SRV_RESYNC_START: MessageProcessor._on_resync,
    T.SRV_RESYNC_CHANGES: MessageProcessor._on_resync,
    T.SRV_RESYNC_COMPLETE: MessageProcessor._on_resync,
}
