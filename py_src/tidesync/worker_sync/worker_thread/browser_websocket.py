"""``Transport`` over the browser's ``js.WebSocket`` (the Sync Worker in Pyodide).

Bridges the browser's event callbacks into asyncio (Pyodide's event loop is the
browser's): frames go into a queue that ``recv`` awaits, the close event becomes
``TransportClosed`` with the browser's close code.  The four JS callbacks of a
socket are made in one ``ProxyGroup`` and destroyed together when the socket is
done, so thousands of reconnects leak no proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tidesync.worker_sync.worker_thread.transport import ABNORMAL_CLOSURE, TransportClosed

__all__ = ["BrowserWebSocketTransport"]

log = logging.getLogger(__name__)

_CONNECTING, _OPEN = 0, 1


def _browser_close_code(code: int) -> int:
    """Browsers only let a page send 1000 or 3000-4999 (others throw)."""
    return code if code == 1000 or 3000 <= code <= 4999 else 1000


class BrowserWebSocketTransport:
    """One connection attempt; the Sync Worker builds a fresh one per attempt."""

    def __init__(self) -> None:
        from tidesync._pyodide import ProxyGroup

        self._proxies = ProxyGroup()
        self._ws: Any = None
        self._frames: asyncio.Queue[str | TransportClosed] = asyncio.Queue()
        self._closed: TransportClosed | None = None

    async def open(self, url: str) -> None:
        import js  # type: ignore[import-not-found]

        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()

        def on_open(_event: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_message(event: Any) -> None:
            data = event.data
            if not isinstance(data, str):
                # A binary frame: PROTOCOL.md wants text; decode so the Sync
                # Worker answers it like any malformed frame.
                try:
                    data = bytes(js.Uint8Array.new(data).to_py()).decode("utf-8", "replace")
                except Exception:  # a Blob or something stranger
                    data = "<binary frame>"
            self._frames.put_nowait(data)

        def on_close(event: Any) -> None:
            self._finish(TransportClosed(int(event.code or ABNORMAL_CLOSURE), str(event.reason)))
            if not opened.done():
                opened.set_exception(TransportClosed(int(event.code or ABNORMAL_CLOSURE)))

        def on_error(_event: Any) -> None:
            # The browser follows every error with a close event; that one counts.
            log.debug("websocket error event for %s", url)

        try:
            ws = js.WebSocket.new(url)
        except Exception as exc:  # SyntaxError for a bad URL, SecurityError...
            self._proxies.destroy()
            raise TransportClosed(ABNORMAL_CLOSURE, str(exc)) from None
        self._ws = ws
        ws.onopen = self._proxies.proxy(on_open)
        ws.onmessage = self._proxies.proxy(on_message)
        ws.onclose = self._proxies.proxy(on_close)
        ws.onerror = self._proxies.proxy(on_error)
        await opened

    async def send(self, text: str) -> None:
        if self._closed is not None or self._ws is None or self._ws.readyState != _OPEN:
            raise self._closed or TransportClosed()
        self._ws.send(text)

    async def recv(self) -> str:
        item = await self._frames.get()
        if isinstance(item, TransportClosed):
            self._frames.put_nowait(item)  # every later recv raises too
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self._ws
        if ws is not None and ws.readyState in (_CONNECTING, _OPEN):
            with contextlib.suppress(Exception):  # already closing
                ws.close(_browser_close_code(code), reason[:120])
        self._finish(TransportClosed(code, reason))

    def _finish(self, closed: TransportClosed) -> None:
        """Detach the callbacks, free their proxies, wake a waiting ``recv``."""
        if self._closed is not None:
            return
        self._closed = closed
        ws = self._ws
        if ws is not None:
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = None
        # Deferred: this may run inside one of the callbacks being freed.
        asyncio.get_running_loop().call_soon(self._proxies.destroy)
        self._frames.put_nowait(closed)
