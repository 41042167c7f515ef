"""An in-memory ``ChangesPort`` for unit tests of the Sync side.

It records every call, keeps rows per table, an LSN and a list of local
changes, and follows the port's contract closely enough for routing tests (no
last-write-wins: that belongs to the Changes side and its own tests).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tidesync.checksums import combine, row_hash
from tidesync.worker_sync.shared.changes_port import ApplyOutcome, LocalState
from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    Operation,
    SrvInitRows,
    TableChange,
    decode_message,
)


@dataclass
class FakePort:
    client_id: str = "client-a"
    lsn: int = 0
    initialized: bool = False
    rows: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)
    local: list[TableChange] = field(default_factory=list)  # unsynced, oldest first
    staged: list[tuple[str, TableChange]] | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    server_times: list[int] = field(default_factory=list)
    fail_apply: bool = False
    reads: int = 0  # ``unsynced_changes`` calls
    armed: int | None = None  # ``arm_local_changes`` limit, until a read or a disarm

    def add_local(self, change_id: str, table: str = "tasks", **data: Any) -> TableChange:
        change = TableChange(
            id=change_id,
            table=table,
            operation=Operation.INSERT,
            data={"id": change_id, **data},
            updated_at="2026-11-25T10:00:00.000Z",
        )
        self.local.append(change)
        return change

    async def local_state(self) -> LocalState:
        return LocalState(self.client_id, self.lsn, len(self.local), self.initialized)

    async def observe_server_time(self, millis: int) -> None:
        self.server_times.append(millis)

    async def begin_initial_sync(self, server_lsn: int) -> None:
        self.calls.append(("begin_initial_sync", server_lsn))
        self.staged = []

    async def stage_initial_chunk(self, table: str, changes: Sequence[TableChange]) -> None:
        self.calls.append(("stage_initial_chunk", (table, len(changes))))
        assert self.staged is not None, "stage before begin"
        self.staged.extend((table, c) for c in changes)

    async def stage_initial_json(self, table: str, changes_json: str) -> None:
        parsed = json.loads(changes_json)
        if isinstance(parsed, dict) and parsed.get("type") == "srv_init_rows":
            rows = decode_message(changes_json)
            assert isinstance(rows, SrvInitRows)
            await self.stage_initial_chunk(table, rows.changes())
            return
        items = parsed["changes"] if isinstance(parsed, dict) else parsed  # a forwarded frame
        changes = [TableChange.from_wire(item) for item in items]
        await self.stage_initial_chunk(table, changes)

    async def commit_initial_sync(self, server_lsn: int) -> ApplyOutcome:
        self.calls.append(("commit_initial_sync", server_lsn))
        assert self.staged is not None, "commit before begin"
        self.rows = {}
        for table, change in self.staged:
            self.rows.setdefault(table, {})[change.data["id"]] = dict(change.data)
        self.staged = None
        self.lsn = server_lsn
        self.initialized = True
        return ApplyOutcome(lsn=server_lsn, applied=len(self.rows))

    async def abort_initial_sync(self) -> None:
        self.calls.append(("abort_initial_sync", None))
        self.staged = None

    async def apply_server_changes(
        self, changes: Sequence[TableChange], last_lsn: int, *, source: str, server_time: int = 0
    ) -> ApplyOutcome:
        if server_time > 0:
            self.server_times.append(server_time)
        self.calls.append(("apply_server_changes", (source, [c.id for c in changes], last_lsn)))
        if self.fail_apply:
            raise RuntimeError("disk full")
        for change in changes:
            table = self.rows.setdefault(change.table, {})
            key = change.data["id"]
            if change.operation is Operation.DELETE:
                table.pop(key, None)
            else:
                table.setdefault(key, {}).update(change.data)
        self.lsn = max(self.lsn, last_lsn)
        return ApplyOutcome(lsn=self.lsn, applied=len(changes))

    async def advance_lsn(self, lsn: int) -> None:
        self.calls.append(("advance_lsn", lsn))
        self.lsn = max(self.lsn, lsn)

    async def unsynced_changes(self, limit: int) -> list[TableChange]:
        self.reads += 1
        self.armed = None
        return self.local[:limit]

    async def arm_local_changes(self, limit: int) -> None:
        self.calls.append(("arm_local_changes", limit))
        self.armed = limit or None

    def commit_local(self, change_id: str, **data: Any) -> list[TableChange] | None:
        """A local commit as the Changes side reports it: what an armed port carries."""
        self.add_local(change_id, **data)
        if self.armed is None:
            return None
        carried, self.armed = self.local[: self.armed], None
        return carried

    async def mark_sent(self, change_ids: Sequence[str]) -> None:
        self.calls.append(("mark_sent", list(change_ids)))

    async def record_results(self, results: Sequence[ChangeResult]) -> ApplyOutcome:
        self.calls.append(("record_results", [(r.id, r.status.value) for r in results]))
        done = {r.id for r in results}
        self.local = [c for c in self.local if c.id not in done]
        return ApplyOutcome(lsn=self.lsn)

    async def reset_for_reinit(self) -> None:
        self.calls.append(("reset_for_reinit", None))
        self.rows = {}
        self.lsn = 0
        self.initialized = False

    async def commit_table_resync(self, tables: Sequence[str], server_lsn: int) -> ApplyOutcome:
        self.calls.append(("commit_table_resync", (list(tables), server_lsn)))
        assert self.staged is not None, "commit before begin"
        for table in tables:
            self.rows[table] = {}
        for table, change in self.staged:
            self.rows.setdefault(table, {})[change.data["id"]] = dict(change.data)
        self.staged = None
        return ApplyOutcome(lsn=self.lsn, tables=tuple(tables))

    async def table_checksums(
        self, tables: Sequence[str], *, if_idle_at: int | None = None
    ) -> dict[str, str] | None:
        self.calls.append(("table_checksums", list(tables)))
        if if_idle_at is not None and (if_idle_at != self.lsn or self.local):
            return None
        return {t: combine(row_hash(r) for r in self.rows.get(t, {}).values()) for t in tables}

    def called(self, name: str) -> list[Any]:
        return [arg for call, arg in self.calls if call == name]
