#!/usr/bin/env python3
"""Server fan-out with LIGHTWEIGHT RAW-PROTOCOL clients (no local database).

    .venv/bin/python bench/fanout.py --url ws://127.0.0.1:8765/api/sync \
        --http http://127.0.0.1:8765 --clients 1000 [--changes 30] [--burst 5000] \
        [--json out.json] [--server-pid PID]

These are NOT tidesync clients: each is one WebSocket speaking PROTOCOL.md JSON directly
(connect at the server's current LSN, acknowledge srv_live_changes with clt_changes_applied,
answer catchup chunks, heartbeat every 20 s), so that 10,000 fit in one CPython process:
each is a bare asyncio Protocol (bench/rawws.py, no task per connection) whose frames are
handled in a plain callback.  Every listener gets the same live batches, so a batch's
``changes`` text is parsed once per distinct text and its ids reused (the frame's own fields
are still read per client).  One more raw client is the writer.  All clients share one
asyncio loop, so a delivery time includes this process's own queueing behind the other
clients' frames (it is an upper bound on the server's part); the CPU seconds of the server
and of this process are reported per phase, a figure machine load does not inflate.

Measures
  fan-out latency  the writer sends one change (clt_send_changes); the time until each
                   listener's srv_live_changes carrying it is received; sequential changes
  throughput       the writer sends --burst changes in batches of 100 (4 batches in flight);
                   server-applied changes/s (writer's view) and deliveries/s to all listeners
  exactly once     every listener must have received each change the writer sent once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
import urllib.request
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawws import RawWebSocket, connect

HEARTBEAT_S = 20.0
_LIVE_HEAD = '{"type":"srv_live_changes",'
_CHANGES_KEY = ',"changes":'
_LSN_KEY = ',"lastLSN":'


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


class Batches:
    """Parsed ``changes`` arrays by their text: one parse per distinct batch, not per client."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._seen: dict[str, tuple[int, str, list[str]]] = {}

    def get(self, changes_text: str) -> tuple[int, str, list[str]]:
        """(number of changes, their ids as JSON text, the ids the benchmark waits for)."""
        entry = self._seen.get(changes_text)
        if entry is None:
            ids = [c["id"] for c in json.loads(changes_text)]
            entry = (len(ids), json.dumps(ids), [i for i in ids if i in self.stats.waiting])
            if len(self._seen) >= 256:
                self._seen.clear()
            self._seen[changes_text] = entry
        return entry


class Listener:
    def __init__(self, url: str, lsn: str, stats: Stats, batches: Batches):
        self.id = str(uuid.uuid4())
        self.url = f"{url}?clientId={self.id}&lsn={lsn}"
        self.lsn = lsn
        self.stats = stats
        self.batches = batches
        self.live = asyncio.get_running_loop().create_future()
        self.ws: RawWebSocket | None = None
        self.received = 0  # changes, for the exactly-once check
        self.frames = 0  # srv_live_changes frames

    async def connect(self) -> None:
        self.ws = await connect(self.url, self.on_text)

    def send(self, text: str) -> None:
        assert self.ws is not None
        self.ws.send_text(text)

    def on_text(self, raw: str, t: float) -> None:
        if raw.startswith(_LIVE_HEAD):
            i, j = raw.find(_CHANGES_KEY), raw.rfind(_LSN_KEY)
            if 0 < i < j:
                count, ids_json, waited = self.batches.get(raw[i + len(_CHANGES_KEY) : j])
                self.lsn = json.loads(raw[j + len(_LSN_KEY) : -1])
                self.live_batch(count, ids_json, waited, t)
                return
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "srv_live_changes":
            ids = [c["id"] for c in msg.get("changes", [])]
            self.lsn = msg.get("lastLSN", self.lsn)
            waited = [i for i in ids if i in self.stats.waiting]
            self.live_batch(len(ids), json.dumps(ids), waited, t)
        elif kind == "srv_catchup_changes":
            self.lsn = msg.get("lastLSN", self.lsn)
            chunk = msg["sequence"]["chunk"]
            self.send(frame(self.id, "clt_catchup_received", chunk=chunk, lsn=self.lsn))
        elif kind == "srv_catchup_completed":
            self.lsn = msg.get("finalLSN", self.lsn)
            if not self.live.done():
                self.live.set_result(None)
        elif kind == "srv_lsn_update":
            self.lsn = msg.get("lsn", self.lsn)
        elif kind == "srv_error":
            self.stats.errors.append(msg.get("code", "?"))

    def live_batch(self, count: int, ids_json: str, waited: list[str], t: float) -> None:
        self.received += count
        self.frames += 1
        if waited:
            self.stats.received(waited, t)
        self.send(
            f'{{"type":"clt_changes_applied","messageId":"{uuid.uuid4()}",'
            f'"timestamp":{now_ms()},"clientId":"{self.id}",'
            f'"changeIds":{ids_json},"lastLSN":{json.dumps(self.lsn)}}}'
        )

    def heartbeat(self) -> None:
        self.send(frame(self.id, "clt_heartbeat", lsn=self.lsn, active=True))


async def heartbeats(listeners: list[Listener]) -> None:
    """Each listener heartbeats every HEARTBEAT_S, spread over the interval (one task)."""
    step = 0
    while True:
        await asyncio.sleep(1.0)
        step += 1
        for li in listeners[step % int(HEARTBEAT_S) :: int(HEARTBEAT_S)]:
            li.heartbeat()


class Stats:
    def __init__(self) -> None:
        self.waiting: dict[str, tuple[int, asyncio.Event, list[float]]] = {}
        self.errors: list[str] = []

    def expect(self, change_id: str, count: int) -> tuple[asyncio.Event, list[float]]:
        ev = asyncio.Event()
        times: list[float] = []
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
        self.ws: RawWebSocket | None = None

    async def connect(self) -> None:
        self.ws = await connect(self.url, self.on_text)

    def on_text(self, raw: str, t: float) -> None:
        assert self.ws is not None
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "srv_catchup_completed":
            self.ready.set()
        elif kind == "srv_changes_applied":
            ok = sum(1 for r in msg.get("results", []) if r.get("status") == "applied")
            self.applied.put_nowait((t, ok))
        elif kind == "srv_live_changes":
            ids = [c["id"] for c in msg.get("changes", [])]
            self.ws.send_text(
                frame(self.id, "clt_changes_applied", changeIds=ids, lastLSN=msg.get("lastLSN"))
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

    def send(self, changes: list[dict[str, Any]]) -> None:
        assert self.ws is not None
        self.ws.send_text(frame(self.id, "clt_send_changes", changes=changes))


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None when unknown)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Phases:
    """CPU seconds of the server and of this process, phase by phase."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.server: dict[str, float | None] = {}
        self.client: dict[str, float] = {}
        self._mark = (cpu_s(server_pid), time.process_time())

    def end(self, name: str) -> None:
        server, client = cpu_s(self.pid), time.process_time()
        if server is not None and self._mark[0] is not None:
            self.server[name] = round(server - self._mark[0], 2)
        self.client[name] = round(client - self._mark[1], 2)
        self._mark = (server, client)


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
    batches = Batches(stats)
    listeners = [Listener(args.url, lsn, stats, batches) for _ in range(args.clients)]
    phases = Phases(args.server_pid)
    t0 = time.monotonic()
    sem = asyncio.Semaphore(args.connect_concurrency)

    async def connect_one(li: Listener) -> None:
        async with sem:
            for attempt in range(5):
                try:
                    await asyncio.wait_for(li.connect(), 120)
                    return
                except (OSError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(connect_one(li) for li in listeners))
    connected_s = time.monotonic() - t0
    await asyncio.wait_for(asyncio.gather(*(li.live for li in listeners)), 300)
    connect_s = time.monotonic() - t0
    phases.end("connect")
    print(
        f"  fanout: {args.clients} raw clients connected in {connected_s:.1f} s, "
        f"live in {connect_s:.1f} s",
        flush=True,
    )
    hb = asyncio.create_task(heartbeats(listeners))
    writer = Writer(args.url, lsn)
    await writer.connect()
    await asyncio.wait_for(writer.ready.wait(), 60)

    # fan-out latency: sequential single changes
    per_delivery: list[float] = []
    all_received: list[float] = []
    sent_total = 0
    for i in range(args.changes + 3):
        ch = writer.change()
        ev, times = stats.expect(ch["id"], args.clients)
        ts = time.time()
        writer.send([ch])
        sent_total += 1
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
    phases.end("fanout")

    # throughput: a burst of changes in batches of 100, 4 batches in flight
    batch, in_flight = 100, 4
    changes = [writer.change() for _ in range(args.burst)]
    last_ev, _ = stats.expect(changes[-1]["id"], args.clients)
    while not writer.applied.empty():
        writer.applied.get_nowait()
    frames_before = sum(li.frames for li in listeners)
    tb = time.time()
    sent = applied = 0
    outstanding = 0
    t_applied_last = tb
    while applied < args.burst:
        while outstanding < in_flight and sent < args.burst:
            writer.send(changes[sent : sent + batch])
            sent += min(batch, args.burst - sent)
            outstanding += 1
        t_done, ok = await asyncio.wait_for(writer.applied.get(), 120)
        applied += ok
        outstanding -= 1
        t_applied_last = t_done
        if ok == 0:
            break
    sent_total += sent
    await asyncio.wait_for(last_ev.wait(), 300)
    t_all = time.time()
    phases.end("burst")
    server_rss = rss_mib(args.server_pid)
    hb.cancel()
    off = [li.received for li in listeners if li.received != sent_total]
    for ws in [li.ws for li in listeners] + [writer.ws]:
        if ws is not None:
            ws.close()
    return {
        "clients": args.clients,
        "client_kind": "raw-protocol WebSocket (bench/fanout.py, bench/rawws.py), no local DB, "
        "one asyncio process",
        "connect_s": connect_s,
        "connected_s": connected_s,
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
        "burst_frames_per_listener": (sum(li.frames for li in listeners) - frames_before)
        / args.clients,
        "exactly_once": {
            "changes_sent": sent_total,
            "listeners_off": len(off),
            "off_counts": sorted(set(off))[:10],
        },
        "server_cpu_s": phases.server,
        "client_cpu_s": phases.client,
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
    ap.add_argument(
        "--connect-concurrency", type=int, default=256, help="handshakes in flight at once"
    )
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    res = asyncio.run(main_async(args))
    print(
        f"  fanout {args.clients}: delivery p50 {res['delivery_p50_ms']:.1f} ms, p99 "
        f"{res['delivery_p99_ms']:.1f} ms; applied {res['applied_per_s']:,.0f}/s; "
        f"deliveries {res['deliveries_per_s']:,.0f}/s; server CPU s {res['server_cpu_s']}; "
        f"exactly once: {res['exactly_once']}",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
