"""A loopback TCP proxy that can break the connections it carries, for chaos tests.

Clients connect to ``proxy.port``; each connection is forwarded to the target
(the real sync server).  Faults, all on live TCP connections:

* ``drop_all()``: reset every connection at once (``SO_LINGER 0``: both ends get
  an RST, bytes in flight are lost);
* ``stall()`` / ``resume()``: stop forwarding in both directions without closing
  anything (a black hole: no data, no FIN); new connections are accepted but
  stall too.  Only the heartbeat's dead-peer detection can notice;
* ``cut_mid_frame(direction)``: the next chunk of at least 2 bytes going that way
  (``"to_client"`` or ``"to_server"``) is forwarded only in part (its first
  half), then both ends of that connection are reset: a WebSocket frame torn in
  the middle.

Runs on the caller's event loop (the test's); ``stats`` counts what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

__all__ = ["ProxyStats", "TcpProxy"]

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0  # connections reset by drop_all
    torn_frames: int = 0  # connections cut mid-frame
    stalls: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0


@dataclass(eq=False)  # hashed by identity
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.server):
            _reset(writer)
        for task in self.tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN (what a dropped NAT entry or a dead box looks like)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut: str | None = None

    def ws_url(self, path: str = "/api/sync") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        self.drop_all(count=False)
        if self._server is not None:
            await self._server.wait_closed()

    # --- faults ---------------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def drop_all(self, *, count: bool = True) -> int:
        """Reset every open connection; returns how many."""
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            pair.reset()
        if count:
            self.stats.resets += len(pairs)
        return len(pairs)

    def stall(self) -> None:
        self.stats.stalls += 1
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut_mid_frame(self, direction: str = "to_client") -> None:
        if direction not in ("to_client", "to_server"):
            raise ValueError(direction)
        self._cut = direction

    @property
    def cut_pending(self) -> bool:
        return self._cut is not None

    # --- forwarding -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)  # the server is down: the client sees the connection refused/reset
            return
        pair = _Pair(client=writer, server=up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pair, "to_server")),
            asyncio.create_task(self._pump(up_reader, writer, pair, "to_client")),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)
        self._pairs.discard(pair)
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: _Pair,
        direction: str,
    ) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                await self._flowing.wait()  # a stall holds what was read, and reads nothing more
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                if self._cut == direction and len(data) >= 2:
                    self._cut = None
                    self.stats.torn_frames += 1
                    dst.write(data[: len(data) // 2])
                    with contextlib.suppress(OSError, ConnectionError):
                        await dst.drain()
                    self._pairs.discard(pair)
                    pair.reset()
                    return
                if direction == "to_server":
                    self.stats.bytes_to_server += len(data)
                else:
                    self.stats.bytes_to_client += len(data)
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            self._pairs.discard(pair)
            pair.reset()
