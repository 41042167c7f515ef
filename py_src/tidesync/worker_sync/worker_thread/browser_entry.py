"""The Sync Worker's entry point in Pyodide (called by ``js_shim/sync.worker.mjs``).

Binds the pure Sync side to the browser: ``SyncWorker`` gets a
``BrowserWebSocketTransport`` per connection attempt and reaches the database
through ``RemoteChangesPort`` over the MessageChannel to the Changes Worker.
Status snapshots go back over the same channel (the Changes Worker forwards them
to the page).  The browser's ``online``/``offline`` events and the page's
"go offline" toggle both feed ``go_offline``/``go_online``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tidesync.worker_sync.shared.message_types import ProtocolError, TableChange
from tidesync.worker_sync.shared.port_codec import (
    RemoteChangesPort,
    changes_from_wire,
    channel_text,
)
from tidesync.worker_sync.worker_thread.browser_websocket import (
    EARLY_UNCLAIMED_S,
    BrowserWebSocketTransport,
    EarlySocket,
)
from tidesync.worker_sync.worker_thread.status import SyncStatus
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker

__all__ = ["PortRpc", "carried_changes", "start", "status_to_dict"]

log = logging.getLogger(__name__)


class RemoteError(Exception):
    """An error raised by the other worker, with its Python type name."""

    def __init__(self, message: str, kind: str = "Error") -> None:
        super().__init__(message)
        self.kind = kind


class PortRpc:
    """Request/response over a JS ``MessagePort``: ``{id, cmd, args}`` -> ``{id, ok, ...}``."""

    def __init__(self, js_port: Any, on_event: Any) -> None:
        from tidesync._pyodide import ProxyGroup

        self._port = js_port
        self._on_event = on_event
        self._proxies = ProxyGroup()
        self._next = 1
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        js_port.onmessage = self._proxies.proxy(self._receive)

    async def call(self, cmd: str, args: dict[str, Any]) -> Any:
        ident = self._next
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        self._send({"id": ident, "cmd": cmd, "args": args})
        return await future

    def post(self, cmd: str, args: dict[str, Any]) -> None:
        """A call nobody waits for: without an ``id`` the Changes Worker sends no answer."""
        self._send({"cmd": cmd, "args": args})

    def notify(self, event: dict[str, Any]) -> None:
        self._send(event)

    def _send(self, message: dict[str, Any]) -> None:
        """JSON text when it carries the message exactly (``channel_text``), else an object;
        a snapshot chunk or batch text goes beside it as UTF-8 bytes (``post_with_utf8``)."""
        from tidesync._pyodide import post_with_utf8, text_or_js

        if post_with_utf8(self._port.postMessage, message, channel_text):
            return
        self._port.postMessage(text_or_js(message, channel_text(message)))

    def _receive(self, event: Any) -> None:
        from tidesync._pyodide import from_js

        raw = event.data
        try:
            data = json.loads(raw) if isinstance(raw, str) else from_js(raw)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            log.warning("ignoring a non-object message from the Changes Worker")
            return
        ident = data.get("id")
        if isinstance(ident, int) and ident in self._waiting:
            future = self._waiting.pop(ident)
            if future.done():
                return
            if data.get("ok"):
                future.set_result(data.get("result"))
            else:
                error = data.get("error") or {}
                future.set_exception(
                    RemoteError(str(error.get("message")), str(error.get("type", "Error")))
                )
        elif "event" in data:
            self._on_event(data)

    def close(self) -> None:
        self._port.onmessage = None
        self._proxies.destroy()


def carried_changes(raw: Any) -> list[TableChange] | None:
    """The changes a ``local_change`` event carried, validated; None when it carried none.

    Changes that do not decode are passed over (logged): the Sync Worker then reads
    them with ``unsynced_changes`` as it would without them.
    """
    if raw is None:
        return None
    try:
        return changes_from_wire(raw)
    except ProtocolError as exc:
        log.warning("local_change carried changes that do not decode: %s", exc.message)
        return None


def page_phase(status: SyncStatus) -> str:
    """One word for the page: the sync phase when connected, else why not.

    ``connecting``/``initial``/``catchup``/``live`` while the socket is up;
    ``offline``, ``backoff`` (waiting to reconnect), ``connecting``, ``stopped``
    or ``disconnected`` while it is not.
    """
    if status.connected:
        return status.phase.value
    return "connecting" if status.connection == "open" else status.connection


def status_to_dict(status: SyncStatus) -> dict[str, Any]:
    """The page's view of a ``SyncStatus`` (camelCase, JSON-able)."""
    progress = status.init_progress
    return {
        "connected": status.connected,
        "phase": page_phase(status),
        "syncPhase": status.phase.value,
        "lsn": status.lsn_text,
        "pending": status.pending,
        "localSeq": status.local_seq,
        "repairs": status.repairs,
        "tableRepairs": status.table_repairs,
        "fullResyncs": status.full_resyncs,
        "lastRepair": None
        if status.last_repair_mode is None
        else {"tables": list(status.last_repair), "mode": status.last_repair_mode},
        "repairing": list(status.repairing),
        "lastError": status.last_error,
        "reconnectIn": status.reconnect_in,
        "reconnectAt": (
            None
            if status.reconnect_in is None
            else int(time.time() * 1000 + status.reconnect_in * 1000)
        ),
        "initProgress": None
        if progress is None
        else {
            "table": progress.table,
            "chunk": progress.chunk,
            "total": progress.total,
            "rows": progress.rows,
        },
    }


async def start(bridge: Any) -> None:
    """Run the Sync Worker until the page closes it."""
    import js  # type: ignore[import-not-found]

    from tidesync._pyodide import ProxyGroup, from_js

    config = from_js(bridge.config)
    holder: dict[str, SyncWorker] = {}
    stopping: set[asyncio.Future[None]] = set()
    offline = {"user": False, "network": not bool(js.navigator.onLine)}

    def apply_online() -> None:
        worker = holder.get("worker")
        if worker is None:
            return
        if offline["user"] or offline["network"]:
            worker.go_offline()
        else:
            worker.go_online()

    def on_event(data: dict[str, Any]) -> None:
        kind = data.get("event")
        worker = holder.get("worker")
        if kind == "local_change" and worker is not None:
            seq = data.get("seq")
            worker.notify_local_change(
                carried_changes(data.get("changes")),
                seq if type(seq) is int and seq > 0 else None,
            )
        elif kind == "set_online":
            offline["user"] = not bool(data.get("online", True))
            apply_online()
        elif kind == "close" and worker is not None:
            stopping.add(asyncio.ensure_future(worker.stop()))

    rpc = PortRpc(bridge.changesPort, on_event)
    port = RemoteChangesPort(rpc.call, rpc.post)
    early = EarlySocket(getattr(bridge, "early", None))
    frame_utf8 = getattr(bridge, "frameUtf8", None)
    worker = SyncWorker(
        port,
        lambda: BrowserWebSocketTransport(early, frame_utf8),
        url=str(config["url"]),
        heartbeat_interval=float(config.get("heartbeatInterval") or 5.0),
    )
    holder["worker"] = worker
    worker.on_status(
        lambda status: rpc.notify(
            {"event": "status", "status": {**status_to_dict(status), "earlySocket": early.outcome}}
        )
    )

    group = ProxyGroup()

    def network(online: bool) -> Any:
        def handler(_event: Any) -> None:
            offline["network"] = not online
            apply_online()

        return group.proxy(handler)

    js.addEventListener("online", network(True))
    js.addEventListener("offline", network(False))
    if offline["network"]:
        worker.go_offline()
        early.drop()
    log.info("sync worker starting for %s", config["url"])
    await worker.start()
    # Not claimed by a first attempt soon (offline from the start): no socket left open.
    asyncio.get_running_loop().call_later(EARLY_UNCLAIMED_S, early.drop)
