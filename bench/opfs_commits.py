#!/usr/bin/env python3
"""Commits/s of SQLite (Python's sqlite3 in Pyodide) on the OPFS file system, in Chromium.

    .venv/bin/python bench/opfs_commits.py [--rows 100000] [--seconds 1.5] [--json out.json]

Each transaction inserts one row into `a` and one into `b` (two tables, two
b-tree pages touched), BEGIN ... COMMIT, one per iteration. Measured for every
journal-mode candidate at an empty database and at --rows rows, under two
flush policies:

  os     commit returns when SQLite's writes are in the OS file (survives the
         renderer being killed; the microtask idle flush follows when Python yields)
  flush  commit + storage.flushAll() (handle.flush(): survives power loss)

Also measures the raw baseline: sync access handle 4 KiB write + flush.
Needs `make site` first. Prints a Markdown table; never asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pyodide"))

from browser_harness import HarnessPage, launch_persistent, site_server

CANDIDATES: dict[str, list[str]] = {
    "WAL exclusive, sync=NORMAL": [
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
    ],
    "WAL exclusive, sync=FULL": [
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
    ],
    "WAL shared-memory (-shm), sync=NORMAL": [
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
    ],
    "TRUNCATE, sync=FULL": ["PRAGMA journal_mode=TRUNCATE", "PRAGMA synchronous=FULL"],
    "PERSIST, sync=FULL": ["PRAGMA journal_mode=PERSIST", "PRAGMA synchronous=FULL"],
    "DELETE, sync=FULL": ["PRAGMA journal_mode=DELETE", "PRAGMA synchronous=FULL"],
    "TRUNCATE exclusive, sync=FULL": [
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA journal_mode=TRUNCATE",
        "PRAGMA synchronous=FULL",
    ],
    "MEMORY, sync=FULL": ["PRAGMA journal_mode=MEMORY", "PRAGMA synchronous=FULL"],
}

COMMON = ["PRAGMA cache_size=-16384", "PRAGMA temp_store=MEMORY"]

WORKER_CODE = r"""
import sqlite3, time, json
def bench(path, pragmas, rows, seconds, max_commits, policy):
    c = sqlite3.connect(path, isolation_level=None)
    for p in pragmas:
        c.execute(p)
    c.execute("CREATE TABLE IF NOT EXISTS a(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    c.execute("CREATE TABLE IF NOT EXISTS b(id INTEGER PRIMARY KEY, a_id INTEGER, w TEXT)")
    c.execute("CREATE INDEX IF NOT EXISTS b_a ON b(a_id)")
    have = c.execute("SELECT count(*) FROM a").fetchone()[0]
    if have < rows:
        c.execute("BEGIN")
        c.executemany("INSERT INTO a(v) VALUES (?)",
                      (("row %08d padding-padding-padding" % i,) for i in range(rows - have)))
        c.executemany("INSERT INTO b(a_id, w) VALUES (?, ?)",
                      ((i, "w%d" % i) for i in range(rows - have)))
        c.execute("COMMIT")
    opfs_storage.flushAll()
    opfs_storage.resetStats()
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while n < max_commits and (n % 16 or time.perf_counter() < deadline):
        c.execute("BEGIN")
        cur = c.execute("INSERT INTO a(v) VALUES (?)", ("commit %d" % n,))
        c.execute("INSERT INTO b(a_id, w) VALUES (?, ?)", (cur.lastrowid, "x"))
        c.execute("COMMIT")
        if policy == "flush":
            opfs_storage.flushAll()
        n += 1
    dt = time.perf_counter() - t0
    stats = opfs_storage.stats.to_py() if hasattr(opfs_storage.stats, "to_py") else {}
    mode = c.execute("PRAGMA journal_mode").fetchone()[0]
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    total = c.execute("SELECT count(*) FROM a").fetchone()[0]
    c.close()
    return json.dumps({"commits": n, "seconds": dt, "per_s": n / dt, "journal_mode": mode,
                       "integrity": ok, "rows": total,
                       "flushes_per_commit": stats.get("flushes", 0) / max(n, 1),
                       "writes_per_commit": stats.get("writes", 0) / max(n, 1)})
"""

RAW_SAH = r"""
const root = await navigator.storage.getDirectory();
const fh = await root.getFileHandle("raw-bench.bin", {create: true});
const h = await fh.createSyncAccessHandle();
const buf = new Uint8Array(4096).fill(7);
const out = {};
for (const flush of [true, false]) {
  let n = 0; const t0 = performance.now();
  while (performance.now() - t0 < 1000) {
    h.write(buf, {at: (n % 256) * 4096});
    if (flush) h.flush();
    n++;
  }
  out[flush ? "write+flush" : "write"] = n / ((performance.now() - t0) / 1000);
}
h.close();
await root.removeEntry("raw-bench.bin");
return out;
"""


def run(rows: int, seconds: float, max_commits: int, only: list[str] | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    results: dict = {"rows": rows, "modes": {}}
    with site_server() as srv, sync_playwright() as pw, tempfile.TemporaryDirectory() as udd:
        ctx = launch_persistent(pw, udd)
        try:
            page = HarnessPage.open(ctx, srv.url)
            w = page.start_worker("bench")
            results["raw_sah_per_s"] = w.js(RAW_SAH)
            w.run(WORKER_CODE)
            for i, (name, pragmas) in enumerate(CANDIDATES.items()):
                if only and not any(o.lower() in name.lower() for o in only):
                    continue
                per = {}
                w.mount(dir=f"bench/m{i}", files=["empty.db", "big.db"])
                for policy in ("os", "flush"):
                    for label, path, n in (("empty", "empty.db", 0), ("big", "big.db", rows)):
                        r = json.loads(
                            w.run(
                                f"bench('/opfs/{path}', {pragmas + COMMON!r}, {n}, "
                                f"{seconds}, {max_commits}, {policy!r})"
                            )
                        )
                        per[f"{label}/{policy}"] = r
                        print(
                            f"{name:40s} {label:5s} {policy:5s} {r['per_s']:8.0f}/s "
                            f"flush/commit={r['flushes_per_commit']:.2f} "
                            f"writes/commit={r['writes_per_commit']:.2f} "
                            f"mode={r['journal_mode']} integrity={r['integrity']}",
                            flush=True,
                        )
                w.close_opfs()
                results["modes"][name] = per
            page.close()
        finally:
            ctx.close()
    return results


def markdown(res: dict) -> str:
    rows = res["rows"]
    lines = [
        f"| mode | empty, os | {rows:,} rows, os | empty, +flushAll | {rows:,} rows, +flushAll |"
        " flushes/commit (os) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, per in res["modes"].items():
        lines.append(
            f"| {name} | {per['empty/os']['per_s']:.0f} | {per['big/os']['per_s']:.0f} | "
            f"{per['empty/flush']['per_s']:.0f} | {per['big/flush']['per_s']:.0f} | "
            f"{per['big/os']['flushes_per_commit']:.2f} |"
        )
    raw = res["raw_sah_per_s"]
    lines.append("")
    lines.append(
        f"Raw sync access handle, 4 KiB: write+flush {raw['write+flush']:.0f}/s, "
        f"write only {raw['write']:.0f}/s."
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--max-commits", type=int, default=20_000)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.rows, args.seconds, args.max_commits, args.only)
    print()
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
