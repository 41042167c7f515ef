"""The socket seen by the Sync Worker: one small async interface, two adapters.

The Sync Worker never touches a WebSocket library.  Natively
``tidesync.native.websockets_transport.WebsocketsTransport`` drives the
``websockets`` asyncio client; in the browser an adapter over ``js.WebSocket``
implements the very same four methods.  Invariant every adapter keeps: a closed
or failed socket surfaces as ``TransportClosed`` (with the close code when one
was received) from ``recv`` and ``send``, never as a library-specific error, so
the Sync Worker's handling is identical in both places.

Call order: ``open`` once, then ``send``/``recv`` freely (one reader at a time),
then ``close`` (idempotent, also after the peer closed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["ABNORMAL_CLOSURE", "Transport", "TransportClosed", "TransportFactory"]

#: RFC 6455 code for "closed without a close frame" (never sent on the wire).
ABNORMAL_CLOSURE = 1006


class TransportClosed(Exception):
    """The socket is closed; ``code`` is the close code received (1006 when none)."""

    def __init__(self, code: int = ABNORMAL_CLOSURE, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    """A message-oriented socket: whole text frames in and out."""

    async def open(self, url: str) -> None:
        """Connect; raises ``TransportClosed`` (or ``OSError``) when that fails."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises ``TransportClosed`` when the socket is gone."""

    async def recv(self) -> str:
        """The next text frame; raises ``TransportClosed`` when the socket closes."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent); never raises for an already closed socket."""


#: Builds a fresh, unopened transport for each connection attempt.
TransportFactory = Callable[[], Transport]
