"""``SyncWorker``: the one loop that drives the Sync side over a transport.

It owns the socket (through a ``Transport`` adapter), the client id and the
status; the database belongs to the Changes side, reached only through the
``ChangesPort``.  Every input (frames, socket open/close, local commits, the
offline toggle, timer deadlines) goes through one queue and is handled to the
end before the next one, so server messages are processed strictly one at a
time and in order, and the pure cores (``ConnectionManager``,
``MessageProcessor``, ``ClientChanges``) never see concurrency.

Sockets are numbered (``_gen``); events of a socket already given up are
dropped, which is what keeps a late close of an old connection from touching
the new one.

The same class runs natively (``websockets``) and in Pyodide (``js.WebSocket``):
it uses asyncio only, never threads, and imports no socket library.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from tidesync.worker_sync.shared.changes_port import ChangesPort
from tidesync.worker_sync.shared.lsn_manager import format_lsn
from tidesync.worker_sync.shared.message_types import (
    CltError,
    CltHeartbeat,
    CltRequestChecksums,
    CltResyncReceived,
    CltResyncTables,
    CltSendChanges,
    Message,
    SrvError,
    SrvResyncChanges,
    SrvResyncComplete,
    SrvResyncStart,
    TableChange,
    encode_message,
    make,
    new_message_id,
)
from tidesync.worker_sync.worker_thread.client_changes import DEFAULT_BATCH_SIZE, ClientChanges
from tidesync.worker_sync.worker_thread.connection_manager import (
    Action,
    BackoffPolicy,
    CloseSocket,
    ConnectionManager,
    OpenSocket,
    SendHeartbeat,
    SessionEnded,
)
from tidesync.worker_sync.worker_thread.integrity import CheckVerdict, IntegrityChecker
from tidesync.worker_sync.worker_thread.message_processor import (
    FlushLocalChanges,
    Instruction,
    MessageProcessor,
    Reconnect,
    RepairFrame,
    Send,
    VerifyChecksums,
)
from tidesync.worker_sync.worker_thread.repair import (
    AbortStaging,
    AckChunk,
    BeginStaging,
    CommitTables,
    FullResync,
    RejectFrame,
    RepairAction,
    RequestTables,
    StageChunk,
    TableRepair,
)
from tidesync.worker_sync.worker_thread.status import SyncPhase, SyncStatus
from tidesync.worker_sync.worker_thread.transport import (
    ABNORMAL_CLOSURE,
    Transport,
    TransportClosed,
    TransportFactory,
)

__all__ = ["SyncWorker", "build_sync_url"]

log = logging.getLogger(__name__)

StatusCallback = Callable[[SyncStatus], None]
R = TypeVar("R")


def build_sync_url(base: str, client_id: str, lsn: int, *, init_rows: bool = False) -> str:
    """``{base}?clientId=<id>&lsn=<H/L>`` (PROTOCOL.md "Transport").

    ``init_rows`` adds ``initFormat=rows``: snapshot chunks as ``srv_init_rows``
    (extension, docs/protocol.md); a server without it ignores the parameter.
    """
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}clientId={quote(client_id, safe='')}&lsn={quote(format_lsn(lsn), safe='/')}"
    return f"{url}&initFormat=rows" if init_rows and lsn == 0 else url


@dataclass(frozen=True)
class _SocketEvent:
    gen: int
    kind: str  # "opened" | "frame" | "closed"
    text: str = ""
    code: int = 0


@dataclass(frozen=True)
class _Command:
    name: str  # "connect" | "local_change" | "online" | "offline" | "stop"
    #: ``local_change`` only: the changes the event carried (``arm_local_changes``)
    #: and which local change heard it was (``SyncWorker._local_heard``).
    changes: tuple[TableChange, ...] | None = None
    seq: int = 0


_Input = _SocketEvent | _Command


class _Inbox:
    """The loop's FIFO of inputs, with one waiter.

    Why not ``asyncio.Queue`` awaited through a getter task and ``asyncio.wait``:
    that put three event-loop turns (the getter's wake-up, its done callback,
    the loop's wake-up) between a frame and its handling, and in Pyodide each
    turn is a browser task.  Here ``put`` wakes the loop directly: one turn.
    """

    def __init__(self) -> None:
        self._items: deque[_Input] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: _Input) -> None:
        self._items.append(item)
        if self._waiter is not None:
            _wake(self._waiter)

    def empty(self) -> bool:
        return not self._items

    async def get(self, timeout: float | None) -> _Input | None:
        """The next input, or None once ``timeout`` seconds passed without one.

        Inputs already waiting are returned first, even when the timeout is
        already over: frames that queued up while a long step ran (a big
        snapshot's commit) go before timers, since they show the peer is alive.
        """
        if not self._items:
            if timeout is not None and timeout <= 0:
                return None
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items:
                return None
        return self._items.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SyncWorker:
    """Connects, keeps the connection alive and routes messages; see the module docstring.

    Use: ``await start()``; call ``notify_local_change()`` after each local
    commit; read ``status`` or subscribe with ``on_status``; ``await stop()``.
    """

    def __init__(
        self,
        port: ChangesPort,
        transport_factory: TransportFactory,
        *,
        url: str,
        heartbeat_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        wall_ms: Callable[[], int] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        backoff: BackoffPolicy | None = None,
        checksum_interval: float = 300.0,
        repair_timeout: float = 30.0,
        init_rows: bool = True,
    ) -> None:
        self._port = port
        self._init_rows = init_rows  # ask for ``srv_init_rows`` (False: act as an old client)
        self._factory = transport_factory
        self._url = url
        self._clock = clock
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._cm = ConnectionManager(
            heartbeat_interval=heartbeat_interval, backoff=backoff, random=random
        )
        self._changes = ClientChanges(batch_size=batch_size)
        self._integrity = IntegrityChecker(interval=checksum_interval)
        self._repair = TableRepair(answer_timeout=repair_timeout)
        self._processor: MessageProcessor | None = None
        self._client_id = ""
        self._events = _Inbox()
        self._gen = 0
        self._connect_lsn = 0
        self._transport: Transport | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._status = SyncStatus()
        self._status_changed = asyncio.Event()
        self._callbacks: list[StatusCallback] = []
        self._pending = 0
        self._pending_dirty = True
        self._local_unseen = False  # a local commit not yet looked at by the loop
        self._local_heard = 0  # local_change events heard (``notify_local_change``)
        self._local_seq = 0  # the Changes side's number of the last commit heard of
        # ``arm_local_changes`` was posted and the Changes side has not used it up yet
        # (a read, a carried event or a disarm since).
        self._armed = False
        self._loop_error: str | None = None
        # Heartbeats while one frame's handling runs long (``_heartbeating``).
        self._handling_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._beats: set[asyncio.Task[None]] = set()

    # --- public API ---------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def status(self) -> SyncStatus:
        return self._status

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback`` with every new status; returns the unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def start(self) -> None:
        """Read the client id and LSN from the Changes side, then start connecting."""
        if self._run_task is not None:
            raise RuntimeError("SyncWorker already started")
        state = await self._port.local_state()
        self._client_id = state.client_id
        self._processor = MessageProcessor(
            self._port, self._changes, client_id=state.client_id, wall_ms=self._wall_ms
        )
        self._processor.begin(state.lsn)
        self._processor.phase = SyncPhase.DISCONNECTED
        self._pending = state.pending_count
        self._pending_dirty = False
        self._run_task = asyncio.ensure_future(self._run())
        self._events.put_nowait(_Command("connect"))

    async def stop(self) -> None:
        """Close the socket (1000) and end the loop; the database is untouched."""
        if self._run_task is None:
            return
        self._events.put_nowait(_Command("stop"))
        await self._run_task

    def notify_local_change(
        self, changes: Sequence[TableChange] | None = None, seq: int | None = None
    ) -> None:
        """A local commit happened: update ``pending`` and, when live, send it.

        ``changes``: what the Changes side read for us right after the commit, when
        it was armed (``ChangesPort.arm_local_changes``); sent as they are when
        nothing happened meanwhile that they may not cover (``_send_carried``).
        ``seq``: the Changes side's number for the commit, echoed in the status
        (``SyncStatus.local_seq``) once ``pending`` counts it.
        """
        if seq is not None and seq > self._local_seq:
            self._local_seq = seq
        self._local_unseen = True
        self._pending_dirty = True
        self._changes.local_commit()
        self._local_heard += 1
        carried = tuple(changes) if changes else None
        self._events.put_nowait(_Command("local_change", carried, self._local_heard))

    def verify_integrity(self) -> None:
        """Compare table checksums with the server as soon as live and idle."""
        self._events.put_nowait(_Command("checksum"))

    def go_offline(self) -> None:
        self._events.put_nowait(_Command("offline"))

    def go_online(self) -> None:
        self._events.put_nowait(_Command("online"))

    async def wait_until_synced(self, timeout: float | None = None) -> SyncStatus:
        """Wait until live, nothing pending, and our LSN covering our acknowledged changes.

        Raises ``TimeoutError`` with the status.
        """

        async def synced() -> SyncStatus:
            self.notify_local_change()  # recount pending from the database first
            while not (
                self._status.synced
                and not self._local_unseen
                and self._proc.lsn >= self._proc.acked_lsn
            ):
                await self._status_changed.wait()
            return self._status

        try:
            return await asyncio.wait_for(synced(), timeout)
        except TimeoutError:
            raise TimeoutError(f"not synced after {timeout} s: {self._status}") from None

    # --- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                deadline = _earliest(
                    self._cm.next_deadline(), self._integrity_deadline(), self._repair.deadline()
                )
                timeout = None if deadline is None else max(0.0, deadline - self._clock())
                event = await self._events.get(timeout)
                try:
                    if event is not None:
                        if isinstance(event, _Command) and event.name == "stop":
                            await self._execute(self._cm.stop(self._clock()))
                            break
                        await self._dispatch(event)
                    else:
                        await self._execute(self._cm.tick(self._clock()))
                        await self._maybe_check_integrity()
                        if self._pending:
                            # A batch the server failed to apply (``success: false``, e.g.
                            # its disk was full) is retried here, at most once per tick.
                            await self._flush()
                    await self._drive_repair()
                except Exception as exc:  # a bug or a failing port: log, keep the loop alive
                    log.exception("sync loop step failed")
                    self._loop_error = f"{type(exc).__name__}: {exc}"
                await self._publish()
        finally:
            self._handling_since = None
            if self._watchdog is not None:
                self._watchdog.cancel()
            await self._teardown_socket()
            if self._closing:
                await asyncio.wait(self._closing, timeout=2.0)
            await self._publish()

    async def _dispatch(self, event: _SocketEvent | _Command) -> None:
        now = self._clock()
        if isinstance(event, _Command):
            if event.name == "connect":
                await self._execute(self._cm.connect_requested(now))
            elif event.name in ("online", "offline"):
                await self._execute(self._cm.set_online(now, event.name == "online"))
            elif event.name == "local_change":
                self._local_unseen = False
                if event.changes is None or not await self._send_carried(event):
                    await self._flush()
            elif event.name == "checksum":
                self._integrity.request_now(now)
                await self._maybe_check_integrity()
            return
        if event.gen != self._gen:
            return  # a socket we already gave up
        if event.kind == "opened":
            await self._execute(self._cm.opened(now))
            self._proc.begin(self._connect_lsn)
        elif event.kind == "frame":
            await self._execute(self._cm.frame_received(now))
            was_live = self._proc.phase is SyncPhase.LIVE
            await self._follow(await self._heartbeating(self._proc.handle_text(event.text)))
            if not was_live and self._proc.phase is SyncPhase.LIVE:
                self._cm.last_error = self._proc.last_error = self._loop_error = None
                self._integrity.went_live(now)
                await self._maybe_check_integrity()
        else:
            await self._execute(self._cm.closed(now, event.code, event.text))

    async def _heartbeating(self, work: Coroutine[Any, Any, R]) -> R:
        """Handle one frame, sending heartbeats while that takes longer than an interval.

        Handling a frame can wait for a long local write (committing a 50,000-row
        snapshot takes ~15 s in Pyodide on a slow machine) and the loop does not tick
        meanwhile; a client silent for 3 heartbeat intervals is dropped by the server.
        The work is awaited right here (a task per frame cost three event-loop turns
        on the path of every live change); a watchdog timer, armed only while frames
        are handled, sends the heartbeats (``_watch``): at most two intervals of
        silence, under the server's three.
        """
        outer = self._handling_since  # a repair commit runs inside a frame's handling
        if outer is None:
            self._handling_since = self._clock()
        if self._watchdog is None:
            interval = self._cm.heartbeat_interval / 2
            self._watchdog = asyncio.get_running_loop().call_later(interval, self._watch)
        try:
            return await work
        finally:
            if outer is None:
                self._handling_since = None

    def _watch(self) -> None:
        """Watchdog tick: beat when the frame being handled has run for half an interval."""
        self._watchdog = None
        since = self._handling_since
        if since is None:
            return  # idle: the loop's own ticks send heartbeats; re-armed by the next frame
        half = self._cm.heartbeat_interval / 2
        now = self._clock()
        if now - since >= half:
            self._handling_since = now  # the next beat half an interval from this one
            heartbeat = make(CltHeartbeat, self._client_id, self._wall_ms(), lsn=self._proc.lsn)
            task = asyncio.ensure_future(self._send(heartbeat))
            self._beats.add(task)
            task.add_done_callback(self._beats.discard)
        self._watchdog = asyncio.get_running_loop().call_later(half, self._watch)

    async def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, OpenSocket):
                await self._open_socket()
            elif isinstance(action, SendHeartbeat):
                heartbeat = make(CltHeartbeat, self._client_id, self._wall_ms(), lsn=self._proc.lsn)
                await self._send(heartbeat)
            elif isinstance(action, CloseSocket):
                await self._teardown_socket(action.code, action.reason)
            elif isinstance(action, SessionEnded):
                await self._teardown_socket()
                self._changes.on_disconnect()
                await self._disarm()
                self._integrity.connection_lost()
                await self._run_repair(self._repair.connection_lost())
                await self._proc.connection_lost()
                self._pending_dirty = True

    async def _follow(self, instructions: list[Instruction]) -> None:
        for item in instructions:
            if isinstance(item, Send):
                await self._send(item.message)
            elif isinstance(item, FlushLocalChanges):
                self._pending_dirty = True
                await self._flush()
            elif isinstance(item, Reconnect):
                self._pending_dirty = True
                await self._execute(self._cm.restart(self._clock(), item.reason))
            elif isinstance(item, VerifyChecksums):
                await self._verify_checksums(item)
            elif isinstance(item, RepairFrame):
                await self._repair_frame(item.message)

    # --- integrity checks (docs/protocol.md extension) ------------------------------------------

    def _integrity_deadline(self) -> float | None:
        live = self._cm.connected and self._proc.phase is SyncPhase.LIVE
        return self._integrity.deadline() if live else None

    async def _maybe_check_integrity(self) -> None:
        live = self._cm.connected and self._proc.phase is SyncPhase.LIVE
        if self._repair.active:
            return  # a table being repaired differs by design until the swap
        if live and self._integrity.due(self._clock()):
            await self._send(make(CltRequestChecksums, self._client_id, self._wall_ms()))

    async def _verify_checksums(self, answer: VerifyChecksums) -> None:
        # Idle and at the answer's LSN, checked by the Changes side in the same read as
        # the checksums (a write between two calls would look like a corrupt table).
        idle = not self._changes.in_flight
        local = (
            await self._port.table_checksums(list(answer.checksums), if_idle_at=answer.lsn)
            if idle
            else None
        )
        verdict, tables = self._integrity.judge(
            self._clock(),
            server_lsn=answer.lsn,
            server_sums=answer.checksums,
            local_lsn=answer.lsn,
            local_sums=local,
            idle=idle,
        )
        if verdict is CheckVerdict.MISMATCH:
            self._proc.last_error = (
                f"integrity check: {', '.join(tables)} differed from the server at "
                f"{format_lsn(answer.lsn)}; repairing {', '.join(tables)}"
            )
            log.error("%s (repair %d)", self._proc.last_error, self._integrity.repairs)
            self._repair.mismatch(tables)
            await self._drive_repair()
        elif verdict is CheckVerdict.OK:
            log.info("integrity check ok at %s", format_lsn(answer.lsn))

    # --- table repair (docs/protocol.md extension; ``repair`` decides, this does the I/O) ------

    async def _drive_repair(self) -> None:
        live = self._cm.connected and self._proc.phase is SyncPhase.LIVE
        busy = bool(self._changes.in_flight)
        actions = self._repair.poll(self._clock(), live=live, in_flight=busy)
        await self._run_repair(actions)

    async def _repair_frame(self, message: Message) -> None:
        now = self._clock()
        if isinstance(message, SrvError):
            actions = self._repair.on_error(message)
        elif isinstance(message, SrvResyncStart):
            actions = self._repair.on_start(message, now)
        elif isinstance(message, SrvResyncChanges):
            actions = self._repair.on_chunk(message, now)
        else:
            assert isinstance(message, SrvResyncComplete)
            actions = self._repair.on_complete(message, now)
        await self._run_repair(actions)

    async def _run_repair(self, actions: list[RepairAction]) -> None:
        port, cid = self._port, self._client_id
        for action in actions:
            if isinstance(action, RequestTables):
                request = CltResyncTables(
                    client_id=cid,
                    message_id=action.message_id,
                    timestamp=self._wall_ms(),
                    tables=action.tables,
                )
                await self._send(request)
            elif isinstance(action, BeginStaging):
                await port.begin_initial_sync(action.lsn)
            elif isinstance(action, StageChunk):
                await port.stage_initial_chunk(action.table, action.changes)
            elif isinstance(action, AckChunk):
                ack = make(
                    CltResyncReceived, cid, self._wall_ms(), table=action.table, chunk=action.chunk
                )
                await self._send(ack)
            elif isinstance(action, CommitTables):
                await self._commit_repair(action)
            elif isinstance(action, AbortStaging):
                await port.abort_initial_sync()
            elif isinstance(action, FullResync):
                await self._full_resync(action)
            elif isinstance(action, RejectFrame):
                self._proc.last_error = f"bad frame from the server ({action.code}): {action.text}"
                error = make(
                    CltError,
                    cid,
                    self._wall_ms(),
                    code=action.code,
                    error=action.text[:500],
                    ref_message_id=action.ref_message_id,
                )
                await self._send(error)

    async def _commit_repair(self, action: CommitTables) -> None:
        try:
            outcome = await self._heartbeating(
                self._port.commit_table_resync(action.tables, action.lsn)
            )
        except Exception as exc:
            log.exception("committing the table repair failed")
            await self._run_repair(self._repair.commit_failed(f"{type(exc).__name__}: {exc}"))
            return
        self._repair.committed()
        log.warning(
            "integrity repair: %s re-synced at %s (%d rows, %d kept local)",
            ", ".join(action.tables),
            format_lsn(action.lsn),
            outcome.applied,
            outcome.skipped,
        )
        if self._proc.last_error and self._proc.last_error.startswith("integrity check:"):
            self._proc.last_error = None  # repaired: as the full re-sync clears it once live
        self._pending_dirty = True
        await self._flush()  # local writes held back during the repair

    async def _full_resync(self, action: FullResync) -> None:
        """The remedy without the extension: re-sync everything from ``0/0``."""
        self._proc.last_error = (
            f"integrity check: {', '.join(action.tables)} differed from the server; "
            f"re-synced everything ({action.reason})"
        )
        log.error(self._proc.last_error)
        await self._port.reset_for_reinit()
        self._proc.acked_lsn = 0
        await self._execute(self._cm.restart(self._clock(), "integrity repair"))

    def _may_send(self) -> bool:
        """Live, nothing in flight, and no table repair holding batches back."""
        if not (self._cm.connected and self._proc.phase is SyncPhase.LIVE):
            return False
        if self._repair.blocks_sending:
            return False  # results must not land between a repair's snapshot and its swap
        return self._changes.can_send()

    async def _flush(self) -> None:
        """Send the next batch of local changes when live and nothing is in flight.

        With nothing left to read (no ``backlog``) the Changes side is armed instead
        (``arm_local_changes``): the next local commit's event then carries its
        changes, and they are sent without a read (``_send_carried``).
        """
        if not self._may_send():
            return
        if self._changes.backlog:
            self._changes.reading()
            self._armed = False  # the Changes side disarms on this read
            try:
                unsynced = await self._port.unsynced_changes(self._changes.batch_size)
            except BaseException:
                self._changes.local_commit()  # not read after all: still unknown
                raise
            if unsynced:
                await self._send_batch(unsynced)
                return
        if not self._armed and not self._changes.backlog and self._may_send():
            self._armed = True
            await self._port.arm_local_changes(self._changes.batch_size)

    async def _send_carried(self, event: _Command) -> bool:
        """Send the changes a ``local_change`` event carried; False: read them instead.

        They are what ``unsynced_changes`` would have answered right after that
        commit, posted once after ``arm_local_changes``, which was posted only while
        live with nothing in flight and nothing unread.  So they are exactly the
        next batch while that still holds and no later commit was heard (its
        changes would be missing: ``seq``), and the port was armed by us and not
        used up by a read since.  Otherwise the flush reads as before (the changes
        are still pending in the database, so nothing is lost by passing them over).
        """
        armed, self._armed = self._armed, False  # a carried event uses the arming up
        assert event.changes is not None
        if not (armed and event.seq == self._local_heard and self._may_send()):
            return False
        self._changes.reading()
        await self._send_batch(event.changes)
        return True

    async def _disarm(self) -> None:
        """The connection ended: commits need not carry their changes (nor flush for it)."""
        if self._armed:
            self._armed = False
            await self._port.arm_local_changes(0)

    async def _send_batch(self, unsynced: Sequence[TableChange]) -> None:
        """Put the next batch in flight and send it; then count the attempt.

        The frame goes out before ``mark_sent`` counts the attempt: counting is a
        write transaction on the Changes side, and waiting for it first would
        put a commit on the path of every change to the server.  An attempt
        left uncounted (the connection dropped in between) only shows one
        ``attempts`` fewer; ``start_batch`` already marked the batch in flight.
        """
        message_id = new_message_id()
        batch = self._changes.start_batch(unsynced, message_id)
        message = CltSendChanges(
            client_id=self._client_id,
            message_id=message_id,
            timestamp=self._wall_ms(),
            changes=batch,
        )
        log.debug("sending %d local change(s)", len(batch))
        await self._send(message)
        await self._port.mark_sent([change.id for change in batch])

    # --- the socket ---------------------------------------------------------------------------

    async def _open_socket(self) -> None:
        state = await self._port.local_state()
        self._connect_lsn = state.lsn
        self._gen += 1
        url = build_sync_url(self._url, self._client_id, state.lsn, init_rows=self._init_rows)
        transport = self._factory()
        self._transport = transport
        self._reader = asyncio.ensure_future(self._pump(self._gen, transport, url))
        log.info("connecting to %s", url)

    async def _pump(self, gen: int, transport: Transport, url: str) -> None:
        """Reads one socket into the queue; never handles anything itself."""
        put = self._events.put_nowait
        try:
            await transport.open(url)
            put(_SocketEvent(gen, "opened"))
            while True:
                put(_SocketEvent(gen, "frame", await transport.recv()))
        except TransportClosed as exc:
            put(_SocketEvent(gen, "closed", exc.reason, exc.code))
        except Exception as exc:  # refused, reset, DNS: all mean "no connection"
            put(_SocketEvent(gen, "closed", f"{type(exc).__name__}: {exc}", ABNORMAL_CLOSURE))

    async def _send(self, message: Message) -> None:
        transport = self._transport
        if transport is None or not self._cm.connected:
            log.debug("not connected; %s dropped", message.type.value)
            return
        try:
            await transport.send(encode_message(message))
        except Exception as exc:  # the reader reports the close; make sure it is seen
            log.info("send failed (%s); the connection is gone", exc)
            code = exc.code if isinstance(exc, TransportClosed) else ABNORMAL_CLOSURE
            self._events.put_nowait(_SocketEvent(self._gen, "closed", str(exc), code))

    async def _teardown_socket(self, code: int = 1000, reason: str = "") -> None:
        """Forget the current socket (its late events are dropped) and close it."""
        transport, reader = self._transport, self._reader
        self._transport = self._reader = None
        self._gen += 1
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if transport is not None:
            task = asyncio.ensure_future(self._close_quietly(transport, code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(transport: Transport, code: int, reason: str) -> None:
        try:
            await transport.close(code, reason)
        except Exception as exc:
            log.debug("closing the socket failed: %s", exc)

    # --- status -------------------------------------------------------------------------------

    @property
    def _proc(self) -> MessageProcessor:
        if self._processor is None:
            raise RuntimeError("SyncWorker.start() was not called")
        return self._processor

    async def _publish(self) -> None:
        local_seq = self._local_seq  # before the recount: it counts at least these
        if self._pending_dirty:
            self._pending_dirty = False
            known = self._changes.pending()  # without a round trip when nothing is unread
            if known is None:
                known = (await self._port.local_state()).pending_count
            self._pending = known
        proc, now = self._proc, self._clock()
        status = SyncStatus(
            connected=self._cm.connected,
            phase=proc.phase,
            lsn=proc.lsn,
            pending=self._pending,
            last_error=proc.last_error or self._cm.last_error or self._loop_error,
            reconnect_in=self._cm.reconnect_in(now),
            init_progress=proc.init_progress,
            repairs=self._integrity.repairs,
            connection=self._cm.state.value,
            table_repairs=self._repair.table_repairs,
            full_resyncs=self._repair.full_resyncs,
            last_repair=self._repair.last_repaired,
            last_repair_mode=self._repair.last_mode,
            repairing=self._repair.tables if self._repair.active else (),
            local_seq=local_seq,
        )
        # Waiters re-check after every step (``_local_unseen`` may have flipped even
        # when the status itself did not change); callbacks hear only real changes.
        changed, self._status_changed = self._status_changed, asyncio.Event()
        changed.set()
        if status == self._status:
            return
        self._status = status
        for callback in list(self._callbacks):
            try:
                callback(status)
            except Exception:
                log.exception("status callback failed")


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None
