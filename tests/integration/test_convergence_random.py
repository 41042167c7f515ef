"""Seeded random operations from 5 native clients with faults converge on the server's data.

The real server subprocess and real native clients on SQLite files.  One seed
drives everything: which client writes, what (inserts, typed and raw-SQL
updates, deletes of tasks and of projects that still have tasks, multi-write
transactions, upserts), which rows (small key pools, so clients fight over the
same rows), each client's clock skew, and the faults: offline stretches with
edits, quick connection cuts, the server SIGKILLed or stopped and restarted, a
client closed and reopened on its file, a new client joining mid-run.

At the end every client is online and synced, and:

* every client's ``projects`` and ``tasks`` equal the server's (all columns, by id);
* no change id appears twice in the server's ``_ts_change_history``;
* every local change is settled: ``synced`` ones are in the server's history,
  under this client's id; ``skipped``/``rejected`` ones carry a reason; none is
  ``pending``, no server change is ``failed`` on a client;
* every database passes ``integrity_check`` and ``foreign_key_check``.

A failure names its seed; ``TIDESYNC_SEED=N`` replays it.  ``TIDESYNC_SLOW=1``
runs the long version (``@pytest.mark.slow``, skipped otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.server_process import ServerHandle

import tidesync
from tidesync.native.client import Client

HEARTBEAT = 0.3
SYNC_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 60.0
CLIENTS = 4  # plus one that joins mid-run
SLOW = os.environ.get("TIDESYNC_SLOW") == "1"
SEEDS = [int(os.environ["TIDESYNC_SEED"])] if "TIDESYNC_SEED" in os.environ else [3, 29]
PROJECTS = [f"p{i}" for i in range(5)]
TASKS = [f"t{i:02d}" for i in range(16)]
TABLES = ("projects", "tasks")


@dataclass
class Run:
    """One seeded run: the clients, their files, and what happened (for the report)."""

    seed: int
    server: ServerHandle
    workdir: Path
    rng: random.Random
    clients: dict[str, Client] = field(default_factory=dict)
    skews: dict[str, int] = field(default_factory=dict)
    offline_until: dict[str, int] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def path(self, name: str) -> Path:
        return self.workdir / f"{name}.db"

    async def open(self, name: str) -> Client:
        skew = self.skews.setdefault(name, self.rng.randint(-3000, 3000))
        client = await tidesync.connect(
            self.server.ws_url,
            str(self.path(name)),
            heartbeat_interval=HEARTBEAT,
            now_ms=_skewed_clock(skew),
        )
        self.clients[name] = client
        return client


def _skewed_clock(skew_ms: int) -> Callable[[], int]:
    return lambda: int(time.time() * 1000) + skew_ms


def _rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def _checks(path: Path) -> tuple[str, list[Any]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        return integrity, conn.execute("PRAGMA foreign_key_check").fetchall()


async def _ids(client: Client, table: str) -> list[str]:
    return [r["id"] for r in await client.query(f"SELECT id FROM {table} ORDER BY id")]


async def _pick(client: Client, rng: random.Random, table: str, pool: list[str]) -> str:
    """Mostly a row this client has (so the write does something), sometimes any pool key."""
    have = await _ids(client, table)
    if have and rng.random() < 0.8:
        return rng.choice(have)
    return rng.choice(pool)


async def _write(run: Run, client: Client, step: int) -> None:
    """One random write by ``client``; refusals a user would see locally are counted, not bugs."""
    rng = run.rng
    roll = rng.random()
    try:
        if roll < 0.12:
            run.ops["upsert project"] += 1
            pid = rng.choice(PROJECTS)
            await client.upsert("projects", {"id": pid, "name": f"{pid} s{step}"})
        elif roll < 0.2:
            run.ops["update project"] += 1
            pid = await _pick(client, rng, "projects", PROJECTS)
            await client.update("projects", {"id": pid, "name": f"{pid} renamed s{step}"})
        elif roll < 0.4:
            run.ops["insert/upsert task"] += 1
            parents = await _ids(client, "projects")
            row: dict[str, Any] = {
                "id": rng.choice(TASKS),
                "title": f"task s{step}",
                "done": rng.randint(0, 1),
                "project_id": rng.choice(parents) if parents and rng.random() < 0.7 else None,
            }
            if rng.random() < 0.5:
                await client.upsert("tasks", row)
            else:
                await client.insert("tasks", row)  # refused locally when the id exists
        elif roll < 0.58:
            run.ops["update task"] += 1
            tid = await _pick(client, rng, "tasks", TASKS)
            change: dict[str, Any] = {"id": tid}
            if rng.random() < 0.6:
                change["title"] = f"edit s{step}"
            if rng.random() < 0.5:
                change["done"] = rng.randint(0, 1)
            if rng.random() < 0.25:
                parents = await _ids(client, "projects")
                change["project_id"] = rng.choice(parents) if parents else None
            if len(change) == 1:
                change["title"] = f"edit s{step}"
            await client.update("tasks", change)
        elif roll < 0.68:
            run.ops["raw SQL update"] += 1
            pid = rng.choice(PROJECTS)
            await client.execute(
                "UPDATE tasks SET done = 1 - done, title = ? WHERE project_id = ?",
                [f"bulk s{step}", pid],
            )
        elif roll < 0.8:
            run.ops["delete task"] += 1
            await client.delete("tasks", {"id": await _pick(client, rng, "tasks", TASKS)})
        elif roll < 0.88:
            run.ops["delete project (with its tasks)"] += 1
            await client.delete("projects", {"id": await _pick(client, rng, "projects", PROJECTS)})
        else:
            run.ops["transaction: project + tasks"] += 1
            pid = rng.choice(PROJECTS)
            async with client.transaction() as tx:
                await tx.upsert("projects", {"id": pid, "name": f"{pid} tx s{step}"})
                for tid in rng.sample(TASKS, rng.randint(1, 3)):
                    await tx.upsert(
                        "tasks", {"id": tid, "title": f"tx s{step}", "done": 0, "project_id": pid}
                    )
    except Exception as exc:
        text = str(exc)
        if "FOREIGN KEY" in text or "UNIQUE" in text:
            run.ops["refused locally (FK/unique)"] += 1
            return
        raise


async def _fault(run: Run, step: int) -> None:
    """At most one fault per step, drawn from the seed."""
    rng = run.rng
    name = rng.choice(sorted(run.clients))
    client = run.clients[name]
    roll = rng.random()
    if roll < 0.04 and name not in run.offline_until:
        client.go_offline()  # an offline stretch: this client keeps editing meanwhile
        run.offline_until[name] = step + rng.randint(5, 40)
        run.faults["offline stretch"] += 1
    elif roll < 0.08:
        client.go_offline()
        await asyncio.sleep(rng.choice([0.0, 0.0, 0.005, 0.02]))
        if name not in run.offline_until:
            client.go_online()
        run.faults["quick connection cut"] += 1
    elif roll < 0.09:
        await asyncio.to_thread(run.server.kill)
        await asyncio.sleep(rng.random() * 0.3)
        await asyncio.to_thread(run.server.start)
        run.faults["server SIGKILL + restart"] += 1
    elif roll < 0.095:
        await asyncio.to_thread(run.server.restart)
        run.faults["server graceful restart"] += 1
    elif roll < 0.105:
        await client.close()  # the app closes; its pending changes wait in the file
        run.offline_until.pop(name, None)
        await run.open(name)
        run.faults["client closed + reopened"] += 1
    for other, until in list(run.offline_until.items()):
        if step >= until:
            run.clients[other].go_online()
            del run.offline_until[other]


async def _converge(run: Run) -> None:
    """Everyone online and synced, and every client's tables equal the server's."""
    for client in run.clients.values():
        client.go_online()
    run.offline_until.clear()
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while True:
        for client in run.clients.values():
            await client.wait_until_synced(SYNC_TIMEOUT)
        server_lsn = _server_lsn(run.server.db_path)
        lsns_ok = all(c.status.lsn >= server_lsn for c in run.clients.values())
        expected = {t: _rows(run.server.db_path, t) for t in TABLES}
        diverging = [
            (name, t)
            for name in run.clients
            for t in TABLES
            if _rows(run.path(name), t) != expected[t]
        ]
        if lsns_ok and not diverging:
            return
        if time.monotonic() > deadline:
            details = [
                f"{name}.{t}:\n  client {_rows(run.path(name), t)}\n  server {expected[t]}"
                for name, t in diverging
            ]
            lsns = {n: c.status.lsn_text for n, c in run.clients.items()}
            raise AssertionError(
                f"no convergence: server lsn {server_lsn}, clients {lsns}\n" + "\n".join(details)
            )
        await asyncio.sleep(0.1)


def _server_lsn(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(
            conn.execute("SELECT COALESCE(max(lsn), 0) FROM _ts_change_history").fetchone()[0]
        )


def _check_exactly_once(run: Run) -> tuple[dict[str, int], dict[str, int]]:
    """Every local change settled and, when synced, in the server's history exactly once."""
    with contextlib.closing(sqlite3.connect(run.server.db_path)) as conn:
        dupes = conn.execute(
            "SELECT change_id, count(*) FROM _ts_change_history WHERE change_id IS NOT NULL "
            "GROUP BY change_id HAVING count(*) > 1"
        ).fetchall()
        history = dict(
            conn.execute("SELECT change_id, client_id FROM _ts_change_history").fetchall()
        )
    assert dupes == [], f"changes in the history more than once: {dupes[:5]}"
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for name, client in run.clients.items():
        with contextlib.closing(sqlite3.connect(run.path(name))) as conn:
            local = conn.execute(
                "SELECT id, state, skip_reason, error FROM local_changes WHERE from_server = 0"
            ).fetchall()
            failed = conn.execute(
                "SELECT id, error FROM local_changes WHERE from_server = 1 AND state = 'failed'"
            ).fetchall()
        assert failed == [], f"{name}: server changes that failed to apply: {failed[:5]}"
        for change_id, state, skip_reason, error in local:
            states[state] += 1
            assert state in ("synced", "skipped", "rejected"), f"{name}: {change_id} is {state}"
            if state == "synced":
                assert change_id in history, f"{name}: synced {change_id} never reached the server"
                assert history[change_id] == client.client_id, f"{name}: {change_id} author"
            else:
                assert skip_reason or error, f"{name}: {change_id} {state} without a reason"
                reasons[f"{state}: {str(skip_reason or error)[:60]}"] += 1
    return dict(states), dict(reasons)


async def _run(seed: int, server: ServerHandle, workdir: Path, operations: int) -> str:
    run = Run(seed, server, workdir, random.Random(seed))
    try:
        for i in range(CLIENTS):
            await run.open(f"c{i}")
        for step in range(operations):
            if step == operations // 2:
                await run.open("late")  # initial sync while the others write
                run.faults["client joins mid-run"] += 1
            await _fault(run, step)
            name = run.rng.choice(sorted(run.clients))
            await _write(run, run.clients[name], step)
            if run.rng.random() < 0.15:
                await asyncio.sleep(run.rng.random() * 0.05)
        await _converge(run)
        states, reasons = _check_exactly_once(run)
        for path in [server.db_path, *(run.path(n) for n in run.clients)]:
            integrity, fk_problems = _checks(path)
            assert integrity == "ok", f"{path.name}: {integrity}"
            assert fk_problems == [], f"{path.name}: foreign keys broken {fk_problems[:5]}"
        rows = {t: len(_rows(server.db_path, t)) for t in TABLES}
        return (
            f"seed {seed}: {operations} operations, {len(run.clients)} clients, "
            f"skews {run.skews}\n  ops {dict(run.ops)}\n  faults {dict(run.faults)}\n"
            f"  local change states {states}, reasons {reasons}\n  server rows {rows}, "
            f"server lsn {_server_lsn(server.db_path)}"
        )
    except BaseException as exc:
        exc.add_note(f"replay: TIDESYNC_SEED={seed} (faults so far {dict(run.faults)})")
        print(f"FAILED seed {seed}; server log tail:\n{server.log_text()[-3000:]}")
        raise
    finally:
        for client in run.clients.values():
            await client.close()


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_operations_with_faults_leave_every_database_equal_to_the_server(
    seed: int, server: ServerHandle, tmp_path: Path
) -> None:
    print(await _run(seed, server, tmp_path, operations=220))


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="long run: set TIDESYNC_SLOW=1")
@pytest.mark.parametrize("seed", [101, 202, 303])
async def test_long_random_run_with_faults_leaves_every_database_equal_to_the_server(
    seed: int, server: ServerHandle, tmp_path: Path
) -> None:
    print(await _run(seed, server, tmp_path, operations=2000))
