"""WebsocketsTransport on loopback: frames, close codes and failures as ``TransportClosed``.

A scripted ``websockets`` server plays the peer here; the real sync server is
exercised in ``test_native_sync.py``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tidesync.native.websockets_transport import WebsocketsTransport
from tidesync.worker_sync.shared.message_types import (
    CltHeartbeat,
    SrvCatchupCompleted,
    decode_message,
    encode_message,
    make,
)
from tidesync.worker_sync.worker_thread.connection_manager import BackoffPolicy
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker
from tidesync.worker_sync.worker_thread.transport import TransportClosed

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from fake_port import FakePort

Handler = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[Any] = []

    async def start(handler: Handler) -> str:
        server = await serve(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/api/sync"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_frames_travel_both_ways(peer: Any) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for frame in ws:
            await ws.send(f"echo:{frame}")

    url = await peer(echo)
    transport = WebsocketsTransport()
    await transport.open(url)
    await transport.send("hello")
    assert await transport.recv() == "echo:hello"
    await transport.close()
    await transport.close()  # idempotent


@pytest.mark.parametrize("code", [1001, 4401, 4409])
async def test_peer_close_code_reaches_recv(peer: Any, code: int) -> None:
    async def close_with_code(ws: ServerConnection) -> None:
        await ws.close(code, "bye")

    transport = WebsocketsTransport()
    await transport.open(await peer(close_with_code))
    with pytest.raises(TransportClosed) as info:
        await transport.recv()
    assert (info.value.code, info.value.reason) == (code, "bye")


async def test_refused_connection_is_transport_closed() -> None:
    transport = WebsocketsTransport()
    with pytest.raises(TransportClosed) as info:
        await transport.open("ws://127.0.0.1:9/api/sync")
    assert info.value.code == 1006


async def test_sync_worker_over_real_sockets_sees_the_url_and_heartbeats(peer: Any) -> None:
    seen: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def server(ws: ServerConnection) -> None:
        assert ws.request is not None
        await ws.send(
            encode_message(
                make(SrvCatchupCompleted, "c", 1, start_lsn=5, final_lsn=5, change_count=0)
            )
        )
        async for frame in ws:
            message = decode_message(frame, expect="clt")
            seen.put_nowait((ws.request.path, message.type.value))

    url = await peer(server)
    port = FakePort(client_id="c", lsn=5)
    worker = SyncWorker(
        port,
        WebsocketsTransport,
        url=url,
        heartbeat_interval=0.05,
        backoff=BackoffPolicy(base=0.01, cap=0.05),
    )
    await worker.start()
    await worker.wait_until_synced(5.0)
    path, kind = await asyncio.wait_for(seen.get(), 5.0)
    assert path == "/api/sync?clientId=c&lsn=0/5"
    assert kind == CltHeartbeat.TYPE.value
    await worker.stop()
