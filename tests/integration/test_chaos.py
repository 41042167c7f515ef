"""Real-process chaos: killed servers and clients, broken TCP, a full disk, skewed clocks.

Everything here is real: the sync server is a subprocess (``server_factory``),
native clients open real SQLite files, connections go over loopback (some
through ``tests/helpers/tcp_proxy.py``), a killed client is a subprocess
(``tests/helpers/chaos_client.py``) and the full disk is a small tmpfs.

After each fault heals, ``assert_converged`` checks the promises of
docs/reliability.md, read straight from the files (``tidesync.sim.invariants``):
every client's synced tables equal the server's (all columns); no client change
id twice in ``_ts_change_history``; every local change ``synced`` (applied for
this client at the LSN it noted) or ``skipped``/``rejected`` with a reason, none
left pending, none the server applied unknown locally; client LSNs equal the
server's; ``PRAGMA integrity_check`` ok on every database; and no client needed
a checksum repair (a repair means it diverged at some point).

Waits are "until this holds, at most N seconds"; nothing asserts speed.  Longer
variants run with ``TIDESYNC_SLOW=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.server_process import ServerHandle
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.waits import eventually, holds

import tidesync
from tidesync.native.client import Client
from tidesync.schema import Schema
from tidesync.server.seed import seed_tasks
from tidesync.sim.invariants import check_invariants
from tidesync.worker_sync.worker_thread.connection_manager import BackoffPolicy
from tidesync.worker_sync.worker_thread.status import SyncPhase, SyncStatus

SLOW = os.environ.get("TIDESYNC_SLOW") == "1"
slow = pytest.mark.skipif(not SLOW, reason="long chaos variant: set TIDESYNC_SLOW=1")

HEARTBEAT = 0.3
SYNC_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]
#: Reconnect quickly: the faults come fast, and the backoff schedule has its own unit tests.
FAST_BACKOFF = BackoffPolicy(base=0.05, cap=0.5)

ServerFactory = Callable[..., ServerHandle]


# --- the world: clients, and the end-of-test invariants -------------------------------------------


@dataclass
class World:
    tmp_path: Path
    clients: dict[str, Client] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    async def open(self, url: str, name: str, **kw: Any) -> Client:
        kw.setdefault("heartbeat_interval", HEARTBEAT)
        kw.setdefault("backoff", FAST_BACKOFF)
        path = self.tmp_path / f"{name}.db"
        client = await tidesync.connect(url, str(path), **kw)
        self.clients[name] = client
        self.paths[name] = path
        return client

    async def close_all(self) -> None:
        for name, client in self.clients.items():
            try:
                await asyncio.wait_for(client.close(), 15.0)
            except TimeoutError:
                raise AssertionError(f"client {name} did not close:\n{task_stacks()}") from None


def task_stacks() -> str:
    """Where every asyncio task of the test waits: the diagnosis of a wedged client."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.print_stack(limit=12, file=out)
    return out.getvalue()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    await w.close_all()


def server_lsn(server: ServerHandle) -> int:
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        return int(
            conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM _ts_change_history").fetchone()[0]
        )


def integrity_ok(path: Path) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def history_duplicates(server: ServerHandle) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        return conn.execute(
            "SELECT change_id, COUNT(*) FROM _ts_change_history WHERE client_id IS NOT NULL "
            "GROUP BY change_id HAVING COUNT(*) > 1"
        ).fetchall()


async def assert_converged(
    server: ServerHandle,
    world: World,
    *,
    extra_paths: tuple[Path, ...] = (),
    timeout: float = SYNC_TIMEOUT,
) -> dict[str, int]:
    """Heal, settle, close every client, then check every invariant; returns a few counts."""
    for name, client in world.clients.items():
        try:
            await client.wait_until_synced(timeout)
        except TimeoutError as exc:
            raise AssertionError(f"client {name}: {exc}\n{task_stacks()}") from None
    target = server_lsn(server)
    for client in world.clients.values():
        await eventually(holds(lambda c=client: c.status.lsn == target), timeout)  # type: ignore[misc]
    repairs = {name: c.status.repairs for name, c in world.clients.items()}
    await world.close_all()
    paths = [*world.paths.values(), *extra_paths]
    violations = check_invariants(server.db_path, paths, Schema.demo())
    assert not violations, "\n".join(str(v) for v in violations)
    assert history_duplicates(server) == []
    for path in [server.db_path, *paths]:
        assert integrity_ok(path), f"integrity_check failed on {path}"
    assert repairs == dict.fromkeys(repairs, 0), f"clients diverged mid-run: {repairs}"
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        states: dict[str, int] = {}
        for path in paths:
            with contextlib.closing(sqlite3.connect(path)) as local:
                for state, n in local.execute(
                    "SELECT state, COUNT(*) FROM local_changes WHERE from_server = 0 GROUP BY state"
                ):
                    states[state] = states.get(state, 0) + int(n)
        states["server_lsn"] = int(
            conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM _ts_change_history").fetchone()[0]
        )
    return states


def report(test: str, **figures: object) -> None:
    """One line of figures per test (``pytest -s`` shows them; docs/reliability.md quotes them)."""
    print(f"CHAOS {test}: " + " ".join(f"{k}={v}" for k, v in figures.items()))


class Writer:
    """A client writing in a loop: inserts of its own rows, updates and deletes of shared ones."""

    def __init__(self, client: Client, name: str, seed: int, shared: list[str]) -> None:
        self.client = client
        self.name = name
        self.rng = random.Random(seed)
        self.shared = shared
        self.ops = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Writer:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.ops

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            roll = self.rng.random()
            if roll < 0.4:
                await self.client.insert("projects", {"id": f"{self.name}-{n}", "name": "new"})
            elif roll < 0.85:
                key = self.rng.choice(self.shared)
                await self.client.upsert("projects", {"id": key, "name": f"{self.name} {n}"})
            elif roll < 0.95:
                async with self.client.transaction() as tx:
                    for k in self.rng.sample(self.shared, 3):
                        await tx.upsert("projects", {"id": k, "name": f"{self.name} tx {n}"})
            else:
                await self.client.delete("projects", self.rng.choice(self.shared))
            n += 1
            self.ops += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.01))


async def stop_writers(writers: list[Writer]) -> int:
    return sum([await w.stop() for w in writers])


# --- 1. the server killed with SIGKILL ---------------------------------------------------------


def _count_both(client_path: Path) -> tuple[int, int]:
    """What another reader of the client's file sees (committed data only)."""
    with contextlib.closing(sqlite3.connect(f"file:{client_path}?mode=ro", uri=True)) as conn:
        projects = conn.execute("SELECT COUNT(*) FROM projects").fetchone()[0]
        tasks = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        return int(projects), int(tasks)


async def test_server_killed_mid_initial_sync_never_shows_half_a_snapshot(
    server_factory: ServerFactory, world: World, tmp_path: Path
) -> None:
    tasks = 50_000 if SLOW else 20_000
    db = tmp_path / "seeded" / "server.db"
    db.parent.mkdir()
    await asyncio.to_thread(seed_tasks, db, tasks)
    server = server_factory(db=db, heartbeat=HEARTBEAT)

    counts: set[tuple[int, int]] = set()
    kills = 2 if SLOW else 1
    chunk_seen = asyncio.Event()

    def on_status(status: SyncStatus) -> None:
        progress = status.init_progress
        if progress is not None and progress.table == "tasks" and progress.chunk >= 3:
            chunk_seen.set()

    # The streamed initial sync (a new file would otherwise start from the server's image).
    fresh = await world.open(server.ws_url, "fresh", bootstrap=False)
    fresh.on_status(on_status)

    async def sample() -> None:
        while True:
            counts.add(_count_both(world.paths["fresh"]))
            rows = await fresh.query("SELECT COUNT(*) AS n FROM tasks")
            counts.add((-1, int(rows[0]["n"])))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        for _ in range(kills):
            await asyncio.wait_for(chunk_seen.wait(), SYNC_TIMEOUT)
            assert fresh.status.phase is SyncPhase.INITIAL
            await asyncio.to_thread(server.kill)
            await eventually(holds(lambda: not fresh.status.connected))
            assert _count_both(world.paths["fresh"]) == (0, 0)
            chunk_seen.clear()
            await asyncio.to_thread(server.start)
        await fresh.wait_until_synced(SYNC_TIMEOUT)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    counts.add(_count_both(world.paths["fresh"]))
    task_counts = {t for _, t in counts}
    assert task_counts <= {0, tasks}, f"a partial snapshot was visible: {sorted(task_counts)}"
    assert tasks in task_counts
    assert {p for p, _ in counts if p >= 0} <= {0, 10}
    states = await assert_converged(server, world)
    report("initial_sync", tasks=tasks, server_kills=kills, samples=len(counts), **states)


async def test_server_killed_mid_catchup_resumes_and_loses_nothing(
    server_factory: ServerFactory, world: World
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    writer = await world.open(server.ws_url, "writer", batch_size=200)
    behind = await world.open(server.ws_url, "behind")
    await behind.wait_until_synced(SYNC_TIMEOUT)
    behind.go_offline()
    await eventually(holds(lambda: not behind.status.connected))
    rounds = 8 if SLOW else 4
    for r in range(rounds):
        async with writer.transaction() as tx:
            for i in range(500):
                await tx.upsert("projects", {"id": f"p{i:04d}", "name": f"round {r}"})
        for i in range(r * 20, r * 20 + 20):
            await writer.delete("projects", f"p{i:04d}")
    await behind.insert("projects", {"id": "p0001", "name": "offline edit, older"})
    await behind.insert("projects", {"id": "behind-own", "name": "made offline"})
    await writer.wait_until_synced(SYNC_TIMEOUT)

    in_catchup = asyncio.Event()
    behind.on_status(
        lambda s: in_catchup.set() if s.phase is SyncPhase.CATCHUP and s.connected else None
    )
    behind.go_online()
    await asyncio.wait_for(in_catchup.wait(), SYNC_TIMEOUT)
    await asyncio.to_thread(server.kill)
    await eventually(holds(lambda: not behind.status.connected))
    await asyncio.to_thread(server.start)
    states = await assert_converged(server, world)
    report("catchup", rounds=rounds, server_kills=1, **states)


async def test_server_killed_repeatedly_under_live_traffic_loses_nothing(
    server_factory: ServerFactory, world: World
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    shared = [f"shared-{i}" for i in range(20)]
    clients = [await world.open(server.ws_url, f"w{i}", batch_size=50) for i in range(3)]
    for client in clients:
        await client.wait_until_synced(SYNC_TIMEOUT)
    writers = [Writer(c, f"w{i}", seed=i, shared=shared).start() for i, c in enumerate(clients)]
    kills = 6 if SLOW else 3
    for _ in range(kills):
        await eventually(holds(lambda: all(c.status.phase is SyncPhase.LIVE for c in clients)))
        await asyncio.sleep(0.4)  # traffic flows
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.3)  # writes go on locally while the server is down
        await asyncio.to_thread(server.start)
    await asyncio.sleep(0.4)
    ops = await stop_writers(writers)
    assert ops > 0
    states = await assert_converged(server, world)
    report("live_kills", server_kills=kills, ops=ops, **states)


# --- 2. native clients killed mid-batch (a subprocess) -----------------------------------------


class ChaosClientProcess:
    """``tests/helpers/chaos_client.py`` in a subprocess; its stdout is read as it comes."""

    def __init__(self, url: str, db: Path, rows: int, log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "tests.helpers.chaos_client",
            "--url",
            url,
            "--db",
            str(db),
            "--rows",
            str(rows),
            "--heartbeat",
            str(HEARTBEAT),
        ]
        self.log = log
        self.committed = 0
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log
            )
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            self.lines.append(line)
            if line.startswith("committed "):
                self.committed = int(line.split()[1])

    def said(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.lines)

    async def kill(self) -> None:
        assert self.proc is not None and self._drain is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._drain  # what it printed before dying

    async def wait(self) -> int:
        assert self.proc is not None and self._drain is not None
        code = await self.proc.wait()
        await self._drain
        return code


async def test_client_process_killed_mid_batch_sends_every_committed_row_exactly_once(
    server_factory: ServerFactory, world: World, tmp_path: Path
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    rows = 6000 if SLOW else 2400
    kills = 4 if SLOW else 2
    db = tmp_path / "killed.db"
    log = tmp_path / "chaos-client.log"
    committed_at_kill: list[int] = []
    on_server_at_kill: list[int] = []
    for k in range(kills):
        proc = ChaosClientProcess(server.ws_url, db, rows, log)
        await proc.start()
        before = _server_rows_with_prefix(server, "chaos-")

        # mid-batch: kill as soon as the server has applied some of this run's rows
        def progressed(p: ChaosClientProcess = proc, floor: int = before) -> bool:
            return _server_rows_with_prefix(server, "chaos-") > floor or p.said("synced")

        await eventually(holds(progressed))
        await proc.kill()
        on_server = _server_rows_with_prefix(server, "chaos-")
        committed_at_kill.append(proc.committed)
        on_server_at_kill.append(on_server)
        # every row it announced as committed is in its file (a restarted client that
        # had written everything already only resends, and announces nothing new)
        announced = max([proc.committed, *committed_at_kill])
        with contextlib.closing(sqlite3.connect(db)) as conn:
            local = conn.execute("SELECT COUNT(*) FROM projects WHERE id LIKE 'chaos-%'")
            assert local.fetchone()[0] >= announced, f"kill {k}: a committed row vanished"
    final = ChaosClientProcess(server.ws_url, db, rows, log)
    await final.start()
    assert await final.wait() == 0, final.lines[-5:]
    assert final.said("synced")
    assert _server_rows_with_prefix(server, "chaos-") == rows
    with contextlib.closing(sqlite3.connect(db)) as conn:
        local_ids = [
            r[0] for r in conn.execute("SELECT id FROM local_changes WHERE from_server = 0")
        ]
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        history = [r[0] for r in conn.execute("SELECT change_id FROM _ts_change_history")]
    assert sorted(history) == sorted(local_ids), "local changes and server history differ"
    assert len(set(history)) == len(history) == rows
    states = await assert_converged(server, world, extra_paths=(db,))
    report(
        "client_kill",
        rows=rows,
        client_kills=kills,
        committed_at_kill=committed_at_kill,
        on_server_at_kill=on_server_at_kill,
        **states,
    )


def _server_rows_with_prefix(server: ServerHandle, prefix: str) -> int:
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        found = conn.execute("SELECT COUNT(*) FROM projects WHERE id LIKE ?", (prefix + "%",))
        return int(found.fetchone()[0])


# --- 3. connections broken by a proxy ----------------------------------------------------------


async def test_clients_converge_after_the_proxy_resets_every_connection(
    server_factory: ServerFactory,
    world: World,
    proxy_to: Callable[[ServerHandle], Awaitable[TcpProxy]],
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    proxy = await proxy_to(server)
    shared = [f"shared-{i}" for i in range(15)]
    clients = [await world.open(proxy.ws_url(), f"c{i}", batch_size=20) for i in range(3)]
    for client in clients:
        await client.wait_until_synced(SYNC_TIMEOUT)
    writers = [
        Writer(c, f"c{i}", seed=10 + i, shared=shared).start() for i, c in enumerate(clients)
    ]
    drops = 10 if SLOW else 5
    for _ in range(drops):
        await eventually(holds(lambda: proxy.open_connections >= len(clients)))
        await asyncio.sleep(0.3)
        assert proxy.drop_all() >= 1
    await asyncio.sleep(0.3)
    ops = await stop_writers(writers)
    states = await assert_converged(server, world)
    assert proxy.stats.resets >= drops
    report("proxy_reset", drops=drops, resets=proxy.stats.resets, ops=ops, **states)


async def test_a_stalled_connection_is_declared_dead_by_heartbeats_and_recovers(
    server_factory: ServerFactory,
    world: World,
    proxy_to: Callable[[ServerHandle], Awaitable[TcpProxy]],
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    proxy = await proxy_to(server)
    a = await world.open(proxy.ws_url(), "a")
    b = await world.open(server.ws_url, "b")  # direct: sees a's changes once they get through
    await a.wait_until_synced(SYNC_TIMEOUT)
    await b.wait_until_synced(SYNC_TIMEOUT)
    lost_connection = asyncio.Event()
    a.on_status(lambda s: None if s.connected else lost_connection.set())

    proxy.stall()  # no bytes, no FIN, no RST: only heartbeats can tell
    await a.insert("projects", {"id": "during-stall", "name": "written into a black hole"})
    await b.insert("projects", {"id": "from-b", "name": "while a is stalled"})
    await asyncio.wait_for(lost_connection.wait(), SYNC_TIMEOUT)  # the client gave up on it
    await eventually(holds(lambda: "silent for 3 heartbeat intervals" in server.log_text()))
    assert await a.pending_count() == 1
    proxy.resume()
    await eventually(holds(lambda: proxy.stats.connections >= 2))
    states = await assert_converged(server, world)
    report("proxy_stall", stalls=proxy.stats.stalls, connections=proxy.stats.connections, **states)


async def test_frames_torn_mid_frame_in_both_directions_are_recovered(
    server_factory: ServerFactory,
    world: World,
    proxy_to: Callable[[ServerHandle], Awaitable[TcpProxy]],
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    proxy = await proxy_to(server)
    seeder = await world.open(server.ws_url, "seeder")
    async with seeder.transaction() as tx:
        for i in range(3000):
            await tx.insert("projects", {"id": f"s{i:05d}", "name": "x" * 40})
    await seeder.wait_until_synced(SYNC_TIMEOUT)

    proxy.cut_mid_frame("to_client")  # the first big initial-sync chunk is torn
    reader = await world.open(proxy.ws_url(), "reader", batch_size=100)
    await eventually(holds(lambda: not proxy.cut_pending))
    await reader.wait_until_synced(SYNC_TIMEOUT)

    cuts = 6 if SLOW else 3
    for n in range(cuts):  # client batches torn on their way to the server, then live frames
        proxy.cut_mid_frame("to_server" if n % 2 == 0 else "to_client")
        async with reader.transaction() as tx:
            for i in range(150):
                await tx.upsert("projects", {"id": f"s{i:05d}", "name": f"cut {n}"})
        if n % 2 == 1:
            await seeder.insert("projects", {"id": f"live-{n}", "name": "to be torn"})
        await eventually(holds(lambda: not proxy.cut_pending))
        await reader.wait_until_synced(SYNC_TIMEOUT)
    assert proxy.stats.torn_frames == cuts + 1
    states = await assert_converged(server, world)
    report("proxy_torn", torn_frames=proxy.stats.torn_frames, **states)


# --- 4. the server's disk is full --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (root only): a disk that really fills up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.parametrize(
    ("rows", "size", "batch"),
    [
        pytest.param(400, 300, 100, id="full-at-commit"),
        pytest.param(600, 1500, 600, id="full-mid-batch"),
        pytest.param(300, 6000, 500, id="full-large-rows"),
        pytest.param(3, 900_000, 500, id="full-mid-change"),
    ],
)
async def test_server_disk_full_keeps_changes_pending_and_syncs_once_space_frees(
    small_disk: Path,
    server_factory: ServerFactory,
    world: World,
    rows: int,
    size: int,
    batch: int,
) -> None:
    # ``small_disk`` first: it is torn down after the server has stopped.
    server = server_factory(db=small_disk / "server.db", heartbeat=HEARTBEAT)
    a = await world.open(server.ws_url, "a", batch_size=batch)
    b = await world.open(server.ws_url, "b")
    await a.insert("projects", {"id": "before", "name": "fits"})
    await a.wait_until_synced(SYNC_TIMEOUT)
    await b.wait_until_synced(SYNC_TIMEOUT)
    filler = _fill(small_disk, leave=16 * 1024)

    async with a.transaction() as tx:
        for i in range(rows):
            await tx.insert("projects", {"id": f"full-{i:04d}", "name": "y" * size})
    await eventually(holds(lambda: "disk is full" in (a.status.last_error or "")))
    assert server.running, "the server died of a full disk"
    assert server.health()["status"] == "ok"
    assert a.status.connected
    with contextlib.closing(sqlite3.connect(world.paths["a"])) as conn:
        states = dict(
            conn.execute(
                "SELECT state, COUNT(*) FROM local_changes WHERE from_server = 0 GROUP BY state"
            ).fetchall()
        )
    assert states.get("rejected", 0) == 0, f"changes rejected for a full disk: {states}"
    assert states.get("pending", 0) > 0

    # The client retries while the disk stays full; each retry fails the same way.
    await eventually(holds(lambda: server.log_text().count("failed\nTraceback") >= 3))
    assert server.running
    filler.unlink()  # space frees up; nobody pokes the client: it retries on its own
    await eventually(lambda: _zero(a.pending_count()))
    counts = await assert_converged(server, world)
    assert counts.get("synced", 0) == rows + 1
    failures = server.log_text().count("failed\nTraceback")
    report("disk_full", rows=rows, row_bytes=size, failed_batches=failures, **counts)
    server.stop()


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


# --- 5. clocks an hour off ---------------------------------------------------------------------

HOUR_MS = 3_600_000


def _skewed(offset_ms: int) -> Callable[[], int]:
    return lambda: int(time.time() * 1000) + offset_ms


async def _name(client: Client, key: str) -> str | None:
    found = await client.query("SELECT name FROM projects WHERE id = ?", [key])
    return str(found[0]["name"]) if found else None


async def test_clients_an_hour_off_still_win_with_later_edits_and_converge(
    server_factory: ServerFactory, world: World
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    normal = await world.open(server.ws_url, "normal")
    behind = await world.open(server.ws_url, "behind", now_ms=_skewed(-HOUR_MS))
    ahead = await world.open(server.ws_url, "ahead", now_ms=_skewed(HOUR_MS))
    for client in (normal, behind, ahead):
        await client.wait_until_synced(SYNC_TIMEOUT)

    # An edit made by the hour-behind client after it saw a newer edit wins.
    await normal.insert("projects", {"id": "r1", "name": "normal first"})
    await normal.wait_until_synced(SYNC_TIMEOUT)
    await eventually(lambda: _is(_name(behind, "r1"), "normal first"))
    await behind.update("projects", {"id": "r1", "name": "behind, later"})
    await behind.wait_until_synced(SYNC_TIMEOUT)
    for client in (normal, behind, ahead):
        await eventually(lambda c=client: _is(_name(c, "r1"), "behind, later"))  # type: ignore[misc]

    # The hour-ahead client's edit does not freeze the row for an hour: later edits still win.
    await ahead.insert("projects", {"id": "r2", "name": "ahead first"})
    await ahead.wait_until_synced(SYNC_TIMEOUT)
    expected = "ahead first"
    for editor, text in ((normal, "normal, later"), (behind, "behind, after ahead")):
        await eventually(lambda e=editor, w=expected: _is(_name(e, "r2"), w))  # type: ignore[misc]
        await editor.update("projects", {"id": "r2", "name": text})
        await editor.wait_until_synced(SYNC_TIMEOUT)
        expected = text
        for client in (normal, behind, ahead):
            await eventually(lambda c=client, w=text: _is(_name(c, "r2"), w))  # type: ignore[misc]

    # Concurrent offline edits from all three: whichever wins, everyone agrees.
    for client in (normal, behind, ahead):
        client.go_offline()
    await eventually(holds(lambda: not any(c.status.connected for c in (normal, behind, ahead))))
    for i, client in enumerate((normal, behind, ahead)):
        for k in range(5):
            await client.upsert("projects", {"id": f"c{k}", "name": f"client {i} edit {k}"})
    for client in (normal, behind, ahead):
        client.go_online()
    states = await assert_converged(server, world)
    report("clock_skew", **states)


async def _is(value: Awaitable[str | None], want: str) -> bool:
    return await value == want


# --- long variant: everything at once ----------------------------------------------------------


@slow
@pytest.mark.timeout(900)
async def test_soak_of_server_kills_and_connection_faults_under_live_traffic_loses_nothing(
    server_factory: ServerFactory,
    world: World,
    proxy_to: Callable[[ServerHandle], Awaitable[TcpProxy]],
) -> None:
    server = server_factory(heartbeat=HEARTBEAT)
    proxy = await proxy_to(server)
    shared = [f"shared-{i}" for i in range(30)]
    via_proxy = [await world.open(proxy.ws_url(), f"p{i}", batch_size=25) for i in range(3)]
    direct = [await world.open(server.ws_url, f"d{i}", batch_size=25) for i in range(2)]
    clients = via_proxy + direct
    for client in clients:
        await client.wait_until_synced(SYNC_TIMEOUT)
    writers = [
        Writer(c, f"x{i}", seed=100 + i, shared=shared).start() for i, c in enumerate(clients)
    ]
    rng = random.Random(7)
    faults: dict[str, int] = {}
    deadline = time.monotonic() + float(os.environ.get("TIDESYNC_SOAK_S", "120"))
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        fault = rng.choice(["kill", "drop", "stall", "tear", "offline"])
        faults[fault] = faults.get(fault, 0) + 1
        if fault == "kill":
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            await asyncio.to_thread(server.start)
        elif fault == "drop":
            proxy.drop_all()
        elif fault == "stall":
            proxy.stall()
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            proxy.resume()
        elif fault == "tear":
            proxy.cut_mid_frame(rng.choice(["to_client", "to_server"]))
        else:
            victim = rng.choice(clients)
            victim.go_offline()
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            victim.go_online()
    ops = await stop_writers(writers)
    proxy.resume()
    states = await assert_converged(server, world, timeout=120.0)
    report("soak", ops=ops, faults=faults, torn=proxy.stats.torn_frames, **states)
