"""tidesync.native: the CPython adapters (``websockets`` transport, the native client).

Importing this package imports ``websockets``; ``tidesync`` itself does not.
"""

from __future__ import annotations

from tidesync.native.client import Client, connect
from tidesync.native.websockets_transport import WebsocketsTransport

__all__ = ["Client", "WebsocketsTransport", "connect"]
