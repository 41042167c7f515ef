"""The simulated network: WebSocket connections as in-memory links with latency and faults.

What is modelled, and why (a WebSocket runs over TCP):

* within one live connection frames arrive in order and exactly once: each
  direction has its own FIFO schedule (a frame is never delivered before the
  one sent ahead of it);
* a connection can be cut at any frame boundary, and whatever was in flight is
  lost.  Three kinds of cut:

  - ``reset``: both ends learn of it (a RST): the client's ``recv`` raises
    ``TransportClosed(1006)``, the server's session is closed;
  - ``client_half``: only the client learns of it (its side timed out or was
    torn down) while the server's side lives on: frames the client sent before
    the cut still reach the server, and the server keeps a stale session until
    the client's next connection replaces it (4409) or its heartbeat times out;
  - ``blackhole``: neither end is told; frames vanish both ways until the
    heartbeat timeouts on each side give up (a pulled cable, a dead NAT entry);

* duplication and reordering happen *across* connections, as they do in real
  life: a batch whose answer was lost is resent on the next connection, and a
  stale connection's frames are processed after the client gave it up;
* connecting can fail (refused quickly while the server is down, a timeout
  while the client is partitioned, or at random).

Within-connection duplication or reordering is not injected: TCP rules it out,
and a test of it would test a network that does not exist.

Every delay comes from the simulation's seeded generator and every delivery is
a timer on the virtual-time loop, so a seed fixes the whole schedule.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from tidesync.worker_sync.worker_thread.transport import ABNORMAL_CLOSURE, TransportClosed

__all__ = ["CUT_KINDS", "Link", "NetworkConfig", "ServerEnd", "SimNetwork", "SimTransport"]

CUT_KINDS = ("reset", "client_half", "blackhole")
_TICK = 1e-6  # one microsecond between two deliveries of one direction


@dataclass(frozen=True)
class NetworkConfig:
    """Latency and fault rates; a rate of 0 switches that fault off."""

    latency_ms: tuple[float, float] = (1.0, 60.0)
    cut_per_frame: float = 0.004  # chance that a frame boundary cuts the connection
    cut_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)  # reset, client_half, blackhole
    connect_fail: float = 0.03  # chance that an attempt fails although the server is up
    connect_timeout_s: float = 5.0  # how long an attempt into a partition hangs


class ServerEnd(Protocol):
    """What the network calls on the server (``SimServer``)."""

    @property
    def up(self) -> bool: ...
    def accept(self, link: Link, client_id: str | None, lsn_text: str | None) -> None: ...
    def on_frame(self, link: Link, text: str) -> None: ...
    def on_disconnect(self, link: Link) -> None: ...


@dataclass(eq=False)
class Link:
    """One connection: a client end (``SimTransport``) and a server end."""

    net: SimNetwork
    client_index: int
    number: int
    client_open: bool = True
    server_open: bool = True
    reset: bool = False  # in-flight frames die (RST or process death)
    blackholed: bool = False
    inbox: asyncio.Queue[str | TransportClosed] = field(default_factory=asyncio.Queue)
    c2s_at: float = 0.0  # the last scheduled delivery time in each direction (FIFO)
    s2c_at: float = 0.0

    # --- client -> server -------------------------------------------------------------------

    def client_send(self, text: str) -> None:
        if not self.client_open:
            raise TransportClosed(ABNORMAL_CLOSURE, "socket closed")
        self.net.frame_boundary(self)
        self.c2s_at = self.net.after(self.c2s_at)
        self.net.frames["c2s"] += 1
        self.net.loop.call_at(self.c2s_at, self._to_server, text)

    def _to_server(self, text: str) -> None:
        if self.reset or self.blackholed or not self.server_open or not self.net.server.up:
            self.net.frames["lost"] += 1
            return
        self.net.server.on_frame(self, text)

    def client_close(self) -> None:
        """The client closed its end; the server hears of it after the frames already sent."""
        if not self.client_open:
            return
        self.client_open = False
        self.c2s_at = self.net.after(self.c2s_at)
        self.net.loop.call_at(self.c2s_at, self._disconnect_server)

    def _disconnect_server(self) -> None:
        if self.server_open and not self.blackholed and not self.reset:
            self.server_open = False
            self.net.server.on_disconnect(self)

    # --- server -> client -------------------------------------------------------------------

    def server_send(self, text: str) -> None:
        if not self.server_open:
            return
        self.net.frame_boundary(self)
        self.s2c_at = self.net.after(self.s2c_at)
        self.net.frames["s2c"] += 1
        self.net.loop.call_at(self.s2c_at, self._to_client, text)

    def _to_client(self, item: str | TransportClosed) -> None:
        if self.reset and isinstance(item, str):
            self.net.frames["lost"] += 1
            return
        if self.blackholed or not self.client_open:
            if isinstance(item, str):
                self.net.frames["lost"] += 1
            return
        if isinstance(item, TransportClosed):
            self.client_open = False
        self.inbox.put_nowait(item)

    def server_close(self, code: int, reason: str) -> None:
        """The server closes (after its queued frames), or its process died (``code`` 1006)."""
        if not self.server_open:
            return
        self.server_open = False
        self.s2c_at = self.net.after(self.s2c_at)
        self.net.loop.call_at(self.s2c_at, self._to_client, TransportClosed(code, reason))

    # --- faults -----------------------------------------------------------------------------

    def cut(self, kind: str) -> None:
        """Cut this connection now (see the module docstring for the kinds)."""
        if not (self.client_open or self.server_open):
            return
        self.net.faults[f"cut_{kind}"] += 1
        if kind == "blackhole":
            self.blackholed = True
            return
        if kind == "reset":
            self.reset = True
            if self.server_open:
                self.net.loop.call_at(self.net.arrival(), self._reset_server)
        # Both reset and client_half: the client end learns at once, in-flight answers are lost.
        if self.client_open:
            self.client_open = False
            self.inbox.put_nowait(TransportClosed(ABNORMAL_CLOSURE, f"connection {kind}"))

    def _reset_server(self) -> None:
        if self.server_open:
            self.server_open = False
            self.net.server.on_disconnect(self)


class SimTransport:
    """The ``Transport`` the Sync Worker uses, over a ``Link`` of ``SimNetwork``."""

    def __init__(self, net: SimNetwork, client_index: int) -> None:
        self._net = net
        self._index = client_index
        self.link: Link | None = None

    async def open(self, url: str) -> None:
        net = self._net
        net.connects["attempts"] += 1
        if self._index in net.partitioned:
            await asyncio.sleep(net.config.connect_timeout_s)
            net.connects["timed_out"] += 1
            raise TransportClosed(ABNORMAL_CLOSURE, "connect timed out (partitioned)")
        if not net.server.up or net.rng.random() < net.config.connect_fail:
            await asyncio.sleep(2 * net.latency())
            net.connects["refused"] += 1
            raise TransportClosed(ABNORMAL_CLOSURE, "connection refused")
        link = net.new_link(self._index)
        self.link = link
        await asyncio.sleep(net.latency())  # the upgrade request travels
        if not net.server.up or self._index in net.partitioned:
            link.client_open = link.server_open = False
            raise TransportClosed(ABNORMAL_CLOSURE, "connection refused")
        query = parse_qs(urlsplit(url).query)
        net.server.accept(link, _first(query, "clientId"), _first(query, "lsn"))
        await asyncio.sleep(net.latency())  # the 101 response travels back
        if not link.client_open and link.inbox.empty():
            raise TransportClosed(ABNORMAL_CLOSURE, "connection lost during the handshake")
        net.connects["opened"] += 1

    async def send(self, text: str) -> None:
        if self.link is None:
            raise TransportClosed(ABNORMAL_CLOSURE, "not open")
        self.link.client_send(text)

    async def recv(self) -> str:
        if self.link is None:
            raise TransportClosed(ABNORMAL_CLOSURE, "not open")
        item = await self.link.inbox.get()
        if isinstance(item, TransportClosed):
            self.link.client_open = False
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.link is not None:
            self.link.client_close()


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


class SimNetwork:
    """All links, the partitions, and the fault counters."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        config: NetworkConfig,
        server: ServerEnd,
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.config = config
        self.server = server
        self.links: list[Link] = []
        self.partitioned: set[int] = set()
        self.faults_enabled = True
        self.frames: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.connects: Counter[str] = Counter()
        self._numbers = 0

    def transport_factory(self, client_index: int) -> Callable[[], SimTransport]:
        return lambda: SimTransport(self, client_index)

    def new_link(self, client_index: int) -> Link:
        self._numbers += 1
        link = Link(self, client_index, self._numbers)
        link.c2s_at = link.s2c_at = self.loop.time()
        self.links = [x for x in self.links if x.client_open or x.server_open]
        self.links.append(link)
        return link

    def latency(self) -> float:
        low, high = self.config.latency_ms
        return self.rng.uniform(low, high) / 1000.0

    def arrival(self) -> float:
        return self.loop.time() + self.latency()

    def after(self, previous: float) -> float:
        """A delivery time strictly after ``previous``: the loop's timer heap does not keep
        insertion order for equal times, and a frame must never overtake the one before it."""
        return max(previous + _TICK, self.arrival())

    def frame_boundary(self, link: Link) -> None:
        """Maybe cut ``link`` here, before the next frame goes out."""
        if self.faults_enabled and self.rng.random() < self.config.cut_per_frame:
            kind = self.rng.choices(CUT_KINDS, weights=self.config.cut_weights)[0]
            link.cut(kind)

    def live_links(self, client_index: int | None = None) -> list[Link]:
        return [
            x
            for x in self.links
            if (x.client_open or x.server_open)
            and (client_index is None or x.client_index == client_index)
        ]

    def partition(self, client_index: int) -> None:
        """Cut ``client_index`` off: its links go silent, new attempts time out."""
        self.faults["partition"] += 1
        self.partitioned.add(client_index)
        for link in self.live_links(client_index):
            link.cut("blackhole")

    def heal(self, client_index: int | None = None) -> None:
        if client_index is None:
            self.partitioned.clear()
        else:
            self.partitioned.discard(client_index)
