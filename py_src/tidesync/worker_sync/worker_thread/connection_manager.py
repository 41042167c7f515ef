"""Sans-I/O connection lifecycle: connect, heartbeat, dead peer, reconnect with backoff.

No socket, no sleep, no wall clock here: every input carries ``now`` (seconds on
a monotonic clock), every output is an action for the driver to execute, and
``next_deadline()`` says when to call ``tick`` next.  ``SyncWorker`` drives it
natively and in the browser alike.

States and what moves them are one table (``TRANSITIONS``, h11 style); an
event missing from the table raises ``ConnectionStateError`` naming both::

    DISCONNECTED --connect_requested--> CONNECTING --opened--> OPEN
    CONNECTING/OPEN --closed|failed|dead peer|connect timeout--> BACKOFF --deadline--> CONNECTING
    OPEN --closed 4409 (replaced)--> DISCONNECTED   (no automatic reconnect)
    any --go_offline--> OFFLINE --go_online--> CONNECTING
    any --stop--> STOPPED (terminal)

Invariants: at most one socket is wanted at a time; every path that leaves
CONNECTING or OPEN emits ``SessionEnded`` exactly once, so the driver can reset
per-connection state (in-flight changes, a half-received snapshot) in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "FATAL_CLOSE_CODES",
    "REPLACED_CLOSE_CODE",
    "Action",
    "BackoffPolicy",
    "CloseSocket",
    "ConnectionManager",
    "ConnectionState",
    "ConnectionStateError",
    "OpenSocket",
    "SendHeartbeat",
    "SessionEnded",
]

log = logging.getLogger(__name__)

#: PROTOCOL.md "Transport": protocol violation, unauthenticated, forbidden.
FATAL_CLOSE_CODES = frozenset({4400, 4401, 4403})
#: A newer connection of the same client took over: do not fight it.
REPLACED_CLOSE_CODE = 4409
#: Our own close code when the peer stayed silent for too long.
PEER_SILENT_CLOSE_CODE = 4000
#: Heartbeat intervals of silence after which the peer counts as dead (PROTOCOL.md).
DEAD_AFTER_INTERVALS = 3


class ConnectionState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    OPEN = "open"
    BACKOFF = "backoff"
    OFFLINE = "offline"
    STOPPED = "stopped"


class _Event(StrEnum):
    CONNECT_REQUESTED = "connect_requested"
    OPENED = "opened"
    FRAME_RECEIVED = "frame_received"
    CLOSED = "closed"
    TICK = "tick"
    GO_OFFLINE = "go_offline"
    GO_ONLINE = "go_online"
    RESTART = "restart"
    STOP = "stop"


class ConnectionStateError(RuntimeError):
    """The driver fed an event the current state has no transition for."""


@dataclass(frozen=True)
class OpenSocket:
    """Open a new socket (the driver builds the URL with the current LSN)."""

    attempt: int


@dataclass(frozen=True)
class SendHeartbeat:
    """Send ``clt_heartbeat`` now."""


@dataclass(frozen=True)
class CloseSocket:
    """Close the current socket with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True)
class SessionEnded:
    """The current connection is over: reset everything that belonged to it."""

    code: int
    reason: str


Action = OpenSocket | SendHeartbeat | CloseSocket | SessionEnded


@dataclass(frozen=True)
class BackoffPolicy:
    """Reconnect delays: ``base * 2**attempt`` capped, with "equal jitter".

    The delay lies in ``[d/2, d]`` so clients that lost the same server spread
    out, yet nobody waits longer than the cap.  Fatal close codes wait
    ``fatal_delay`` instead; a connection that stayed open ``healthy_after``
    seconds resets the attempt count.
    """

    base: float = 0.5
    cap: float = 30.0
    fatal_delay: float = 60.0
    healthy_after: float = 10.0

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        ceiling = min(self.cap, self.base * (2.0 ** min(attempt, 32)))
        return ceiling / 2 + random() * ceiling / 2


_Handler = Callable[["ConnectionManager", float, int, str], list[Action]]


class ConnectionManager:
    """The connection's state machine; see the module docstring for the diagram."""

    def __init__(
        self,
        *,
        heartbeat_interval: float = 5.0,
        backoff: BackoffPolicy | None = None,
        connect_timeout: float | None = None,
        random: Callable[[], float],
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        self.heartbeat_interval = heartbeat_interval
        self.backoff = backoff or BackoffPolicy()
        self.connect_timeout = (
            connect_timeout if connect_timeout is not None else max(10.0, 3 * heartbeat_interval)
        )
        self._random = random
        self.state = ConnectionState.DISCONNECTED
        self.attempt = 0  # consecutive failed attempts; drives the backoff
        self.last_error: str | None = None
        self._connecting_since = 0.0
        self._opened_at = 0.0
        self._last_frame_at = 0.0
        self._next_heartbeat_at = 0.0
        self._retry_at: float | None = None

    # --- inputs -----------------------------------------------------------------------------

    def connect_requested(self, now: float) -> list[Action]:
        return self._dispatch(_Event.CONNECT_REQUESTED, now)

    def opened(self, now: float) -> list[Action]:
        return self._dispatch(_Event.OPENED, now)

    def frame_received(self, now: float) -> list[Action]:
        """Any frame proves the peer alive (not only ``srv_heartbeat``)."""
        return self._dispatch(_Event.FRAME_RECEIVED, now)

    def closed(self, now: float, code: int, reason: str = "") -> list[Action]:
        return self._dispatch(_Event.CLOSED, now, code, reason)

    def failed(self, now: float, error: str) -> list[Action]:
        """The socket failed without a close frame (refused, reset, DNS...)."""
        return self._dispatch(_Event.CLOSED, now, 1006, error)

    def tick(self, now: float) -> list[Action]:
        return self._dispatch(_Event.TICK, now)

    def set_online(self, now: float, online: bool) -> list[Action]:
        """The go-offline toggle (``navigator.onLine`` in the browser)."""
        return self._dispatch(_Event.GO_ONLINE if online else _Event.GO_OFFLINE, now)

    def restart(self, now: float, reason: str) -> list[Action]:
        """Drop the connection and reconnect at once (``lsn_ahead`` reinit)."""
        return self._dispatch(_Event.RESTART, now, 1000, reason)

    def stop(self, now: float) -> list[Action]:
        return self._dispatch(_Event.STOP, now, 1000, "client stopped")

    # --- outputs ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.OPEN

    def next_deadline(self) -> float | None:
        """When ``tick`` must be called next (None: only an input can change anything)."""
        if self.state is ConnectionState.CONNECTING:
            return self._connecting_since + self.connect_timeout
        if self.state is ConnectionState.OPEN:
            return min(self._next_heartbeat_at, self._dead_at())
        if self.state is ConnectionState.BACKOFF:
            return self._retry_at
        return None

    def reconnect_in(self, now: float) -> float | None:
        """Seconds until the next connection attempt, for the status countdown."""
        if self.state is not ConnectionState.BACKOFF or self._retry_at is None:
            return None
        return max(0.0, self._retry_at - now)

    # --- transitions ------------------------------------------------------------------------

    def _dispatch(self, event: _Event, now: float, code: int = 0, reason: str = "") -> list[Action]:
        handler = TRANSITIONS.get((self.state, event))
        if handler is None:
            raise ConnectionStateError(f"no transition for event {event} in state {self.state}")
        return handler(self, now, code, reason)

    def _ignore(self, now: float, code: int, reason: str) -> list[Action]:
        return []

    def _start_connecting(self, now: float, code: int = 0, reason: str = "") -> list[Action]:
        self.state = ConnectionState.CONNECTING
        self._connecting_since = now
        self._retry_at = None
        return [OpenSocket(self.attempt)]

    def _on_opened(self, now: float, code: int, reason: str) -> list[Action]:
        self.state = ConnectionState.OPEN
        self._opened_at = self._last_frame_at = now
        self._next_heartbeat_at = now + self.heartbeat_interval
        return []

    def _on_frame(self, now: float, code: int, reason: str) -> list[Action]:
        self._last_frame_at = max(self._last_frame_at, now)
        return []

    def _on_closed(self, now: float, code: int, reason: str) -> list[Action]:
        was_open = self.state is ConnectionState.OPEN
        if was_open and now - self._opened_at >= self.backoff.healthy_after:
            self.attempt = 0
        ended: list[Action] = [SessionEnded(code, reason)]
        if code == REPLACED_CLOSE_CODE:
            self.last_error = "replaced by a newer connection of this client (4409)"
            log.warning("connection replaced (4409); not reconnecting")
            self.state = ConnectionState.DISCONNECTED
            self._retry_at = None
            return ended
        if code in FATAL_CLOSE_CODES:
            self.last_error = f"server closed the connection: {code} {reason}".strip()
            log.error("%s; retrying in %.0f s", self.last_error, self.backoff.fatal_delay)
            return ended + self._enter_backoff(now, fatal=True)
        if not was_open:
            self.last_error = f"cannot reach the server ({reason or code}); retrying"
        elif code != 1000:
            self.last_error = f"connection lost ({code}{' ' + reason if reason else ''})"
        log.info("connection ended (%s %s); reconnecting", code, reason)
        return ended + self._enter_backoff(now, fatal=False)

    def _enter_backoff(self, now: float, *, fatal: bool) -> list[Action]:
        delay = self.backoff.delay(self.attempt, self._random)
        if fatal:
            delay = max(delay, self.backoff.fatal_delay)
        self.attempt += 1
        self.state = ConnectionState.BACKOFF
        self._retry_at = now + delay
        return []

    def _drop(self, now: float, code: int, reason: str) -> list[Action]:
        """Close our socket on purpose and end the session (no backoff decided here)."""
        return [CloseSocket(code, reason), SessionEnded(code, reason)]

    def _dead_at(self) -> float:
        return self._last_frame_at + DEAD_AFTER_INTERVALS * self.heartbeat_interval

    def _tick_connecting(self, now: float, code: int, reason: str) -> list[Action]:
        if now < self._connecting_since + self.connect_timeout:
            return []
        log.info("connect timed out after %.1f s", self.connect_timeout)
        return self._drop(now, 1000, "connect timeout") + self._enter_backoff(now, fatal=False)

    def _tick_open(self, now: float, code: int, reason: str) -> list[Action]:
        if now >= self._dead_at():
            log.warning(
                "peer silent for %d heartbeat intervals; reconnecting", DEAD_AFTER_INTERVALS
            )
            actions = self._drop(now, PEER_SILENT_CLOSE_CODE, "peer silent")
            return actions + self._enter_backoff(now, fatal=False)
        if now >= self._next_heartbeat_at:
            self._next_heartbeat_at = now + self.heartbeat_interval
            return [SendHeartbeat()]
        return []

    def _tick_backoff(self, now: float, code: int, reason: str) -> list[Action]:
        if self._retry_at is not None and now >= self._retry_at:
            return self._start_connecting(now)
        return []

    def _go_offline(self, now: float, code: int, reason: str) -> list[Action]:
        actions: list[Action] = []
        if self.state in (ConnectionState.CONNECTING, ConnectionState.OPEN):
            actions = self._drop(now, 1000, "client offline")
        self.state = ConnectionState.OFFLINE
        self._retry_at = None
        return actions

    def _go_online(self, now: float, code: int, reason: str) -> list[Action]:
        self.attempt = 0
        return self._start_connecting(now)

    def _restart(self, now: float, code: int, reason: str) -> list[Action]:
        actions: list[Action] = []
        if self.state in (ConnectionState.CONNECTING, ConnectionState.OPEN):
            actions = self._drop(now, code, reason)
        self.attempt = 0
        return actions + self._start_connecting(now)

    def _stop(self, now: float, code: int, reason: str) -> list[Action]:
        actions: list[Action] = []
        if self.state in (ConnectionState.CONNECTING, ConnectionState.OPEN):
            actions = self._drop(now, code, reason)
        self.state = ConnectionState.STOPPED
        self._retry_at = None
        return actions


def _table() -> dict[tuple[ConnectionState, _Event], _Handler]:
    S, E, C = ConnectionState, _Event, ConnectionManager
    ignore = C._ignore
    # Socket events for a state without a socket come from a socket already given up
    # (a close racing our own close); they change nothing.
    stale = {E.OPENED: ignore, E.FRAME_RECEIVED: ignore, E.CLOSED: ignore}
    rows: dict[ConnectionState, dict[_Event, _Handler]] = {
        S.DISCONNECTED: {
            E.CONNECT_REQUESTED: C._start_connecting,
            E.TICK: ignore,
            E.GO_OFFLINE: C._go_offline,
            E.GO_ONLINE: ignore,
            E.RESTART: C._restart,
            E.STOP: C._stop,
            **stale,
        },
        S.CONNECTING: {
            E.CONNECT_REQUESTED: ignore,
            E.OPENED: C._on_opened,
            E.FRAME_RECEIVED: ignore,
            E.CLOSED: C._on_closed,
            E.TICK: C._tick_connecting,
            E.GO_OFFLINE: C._go_offline,
            E.GO_ONLINE: ignore,
            E.RESTART: C._restart,
            E.STOP: C._stop,
        },
        S.OPEN: {
            E.CONNECT_REQUESTED: ignore,
            E.FRAME_RECEIVED: C._on_frame,
            E.CLOSED: C._on_closed,
            E.TICK: C._tick_open,
            E.GO_OFFLINE: C._go_offline,
            E.GO_ONLINE: ignore,
            E.RESTART: C._restart,
            E.STOP: C._stop,
        },
        S.BACKOFF: {
            E.CONNECT_REQUESTED: ignore,
            E.TICK: C._tick_backoff,
            E.GO_OFFLINE: C._go_offline,
            E.GO_ONLINE: ignore,
            E.RESTART: C._restart,
            E.STOP: C._stop,
            **stale,
        },
        S.OFFLINE: {
            E.CONNECT_REQUESTED: ignore,
            E.TICK: ignore,
            E.GO_OFFLINE: ignore,
            E.GO_ONLINE: C._go_online,
            E.RESTART: ignore,
            E.STOP: C._stop,
            **stale,
        },
        S.STOPPED: {
            E.TICK: ignore,
            E.GO_OFFLINE: ignore,
            E.GO_ONLINE: ignore,
            E.RESTART: ignore,
            E.STOP: ignore,
            **stale,
        },
    }
    return {(state, event): h for state, row in rows.items() for event, h in row.items()}


#: (state, event) -> handler.  OPEN has no OPENED entry and STOPPED no CONNECT_REQUESTED:
#: those are driver bugs and raise ``ConnectionStateError``.
TRANSITIONS = _table()
