"""A native client in its own process, writing rows as fast as it can: for kill -9 tests.

    python -m tests.helpers.chaos_client --url WS_URL --db FILE --rows N [--prefix P]
        [--per-tx K] [--heartbeat S] [--sync-timeout S]

Opens ``tidesync.connect(url, db)`` and inserts ``projects`` rows
``{prefix}-{i:06d}`` for ``i`` from the number already in the local file up
to ``N``, ``K`` rows per local transaction, as fast as it can.  After every
commit it prints ``committed <rows>`` (flushed), so the parent knows which rows
are durable locally when it kills this process.  When all ``N`` rows are
written it prints ``written``, waits until every change is acknowledged, and
prints ``synced <lsn>``; exit 0.  Restarted on the same file, it continues where
the local file says it stopped and resends whatever is still pending.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import tidesync


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    client = await tidesync.connect(args.url, args.db, heartbeat_interval=args.heartbeat)
    try:
        like = args.prefix.replace("%", "") + "-%"
        have = await client.query("SELECT COUNT(*) AS n FROM projects WHERE id LIKE ?", [like])
        done = int(have[0]["n"])
        _say(f"start {done} pending {await client.pending_count()}")
        while done < args.rows:
            upto = min(args.rows, done + args.per_tx)
            async with client.transaction() as tx:
                for i in range(done, upto):
                    await tx.insert(
                        "projects", {"id": f"{args.prefix}-{i:06d}", "name": f"row {i}"}
                    )
            done = upto
            _say(f"committed {done}")
            await asyncio.sleep(0)  # let the sync side send and receive between commits
        _say("written")
        status = await client.wait_until_synced(args.sync_timeout)
        _say(f"synced {status.lsn}")
        return 0
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--prefix", default="chaos")
    parser.add_argument("--per-tx", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--sync-timeout", type=float, default=60.0)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
