#!/usr/bin/env python3
"""A/B of a local write's SQLite and OPFS cost, in one Chromium worker on real OPFS.

    .venv/bin/python bench/commit_io.py [--rows 100000] [--rounds 12] [--block 1000]
                                        [--variant uuid4-ids] [--variant wal_autocheckpoint=2000]

Opens two databases with ``ChangesWorker`` (the shipped code, from the site's wheel) in one
worker: ``shipped`` with the browser's PRAGMAs (``RECOMMENDED_PRAGMAS``) and ``variant``
with the changes given by ``--variant`` (each applied in order):

  uuid4-ids             the recording triggers give random (v4) change ids, as before UUIDv7
  NAME=VALUE            that PRAGMA instead of the shipped one (page_size applies to the
                        new file), e.g. wal_autocheckpoint=2000

Both get ``--rows`` tasks, then blocks of ``--block`` one-row writes run on each in turn
(A B, B A, ...), each write the transaction the page's ``db.insert`` runs (BEGIN, the
``_ts_ctx`` time, the INSERT with its recording trigger, the reset, COMMIT), so drift of the
machine hits both. Prints the median us per write over the blocks (the first dropped) and the
OPFS calls per write. No page, no postMessage: only what the two configurations change.
Needs ``make site`` first. Never asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "pyodide"))

from browser_harness import HarnessPage, launch_persistent, site_server  # noqa: E402

WORKER_CODE = r"""
import json, time, uuid
from tidesync.changes import local_schema
from tidesync.changes.browser_entry import parse_pragmas
from tidesync.changes.worker import ChangesWorker

UUID4_SQL = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || "
    "substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || "
    "'-' || lower(hex(randomblob(6)))"
)
_conns = {}

def _pragmas(changes):
    out = list(RECOMMENDED)
    for change in changes:
        if "=" not in change:
            continue
        name = change.split("=", 1)[0].strip().lower()
        out = [p for p in out if not p.lower().startswith(f"pragma {name}=")]
        out.insert(0 if name == "page_size" else len(out), f"PRAGMA {change}")
    return out

def open_db(label, path, changes, rows):
    conn = ChangesWorker(path, pragmas=parse_pragmas(_pragmas(changes)))._conn
    if "uuid4-ids" in changes:
        conn.execute("BEGIN IMMEDIATE")
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        for name, sql in triggers.fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
            conn.execute(sql.replace(local_schema._UUID_SQL, UUID4_SQL))
        conn.execute("COMMIT")
    if rows:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows}) "
            "INSERT INTO tasks (id, project_id, title, done, updated_at) "
            "SELECT 'seed-' || i, NULL, 'task ' || i, 0, '2025-01-01T00:00:00.000Z' FROM c"
        )
        conn.execute("COMMIT")
    _conns[label] = conn
    return conn.execute("PRAGMA page_size").fetchone()[0]

def block(label, n):
    conn = _conns[label]
    opfs_storage.resetStats()
    t0 = time.perf_counter()
    for i in range(n):
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE _ts_ctx SET applying = 0, now = ? WHERE id = 1", (now,))
        conn.execute(
            'INSERT INTO "tasks" ("id", "title", "done", "updated_at") VALUES (?, ?, ?, ?)',
            [str(uuid.uuid4()), "bench", 0, now],
        )
        conn.execute(
            "UPDATE _ts_ctx SET applying = 0, now = NULL, hlc = max(hlc, ?) WHERE id = 1", (i,)
        )
        conn.execute("COMMIT")
    seconds = time.perf_counter() - t0
    stats = opfs_storage.stats.to_py()
    return json.dumps({"us": seconds / n * 1e6, "reads": stats["reads"] / n,
                       "writes": stats["writes"] / n, "bytes": stats["bytesWritten"] / n})
"""


def recommended_pragmas() -> list[str]:
    """``RECOMMENDED_PRAGMAS`` as ``js_shim/opfs_fs.mjs`` lists them."""
    text = (REPO / "js_shim" / "opfs_fs.mjs").read_text()
    block = text[text.index("RECOMMENDED_PRAGMAS = Object.freeze([") :]
    block = block[: block.index("]);")]
    return [line.split('"')[1] for line in block.splitlines() if line.strip().startswith('"PRAGMA')]


def run(rows: int, rounds: int, block: int, variant: list[str]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: dict[str, list[dict[str, float]]] = {"shipped": [], "variant": []}
    with site_server() as srv, sync_playwright() as pw, tempfile.TemporaryDirectory() as udd:
        ctx = launch_persistent(pw, udd)
        try:
            page = HarnessPage.open(ctx, srv.url)
            w = page.start_worker("commit-io")
            w.mount(dir="commit-io", files=["shipped.db", "variant.db"])
            w.run(f"RECOMMENDED = {recommended_pragmas()!r}\n" + WORKER_CODE)
            for label, changes in (("shipped", []), ("variant", variant)):
                size = w.run(f"open_db({label!r}, '/opfs/{label}.db', {changes!r}, {rows})")
                print(f"{label}: page_size {size}, {rows} rows", file=sys.stderr)
            for r in range(rounds):
                order = ("shipped", "variant") if r % 2 == 0 else ("variant", "shipped")
                for label in order:
                    results[label].append(json.loads(w.run(f"block({label!r}, {block})")))
            page.close()
        finally:
            ctx.close()
    out: dict[str, Any] = {"rows": rows, "block": block, "variant": variant}
    for label, blocks in results.items():
        kept = blocks[1:] or blocks
        out[label] = {
            "us_median": statistics.median(b["us"] for b in kept),
            "us_blocks": [round(b["us"]) for b in kept],
            **{k: statistics.mean(b[k] for b in kept) for k in ("reads", "writes", "bytes")},
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=1000)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.rows, args.rounds, args.block, args.variant)
    for label in ("shipped", "variant"):
        r = res[label]
        print(
            f"{label:>8}: {r['us_median']:6.1f} us per write (blocks {r['us_blocks']}), "
            f"OPFS reads {r['reads']:.2f} writes {r['writes']:.2f} per write, "
            f"{r['bytes'] / 1024:.1f} KiB written"
        )
    print(
        f"variant {' '.join(args.variant) or '(none)'}: "
        f"{res['variant']['us_median'] / res['shipped']['us_median']:.2f}x the shipped time"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
