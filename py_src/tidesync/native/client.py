"""The native CPython client: the Changes side and the Sync side in one asyncio process.

``tidesync.connect(url, db_path)`` opens the ``ChangesWorker`` on a SQLite file
(stdlib ``sqlite3``) and starts a ``SyncWorker`` over ``websockets``.  The
Sync side reaches the database through the ``ChangesPort`` methods of the
ChangesWorker, called directly (in the browser the same calls cross a
MessageChannel).  Every write goes through the ChangesWorker, which records it
in ``local_changes`` in the same transaction and tells us; we poke the
SyncWorker, which sends it when live.

Use either form::

    async with tidesync.connect(url, "app.db") as client: ...
    client = await tidesync.connect(url, "app.db"); ...; await client.close()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tidesync.native.websockets_transport import WebsocketsTransport
from tidesync.worker_sync.worker_thread.status import SyncStatus
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker

if TYPE_CHECKING:
    from tidesync.changes.worker import ChangesWorker

__all__ = ["Client", "connect"]

log = logging.getLogger(__name__)


class Client:
    """A local-first database that syncs itself; reads and writes never wait for the network.

    Writes (``insert``/``update``/``delete``/``upsert``/``execute``/``transaction``)
    and ``query`` go to the local SQLite file at once; sync happens behind them.
    """

    def __init__(self, changes: ChangesWorker, sync: SyncWorker) -> None:
        self._changes = changes
        self._sync = sync
        self._closed = False

    # --- the write and read API (delegated to the ChangesWorker) -----------------------------

    @property
    def changes(self) -> ChangesWorker:
        """The underlying ChangesWorker (listeners, live queries, advanced use)."""
        return self._changes

    async def insert(self, table: str, row: dict[str, Any]) -> None:
        await self._changes.insert(table, row)

    async def update(self, table: str, row: dict[str, Any]) -> None:
        """``row`` holds the primary key plus the columns to change."""
        await self._changes.update(table, row)

    async def delete(self, table: str, key: Any) -> None:
        """``key``: the primary key value, or a dict holding the key columns."""
        await self._changes.delete(table, key)

    async def upsert(self, table: str, row: dict[str, Any]) -> None:
        await self._changes.upsert(table, row)

    async def execute(self, sql: str, params: Any = ()) -> Any:
        """Raw SQL on the app tables; triggers still record every change."""
        return await self._changes.execute(sql, params)

    async def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return await self._changes.query(sql, params)

    def transaction(self) -> Any:
        """``async with client.transaction() as tx:``: several writes, one commit."""
        return self._changes.transaction()

    # --- sync -------------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._sync.client_id

    @property
    def status(self) -> SyncStatus:
        return self._sync.status

    def on_status(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        return self._sync.on_status(callback)

    async def wait_until_synced(self, timeout: float | None = 30.0) -> SyncStatus:
        """Live and every local change acknowledged; ``TimeoutError`` otherwise."""
        return await self._sync.wait_until_synced(timeout)

    async def pending_count(self) -> int:
        """Local changes the server has not acknowledged yet (read from the database)."""
        return (await self._changes.local_state()).pending_count

    def go_offline(self) -> None:
        self._sync.go_offline()

    def verify_integrity(self) -> None:
        """Compare table checksums with the server now; differing tables are re-synced.

        ``status.repairs`` counts mismatches, ``status.last_repair`` names the tables,
        ``status.table_repairs`` / ``full_resyncs`` say how they were repaired.
        """
        self._sync.verify_integrity()

    def go_online(self) -> None:
        self._sync.go_online()

    async def close(self) -> None:
        """Stop syncing (close 1000) and close the database; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._sync.stop()
        finally:
            await self._changes.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _open(
    url: str,
    db_path: str,
    schema_sql: str | None,
    heartbeat_interval: float,
    now_ms: Callable[[], int] | None,
    bootstrap: bool,
    sync_options: dict[str, Any],
) -> Client:
    from tidesync.changes.db import open_connection
    from tidesync.changes.worker import ChangesWorker
    from tidesync.native.bootstrap import is_new_database, start_from_image
    from tidesync.schema import Schema

    if bootstrap and is_new_database(db_path):
        schema = Schema.from_sql(schema_sql) if schema_sql else Schema.demo()
        conn = open_connection(db_path)
        image = await start_from_image(conn, schema, url)
        if image is not None:
            log.info("%s starts from the server's image: %d rows", db_path, image.rows)
        changes = ChangesWorker(conn, schema, now_ms=now_ms, defer_checkpoint=image is not None)
    else:
        changes = await ChangesWorker.open(db_path, schema_sql=schema_sql, now_ms=now_ms)
    if now_ms is not None:
        sync_options.setdefault("wall_ms", now_ms)
    sync = SyncWorker(
        changes,
        WebsocketsTransport,
        url=url,
        heartbeat_interval=heartbeat_interval,
        **sync_options,
    )
    changes.on_local_change(sync.notify_local_change)
    try:
        await sync.start()
    except BaseException:
        await changes.close()
        raise
    log.info("tidesync client %s syncing %s with %s", sync.client_id, db_path, url)
    return Client(changes, sync)


class _Connecting:
    """What ``connect`` returns: awaitable, and usable directly in ``async with``."""

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Client:
        self._client = await _open(*self._args)
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


def connect(
    url: str,
    db_path: str,
    *,
    schema_sql: str | None = None,
    heartbeat_interval: float = 5.0,
    now_ms: Callable[[], int] | None = None,
    bootstrap: bool = True,
    **sync_options: Any,
) -> _Connecting:
    """Open ``db_path`` and sync it with the server at ``url`` (``ws://host:port/api/sync``).

    ``schema_sql`` is the app's ``CREATE TABLE`` SQL (default: the demo schema).
    ``now_ms`` replaces the wall clock (ms since the epoch) of this client: the
    hybrid logical clock that stamps local changes, and message timestamps.
    ``bootstrap``: a file that does not exist yet starts from the server's image of the
    database (``GET /api/bootstrap``, docs/protocol.md) and only catches up; False
    streams the initial sync.
    ``sync_options`` go to ``SyncWorker`` (``batch_size``, ``backoff``...).
    """
    return _Connecting(
        url, str(db_path), schema_sql, heartbeat_interval, now_ms, bootstrap, sync_options
    )
