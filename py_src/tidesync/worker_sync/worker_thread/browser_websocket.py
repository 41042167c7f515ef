"""``Transport`` over the browser's ``js.WebSocket`` (the Sync Worker in Pyodide).

Bridges the browser's event callbacks into asyncio (Pyodide's event loop is the
browser's): frames go into a queue that ``recv`` awaits, the close event becomes
``TransportClosed`` with the browser's close code.  The four JS callbacks of a
socket are made in one ``ProxyGroup`` and destroyed together when the socket is
done, so thousands of reconnects leak no proxies.

An attempt may be given the socket ``sync_socket.mjs`` opened before Python was up
(``EarlySocket``: the events kept in arrival order).  ``open`` adopts it only for
the very URL it was asked to open: it takes the socket's handlers over and replays
the kept events first, in one synchronous step, so no event is lost or reordered;
for any other URL the early socket is closed and a new one opened.

A text frame reaches Python as UTF-8 bytes when the bootstrap gives ``frame_utf8``
(``TextEncoder`` in JS, one copy, then a C decode): Pyodide converts a JS string
one UTF-16 unit at a time in JavaScript, ~4 ms for a 260 KB snapshot chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tidesync.worker_sync.worker_thread.transport import ABNORMAL_CLOSURE, TransportClosed

__all__ = ["EARLY_UNCLAIMED_S", "BrowserWebSocketTransport", "EarlySocket"]

log = logging.getLogger(__name__)

_CONNECTING, _OPEN = 0, 1


def _browser_close_code(code: int) -> int:
    """Browsers only let a page send 1000 or 3000-4999 (others throw)."""
    return code if code == 1000 or 3000 <= code <= 4999 else 1000


#: Seconds the socket opened before boot waits for the first connection attempt.
EARLY_UNCLAIMED_S = 10.0


class EarlySocket:
    """The socket ``sync_socket.openEarly`` opened before boot (``{url, ws, events}``).

    Claimed once, by the first connection attempt, and only for its URL: any other
    URL, a second claim or ``drop`` closes it instead.  ``outcome`` says which
    (``none``, ``waiting``, ``adopted``, ``replaced``, ``dropped``) for the page's status.
    """

    def __init__(self, early: Any) -> None:
        self._early = early or None  # JS null arrives as a falsy ``jsnull``
        self.outcome = "waiting" if self._early is not None else "none"

    def claim(self, url: str) -> tuple[Any, list[Any]] | None:
        """``(ws, kept events)`` when the early socket was opened for ``url``; else None."""
        early, self._early = self._early, None
        if early is None:
            return None
        if str(early.url) != url:
            self.outcome = "replaced"
            log.info("the socket opened before boot was for another URL; closing it")
            self._close(early)
            return None
        self.outcome = "adopted"
        kept = list(early.events)
        early.events.length = 0
        return early.ws, kept

    def drop(self) -> None:
        """Close it if no attempt claimed it (offline from the start, never connected)."""
        early, self._early = self._early, None
        if early is not None:
            self.outcome = "dropped"
            self._close(early)

    @staticmethod
    def _close(early: Any) -> None:
        with contextlib.suppress(Exception):  # already closed
            early.ws.close(1000)


class BrowserWebSocketTransport:
    """One connection attempt; the Sync Worker builds a fresh one per attempt."""

    def __init__(self, early: EarlySocket | None = None, frame_utf8: Any = None) -> None:
        from tidesync._pyodide import ProxyGroup

        self._proxies = ProxyGroup()
        self._early = early
        # JS ``(event) => Uint8Array | null``: a text frame's UTF-8 bytes (module docstring).
        self._frame_utf8 = frame_utf8
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
            if self._frame_utf8:
                utf8 = self._frame_utf8(event)
                if utf8:  # a text frame: valid UTF-8 (the browser encoded it)
                    self._frames.put_nowait(utf8.to_bytes().decode("utf-8"))
                    return
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

        handlers = {"open": on_open, "message": on_message, "close": on_close, "error": on_error}
        adopted = self._early.claim(url) if self._early is not None else None
        kept: list[Any] = []
        if adopted is not None:
            ws, kept = adopted
            log.debug("adopting the socket opened before boot (%d event(s) kept)", len(kept))
        else:
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
        # Same synchronous step as the handlers above: nothing can arrive in between.
        for event in kept:
            handler = handlers.get(str(event.type))
            if handler is not None:
                handler(event)
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
