#!/usr/bin/env python3
"""Server fan-out with LIGHTWEIGHT RAW-PROTOCOL clients (no local database).

    .venv/bin/python bench/fanout.py --url ws://127.0.0.1:8765/api/sync \
        --http http://127.0.0.1:8765 --clients 1000 [--changes 30] [--burst 5000] \
        [--json out.json] [--server-pid PID]

These are NOT tidesync clients: each is one WebSocket speaking PROTOCOL.md JSON directly
(connect at the server's current LSN, acknowledge srv_live_changes with clt_changes_applied,
answer catchup chunks, heartbeat), so that thousands fit in one CPython process. One more
raw client is the writer. All clients share one asyncio loop, so a delivery time includes
this process's own queueing behind the other clients' frames (it is an upper bound on the
server's part).

Measures
  fan-out latency  the writer sends one change (clt_send_changes); the time until each
                   listener's srv_live_changes carrying it is received; sequential changes
  throughput       the writer sends --burst changes in batches of 100 (4 batches in flight);
                   server-applied changes/s (writer's view) and deliveries/s to all listeners
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import time
import urllib.request
import uuid
from typing import Any

import websockets

HEARTBEAT_S = 20.0


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def frame(client_id: str, type_: str, **fields: Any) -> str:
    return json.dumps(
        {
            "type": type_,
            "messageId": str(uuid.uuid4()),
            "timestamp": now_ms(),
            "clientId": client_id,
            **fields,
        }
    )


class Listener:
    def __init__(self, url: str, lsn: str, stats: Stats):
        self.id = str(uuid.uuid4())
        self.url = f"{url}?clientId={self.id}&lsn={lsn}"
        self.lsn = lsn
        self.stats = stats
        self.live = asyncio.Event()
        self.ws: Any = None

    async def connect(self) -> None:
        self.ws = await websockets.connect(
            self.url, max_size=8 << 20, compression=None, ping_interval=None, open_timeout=120
        )

    async def run(self) -> None:
        ws = self.ws
        hb = asyncio.create_task(self.heartbeat())
        try:
            async for raw in ws:
                t = time.time()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "srv_live_changes":
                    ids = [c["id"] for c in msg.get("changes", [])]
                    self.stats.received(ids, t)
                    self.lsn = msg.get("lastLSN", self.lsn)
                    await ws.send(
                        frame(self.id, "clt_changes_applied", changeIds=ids, lastLSN=self.lsn)
                    )
                elif kind == "srv_catchup_changes":
                    self.lsn = msg.get("lastLSN", self.lsn)
                    await ws.send(
                        frame(
                            self.id,
                            "clt_catchup_received",
                            chunk=msg["sequence"]["chunk"],
                            lsn=self.lsn,
                        )
                    )
                elif kind == "srv_catchup_completed":
                    self.lsn = msg.get("finalLSN", self.lsn)
                    self.live.set()
                elif kind == "srv_lsn_update":
                    self.lsn = msg.get("lsn", self.lsn)
                elif kind == "srv_error":
                    self.stats.errors.append(msg.get("code", "?"))
        except websockets.ConnectionClosed:
            pass
        finally:
            hb.cancel()

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self.ws.send(frame(self.id, "clt_heartbeat", lsn=self.lsn, active=True))


class Stats:
    def __init__(self) -> None:
        self.waiting: dict[str, tuple[int, asyncio.Event, list[float]]] = {}
        self.errors: list[str] = []

    def expect(self, change_id: str, count: int) -> tuple[asyncio.Event, list[float]]:
        ev, times = asyncio.Event(), []
        self.waiting[change_id] = (count, ev, times)
        return ev, times

    def received(self, ids: list[str], t: float) -> None:
        for cid in ids:
            entry = self.waiting.get(cid)
            if entry:
                count, ev, times = entry
                times.append(t)
                if len(times) >= count:
                    ev.set()


class Writer:
    def __init__(self, url: str, lsn: str):
        self.id = str(uuid.uuid4())
        self.url = f"{url}?clientId={self.id}&lsn={lsn}"
        self.applied: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with websockets.connect(
            self.url, compression=None, ping_interval=None, max_size=8 << 20
        ) as ws:
            self.ws = ws
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "srv_catchup_completed":
                    self.ready.set()
                elif kind == "srv_changes_applied":
                    ok = sum(1 for r in msg.get("results", []) if r.get("status") == "applied")
                    self.applied.put_nowait((time.time(), ok))
                elif kind == "srv_live_changes":
                    ids = [c["id"] for c in msg.get("changes", [])]
                    await ws.send(
                        frame(
                            self.id,
                            "clt_changes_applied",
                            changeIds=ids,
                            lastLSN=msg.get("lastLSN"),
                        )
                    )

    def change(self) -> dict[str, Any]:
        pid = f"fan-{uuid.uuid4()}"
        stamp = iso_now()
        return {
            "id": str(uuid.uuid4()),
            "table": "projects",
            "operation": "insert",
            "data": {"id": pid, "name": "fan-out probe", "updated_at": stamp},
            "updated_at": stamp,
        }

    async def send(self, changes: list[dict[str, Any]]) -> None:
        await self.ws.send(frame(self.id, "clt_send_changes", changes=changes))


def rss_mib(pid: int | None) -> float | None:
    if not pid:
        return None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with urllib.request.urlopen(args.http + "/api/health") as r:
        lsn = json.loads(r.read())["lsn"]
    stats = Stats()
    listeners = [Listener(args.url, lsn, stats) for _ in range(args.clients)]
    t0 = time.monotonic()
    sem = asyncio.Semaphore(64)

    async def connect(li: Listener) -> None:
        async with sem:
            for attempt in range(5):
                try:
                    await li.connect()
                    return
                except (OSError, websockets.InvalidHandshake, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(connect(li) for li in listeners))
    tasks = [asyncio.create_task(li.run()) for li in listeners]
    await asyncio.wait_for(asyncio.gather(*(li.live.wait() for li in listeners)), 300)
    connect_s = time.monotonic() - t0
    print(
        f"  fanout: {args.clients} raw clients connected and live in {connect_s:.1f} s", flush=True
    )
    writer = Writer(args.url, lsn)
    wtask = asyncio.create_task(writer.run())
    await asyncio.wait_for(writer.ready.wait(), 60)

    # fan-out latency: sequential single changes
    per_delivery: list[float] = []
    all_received: list[float] = []
    for i in range(args.changes + 3):
        ch = writer.change()
        ev, times = stats.expect(ch["id"], args.clients)
        ts = time.time()
        await writer.send([ch])
        try:
            await asyncio.wait_for(ev.wait(), args.timeout)
        except TimeoutError:
            raise SystemExit(
                f"change {i}: only {len(times)} of {args.clients} clients had it "
                f"after {args.timeout:.0f} s (connected in {connect_s:.0f} s)"
            ) from None
        if i >= 3:  # warm-up
            per_delivery.extend((t - ts) * 1000 for t in times)
            all_received.append((max(times) - ts) * 1000)
        await asyncio.sleep(0.05)

    # throughput: a burst of changes in batches of 100, 4 batches in flight
    batch, in_flight = 100, 4
    changes = [writer.change() for _ in range(args.burst)]
    last_ev, _ = stats.expect(changes[-1]["id"], args.clients)
    while not writer.applied.empty():
        writer.applied.get_nowait()
    tb = time.time()
    sent = applied = 0
    outstanding = 0
    t_applied_last = tb
    while applied < args.burst:
        while outstanding < in_flight and sent < args.burst:
            await writer.send(changes[sent : sent + batch])
            sent += min(batch, args.burst - sent)
            outstanding += 1
        t_done, ok = await asyncio.wait_for(writer.applied.get(), 120)
        applied += ok
        outstanding -= 1
        t_applied_last = t_done
        if ok == 0:
            break
    await asyncio.wait_for(last_ev.wait(), 300)
    t_all = time.time()
    server_rss = rss_mib(args.server_pid)
    for t in (*tasks, wtask):
        t.cancel()
    await asyncio.gather(*tasks, wtask, return_exceptions=True)
    return {
        "clients": args.clients,
        "client_kind": "raw-protocol WebSocket (bench/fanout.py), no local DB, one asyncio process",
        "connect_s": connect_s,
        "changes": args.changes,
        "delivery_p50_ms": pct(per_delivery, 50),
        "delivery_p99_ms": pct(per_delivery, 99),
        "delivery_max_ms": max(per_delivery),
        "all_received_ms": {
            "median": statistics.median(all_received),
            "min": min(all_received),
            "max": max(all_received),
            "n": len(all_received),
            "values": [round(x, 1) for x in all_received],
        },
        "delivery_samples_ms": [
            round(x, 2) for x in sorted(per_delivery)[:: max(1, len(per_delivery) // 2000)]
        ],
        "burst": args.burst,
        "applied": applied,
        "applied_per_s": applied / max(1e-9, t_applied_last - tb),
        "all_delivered_s": t_all - tb,
        "deliveries_per_s": args.burst * args.clients / max(1e-9, t_all - tb),
        "server_rss_mib": server_rss,
        "client_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "protocol_errors": stats.errors[:20],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--burst", type=int, default=5000)
    ap.add_argument("--json")
    ap.add_argument("--timeout", type=float, default=120.0, help="per change, s")
    ap.add_argument("--server-pid", type=int)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    res = asyncio.run(main_async(args))
    print(
        f"  fanout {args.clients}: delivery p50 {res['delivery_p50_ms']:.1f} ms, p99 "
        f"{res['delivery_p99_ms']:.1f} ms; applied {res['applied_per_s']:,.0f}/s; "
        f"deliveries {res['deliveries_per_s']:,.0f}/s",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
