"""A lean RFC 6455 WebSocket client on an asyncio ``Protocol``, for load generation.

``bench/fanout.py`` holds thousands of connections in one CPython process on a
machine with 2 cores that it shares with the server it measures.  With the
``websockets`` library each connection costs a reader task, an assembler and a
frame queue, and 10,000 of them kept one core busy on their own (the last
10k run took 218 s to connect), so the figures measured the client.  Here a
connection is one ``Protocol`` object: ``data_received`` parses the frames
(server frames are unmasked) and hands each whole text message to a plain
callback at once, with the time the bytes arrived; ``send_text`` masks with
``websockets``' C ``apply_mask`` and writes.  No task per connection.

It speaks just what the benchmark needs: the opening handshake (the accept
key is checked), text/binary messages (fragmented ones reassembled), ping ->
pong, and the closing handshake.  Anything else is a protocol error that closes
the connection and is reported through ``closed``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
from collections.abc import Callable

# The C function when websockets was built with it (its wheels are), else its Python one.
from websockets.frames import apply_mask

__all__ = ["RawWebSocket", "connect"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE = 16 << 10

OnText = Callable[[str, float], None]


class RawWebSocket(asyncio.Protocol):
    """One client connection; ``opened`` resolves after the 101, ``closed`` when it ends."""

    def __init__(self, host: str, target: str, on_text: OnText) -> None:
        self.host = host
        self.target = target
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._buf = bytearray()
        self._open = False
        self._fragments: list[bytes] = []
        self._close_sent = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            f"GET {self.target} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        t = time.time()
        self._buf += data
        if not self._open and not self._handshake():
            return
        self._frames(t)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # --- sending ------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self, code: int = 1000) -> None:
        if not self._close_sent and self.transport is not None:
            self._close_sent = True
            self._send(0x8, struct.pack("!H", code))

    def _send(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        transport.write(head + mask + apply_mask(payload, mask))

    # --- receiving ----------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        elif not self.closed.done():
            self.closed.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def _handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HANDSHAKE:
                self._fail("handshake response too long")
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = head[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._fail(f"handshake refused: {head[0]}")
            return False
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self._fail("handshake: wrong Sec-WebSocket-Accept")
            return False
        self._open = True
        self.opened.set_result(None)
        return True

    def _frames(self, t: float) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                self._fail("server frame is masked")
                return
            n = b1 & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                start = pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                start = pos + 10
            if size - start < n:
                break
            payload = bytes(buf[start : start + n])
            pos = start + n
            if not self._frame(b0 & 0x80, b0 & 0x0F, payload, t):
                break
        del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes, t: float) -> bool:
        """One frame; False when the connection is done."""
        if opcode in (0x1, 0x2, 0x0):
            if opcode and self._fragments:
                self._fail("new message inside a fragmented one")
                return False
            self._fragments.append(payload)
            if fin:
                data = b"".join(self._fragments) if len(self._fragments) > 1 else payload
                self._fragments = []
                self.on_text(data.decode(), t)
            return True
        if opcode == 0x9:
            self._send(0xA, payload)
            return True
        if opcode == 0xA:
            return True
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            self.close(code or 1000)
            if not self.closed.done():
                self.closed.set_result(code)
            if self.transport is not None:
                self.transport.close()
            return False
        self._fail(f"unknown opcode {opcode}")
        return False


async def connect(url: str, on_text: OnText) -> RawWebSocket:
    """Open ``ws://host:port/path?query``; returns once the server accepted the upgrade."""
    if not url.startswith("ws://"):
        raise ValueError("only ws:// URLs")
    hostport, _, rest = url[5:].partition("/")
    host, _, port = hostport.rpartition(":")
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: RawWebSocket(hostport, "/" + rest, on_text), host, int(port)
    )
    await proto.opened
    return proto
