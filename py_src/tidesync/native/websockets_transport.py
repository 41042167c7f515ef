"""``Transport`` over the ``websockets`` asyncio client (the native CPython client).

The only module of the client that imports ``websockets``.  It turns the
library's exceptions into ``TransportClosed`` so the Sync Worker cannot tell it
from the browser adapter.  WebSocket-level pings are off: liveness is the
protocol's own heartbeat (PROTOCOL.md "Heartbeat"), the same in the browser,
where pages cannot send pings.
"""

from __future__ import annotations

import logging

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from tidesync.worker_sync.worker_thread.transport import ABNORMAL_CLOSURE, TransportClosed

__all__ = ["WebsocketsTransport"]

log = logging.getLogger(__name__)

#: Initial-sync chunks can be large; the server bounds them, not us.
MAX_FRAME_BYTES = 64 * 1024 * 1024


def _closed(exc: ConnectionClosed) -> TransportClosed:
    frame = exc.rcvd
    if frame is None:
        return TransportClosed(ABNORMAL_CLOSURE, "no close frame")
    return TransportClosed(frame.code, frame.reason)


class WebsocketsTransport:
    """One connection attempt; the Sync Worker builds a fresh one per attempt."""

    def __init__(self, *, open_timeout: float | None = None) -> None:
        self._ws: ClientConnection | None = None
        self._open_timeout = open_timeout

    async def open(self, url: str) -> None:
        try:
            self._ws = await connect(
                url,
                ping_interval=None,
                max_size=MAX_FRAME_BYTES,
                open_timeout=self._open_timeout,
                close_timeout=2.0,
            )
        except InvalidURI as exc:
            raise TransportClosed(ABNORMAL_CLOSURE, f"invalid URL: {exc}") from None
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise TransportClosed(ABNORMAL_CLOSURE, f"{type(exc).__name__}: {exc}") from None

    async def send(self, text: str) -> None:
        ws = self._require()
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def recv(self) -> str:
        ws = self._require()
        try:
            data = await ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        if isinstance(data, bytes):  # PROTOCOL.md wants text; let the codec refuse it
            return data.decode("utf-8", "replace")
        return data

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            await ws.close(code, reason[:120])
        except Exception as exc:  # already gone: closing is best effort
            log.debug("close failed: %s", exc)

    def _require(self) -> ClientConnection:
        if self._ws is None:
            raise TransportClosed(ABNORMAL_CLOSURE, "not open")
        return self._ws
