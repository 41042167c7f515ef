"""What a simulation run reports: the figures, the faults injected, and what broke.

``SimReport`` compares equal for two runs of the same seed (the wall-clock
duration is kept out of the comparison), which is how the determinism test
and a replay check that they saw the very same run.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidesync.schema import Schema, quote_ident
from tidesync.sim.invariants import Violation

__all__ = ["SimReport", "fingerprint", "local_change_states"]


@dataclass
class SimReport:
    seed: int
    clients: int
    operations: int
    virtual_seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    connects: dict[str, int] = field(default_factory=dict)
    server: dict[str, int] = field(default_factory=dict)
    local_changes: dict[str, int] = field(default_factory=dict)
    server_lsn: int = 0
    history_rows: int = 0
    integrity_repairs: int = 0
    table_repairs: int = 0  # repairs that re-synced just the differing tables
    full_resyncs: int = 0  # repairs that fell back to re-syncing everything
    settled_after_s: float | None = None
    fingerprint: str = ""
    errors: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    real_seconds: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.errors

    def replay_command(self) -> str:
        return (
            f"python -m tidesync.sim --seed {self.seed} --clients {self.clients} "
            f"--ops {self.operations}"
        )

    def summary(self) -> str:
        """A few human lines; the failing seed and how to replay it when something broke."""
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"tidesync.sim seed={self.seed} clients={self.clients} ops={self.operations}: "
            f"{verdict} ({self.virtual_seconds:.0f} s virtual, {self.real_seconds:.1f} s real)",
            f"  ops: {_fmt(self.ops)}",
            f"  faults: {_fmt(self.faults)}",
            f"  frames: {_fmt(self.frames)}; connects: {_fmt(self.connects)}",
            f"  server: {_fmt(self.server)}; lsn {self.server_lsn}, "
            f"{self.history_rows} history rows",
            f"  local changes: {_fmt(self.local_changes)}",
            f"  integrity repairs: {self.integrity_repairs} ({self.table_repairs} by table, "
            f"{self.full_resyncs} full); settled after "
            + ("never" if self.settled_after_s is None else f"{self.settled_after_s:.1f} s"),
            f"  fingerprint: {self.fingerprint[:16]}",
        ]
        lines += [f"  VIOLATION {v}" for v in self.violations]
        lines += [f"  ERROR {e.splitlines()[0] if e else e}" for e in self.errors[:10]]
        if not self.ok:
            lines.append(f"  replay: {self.replay_command()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "clients": self.clients,
            "operations": self.operations,
            "ok": self.ok,
            "virtual_seconds": round(self.virtual_seconds, 3),
            "ops": self.ops,
            "faults": self.faults,
            "frames": self.frames,
            "connects": self.connects,
            "server": self.server,
            "local_changes": self.local_changes,
            "server_lsn": self.server_lsn,
            "history_rows": self.history_rows,
            "integrity_repairs": self.integrity_repairs,
            "table_repairs": self.table_repairs,
            "full_resyncs": self.full_resyncs,
            "fingerprint": self.fingerprint,
            "errors": self.errors,
            "violations": [str(v) for v in self.violations],
        }


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def fingerprint(server_path: Path, schema: Schema) -> tuple[str, int, int]:
    """sha256 of the server's tables and history, its LSN, and its history row count."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(f"file:{server_path}?mode=ro", uri=True)
    try:
        for table in schema.order:
            keys = ", ".join(quote_ident(k) for k in schema.tables[table].primary_key)
            for row in conn.execute(f"SELECT * FROM {quote_ident(table)} ORDER BY {keys}"):
                digest.update(repr(row).encode())
        rows = 0
        lsn = 0
        for row in conn.execute(
            "SELECT lsn, change_id, client_id, table_name, operation, data, updated_at "
            "FROM _ts_change_history ORDER BY lsn"
        ):
            digest.update(repr(row).encode())
            rows += 1
            lsn = int(row[0])
    finally:
        conn.close()
    return digest.hexdigest(), lsn, rows


def local_change_states(paths: list[Path]) -> dict[str, int]:
    """``local_changes`` of local origin by state (and skip reason), over all clients."""
    totals: dict[str, int] = {}
    for path in paths:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for state, reason, count in conn.execute(
                "SELECT state, skip_reason, COUNT(*) FROM local_changes WHERE from_server = 0 "
                "GROUP BY state, skip_reason"
            ):
                key = f"{state}:{reason}" if reason else str(state)
                totals[key] = totals.get(key, 0) + int(count)
        finally:
            conn.close()
    return totals
