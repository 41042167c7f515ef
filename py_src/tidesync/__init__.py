"""tidesync: a local-first sync engine (SQLite in the browser or natively, synced over a WebSocket).

The public API is listed once here and imported lazily: ``import tidesync``
loads nothing else, so Pyodide (which imports this package in both workers)
never pulls in the server, ``websockets`` or the native client.  Touching
``tidesync.connect`` imports the native client on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidesync.native.client import Client, connect
    from tidesync.schema import Schema
    from tidesync.worker_sync.shared.changes_port import ChangesPort
    from tidesync.worker_sync.shared.message_types import ProtocolError, TableChange
    from tidesync.worker_sync.worker_thread.connection_manager import BackoffPolicy
    from tidesync.worker_sync.worker_thread.status import InitProgress, SyncPhase, SyncStatus
    from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker
    from tidesync.worker_sync.worker_thread.transport import Transport, TransportClosed

__all__ = [
    "BackoffPolicy",
    "ChangesPort",
    "Client",
    "InitProgress",
    "ProtocolError",
    "Schema",
    "SyncPhase",
    "SyncStatus",
    "SyncWorker",
    "TableChange",
    "Transport",
    "TransportClosed",
    "connect",
]

__version__ = "0.1.0"

_EXPORTS = {
    "connect": "tidesync.native.client",
    "Client": "tidesync.native.client",
    "Schema": "tidesync.schema",
    "ChangesPort": "tidesync.worker_sync.shared.changes_port",
    "ProtocolError": "tidesync.worker_sync.shared.message_types",
    "TableChange": "tidesync.worker_sync.shared.message_types",
    "BackoffPolicy": "tidesync.worker_sync.worker_thread.connection_manager",
    "InitProgress": "tidesync.worker_sync.worker_thread.status",
    "SyncPhase": "tidesync.worker_sync.worker_thread.status",
    "SyncStatus": "tidesync.worker_sync.worker_thread.status",
    "SyncWorker": "tidesync.worker_sync.worker_thread.sync_worker",
    "Transport": "tidesync.worker_sync.worker_thread.transport",
    "TransportClosed": "tidesync.worker_sync.worker_thread.transport",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tidesync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
