"""``python -m tidesync.sim --seed N --clients 5 --ops 2000``: run (or replay) simulations.

``--seeds K`` runs seeds N..N+K-1 and stops at the first failure, printing its
report and the command that replays it; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from tidesync.sim.simulation import Simulation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tidesync.sim", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed on")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--schema", type=Path, help="the app's schema SQL (default: demo)")
    parser.add_argument("--workdir", type=Path, help="keep the databases here to inspect them")
    parser.add_argument("--json", action="store_true", help="print reports as JSON lines")
    parser.add_argument("--log", help="log level of the code under test (e.g. INFO), to stderr")
    args = parser.parse_args(argv)
    if args.log:
        _log_to_stderr(args.log.upper())
    schema_sql = args.schema.read_text(encoding="utf-8") if args.schema else None
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        workdir = args.workdir / f"seed{seed}" if args.workdir else None
        sim = Simulation(seed=seed, clients=args.clients, schema_sql=schema_sql, workdir=workdir)
        report = sim.run(operations=args.ops)
        print(json.dumps(report.to_dict()) if args.json else report.summary(), flush=True)
        if not report.ok:
            failed += 1
            break
    return 1 if failed else 0


class _VirtualTime(logging.Filter):
    """Stamps each record with the simulation's virtual time (``vt``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.vt = f"{asyncio.get_running_loop().time():10.3f}"
        except RuntimeError:
            record.vt = " " * 10
        return True


def _log_to_stderr(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_VirtualTime())
    handler.setFormatter(logging.Formatter("%(vt)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
