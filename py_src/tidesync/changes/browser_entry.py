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
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from tidesync.changes.bootstrap_image import ImageRejected, adopt_image
from tidesync.changes.db import open_connection
from tidesync.changes.worker import ChangesWorker
from tidesync.changes.worker_processor import handle_request, write_now
from tidesync.schema import Schema
from tidesync.worker_sync.shared.lsn_manager import format_lsn
from tidesync.worker_sync.shared.message_types import TableChange
from tidesync.worker_sync.shared.port_codec import changes_to_wire, channel_text
from tidesync.worker_sync.worker_thread.sync_worker import build_sync_url

__all__ = [
    "PageEvents",
    "RequestRunner",
    "decode_from_page",
    "encode_for_page",
    "encode_reply",
    "parse_pragmas",
    "preconnect_url",
    "serve_sync_request",
    "start",
]

log = logging.getLogger(__name__)

# 16+ digits in a row may be an integer beyond 2**53, which JSON.parse would round (the
# structured path gives the page a BigInt); such replies take that path.
_LONG_NUMBER = re.compile(r"\d{16}")

# Made once: ``json.dumps`` with options builds an encoder on every call, once per reply.
_PAGE_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
# ``json.loads``' own scanner, called without its three Python frames and two regex matches.
_SCAN_JSON: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
# Integers that can never show 16 digits in a row (``_LONG_NUMBER``).
_SHORT_INT = 10**15
_EVENT_KEYS = ("event", "tables", "source")
# ``encode_for_page`` of ``[tables_changed event]`` by (tables, source): a few per app.
_EVENT_TEXTS: dict[tuple[tuple[str, ...], str], str | None] = {}
_MAX_EVENT_TEXTS = 256

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


def encode_for_page(message: Mapping[str, Any]) -> str | None:
    """``message`` as JSON text for the page, or None when JSON would not carry it exactly.

    Why: one string crosses Python -> JS -> postMessage -> page ``JSON.parse`` much faster
    than Pyodide's ``to_js`` builds a JS object per dict (the cost of every reply).  Bytes
    (BLOBs), non-finite floats and integers JSON.parse would round are left to ``to_js``.
    SQL NULL arrives as ``null`` either way in the page's JSON, ``undefined`` via ``to_js``.
    """
    return _exact_json(message)


def _exact_json(value: Any) -> str | None:
    try:
        text = _PAGE_JSON.encode(value)
    except (TypeError, ValueError):
        return None
    return None if _LONG_NUMBER.search(text) else text


def encode_reply(message: Mapping[str, Any]) -> str | None:
    """``encode_for_page(message)``, the same text, made without the JSON encoder for the
    reply of a one-row write (``{"id", "ok": true, "result": {"rowsAffected",
    "lastInsertRowid"}}`` with integers, and the ``events`` of ``PageEvents.attach``).

    Why: the encoder and the ``_LONG_NUMBER`` search over its text were ~10% of a page
    insert's handler in Pyodide; integers below 10**15 never make 16 digits in a row.
    Anything else goes to ``encode_for_page``.
    """
    request_id = message.get("id")
    result = message.get("result")
    if (
        type(request_id) is int
        and -_SHORT_INT < request_id < _SHORT_INT
        and message.get("ok") is True
        and type(result) is dict
        and len(result) == 2
    ):
        rows = result.get("rowsAffected")
        rowid = result.get("lastInsertRowid")
        events = message.get("events")
        if (
            type(rows) is int
            and -_SHORT_INT < rows < _SHORT_INT
            and (rowid is None or (type(rowid) is int and -_SHORT_INT < rowid < _SHORT_INT))
            and tuple(result) == ("rowsAffected", "lastInsertRowid")
        ):
            head = (
                f'{{"id":{request_id},"ok":true,"result":{{"rowsAffected":{rows},'
                f'"lastInsertRowid":{"null" if rowid is None else rowid}}}'
            )
            keys = tuple(message)
            if keys == ("id", "ok", "result"):
                return head + "}"
            if keys == ("id", "ok", "result", "events") and type(events) is list:
                events_text = _events_text(events)
                if events_text is not None:
                    return f'{head},"events":{events_text}}}'
    return encode_for_page(message)


def _events_text(events: list[Any]) -> str | None:
    """``encode_for_page``'s text of ``events``, kept for the usual one ``tables_changed``."""
    if len(events) == 1:
        event = events[0]
        if type(event) is dict and tuple(event) == _EVENT_KEYS:
            tables, source = event["tables"], event["source"]
            if (
                event["event"] == "tables_changed"
                and type(tables) is list
                and type(source) is str
                and all(type(t) is str for t in tables)
            ):
                key = (tuple(tables), source)
                if key in _EVENT_TEXTS:
                    return _EVENT_TEXTS[key]
                text = _exact_json(events)
                if len(_EVENT_TEXTS) >= _MAX_EVENT_TEXTS:
                    _EVENT_TEXTS.clear()
                _EVENT_TEXTS[key] = text
                return text
    return _exact_json(events)


def decode_from_page(raw: Any) -> Any:
    """A request as the page or the Sync Worker sent it: JSON text (``tidesync.mjs``,
    ``port_codec.channel_text``) or an object.

    Raises ``ValueError`` for text that is not JSON; the result is checked by
    ``worker_processor.command_from_dict`` like any other request.
    """
    if isinstance(raw, str):
        if raw[:1] == "{":  # what the page and ``channel_text`` send: one object, no spaces
            try:
                value, end = _SCAN_JSON(raw, 0)
            except StopIteration:
                pass  # not JSON: ``json.loads`` raises the error
            else:
                if end == len(raw):
                    return value
        return json.loads(raw)
    from tidesync._pyodide import from_js, read_utf8_carrier

    carried = read_utf8_carrier(raw)
    if carried is None:
        return from_js(raw)
    text, arg, utf8 = carried  # the Sync Worker's large JSON text, as UTF-8 bytes
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("args"), dict):
        data["args"][arg] = utf8
    return data


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
    from tidesync._pyodide import ProxyGroup, from_js, text_or_js

    started = time.perf_counter()
    config = from_js(bridge.config)
    pragmas = parse_pragmas(from_js(bridge.storage.recommendedPragmas))
    schema = Schema.from_sql(config["schema"]) if config.get("schema") else Schema.demo()
    conn = open_connection(str(config["dbPath"]), pragmas)
    pending_image = getattr(bridge, "bootstrap", None)
    bootstrap = await adopt_download(conn, schema, pending_image) if pending_image else None
    # An adopted image is all in the WAL: checkpointed a moment later, not on open.
    worker = ChangesWorker(conn, schema, defer_checkpoint=bool(bootstrap and bootstrap["used"]))
    sync_port = bridge.syncPort
    proxies = ProxyGroup()
    tasks: set[asyncio.Future[Any]] = set()
    page_status = PageStatus()
    storage = bridge.storage

    # Bound once: every JsProxy attribute lookup makes a new proxy, and these run per request.
    post_page = bridge.post
    post_sync = sync_port.postMessage
    page_events = PageEvents()

    def to_page(message: dict[str, Any]) -> None:
        if page_events.deferred:
            page_events.drain(send_page)
        send_page(message)

    def send_page(message: dict[str, Any]) -> None:
        post_page(text_or_js(message, encode_for_page(message)))

    def to_sync(message: dict[str, Any]) -> None:
        post_sync(text_or_js(message, channel_text(message)))

    if config.get("sync") is not False:
        # A page without sync has no Sync Worker: its end of the channel is never started,
        # so a post per commit would only pile up there.

        def local_change(carried: list[TableChange] | None) -> None:
            """Tell the Sync Worker; with the changes when it armed us (``arm_local_changes``).

            Carried changes leave this worker, so they are flushed to OPFS first, as
            ``serve_sync_request`` does for the changes it reads (see there).  The
            commit is numbered (``PageStatus``); the page hears it is pending with the
            write's reply when nothing was.
            """
            shown = page_status.local_committed()
            seq = page_status.local_seq
            if carried:
                storage.flushAll()
                to_sync({"event": "local_change", "seq": seq, "changes": changes_to_wire(carried)})
            else:
                post_sync(f'{{"event":"local_change","seq":{seq}}}')
            if shown is not None:
                message = {"event": "status", "status": shown}
                if not page_events.defer(message, "local"):
                    to_page(message)

        worker.on_local_change(local_change)

    def on_tables_changed(tables: tuple[str, ...], source: str) -> None:
        message = {"event": "tables_changed", "tables": list(tables), "source": source}
        if not page_events.defer(message, source):
            to_page(message)

    worker.on_tables_changed(on_tables_changed)
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
        if cmd == "flush":  # the page asks for power-loss durability now (hidden, unloading)
            to_page({"id": ident, "ok": True, "result": int(storage.flushAll())})
            return
        if cmd == "status":
            local = await worker.status()
            result = {**page_status.sync, **_page_status(local)}
            to_page({"id": ident, "ok": True, "result": result})
            return
        if cmd == "close":
            to_sync({"event": "close"})
        page_events.requests += 1
        try:
            reply = await handle_request(worker, data)
        finally:
            page_events.requests -= 1
        to_page(page_events.attach(reply))
        if cmd == "close":
            await _close_storage(bridge)

    async def sync_request(data: dict[str, Any]) -> None:
        await serve_sync_request(
            worker, data, flush=storage.flushAll, to_sync=to_sync, to_page=to_page
        )

    def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    page_run = RequestRunner(lambda: worker.busy, spawn)
    sync_run = RequestRunner(lambda: worker.busy, spawn)

    def page_write_now(data: dict[str, Any]) -> bool:
        """A one-row write run and answered right here (``worker_processor.write_now``).

        Only when no earlier page request is unfinished, so replies keep their order;
        False: it goes through ``page_request`` like any other request.
        """
        if page_run.unfinished:
            return False
        page_events.requests += 1
        try:
            reply = write_now(worker, data)
        finally:
            page_events.requests -= 1
        if reply is None:
            return False
        message = page_events.attach(reply)  # takes every held event: nothing to drain
        post_page(text_or_js(message, encode_reply(message)))
        return True

    def on_page_message(event: Any) -> None:
        try:
            data = decode_from_page(event.data)
        except ValueError:
            data = None
        if isinstance(data, dict) and "cmd" in data:
            if not page_write_now(data):
                page_run.run(page_request(data))
        else:
            log.warning("ignoring a page message that is not a request")

    def on_sync_message(event: Any) -> None:
        try:
            data = decode_from_page(event.data)  # JSON text (``channel_text``) or an object
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            log.warning("ignoring a non-object message from the Sync Worker")
        elif "cmd" in data:
            sync_run.run(sync_request(data))
        elif data.get("event") == "status":
            status = data.get("status")
            shown = page_status.from_sync(
                status if isinstance(status, dict) else {}, worker.client_id
            )
            to_page({"event": "status", "status": shown})

    sync_port.onmessage = proxies.proxy(on_sync_message)
    bridge.take(proxies.proxy(on_page_message))
    opened_ms = round((time.perf_counter() - started) * 1000)
    log.info("changes worker ready: %s (client %s)", config["dbPath"], worker.client_id)
    ready: dict[str, Any] = {
        "event": "ready",
        "timings": {"pyodideBoot": round(config.get("bootMillis") or 0), "dbOpen": opened_ms},
    }
    if bootstrap is not None:
        ready["bootstrap"] = bootstrap
    if config.get("sync") is not False and isinstance(config.get("url"), str):
        ready["syncUrl"] = preconnect_url(str(config["url"]), worker)
    to_page(ready)


async def adopt_download(conn: Any, schema: Schema, download: Any) -> dict[str, Any] | None:
    """Start the new database ``conn`` from the server's image of it, if one came.

    ``download`` is ``bootstrap_fetch.mjs``'s promise of ``{bytes, skipped, fetchMs}``.
    Returns what the page's status reports (``bootstrap``): None when the database
    already existed, else whether the image was used and, if not, why (the database is
    then left empty and the Sync Worker streams the initial sync).
    """
    result = await download
    if getattr(result, "existing", None):
        return None
    skipped = getattr(result, "skipped", None)
    report: dict[str, Any] = {"used": False, "fetchMs": round(float(result.fetchMs or 0))}
    if skipped is not None or getattr(result, "bytes", None) is None:
        report["reason"] = str(skipped or "no image")
        return report
    image = result.bytes.to_bytes()
    result.bytes = None  # the JS copy: 17 MB per 100k demo rows
    started = time.perf_counter()
    try:
        info = adopt_image(conn, schema, image)
    except ImageRejected as exc:  # the database is still empty: the initial sync streams
        log.warning("bootstrap image not used: %s", exc)
        report["reason"] = str(exc)
        return report
    finally:
        report["checkMs"] = round((time.perf_counter() - started) * 1000)
    log.info("started from the server's image: %d rows at %s", info.rows, format_lsn(info.lsn))
    report.update(
        used=True,
        rows=info.rows,
        lsn=format_lsn(info.lsn),
        bytes=info.bytes,
        verifyMs=round(info.check_ms),
        copyMs=round(info.copy_ms),
    )
    return report


def preconnect_url(base: str, worker: ChangesWorker) -> str:
    """The URL the Sync Worker's first connection will ask for, so it can open it early.

    Why: the Sync Worker starts after this worker is ready and spends ~0.3-0.5 s
    restoring Pyodide; its JavaScript opens this socket before that and keeps what
    arrives, so the server's snapshot read and first chunks overlap the boot.  The
    Sync Worker builds its own URL from ``local_state`` and adopts the early socket
    only when the two are equal (nothing but the Sync Worker moves the LSN).
    """
    return build_sync_url(base, worker.client_id, worker.synced_lsn(), init_rows=True)


# The Sync Worker reads these to send them to the server.
_SENDS_CHANGES = frozenset({"port.unsynced_changes"})


async def serve_sync_request(
    worker: ChangesWorker,
    data: dict[str, Any],
    *,
    flush: Callable[[], Any],
    to_sync: Callable[[dict[str, Any]], None],
    to_page: Callable[[dict[str, Any]], None],
) -> None:
    """Run one Sync Worker request and reply; a conflict it records goes to the page.

    Why the flush: with group flush (``flushDelayMs``) a committed write is safe from
    a crashed tab at once but from power loss only at the next flush.  A change the
    server has accepted never comes back to its own client (catchup and live leave a
    client's own changes out), so a change sent before it is power-loss durable could
    be on the server and gone here after a power cut.  Changes the Sync Worker reads to
    send are therefore flushed to OPFS before they leave this worker (one
    ``flushAll`` per send batch; a no-op when nothing is dirty).
    """
    reply = await handle_request(worker, data)
    cmd = data.get("cmd")
    if data.get("id") is None:  # a one-way call (``PortRpc.post``): nobody waits
        if not reply.get("ok"):
            log.warning("one-way %s failed: %s", cmd, reply.get("error"))
        return
    if cmd in _SENDS_CHANGES and reply.get("ok") and reply.get("result"):
        flush()
    to_sync(reply)
    if cmd == "port.record_results" and reply.get("ok"):
        for lost in conflicts_in(data.get("args") or {}):
            to_page({"event": "conflict", "change": await _describe(worker, lost)})


class PageStatus:
    """The sync status the page sees: the Sync Worker's, and this worker's own commits.

    Why: the page's write resolves when this worker has committed it; the Sync Worker
    hears of the commit a message later and its status, which says the change is
    pending, comes later still.  Shown as it came, ``pending`` would read 0 right
    after ``await db.insert(...)`` and a page waiting for "live, nothing pending"
    would think the write had reached the server.  So every local commit is
    numbered (the ``seq`` of its ``local_change`` event to the Sync Worker), the
    Sync Worker's status says up to which commit its ``pending`` counts
    (``localSeq``), and commits it has not counted yet are added here, each one at
    least one change.  A status is shown only once the Sync Worker has sent one.
    """

    def __init__(self) -> None:
        self.local_seq = 0  # local commits told to the Sync Worker
        self._sync: dict[str, Any] = {}  # its last status, without ``localSeq``
        self._counted: int | None = None  # its ``localSeq``: commits its pending counts

    def local_committed(self) -> dict[str, Any] | None:
        """Number a local commit; the status to show now, when ``pending`` was 0."""
        was_pending = self._pending()
        self.local_seq += 1
        if not self._sync or was_pending:
            return None  # nothing shown yet, or already pending: the next status counts it
        return self.shown()

    def from_sync(self, status: Mapping[str, Any], client_id: str | None) -> dict[str, Any]:
        """The Sync Worker's new status: remember it; the status to show."""
        self._sync = {**status, "clientId": client_id}
        counted = self._sync.pop("localSeq", None)
        self._counted = counted if type(counted) is int else None
        return self.shown()

    @property
    def sync(self) -> dict[str, Any]:
        """The Sync Worker's last status, as it came (the ``status`` request adds to it)."""
        return self._sync

    def shown(self) -> dict[str, Any]:
        status = dict(self._sync)
        if "pending" in status:
            status["pending"] = self._pending()
        return status

    def _pending(self) -> Any:
        """The Sync Worker's ``pending`` with the commits it has not counted added."""
        pending = self._sync.get("pending")
        if self._counted is not None and type(pending) is int and self._counted < self.local_seq:
            return pending + self.local_seq - self._counted
        return pending


class PageEvents:
    """The ``tables_changed`` event of a page's own write rides on that write's reply.

    Why: a post to the page is a Python -> JS call, a JSON encode and a message event
    in the page, and a one-row insert made two of them (the event, then the reply).
    A local write's tables are known in the step that commits it, and that same
    synchronous step returns the reply (nothing awaits in between), so the event is
    held (``defer``) only while a page request runs and goes out in the reply's
    ``events`` (``attach``), which the page handles, in order, before it resolves
    the call (``js_shim/tidesync.mjs`` ``Rpc.receive``).  Anything else posted to the
    page first sends what is held (``drain``), so events keep their order; events
    of other sources, and any local one while no page request runs, are posted as
    they come.
    """

    def __init__(self) -> None:
        self.requests = 0  # page requests started and not yet replied to
        self.deferred: list[dict[str, Any]] = []

    def defer(self, message: dict[str, Any], source: str) -> bool:
        """Hold ``message`` for the next reply; False: post it now."""
        if source != "local" or not self.requests:
            return False
        self.deferred.append(message)
        return True

    def attach(self, reply: dict[str, Any]) -> dict[str, Any]:
        if not self.deferred:
            return reply
        events, self.deferred = self.deferred, []
        return {**reply, "events": events}

    def drain(self, send: Callable[[dict[str, Any]], None]) -> None:
        events, self.deferred = self.deferred, []
        for message in events:
            send(message)


class RequestRunner:
    """Runs one stream's requests (the page's, or the Sync Worker's) in arrival order.

    Why: a request handled as an asyncio task waits for the next turn of Pyodide's
    event loop (a ``setTimeout`` hop and a JS callback made for it) before it starts.
    Nearly every request never has to wait (the worker lock is free and nothing in
    it sleeps), so it is run right here in the message handler, to its end.  When an
    earlier request of the stream is still unfinished, or the worker is busy, it
    becomes a task as before, so the stream's order holds; and should a request
    suspend after all, a task resumes it once what it waits for is done.
    """

    def __init__(
        self,
        busy: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Future[Any]],
    ) -> None:
        self._busy = busy
        self._spawn = spawn
        self.unfinished = 0  # requests of this stream handed to tasks, not done yet

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.unfinished or self._busy():
            self._as_task(coro)
            return
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception:  # the handlers turn errors into replies: this is a bug
            log.exception("request failed")
            return
        self.unfinished += 1
        if asyncio.isfuture(waiting):
            # Suspended in Future.__await__: resumed (by a task's first step) once it is done.
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(lambda _done: self._as_task(coro, counted=True))
        else:  # a bare ``yield`` (``sleep(0)``): a task's first step resumes it
            self._as_task(coro, counted=True)

    def _as_task(self, coro: Coroutine[Any, Any, None], *, counted: bool = False) -> None:
        if not counted:
            self.unfinished += 1
        task = self._spawn(coro)
        task.add_done_callback(self._done)

    def _done(self, _task: asyncio.Future[Any]) -> None:
        self.unfinished -= 1


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
