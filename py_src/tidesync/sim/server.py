"""The real server logic (``Store``, ``Hub``, ``Session``) driven in-process, without threads.

``app.py`` runs each session step in a worker thread and a tailer task that
polls the file; neither can run on the virtual-time loop (a thread would make
the schedule depend on the OS).  ``SimServer`` does what ``app.py``'s
``_Connection`` does, synchronously: a frame in -> ``Session.receive`` ->
frames out in order; after a step that committed, it reads the new history into
the hub's ring (``Hub.poll``, what the tailer does) and wakes every session with
``history_available``; a heartbeat timer per connection calls ``tick``; a second
connection of a client replaces the first with 4409.  Exceptions raised by the
server code are findings: they are recorded and the connection closed (1011),
as the ASGI server would.

``crash()`` drops all process state (sessions, ring, connections) as a killed
process would; ``restart()`` opens the same file again.  Committed data
survives: SQLite in WAL mode loses nothing committed when a process dies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidesync.server.hub import Hub
from tidesync.server.session import Output, Session, SessionConfig, open_session
from tidesync.server.store import Store
from tidesync.sim.loop import seeded_sqlite
from tidesync.sim.network import Link
from tidesync.worker_sync.shared.message_types import encode_message

__all__ = ["SimServer"]

log = logging.getLogger(__name__)

CLOSE_INTERNAL = 1011


@dataclass(eq=False)
class _Conn:
    link: Link
    session: Session
    timer: asyncio.TimerHandle | None = None


class SimServer:
    """One server process over one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: Path,
        schema_sql: str | None,
        config: SessionConfig,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        wall_ms: Callable[[], int],
    ) -> None:
        self.path = path
        self.schema_sql = schema_sql
        self.config = config
        self.loop = loop
        self.rng = rng
        self.wall_ms = wall_ms
        self.up = False
        self.store: Store | None = None
        self.hub: Hub | None = None
        self.conns: dict[Link, _Conn] = {}
        self.by_client: dict[str, _Conn] = {}
        self.events: Counter[str] = Counter()
        self.errors: list[str] = []
        self.restart()

    # --- process lifecycle --------------------------------------------------------------------

    def restart(self) -> None:
        """Start the process: open the file (schema objects created if missing)."""
        self.store = Store(self.path, self.schema_sql)
        seeded_sqlite(self.store.writer, self.rng)
        self.hub = Hub(self.store)
        self.up = True

    def crash(self) -> None:
        """The process dies: every connection resets, nothing in memory survives."""
        self.events["crash"] += 1
        self.up = False
        for conn in list(self.conns.values()):
            conn.link.reset = True
            conn.link.server_close(1006, "server process died")
            self._forget(conn)
        self.conns.clear()
        self.by_client.clear()
        self._close_files()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._forget(conn)
        self._close_files()
        self.up = False

    def _close_files(self) -> None:
        hub, store = self.hub, self.store
        self.hub = self.store = None
        if hub is not None:
            # The hub has no close(); its connections die with the process.
            for conn in (getattr(hub, "_tail_conn", None), getattr(hub._local, "conn", None)):
                if conn is not None:
                    conn.close()
        if store is not None:
            store.close()

    # --- the network's calls (ServerEnd) ------------------------------------------------------

    def accept(self, link: Link, client_id: str | None, lsn_text: str | None) -> None:
        hub = self.hub
        assert hub is not None
        try:
            session, output = open_session(client_id, lsn_text, hub, self.config, self.wall_ms())
        except Exception:
            self._failure(link, None, "open_session")
            return
        if session is None:
            self.events["refused"] += 1
            self._send(link, output)
            return
        conn = _Conn(link, session)
        old = self.by_client.get(session.client_id)
        self.conns[link] = conn
        self.by_client[session.client_id] = conn
        if old is not None:
            self.events["replaced"] += 1
            self._forget(old)
            old.link.server_close(4409, "replaced by a newer connection")
        self._send(link, output)
        self._arm(conn)

    def on_frame(self, link: Link, text: str) -> None:
        conn = self.conns.get(link)
        if conn is not None:
            self._step(conn, "receive", lambda: conn.session.receive(text, self.wall_ms()))

    def on_disconnect(self, link: Link) -> None:
        conn = self.conns.get(link)
        if conn is not None:
            self._forget(conn)

    # --- driving sessions ---------------------------------------------------------------------

    def _step(self, conn: _Conn, what: str, call: Callable[[], Output]) -> None:
        assert self.hub is not None
        try:
            output = call()
        except Exception:
            self._failure(conn.link, conn, what)
            return
        self._send(conn.link, output)
        if output.close_code is not None:
            self._forget(conn)
        self.external_commit()

    def external_commit(self) -> None:
        """Read new history into the ring and wake every session (the tailer's job)."""
        if self.hub is not None and self.hub.poll():
            for other in list(self.conns.values()):
                self.loop.call_soon(self._wake, other)

    def _wake(self, conn: _Conn) -> None:
        if self.conns.get(conn.link) is conn:
            self._step(
                conn, "history_available", lambda: conn.session.history_available(self.wall_ms())
            )

    def _arm(self, conn: _Conn) -> None:
        """The heartbeat timer: ``tick`` at the session's deadline (``app.py``'s ticker)."""
        now = self.wall_ms()
        delay = max(0.001, (conn.session.next_deadline - now) / 1000.0)
        conn.timer = self.loop.call_later(delay, self._tick, conn)

    def _tick(self, conn: _Conn) -> None:
        if self.conns.get(conn.link) is not conn:
            return
        self._step(conn, "tick", lambda: conn.session.tick(self.wall_ms()))
        if self.conns.get(conn.link) is conn:
            self._arm(conn)
        else:
            self.events["heartbeat_timeout"] += 1

    def _send(self, link: Link, output: Output) -> None:
        for message in output.messages:
            link.server_send(encode_message(message))
        if output.close_code is not None:
            link.server_close(output.close_code, output.close_reason)

    def _forget(self, conn: _Conn) -> None:
        """The connection is over for the server: stop its timer, close its session."""
        if conn.timer is not None:
            conn.timer.cancel()
        self.conns.pop(conn.link, None)
        if self.by_client.get(conn.session.client_id) is conn:
            del self.by_client[conn.session.client_id]
        try:
            conn.session.close()
        except Exception:
            self.errors.append("session.close raised:\n" + traceback.format_exc(limit=6))

    def _failure(self, link: Link, conn: _Conn | None, what: str) -> None:
        text = f"server {what} raised:\n" + traceback.format_exc(limit=8)
        log.error("%s", text)
        self.errors.append(text)
        if conn is not None:
            self._forget(conn)
        link.server_close(CLOSE_INTERNAL, "internal error")
