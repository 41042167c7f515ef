"""The Changes Worker's entry point in Pyodide (called by ``js_shim/changes.worker.mjs``).

Binds ``ChangesWorker`` to the browser: the database file lives on the OPFS
mount the bootstrap prepared, page requests and the Sync Worker's ``port.*``
calls both go through ``worker_processor.handle_request``, and the worker's
listeners become events: ``local_change`` to the Sync Worker, and
``tables_changed`` / ``query_result`` / ``status`` / ``conflict`` to the page.
The Sync Worker's status reaches the page through here, so the page talks to
one worker only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tidesync.changes.worker import ChangesWorker
from tidesync.changes.worker_processor import handle_request
from tidesync.schema import Schema

__all__ = ["parse_pragmas", "start"]

log = logging.getLogger(__name__)

_PRAGMA_RE = re.compile(r"^\s*PRAGMA\s+([A-Za-z_]+)\s*=\s*([A-Za-z0-9_-]+)\s*;?\s*$", re.I)


def parse_pragmas(statements: Iterable[str]) -> dict[str, str]:
    """``["PRAGMA journal_mode=WAL", ...]`` -> ``{"journal_mode": "WAL"}``, order kept."""
    pragmas: dict[str, str] = {}
    for statement in statements:
        match = _PRAGMA_RE.match(statement)
        if match is None:
            raise ValueError(f"not a simple PRAGMA statement: {statement!r}")
        pragmas[match.group(1)] = match.group(2)
    return pragmas


def conflicts_in(args: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Results of a ``port.record_results`` call where a local edit lost last-write-wins."""
    lost = []
    for result in args.get("results") or []:
        if (
            isinstance(result, dict)
            and result.get("status") == "skipped"
            and result.get("reason") == "lww"
        ):
            lost.append(
                {
                    "id": result.get("id"),
                    "row": result.get("row"),
                    # JS cannot tell null from absent after the crossing: say it.
                    "deleted": "row" in result and result["row"] is None,
                }
            )
    return lost


async def start(bridge: Any) -> None:
    """Open the database and serve the page and the Sync Worker until closed."""
    from tidesync._pyodide import ProxyGroup, from_js, to_js_value

    started = time.perf_counter()
    config = from_js(bridge.config)
    pragmas = parse_pragmas(from_js(bridge.storage.recommendedPragmas))
    schema = Schema.from_sql(config["schema"]) if config.get("schema") else Schema.demo()
    worker = ChangesWorker(str(config["dbPath"]), schema, pragmas=pragmas)
    sync_port = bridge.syncPort
    proxies = ProxyGroup()
    tasks: set[asyncio.Future[Any]] = set()
    sync_status: dict[str, Any] = {}

    def to_page(message: dict[str, Any]) -> None:
        bridge.post(to_js_value(message))

    def to_sync(message: dict[str, Any]) -> None:
        sync_port.postMessage(to_js_value(message))

    worker.on_local_change(lambda: to_sync({"event": "local_change"}))
    worker.on_tables_changed(
        lambda tables, source: to_page(
            {"event": "tables_changed", "tables": list(tables), "source": source}
        )
    )
    worker.on_query_result(
        lambda sub_id, rows: to_page({"event": "query_result", "subId": sub_id, "rows": rows})
    )

    async def page_request(data: dict[str, Any]) -> None:
        cmd = data.get("cmd")
        raw_args = data.get("args")
        args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
        ident = data.get("id")
        if cmd == "setOnline":
            to_sync({"event": "set_online", "online": bool(args.get("online", True))})
            to_page({"id": ident, "ok": True, "result": None})
            return
        if cmd == "status":
            local = await worker.status()
            to_page({"id": ident, "ok": True, "result": {**sync_status, **_page_status(local)}})
            return
        if cmd == "close":
            to_sync({"event": "close"})
        to_page(await handle_request(worker, data))
        if cmd == "close":
            await _close_storage(bridge)

    async def sync_request(data: dict[str, Any]) -> None:
        reply = await handle_request(worker, data)
        to_sync(reply)
        if data.get("cmd") == "port.record_results" and reply.get("ok"):
            for lost in conflicts_in(data.get("args") or {}):
                to_page({"event": "conflict", "change": await _describe(worker, lost)})

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_page_message(event: Any) -> None:
        data = from_js(event.data)
        if isinstance(data, dict) and "cmd" in data:
            spawn(page_request(data))
        else:
            log.warning("ignoring a page message that is not a request")

    def on_sync_message(event: Any) -> None:
        data = from_js(event.data)
        if not isinstance(data, dict):
            log.warning("ignoring a non-object message from the Sync Worker")
        elif "cmd" in data:
            spawn(sync_request(data))
        elif data.get("event") == "status":
            sync_status.clear()
            sync_status.update(data.get("status") or {})
            sync_status["clientId"] = worker.client_id
            to_page({"event": "status", "status": dict(sync_status)})

    sync_port.onmessage = proxies.proxy(on_sync_message)
    bridge.take(proxies.proxy(on_page_message))
    opened_ms = round((time.perf_counter() - started) * 1000)
    log.info("changes worker ready: %s (client %s)", config["dbPath"], worker.client_id)
    to_page(
        {
            "event": "ready",
            "timings": {"pyodideBoot": round(config.get("bootMillis") or 0), "dbOpen": opened_ms},
        }
    )


async def _describe(worker: ChangesWorker, lost: dict[str, Any]) -> dict[str, Any]:
    """A lost local edit, as the page shows it: what was written, and what won."""
    rows = await worker.query(
        "SELECT table_name, operation, data, updated_at FROM local_changes WHERE id = ?",
        [lost["id"]],
    )
    if not rows:
        return lost
    row = rows[0]
    try:
        local = json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]
    except ValueError:
        local = row["data"]
    return {
        **lost,
        "table": row["table_name"],
        "operation": row["operation"],
        "local": local,
        "localUpdatedAt": row["updated_at"],
    }


def _page_status(local: Mapping[str, Any]) -> dict[str, Any]:
    """The Changes Worker's own view; the Sync Worker's status fills the rest."""
    return {
        "clientId": local.get("clientId"),
        "localLsn": local.get("lsn"),
        "pending": local.get("pending", 0),
        "rejected": local.get("rejected", 0),
        "failed": local.get("failed", 0),
    }


async def _close_storage(bridge: Any) -> None:
    """Release the OPFS handles so another tab can open the database."""
    try:
        closing = bridge.storage.close()
        if closing is not None:
            await closing
    except Exception:  # the tab is going away anyway
        log.exception("closing OPFS storage failed")
