"""``Simulation``: the server, N clients, a faulty network and crashes, in one seeded process.

One run: start the server and the clients; perform ``operations`` random
writes on random clients with think time between them, injecting faults as it
goes (connection cuts on the network's side; client crashes, server crashes,
partitions, offline toggles, writes by another program on the server and,
when asked for, a client table corrupted behind the client's back, from here);
then heal everything, wait (in virtual time) until every client is live
with nothing pending at the server's LSN, stop, and check the invariants
(``tidesync.sim.invariants``) on the files.

Everything random draws from generators seeded from ``seed``; time is the
``VirtualTimeLoop``'s; so one seed is one run, and ``python -m tidesync.sim
--seed N`` replays a failure exactly (same Python version and library).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tidesync.schema import Schema, demo_schema_sql, quote_ident
from tidesync.server.session import SessionConfig
from tidesync.sim.client import SimClient
from tidesync.sim.invariants import Violation, check_invariants
from tidesync.sim.loop import VirtualTimeLoop, seeded_ids
from tidesync.sim.network import NetworkConfig, SimNetwork
from tidesync.sim.report import SimReport, fingerprint, local_change_states
from tidesync.sim.server import SimServer
from tidesync.sim.workload import Workload, admin_update
from tidesync.worker_sync.worker_thread.sync_worker import SyncWorker

__all__ = ["FaultConfig", "Simulation"]

EPOCH_MS = 1_790_000_000_000  # virtual t=0 on every wall clock (late 2026)

# Small chunks and windows, so a few hundred rows exercise chunking and flow control.
SIM_SESSION = SessionConfig(
    init_chunk_rows=7,
    catchup_chunk_rows=5,
    live_batch_rows=4,
    init_window=2,
    catchup_window=2,
    live_window=3,
    rate_per_second=1000.0,
    rate_burst=5000.0,
)


@dataclass(frozen=True)
class FaultConfig:
    """Chances per operation of each process-level fault, and how long each lasts (s)."""

    client_crash: float = 0.006
    server_crash: float = 0.002
    partition: float = 0.004
    offline: float = 0.004
    admin_write: float = 0.01
    # A client row changed or deleted behind the client's back (a bug's effect); off by
    # default: the integrity check must then find it and repair that table alone.
    corrupt: float = 0.0
    client_down_s: tuple[float, float] = (0.5, 20.0)
    server_down_s: tuple[float, float] = (0.5, 15.0)
    partition_s: tuple[float, float] = (1.0, 40.0)
    offline_s: tuple[float, float] = (1.0, 20.0)
    clock_skew_ms: float = 3000.0


class _Errors(logging.Handler):
    """Collects ERROR records of the code under test: an error logged is a finding."""

    def __init__(self, *, corruption: bool = False) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []
        self.corruption = corruption  # then a checksum mismatch is expected, not a finding

    def emit(self, record: logging.LogRecord) -> None:
        expected = self.corruption and record.getMessage().startswith("integrity check:")
        if not record.name.startswith("tidesync.sim") and not expected:
            text = f"{record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)[-4:])
            self.found.append(text)


class Simulation:
    """``Simulation(seed=1, clients=5).run(operations=2000)`` -> ``SimReport``."""

    def __init__(
        self,
        seed: int = 0,
        clients: int = 5,
        schema_sql: str | None = None,
        *,
        faults: FaultConfig | None = None,
        network: NetworkConfig | None = None,
        session: SessionConfig | None = None,
        heartbeat_interval: float = 5.0,
        checksum_interval: float = 60.0,
        settle_timeout_s: float = 900.0,
        workdir: str | Path | None = None,
    ) -> None:
        if clients < 1:
            raise ValueError("a simulation needs at least one client")
        self.seed = seed
        self.clients = clients
        self.schema_sql = schema_sql or demo_schema_sql()
        self.schema = Schema.from_sql(self.schema_sql)
        self.faults = faults or FaultConfig()
        self.network = network or NetworkConfig()
        self.session = session or SIM_SESSION
        self.heartbeat_interval = heartbeat_interval
        self.checksum_interval = checksum_interval
        self.settle_timeout_s = settle_timeout_s
        self.workdir = Path(workdir) if workdir is not None else None

    def run(self, operations: int = 2000) -> SimReport:
        """Run on a fresh virtual-time loop; the files live in ``workdir`` or a temp dir."""
        started = time.perf_counter()
        errors = _Errors(corruption=self.faults.corrupt > 0)
        logger = logging.getLogger("tidesync")
        logger.addHandler(errors)
        loop = VirtualTimeLoop()
        loop.set_exception_handler(lambda _loop, ctx: errors.found.append(_context_text(ctx)))
        try:
            if self.workdir is not None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                report = loop.run_until_complete(self._main(operations, self.workdir, errors))
            else:
                with tempfile.TemporaryDirectory(prefix="tidesync-sim-") as tmp:
                    report = loop.run_until_complete(self._main(operations, Path(tmp), errors))
        finally:
            logger.removeHandler(errors)
            loop.close()
        report.real_seconds = time.perf_counter() - started
        return report

    async def _main(self, operations: int, where: Path, errors: _Errors) -> SimReport:
        master = random.Random(self.seed)
        with seeded_ids(random.Random(master.getrandbits(64))):
            return await _Run(self, master, where, errors).run(operations)


class _Run:
    """The state of one run (kept apart from ``Simulation`` so a Simulation can run twice)."""

    def __init__(self, sim: Simulation, master: random.Random, where: Path, errors: _Errors):
        self.sim = sim
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(master.getrandbits(64))
        self.where = where
        self.errors = errors
        self.faults: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server = SimServer(
            where / "server.db",
            sim.schema_sql,
            sim.session,
            self.loop,
            random.Random(master.getrandbits(64)),
            self.wall_ms,
        )
        self.net = SimNetwork(
            self.loop, random.Random(master.getrandbits(64)), sim.network, self.server
        )
        self.workload = Workload(sim.schema, random.Random(master.getrandbits(64)))
        self.clients: list[SimClient] = []
        for i in range(sim.clients):
            rng = random.Random(master.getrandbits(64))
            client_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            skew = int(rng.uniform(-1, 1) * sim.faults.clock_skew_ms)
            self.clients.append(
                SimClient(
                    i,
                    where / f"client{i}.db",
                    client_id,
                    sim.schema,
                    self.net,
                    rng,
                    self._wall_ms_skewed(skew),
                    heartbeat_interval=sim.heartbeat_interval,
                    checksum_interval=sim.checksum_interval,
                )
            )

    def wall_ms(self) -> int:
        return EPOCH_MS + round(self.loop.time() * 1000)

    def _wall_ms_skewed(self, skew: int) -> Any:
        return lambda: self.wall_ms() + skew

    # --- the run ------------------------------------------------------------------------------

    async def run(self, operations: int) -> SimReport:
        sim = self.sim
        report = SimReport(sim.seed, sim.clients, operations)
        for client in self.clients:
            await client.start()
        for _ in range(operations):
            up = [c for c in self.clients if c.changes is not None]
            if up:
                client = self.rng.choice(up)
                assert client.changes is not None
                await self.workload.step(client.changes)
            self._maybe_fault()
            await asyncio.sleep(self.rng.uniform(0.005, 0.2))
        settle_start = self.loop.time()
        await self._heal()
        report.settled_after_s = await self._settle()
        if report.settled_after_s is not None and sim.faults.corrupt:
            # A corruption after the last periodic check: one more round finds and repairs it.
            for client in self.clients:
                if client.sync is not None:
                    client.sync.verify_integrity()
            await asyncio.sleep(30.0)
            report.settled_after_s = await self._settle()
        if report.settled_after_s is not None:
            report.settled_after_s -= settle_start
        stuck = self._stuck()
        for client in self.clients:
            await client.stop()
        self.server.close()
        paths = [c.path for c in self.clients]
        report.violations = check_invariants(self.server.path, paths, sim.schema)
        if report.settled_after_s is None:
            report.violations.insert(0, Violation("settle", None, stuck))
        report.integrity_repairs = sum(c.repairs for c in self.clients)
        report.table_repairs = sum(c.table_repairs for c in self.clients)
        report.full_resyncs = sum(c.full_resyncs for c in self.clients)
        if report.integrity_repairs and not sim.faults.corrupt:
            report.violations.append(
                Violation("integrity", None, f"{report.integrity_repairs} checksum repair(s)")
            )
        if report.full_resyncs:  # the table repair fell back to re-syncing everything
            report.violations.append(
                Violation("integrity", None, f"{report.full_resyncs} full re-sync(s)")
            )
        report.fingerprint, report.server_lsn, report.history_rows = fingerprint(
            self.server.path, sim.schema
        )
        report.virtual_seconds = self.loop.time()
        report.ops = dict(self.workload.counts)
        report.faults = dict(self.faults + self.net.faults)
        report.frames = dict(self.net.frames)
        report.connects = dict(self.net.connects)
        report.server = dict(self.server.events)
        report.local_changes = local_change_states(paths)
        report.errors = self.errors.found + self.server.errors
        return report

    # --- faults -------------------------------------------------------------------------------

    def _later(self, delay_range: tuple[float, float], coro_fn: Any) -> None:
        """Run ``coro_fn()`` after a random delay, tracked so the run can finish it."""

        async def wrapper() -> None:
            await asyncio.sleep(self.rng.uniform(*delay_range))
            await coro_fn()

        task = self.loop.create_task(wrapper())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _maybe_fault(self) -> None:
        f, rng = self.sim.faults, self.rng
        up = [c for c in self.clients if c.changes is not None]
        if up and rng.random() < f.client_crash:
            victim = rng.choice(up)
            self.faults["client_crash"] += 1
            self._spawn(victim.crash())
            self._later(f.client_down_s, partial(self._restart, victim))
        if self.server.up and rng.random() < f.server_crash:
            self.faults["server_crash"] += 1
            self.server.crash()
            self._later(f.server_down_s, self._restart_server)
        free = [c for c in self.clients if c.index not in self.net.partitioned]
        if free and rng.random() < f.partition:
            victim = rng.choice(free)
            self.net.partition(victim.index)
            self._later(f.partition_s, partial(self._heal_one, victim.index))
        if up and rng.random() < f.offline:
            victim = rng.choice(up)
            sync = victim.sync
            if sync is not None:
                self.faults["offline"] += 1
                sync.go_offline()
                self._later(f.offline_s, partial(self._online, victim, sync))
        if rng.random() < f.admin_write:
            self._admin_write()
        if f.corrupt and up and rng.random() < f.corrupt:  # no draw when off: seeds replay
            self._corrupt(rng.choice(up))

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _restart(self, client: SimClient) -> None:
        if client.changes is None:
            await client.start()

    async def _restart_server(self) -> None:
        if not self.server.up:
            self.server.restart()

    async def _heal_one(self, index: int) -> None:
        self.net.heal(index)

    async def _online(self, client: SimClient, sync: SyncWorker) -> None:
        if client.sync is sync:  # not a later incarnation after a crash
            sync.go_online()

    def _admin_write(self) -> None:
        """Another program writes the server file; the tailer would notice within 0.1 s."""
        outcome = admin_update(
            self.server.path, self.sim.schema, self.workload, self.rng, _iso(self.wall_ms())
        )
        if outcome:
            self.faults[outcome] += 1
            self.loop.call_later(0.1, self.server.external_commit)

    def _corrupt(self, client: SimClient) -> None:
        """Change or delete one synced row of a random table without recording it."""
        conn = client.connection
        if conn is None or conn.in_transaction:
            return  # the worker is inside a transaction (it awaits within one): next time
        table = self.sim.schema.tables[self.rng.choice(self.sim.schema.order)]
        keys = ", ".join(quote_ident(k) for k in table.primary_key)
        rows = conn.execute(
            f"SELECT rowid FROM {quote_ident(table.name)} ORDER BY {keys}"
        ).fetchall()
        if not rows:
            return
        rowid = self.rng.choice(rows)[0]
        columns = [c for c in table.column_names if c not in table.primary_key]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE _ts_ctx SET applying = 1")  # the recording triggers stay quiet
            if columns and self.rng.random() < 0.5:
                column = self.rng.choice(columns)
                conn.execute(
                    f"UPDATE {quote_ident(table.name)} SET {quote_ident(column)} = 'corrupted' "
                    "WHERE rowid = ?",
                    (rowid,),
                )
                kind = "corrupt_update"
            else:  # a parent's delete cascades locally: its children drift too
                conn.execute(f"DELETE FROM {quote_ident(table.name)} WHERE rowid = ?", (rowid,))
                kind = "corrupt_delete"
            conn.execute("UPDATE _ts_ctx SET applying = 0")
            conn.execute("COMMIT")
        except sqlite3.Error:  # e.g. the column is a foreign key: this corruption is refused
            conn.execute("ROLLBACK")
            return
        self.faults[kind] += 1

    # --- the end ------------------------------------------------------------------------------

    async def _heal(self) -> None:
        """No more faults: heal partitions, bring every process up, everyone online."""
        self.net.faults_enabled = False
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.net.heal()
        if not self.server.up:
            self.server.restart()
        for client in self.clients:
            if client.changes is None:
                await client.start()
            elif client.sync is not None:
                client.sync.go_online()

    async def _settle(self) -> float | None:
        """Wait until every client is live, has nothing pending and sits at the server's LSN."""
        deadline = self.loop.time() + self.sim.settle_timeout_s
        streak = 0
        while self.loop.time() < deadline:
            await asyncio.sleep(0.5)
            streak = streak + 1 if await self._all_settled() else 0
            if streak >= 3:
                return self.loop.time()
        return None

    async def _all_settled(self) -> bool:
        assert self.server.store is not None
        server_lsn = self.server.store.current_lsn()
        for client in self.clients:
            if client.changes is None or client.sync is None:
                return False
            state = await client.changes.local_state()
            if not (
                client.sync.status.synced and state.pending_count == 0 and state.lsn == server_lsn
            ):
                return False
        return True

    def _stuck(self) -> str:
        parts = []
        for client in self.clients:
            status = client.sync.status if client.sync is not None else None
            parts.append(f"client{client.index}: {status}")
        return "not settled after the network healed: " + "; ".join(parts)


def _iso(millis: int) -> str:
    from tidesync.worker_sync.shared.hlc import format_timestamp

    return format_timestamp(millis)


def _context_text(ctx: dict[str, Any]) -> str:
    exc = ctx.get("exception")
    text = f"asyncio: {ctx.get('message')}"
    if exc is not None:
        text += "\n" + "".join(traceback.format_exception(exc)[-4:])
    return text
