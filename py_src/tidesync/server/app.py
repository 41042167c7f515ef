"""The ASGI app: ``/api/sync`` (WebSocket), ``/api/health``, ``/api/bootstrap`` and the site.

The WebSocket endpoint only moves frames: each connection runs one ``Session``
(sans-I/O) under its own lock and hands the encoded output to a bounded outbox
drained by that connection's writer task.  Steps that may touch the database
file (``Session.blocking``: applying changes, snapshots, catchup) run in a
worker thread, so SQLite work stays off the event loop; the rest (heartbeats,
acknowledgements, ticks, and the live fan-out, served from the hub's ring) run
on the loop itself: a thread hop per message and per session was what bounded
the fan-out.  History growth reaches every live session in one pass over the
subscribers, each sending the hub's shared batch at once.  Nothing here awaits
a socket while holding anything shared, so one slow client never stalls the
others; a client whose outbox overflows is closed with 1013 and catches up on
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mimetypes
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidesync.server.bootstrap import DEFAULT_MAX_BYTES as DEFAULT_BOOTSTRAP_BYTES
from tidesync.server.bootstrap import DEFAULT_MIN_ROWS as DEFAULT_BOOTSTRAP_MIN_ROWS
from tidesync.server.bootstrap import BootstrapImages
from tidesync.server.hub import Hub
from tidesync.server.session import CLOSE_REPLACED, Output, Session, SessionConfig, open_session
from tidesync.server.snapshot_cache import DEFAULT_MAX_BYTES, SnapshotCache
from tidesync.server.store import Store
from tidesync.worker_sync.shared.lsn_manager import format_lsn
from tidesync.worker_sync.shared.message_types import encode_message

__all__ = ["ServerState", "create_app"]

log = logging.getLogger(__name__)

OUTBOX_SIZE = 256
TICK_MAX_S = 30.0
CLOSE_TRY_AGAIN = 1013

for _ext, _type in (
    (".mjs", "text/javascript"),
    (".js", "text/javascript"),
    (".wasm", "application/wasm"),
    (".webmanifest", "application/manifest+json"),
    (".json", "application/json"),
    (".whl", "application/zip"),
):
    mimetypes.add_type(_type, _ext)


class _SiteFiles(StaticFiles):
    """Static files with caching suited to a pinned Pyodide and a changing app."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        scope: Scope = kwargs.get("scope") or args[2]
        path = scope.get("path", "")
        if path.startswith("/pyodide/"):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            response.headers["Cache-Control"] = "no-cache"
        return response


@dataclass
class ServerState:
    store: Store
    hub: Hub
    config: SessionConfig
    connections: dict[str, _Connection] = field(default_factory=dict)
    bootstrap: BootstrapImages | None = None


def _now_ms() -> int:
    return int(time.time() * 1000)


#: Accept order of connections (one event loop: the order ``ws.accept()`` returned in).
_ACCEPTED = itertools.count()


class _Connection:
    """One socket's driver: reader, hub wake-ups, heartbeat ticks, writer."""

    def __init__(self, ws: WebSocket, state: ServerState, client_id: str) -> None:
        self.order = next(_ACCEPTED)
        self.ws = ws
        self.state = state
        self.client_id = client_id
        self.session: Session | None = None
        self.lock = asyncio.Lock()
        self.outbox: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue(OUTBOX_SIZE)
        self.wake = asyncio.Event()
        self.closing = False

    def push(self, out_texts: list[str], output: Output) -> None:
        """Queue frames (and a close) without waiting: a full outbox closes the connection."""
        if self.closing:
            return
        try:
            for text in out_texts:
                self.outbox.put_nowait(text)
            if output.close_code is not None:
                self.closing = True
                self.outbox.put_nowait((output.close_code, output.close_reason))
        except asyncio.QueueFull:
            log.warning("client %s: outbox full; closing so it catches up later", self.client_id)
            self.force_close(CLOSE_TRY_AGAIN, "too far behind")

    def force_close(self, code: int, reason: str) -> None:
        self.closing = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait((code, reason))

    @staticmethod
    def _call(step: Any, *args: Any) -> tuple[list[str], Output]:
        output: Output = step(*args)
        return [encode_message(m) for m in output.messages], output

    async def run_session(self, blocking: bool, step: Any, *args: Any) -> None:
        """Run ``step(*args)`` on the session (in a thread when ``blocking``); queue its output.

        The lock keeps steps of one session strictly one at a time: a step on
        the loop never yields inside, a step in a thread holds the lock.
        """
        async with self.lock:
            session = self.session
            if session is None or self.closing:
                return
            if blocking:
                texts, output = await asyncio.to_thread(self._call, step, *args)
            else:
                texts, output = self._call(step, *args)
        self.push(texts, output)

    async def on_frame(self, data: str | bytes) -> None:
        """One frame: checked on the loop, handled on the loop or in a thread."""
        async with self.lock:
            session = self.session
            if session is None or self.closing:
                return
            now = _now_ms()
            parsed = session.parse(data, now)
            if isinstance(parsed, Output):
                texts, output = self._call(lambda: parsed)
            elif session.blocking(parsed):
                texts, output = await asyncio.to_thread(self._call, session.handle, parsed, now)
            else:
                texts, output = self._call(session.handle, parsed, now)
        self.push(texts, output)
        self.state.hub.announce()  # after the author's answer (see ``Hub.announce``)

    def history_grew(self) -> None:
        """Hub callback (on the loop): send the new live batch now when that is cheap.

        A session busy in a step, or one whose cursor fell behind the hub's
        ring, gets its event set instead and catches up in its own task.
        """
        session = self.session
        if session is None or self.closing:
            return
        if self.lock.locked() or session.live_blocking():
            self.wake.set()
            return
        texts, output = self._call(session.history_available, _now_ms())
        self.push(texts, output)

    async def writer(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, tuple):
                code, reason = item
                with contextlib.suppress(Exception):
                    await self.ws.close(code, reason)
                return
            await self.ws.send_text(item)

    async def reader(self) -> None:
        assert self.session is not None
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await self.on_frame(data)

    async def notified(self) -> None:
        session = self.session
        assert session is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.run_session(session.live_blocking(), session.history_available, _now_ms())

    async def ticker(self) -> None:
        """Wake at the session's heartbeat deadline, not on a fixed beat.

        The deadline only moves later (each frame pushes it), so sleeping until
        the one known now and looking again is exact; a one-second beat was
        10,000 wake-ups a second at 10,000 connections.  The cap bounds a wall
        clock step.
        """
        session = self.session
        assert session is not None
        while True:
            delay = max(0.05, (session.next_deadline - _now_ms()) / 1000.0)
            await asyncio.sleep(min(delay, TICK_MAX_S))
            await self.run_session(False, session.tick, _now_ms())


def claim(connections: dict[str, Any], client_id: str, conn: Any) -> Any | None:
    """Make ``conn`` (with its accept ``order``) the client's connection unless a newer one is.

    Returns the connection to close with 4409: the one ``conn`` replaces, or ``conn``
    itself when a connection of the client accepted after it registered first.  Why:
    ``open_session`` runs in a thread, so two connections of one client (a reconnect
    while the server still holds the dead one, or an attempt the client gave up on)
    can finish it in either order; the newest accepted must win, as it is the one the
    client is waiting on.  Replacing it with an older one closed the client's live
    connection with 4409, after which it does not reconnect.
    """
    old = connections.get(client_id)
    if old is not None and old.order > conn.order:
        return conn
    connections[client_id] = conn
    return old


async def _sync_endpoint(ws: WebSocket) -> None:
    state: ServerState = ws.app.state.tidesync
    params = ws.query_params
    client_id = params.get("clientId")
    await ws.accept()
    conn = _Connection(ws, state, client_id or "")
    session, output = await asyncio.to_thread(
        open_session,
        client_id,
        params.get("lsn"),
        state.hub,
        state.config,
        _now_ms(),
        params.get("initFormat"),
    )
    log.info("client %s connected with lsn %s", client_id, params.get("lsn"))
    if session is None:
        log.info("client %s refused: %s", client_id, output.close_reason)
        for message in output.messages:
            await ws.send_text(encode_message(message))
        await ws.close(output.close_code or 4400, output.close_reason)
        return
    conn.session = session
    replaced = claim(state.connections, session.client_id, conn)
    if replaced is conn:  # a connection of this client accepted after this one won already
        log.info("client %s: an older connection gives way to a newer one (4409)", client_id)
        await asyncio.to_thread(session.close)
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_REPLACED, "replaced by a newer connection")
        return
    if replaced is not None:
        log.info("client %s: newer connection replaces the old one (4409)", session.client_id)
        replaced.session = None
        replaced.force_close(CLOSE_REPLACED, "replaced by a newer connection")
    conn.push([encode_message(m) for m in output.messages], output)
    key = state.hub.subscribe(conn.history_grew)
    tasks = [
        asyncio.create_task(conn.writer()),
        asyncio.create_task(conn.reader()),
        asyncio.create_task(conn.notified()),
        asyncio.create_task(conn.ticker()),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.hub.unsubscribe(key)
        if state.connections.get(session.client_id) is conn:
            del state.connections[session.client_id]
        async with conn.lock:
            await asyncio.to_thread(session.close)
        with contextlib.suppress(Exception):
            await ws.close(1000)
        log.info("client %s disconnected", session.client_id)


async def _health(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.tidesync
    lsn = await asyncio.to_thread(state.store.current_lsn)
    body: dict[str, Any] = {
        "status": "ok",
        "lsn": format_lsn(lsn),
        "clients": len(state.connections),
    }
    cache = state.hub.snapshot_cache
    if cache is not None:
        body["snapshotCache"] = cache.stats()
    if state.bootstrap is not None:
        body["bootstrap"] = state.bootstrap.stats()
    return JSONResponse(body)


#: Any origin may fetch the image, as any page may open the sync WebSocket (which no
#: browser restricts by origin); the site is often served from another origin.
_BOOTSTRAP_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "X-Tidesync-Lsn, X-Tidesync-Rows",
    "Cache-Control": "no-store",
}


async def _bootstrap(request: Request) -> Response:
    """A new client's database as one SQLite file (``server/bootstrap.py``).

    ``?pageSize=N`` (the client's SQLite page size) is required.  204: no image (the
    snapshot is small: stream it); 400: a bad page size; 404 when the server runs
    without images (``--bootstrap-mib 0``), as a server without the endpoint answers.
    """
    state: ServerState = request.app.state.tidesync
    if state.bootstrap is None:
        return Response(status_code=404, headers=_BOOTSTRAP_HEADERS)
    try:
        page_size = int(request.query_params.get("pageSize", ""))
        image = await state.bootstrap.get(page_size)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400, headers=_BOOTSTRAP_HEADERS)
    if image is None:
        return Response(status_code=204, headers=_BOOTSTRAP_HEADERS)
    gzip_ok = "gzip" in request.headers.get("accept-encoding", "").lower()
    headers = {
        **_BOOTSTRAP_HEADERS,
        "X-Tidesync-Lsn": format_lsn(image.lsn),
        "X-Tidesync-Rows": str(image.rows),
    }
    if gzip_ok:
        headers["Content-Encoding"] = "gzip"
    body = image.gzipped if gzip_ok else await asyncio.to_thread(image.plain)
    return Response(body, media_type="application/vnd.sqlite3", headers=headers)


async def _seed(request: Request) -> JSONResponse:
    """Demo only (``--allow-seed``): add N tasks through the normal tables."""
    from tidesync.server.seed import MAX_SEED_TASKS, seed_tasks

    state: ServerState = request.app.state.tidesync
    try:
        count = int(request.query_params.get("tasks", "100000"))
    except ValueError:
        return JSONResponse({"error": "tasks must be a whole number"}, status_code=400)
    if not 1 <= count <= MAX_SEED_TASKS:
        return JSONResponse({"error": f"tasks must be 1..{MAX_SEED_TASKS}"}, status_code=400)
    added = await asyncio.to_thread(seed_tasks, state.store.path, count, state.store.schema_sql)
    log.info("seeded %d tasks over HTTP", added)
    return JSONResponse({"added": added})


def create_app(
    db_path: str | os.PathLike[str],
    *,
    schema_sql: str | None = None,
    site_dir: str | os.PathLike[str] | None = None,
    config: SessionConfig | None = None,
    allow_seed: bool = False,
    snapshot_cache_bytes: int = DEFAULT_MAX_BYTES,
    bootstrap_bytes: int = DEFAULT_BOOTSTRAP_BYTES,
    bootstrap_min_rows: int = DEFAULT_BOOTSTRAP_MIN_ROWS,
) -> Starlette:
    """The server app; the store opens (and the tailer starts) in the lifespan.

    ``allow_seed`` adds ``POST /api/seed?tasks=N`` (the demo's large-data button).
    ``snapshot_cache_bytes`` bounds the initial-sync snapshot kept encoded for later
    clients (``snapshot_cache.py``); 0 reads the database for every client.
    ``bootstrap_bytes`` bounds a kept bootstrap image (``bootstrap.py``); 0 turns
    ``/api/bootstrap`` off (404).  ``bootstrap_min_rows``: snapshots below it get no image.
    """
    store = Store(Path(db_path), schema_sql)
    cache = SnapshotCache(snapshot_cache_bytes) if snapshot_cache_bytes > 0 else None
    hub = Hub(store, snapshot_cache=cache)
    state = ServerState(store, hub, config or SessionConfig())
    if bootstrap_bytes > 0:
        state.bootstrap = BootstrapImages(
            store,
            max_bytes=bootstrap_bytes,
            min_rows=bootstrap_min_rows,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            for conn in list(state.connections.values()):
                conn.force_close(1001, "server going away")
            await hub.stop()
            store.close()

    routes: list[Any] = [
        WebSocketRoute("/api/sync", _sync_endpoint),
        Route("/api/health", _health),
        Route("/api/bootstrap", _bootstrap),
    ]
    if allow_seed:
        routes.append(Route("/api/seed", _seed, methods=["POST"]))
    if site_dir is not None:
        routes.append(Mount("/", _SiteFiles(directory=Path(site_dir), html=True), name="site"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.tidesync = state
    return app
