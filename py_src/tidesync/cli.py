"""``tidesync serve`` and ``tidesync seed``: the server's command line.

``serve`` runs the sync server on uvicorn; ``--seed-demo`` puts a little sample
data into an empty database.  ``seed`` adds N tasks (large-data mode) through
the normal tables in one transaction, so the capture triggers put every row in
the history like any other write.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tidesync.server.seed import seed_demo, seed_tasks

__all__ = ["main", "seed_demo", "seed_tasks"]

log = logging.getLogger("tidesync")

WS_MAX_SIZE = 4 << 20  # above the session's 1 MiB limit, so oversized frames get srv_error
# Young-generation threshold of the server process's cyclic GC (CPython's default is 700).
# A fan-out to thousands of connections keeps a frame, a future and a task step per
# connection alive at once; at 700 they outlived young collections, were promoted, and
# full collections of every connection's objects ran every few changes (3,000 clients:
# 11 full + 124 middle collections in one bench run, ~20% of the server's CPU).
GC_GEN0_THRESHOLD = 50_000


def _read_schema(path: str | None) -> str | None:
    return None if path is None else Path(path).read_text(encoding="utf-8")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tidesync.server.app import create_app
    from tidesync.server.session import SessionConfig

    schema_sql = _read_schema(args.schema)
    if args.seed_demo:
        added = seed_demo(args.db, schema_sql)
        if added:
            log.info("seeded %d demo rows into %s", added, args.db)
    config = SessionConfig(
        heartbeat_interval_ms=int(args.heartbeat * 1000),
        table_resync=not args.no_table_resync,
        init_rows=not args.no_init_rows,
    )
    app = create_app(
        args.db,
        schema_sql=schema_sql,
        site_dir=args.site,
        config=config,
        allow_seed=args.allow_seed,
        snapshot_cache_bytes=int(args.snapshot_cache_mib * (1 << 20)),
        bootstrap_bytes=int(args.bootstrap_mib * (1 << 20)),
        **(
            {}
            if args.bootstrap_min_rows is None
            else {"bootstrap_min_rows": args.bootstrap_min_rows}
        ),
    )
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()  # what import and setup made lives as long as the process: never scan it
    log.info("serving on http://%s:%d (db %s)", args.host, args.port, args.db)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=WS_MAX_SIZE,
        ws_ping_interval=None,
        log_level=args.log_level.lower(),
        lifespan="on",
    )
    return 0


def _seed(args: argparse.Namespace) -> int:
    added = seed_tasks(args.db, args.tasks, _read_schema(args.schema))
    print(f"added {added} tasks to {args.db}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidesync", description="tidesync sync server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the sync server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--db", default="tidesync.db", help="SQLite file (created when missing)")
    serve.add_argument("--schema", help="app schema SQL (default: the demo schema)")
    serve.add_argument("--site", help="directory served at / (the built site)")
    serve.add_argument("--seed-demo", action="store_true", help="sample data into an empty db")
    serve.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval, s")
    serve.add_argument(
        "--allow-seed",
        action="store_true",
        help="enable POST /api/seed?tasks=N (demo large-data mode; never in production)",
    )
    serve.add_argument(
        "--no-table-resync",
        action="store_true",
        help="answer the table re-sync extension as a server without it would (tests)",
    )
    serve.add_argument(
        "--no-init-rows",
        action="store_true",
        help="ignore initFormat=rows and send srv_init_changes, as a server without it (tests)",
    )
    serve.add_argument(
        "--snapshot-cache-mib",
        type=float,
        default=64,
        help="keep the newest initial-sync snapshot encoded, up to this size, for the clients "
        "that join after (0: read the database for every client)",
    )
    serve.add_argument(
        "--bootstrap-mib",
        type=float,
        default=64,
        help="serve new clients their whole database as one SQLite file (GET /api/bootstrap), "
        "keeping the newest image up to this size, gzipped (0: no images, clients stream the "
        "initial sync)",
    )
    serve.add_argument(
        "--bootstrap-min-rows",
        type=int,
        default=None,
        help="snapshots with fewer rows get no image: new clients stream them (default 10,000)",
    )
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(func=_serve)
    seed = sub.add_parser("seed", help="add many tasks (large-data mode)")
    seed.add_argument("--db", required=True)
    seed.add_argument("--tasks", type=int, default=100_000)
    seed.add_argument("--schema", help="app schema SQL (default: the demo schema)")
    seed.add_argument("--log-level", default="INFO")
    seed.set_defaults(func=_seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
