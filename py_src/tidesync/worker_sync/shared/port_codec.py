"""``ChangesPort`` calls as plain JSON-able messages, for the MessageChannel between workers.

In the browser the Sync Worker and the Changes Worker are separate Pyodide
instances; a ``ChangesPort`` call crosses a MessageChannel as
``{cmd: "port.<method>", args: {...}}`` and its answer comes back the same way.
``RemoteChangesPort`` is the Sync side's end (it implements ``ChangesPort`` over
any async ``call(cmd, args)``), ``dispatch_port_call`` the Changes side's end.
Both are pure Python, so the pair is tested natively by connecting them in one
process; the browser only supplies the ``call`` that posts a message.

Everything arriving here crossed a boundary and is validated: changes and
results are decoded with the wire codecs of ``message_types``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tidesync.worker_sync.shared.changes_port import ApplyOutcome, ChangesPort, LocalState
from tidesync.worker_sync.shared.message_types import (
    ChangeResult,
    ErrorCode,
    ProtocolError,
    TableChange,
    results_from_wire,
    results_to_wire,
)

__all__ = [
    "PORT_PREFIX",
    "RemoteChangesPort",
    "changes_from_wire",
    "changes_to_wire",
    "channel_text",
    "dispatch_port_call",
    "is_port_call",
]

PORT_PREFIX = "port."
Call = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: Posts a port call without waiting for (or getting) an answer.
Notify = Callable[[str, dict[str, Any]], None]


def is_port_call(cmd: object) -> bool:
    return isinstance(cmd, str) and cmd.startswith(PORT_PREFIX)


def channel_text(message: dict[str, Any]) -> str | None:
    """``message`` as JSON text for the channel between the workers; None when JSON
    cannot carry it (bytes, NaN), and the caller posts a converted JS object instead.

    Why text: Pyodide's ``to_js`` on one side and ``to_py`` on the other build a
    proxy per dict and list, which cost more than ``json.dumps``/``json.loads``
    and a string crossing (as for the page's requests, see ``encode_for_page``);
    every change crosses this channel several times.  Both ends are Python, so
    large integers stay exact.
    """
    try:
        return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


def _outcome_to_wire(outcome: ApplyOutcome) -> dict[str, Any]:
    return {
        "lsn": outcome.lsn,
        "applied": outcome.applied,
        "skipped": outcome.skipped,
        "failed": outcome.failed,
        "tables": list(outcome.tables),
    }


def _outcome_from_wire(raw: Any) -> ApplyOutcome:
    if not isinstance(raw, dict):
        raise _bad("result", "must be an object")
    return ApplyOutcome(
        lsn=_int(raw.get("lsn"), "lsn"),
        applied=_int(raw.get("applied", 0), "applied"),
        skipped=_int(raw.get("skipped", 0), "skipped"),
        failed=_int(raw.get("failed", 0), "failed"),
        tables=tuple(str(t) for t in raw.get("tables", ())),
    )


def _bad(field: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, f"port field '{field}' {what}", field=field)


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise _bad(field, "must be an integer")
    return int(value)


def _changes(raw: Any, field: str = "changes") -> list[TableChange]:
    if not isinstance(raw, list):
        raise _bad(field, "must be a list of changes")
    return [TableChange.from_wire(item, f"{field}[{i}]") for i, item in enumerate(raw)]


def _changes_to_wire(changes: Sequence[TableChange]) -> list[dict[str, Any]]:
    return [change.to_wire() for change in changes]


def changes_to_wire(changes: Sequence[TableChange]) -> list[dict[str, Any]]:
    """Changes as they cross the channel (the ``local_change`` event carries them so)."""
    return _changes_to_wire(changes)


def changes_from_wire(raw: Any, field: str = "changes") -> list[TableChange]:
    """The other end: every change validated with the wire codec; raises ``ProtocolError``."""
    return _changes(raw, field)


def _changes_arg(changes: Sequence[TableChange]) -> dict[str, Any]:
    """``{"changes_json": text}``, or ``{"changes": [...]}`` when a value is not JSON (NaN).

    One string crosses the MessageChannel for the cost of ``json.dumps``; a list of
    dicts costs a JS<->Python conversion of every value, both ways (~5x more).
    """
    wire = _changes_to_wire(changes)
    try:
        return {
            "changes_json": json.dumps(
                wire, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            )
        }
    except ValueError:
        return {"changes": wire}


def _changes_from_args(args: dict[str, Any]) -> list[TableChange]:
    text = args.get("changes_json")
    if text is None:
        return _changes(args.get("changes"))
    if not isinstance(text, str | bytes):  # bytes: UTF-8 (``post_with_utf8``)
        raise _bad("changes_json", "must be a string (a JSON array of changes)")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise _bad("changes_json", "is not valid JSON") from None
    return _changes(raw, "changes_json")


class RemoteChangesPort:
    """``ChangesPort`` whose every call is a message to the Changes Worker.

    LSNs travel as integers (JS numbers are exact up to 2**53, far beyond any
    log this server will write).

    With ``notify`` (a one-way post on the same ordered channel),
    ``observe_server_time`` and ``mark_sent`` do not wait for an answer.  The
    clock is fed for every server frame, and a round trip for it would sit on
    the live path in front of every ``apply_server_changes``.  The channel is
    FIFO and the Changes side handles calls in arrival order, so the clock is
    fed (and an attempt counted) before any call posted after it; a time not
    above one already posted is not sent at all (the clock only ever takes the
    maximum).
    """

    def __init__(self, call: Call, notify: Notify | None = None) -> None:
        self._call = call
        self._notify = notify
        self._observed = 0

    async def local_state(self) -> LocalState:
        raw = await self._call("port.local_state", {})
        return LocalState(
            client_id=str(raw["client_id"]),
            lsn=_int(raw["lsn"], "lsn"),
            pending_count=_int(raw["pending_count"], "pending_count"),
            initialized=bool(raw["initialized"]),
        )

    async def observe_server_time(self, millis: int) -> None:
        if self._notify is None:
            await self._call("port.observe_server_time", {"millis": millis})
        elif millis > self._observed:
            self._observed = millis
            self._notify("port.observe_server_time", {"millis": millis})

    async def begin_initial_sync(self, server_lsn: int) -> None:
        await self._call("port.begin_initial_sync", {"server_lsn": server_lsn})

    async def stage_initial_chunk(self, table: str, changes: Sequence[TableChange]) -> None:
        """One JSON string per chunk: converting 1,000 nested dicts to JS objects and back
        (and decoding them again) costs far more in Pyodide than ``json.dumps`` and one
        string crossing; the Changes side stages the text with SQLite's JSON functions.
        """
        wire = _changes_to_wire(changes)
        try:
            text = json.dumps(wire, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError:  # NaN/Infinity: not JSON; the row-by-row form carries them
            await self._call("port.stage_initial_chunk", {"table": table, "changes": wire})
            return
        await self.stage_initial_json(table, text)

    async def stage_initial_json(self, table: str, changes_json: str | bytes) -> None:
        args = {"table": table, "changes_json": changes_json}
        await self._call("port.stage_initial_chunk", args)

    async def commit_initial_sync(self, server_lsn: int) -> ApplyOutcome:
        raw = await self._call("port.commit_initial_sync", {"server_lsn": server_lsn})
        return _outcome_from_wire(raw)

    async def abort_initial_sync(self) -> None:
        await self._call("port.abort_initial_sync", {})

    async def apply_server_changes(
        self, changes: Sequence[TableChange], last_lsn: int, *, source: str, server_time: int = 0
    ) -> ApplyOutcome:
        """The batch crosses as one JSON string (``changes_json``), as snapshot chunks do;
        the frame's time rides along (``server_time``) when it is above the last one sent.
        """
        args: dict[str, Any] = {"last_lsn": last_lsn, "source": source}
        if server_time > self._observed:
            self._observed = server_time
            args["server_time"] = server_time
        args.update(_changes_arg(changes))
        return _outcome_from_wire(await self._call("port.apply_server_changes", args))

    async def advance_lsn(self, lsn: int) -> None:
        await self._call("port.advance_lsn", {"lsn": lsn})

    async def unsynced_changes(self, limit: int) -> list[TableChange]:
        return _changes(await self._call("port.unsynced_changes", {"limit": limit}))

    async def mark_sent(self, change_ids: Sequence[str]) -> None:
        """One-way with ``notify``: the count of attempts is informational and nothing
        waits on it; its answer would only wake the Sync Worker while the change it
        just sent is on its way (a failure is logged by the Changes side).
        """
        if self._notify is None:
            await self._call("port.mark_sent", {"change_ids": list(change_ids)})
        else:
            self._notify("port.mark_sent", {"change_ids": list(change_ids)})

    async def arm_local_changes(self, limit: int) -> None:
        """One-way with ``notify``: ordered after every call posted before it."""
        if self._notify is None:
            await self._call("port.arm_local_changes", {"limit": limit})
        else:
            self._notify("port.arm_local_changes", {"limit": limit})

    async def record_results(self, results: Sequence[ChangeResult]) -> ApplyOutcome:
        raw = await self._call("port.record_results", {"results": results_to_wire(results)})
        return _outcome_from_wire(raw)

    async def reset_for_reinit(self) -> None:
        await self._call("port.reset_for_reinit", {})

    async def commit_table_resync(self, tables: Sequence[str], server_lsn: int) -> ApplyOutcome:
        args = {"tables": list(tables), "server_lsn": server_lsn}
        return _outcome_from_wire(await self._call("port.commit_table_resync", args))

    async def table_checksums(
        self, tables: Sequence[str], *, if_idle_at: int | None = None
    ) -> dict[str, str] | None:
        args: dict[str, Any] = {"tables": list(tables)}
        if if_idle_at is not None:
            args["if_idle_at"] = if_idle_at
        raw = await self._call("port.table_checksums", args)
        if raw is None and if_idle_at is not None:
            return None
        if not isinstance(raw, dict):
            raise _bad("result", "must be an object of checksums")
        return {str(k): str(v) for k, v in raw.items()}


async def dispatch_port_call(port: ChangesPort, cmd: str, args: dict[str, Any]) -> Any:
    """Run one ``port.*`` message on the real ``ChangesPort``; return a JSON-able answer."""
    method = cmd[len(PORT_PREFIX) :] if is_port_call(cmd) else cmd
    if method == "local_state":
        state = await port.local_state()
        return {
            "client_id": state.client_id,
            "lsn": state.lsn,
            "pending_count": state.pending_count,
            "initialized": state.initialized,
        }
    if method == "observe_server_time":
        await port.observe_server_time(_int(args.get("millis"), "millis"))
        return None
    if method == "begin_initial_sync":
        await port.begin_initial_sync(_int(args.get("server_lsn"), "server_lsn"))
        return None
    if method == "stage_initial_chunk":
        table = args.get("table")
        if not isinstance(table, str):
            raise _bad("table", "must be a string")
        text = args.get("changes_json")
        if text is not None:
            if not isinstance(text, str | bytes):  # bytes: UTF-8 (``post_with_utf8``)
                raise _bad("changes_json", "must be a string (a JSON array of changes)")
            await port.stage_initial_json(table, text)
        else:
            await port.stage_initial_chunk(table, _changes(args.get("changes")))
        return None
    if method == "commit_initial_sync":
        server_lsn = _int(args.get("server_lsn"), "server_lsn")
        return _outcome_to_wire(await port.commit_initial_sync(server_lsn))
    if method == "abort_initial_sync":
        await port.abort_initial_sync()
        return None
    if method == "apply_server_changes":
        outcome = await port.apply_server_changes(
            _changes_from_args(args),
            _int(args.get("last_lsn"), "last_lsn"),
            source=str(args.get("source", "live")),
            server_time=_int(args.get("server_time", 0), "server_time"),
        )
        return _outcome_to_wire(outcome)
    if method == "advance_lsn":
        await port.advance_lsn(_int(args.get("lsn"), "lsn"))
        return None
    if method == "unsynced_changes":
        changes = await port.unsynced_changes(_int(args.get("limit", 500), "limit"))
        return _changes_to_wire(changes)
    if method == "mark_sent":
        ids = args.get("change_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _bad("change_ids", "must be a list of strings")
        await port.mark_sent(ids)
        return None
    if method == "arm_local_changes":
        await port.arm_local_changes(_int(args.get("limit", 0), "limit"))
        return None
    if method == "record_results":
        results = results_from_wire(args.get("results"), "results")
        return _outcome_to_wire(await port.record_results(results))
    if method == "reset_for_reinit":
        await port.reset_for_reinit()
        return None
    if method == "commit_table_resync":
        tables = args.get("tables")
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise _bad("tables", "must be a list of table names")
        server_lsn = _int(args.get("server_lsn"), "server_lsn")
        return _outcome_to_wire(await port.commit_table_resync(tables, server_lsn))
    if method == "table_checksums":
        tables = args.get("tables")
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise _bad("tables", "must be a list of table names")
        at = args.get("if_idle_at")
        return await port.table_checksums(
            tables, if_idle_at=None if at is None else _int(at, "if_idle_at")
        )
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown port call {cmd!r}", field="cmd")
