"""Typed commands for the Changes Worker, and the one router that runs them.

Whatever reaches the Changes Worker from outside Python (the page's RPC, the
Sync Worker over the MessageChannel) arrives as ``{"id", "cmd", "args"}``.
``command_from_dict`` checks every field and builds a frozen command;
``handle`` runs it on a ``ChangesWorker`` and returns a JSON-able result;
``handle_request`` wraps both and turns any error into
``{"id", "ok": false, "error": {"type", "message"}}`` with the Python message,
so a bad request never takes the worker down.

Command names (``cmd``) are stable; they are what ``js_shim/tidesync.mjs`` sends:
``query execute insert update delete upsert transaction pendingChanges
pendingCount localChanges subscribe unsubscribe status tableChecksums close`` and
``port.<ChangesPort method>`` (see ``worker_sync.shared.port_codec``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tidesync.changes.worker import ChangesWorker
from tidesync.changes.writes import WriteOp
from tidesync.worker_sync.shared.port_codec import dispatch_port_call, is_port_call

__all__ = [
    "COMMANDS",
    "Close",
    "Command",
    "CommandError",
    "Delete",
    "Execute",
    "Insert",
    "LocalChanges",
    "PendingChanges",
    "PendingCount",
    "PortCall",
    "Query",
    "Status",
    "Subscribe",
    "TableChecksums",
    "Transaction",
    "Unsubscribe",
    "Update",
    "Upsert",
    "command_from_dict",
    "handle",
    "handle_request",
    "write_now",
]

log = logging.getLogger(__name__)

Params = tuple[Any, ...] | dict[str, Any]


class CommandError(ValueError):
    """A request that is not a valid command (names the offending field)."""


# --- field checks ---------------------------------------------------------------------------


def _str(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise CommandError(f"'{name}' must be a non-empty string")
    return value


def _row(args: Mapping[str, Any], name: str = "row") -> dict[str, Any]:
    value = args.get(name)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise CommandError(f"'{name}' must be an object of column values")
    return dict(value)


def _params(args: Mapping[str, Any]) -> Params:
    value = args.get("params", ())
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise CommandError("'params' must be a list (or an object of named parameters)")


def _int(args: Mapping[str, Any], name: str, default: int, low: int = 0) -> int:
    value = args.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CommandError(f"'{name}' must be an integer >= {low}")
    return value


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    NAME: ClassVar[str] = ""

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        return cls()


@dataclass(frozen=True)
class Query(Command):
    NAME: ClassVar[str] = "query"
    sql: str
    params: Params = ()

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        return cls(_str(args, "sql"), _params(args))


@dataclass(frozen=True)
class Execute(Query):
    NAME: ClassVar[str] = "execute"


@dataclass(frozen=True)
class Insert(Command):
    NAME: ClassVar[str] = "insert"
    table: str
    row: dict[str, Any]

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        return cls(_str(args, "table"), _row(args))


@dataclass(frozen=True)
class Update(Insert):
    NAME: ClassVar[str] = "update"


@dataclass(frozen=True)
class Delete(Insert):
    """``row`` holds at least the primary key."""

    NAME: ClassVar[str] = "delete"


@dataclass(frozen=True)
class Upsert(Insert):
    NAME: ClassVar[str] = "upsert"


@dataclass(frozen=True)
class Transaction(Command):
    """``ops``: ``{op: insert|update|delete|upsert, table, row}`` or ``{op: execute, sql}``."""

    NAME: ClassVar[str] = "transaction"
    ops: tuple[WriteOp, ...]

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        raw = args.get("ops")
        if not isinstance(raw, list):
            raise CommandError("'ops' must be a list of operations")
        ops = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise CommandError(f"ops[{i}] must be an object")
            op = item.get("op")
            try:
                if op == "execute":
                    ops.append(WriteOp("execute", sql=_str(item, "sql"), params=_params(item)))
                elif op in ("insert", "update", "delete", "upsert"):
                    ops.append(WriteOp(op, _str(item, "table"), _row(item)))
                else:
                    raise CommandError("'op' must be insert, update, delete, upsert or execute")
            except CommandError as exc:
                raise CommandError(f"ops[{i}]: {exc}") from None
        return cls(tuple(ops))


@dataclass(frozen=True)
class PendingChanges(Command):
    NAME: ClassVar[str] = "pendingChanges"


@dataclass(frozen=True)
class PendingCount(Command):
    NAME: ClassVar[str] = "pendingCount"


@dataclass(frozen=True)
class LocalChanges(Command):
    NAME: ClassVar[str] = "localChanges"
    limit: int = 100
    offset: int = 0
    state: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        state = _str(args, "state") if args.get("state") is not None else None
        return cls(_int(args, "limit", 100, 1), _int(args, "offset", 0), state)


@dataclass(frozen=True)
class Subscribe(Command):
    NAME: ClassVar[str] = "subscribe"
    sub_id: str
    sql: str
    params: tuple[Any, ...] = ()

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        params = _params(args)
        if not isinstance(params, tuple):
            raise CommandError("'params' of a live query must be a list")
        return cls(_str(args, "subId"), _str(args, "sql"), params)


@dataclass(frozen=True)
class Unsubscribe(Command):
    NAME: ClassVar[str] = "unsubscribe"
    sub_id: str

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        return cls(_str(args, "subId"))


@dataclass(frozen=True)
class Status(Command):
    NAME: ClassVar[str] = "status"


@dataclass(frozen=True)
class TableChecksums(Command):
    NAME: ClassVar[str] = "tableChecksums"
    tables: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Command:
        raw = args.get("tables") or []
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise CommandError("'tables' must be a list of table names")
        return cls(tuple(raw))


@dataclass(frozen=True)
class Close(Command):
    NAME: ClassVar[str] = "close"


@dataclass(frozen=True)
class PortCall(Command):
    """A ``ChangesPort`` call from the Sync Worker; its args are checked by ``port_codec``."""

    NAME: ClassVar[str] = "port"
    method: str
    args: dict[str, Any]


COMMANDS: dict[str, type[Command]] = {
    cls.NAME: cls
    for cls in (
        Query,
        Execute,
        Insert,
        Update,
        Delete,
        Upsert,
        Transaction,
        PendingChanges,
        PendingCount,
        LocalChanges,
        Subscribe,
        Unsubscribe,
        Status,
        TableChecksums,
        Close,
    )
}


def command_from_dict(request: Mapping[str, Any]) -> Command:
    """``{"cmd": name, "args": {...}}`` -> a checked command; raises ``CommandError``."""
    if not isinstance(request, Mapping):
        raise CommandError("a request must be an object")
    cmd = request.get("cmd")
    args = request.get("args") or {}
    if not isinstance(args, dict):
        raise CommandError("'args' must be an object")
    if is_port_call(cmd):
        return PortCall(str(cmd), dict(args))
    cls = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if cls is None:
        raise CommandError(f"unknown command {str(cmd)[:60]!r}")
    return cls.from_args(args)


async def handle(worker: ChangesWorker, command: Command) -> Any:
    """Run ``command``; the result is JSON-able (dicts, lists, numbers, text, null)."""
    match command:
        case Execute(sql=sql, params=params):
            return await worker.execute(sql, params)
        case Query(sql=sql, params=params):
            return await worker.query(sql, params)
        case Update(table=table, row=row):
            return await worker.update(table, row)
        case Delete(table=table, row=row):
            return await worker.delete(table, row)
        case Upsert(table=table, row=row):
            return await worker.upsert(table, row)
        case Insert(table=table, row=row):
            return await worker.insert(table, row)
        case Transaction(ops=ops):
            return await worker.run_transaction(ops)
        case PendingChanges():
            return await worker.pending_changes()
        case PendingCount():
            return await worker.pending_count()
        case LocalChanges(limit=limit, offset=offset, state=state):
            return await worker.local_changes(limit, offset, state)
        case Subscribe(sub_id=sub_id, sql=sql, params=params):
            return await worker.subscribe(sub_id, sql, params)
        case Unsubscribe(sub_id=sub_id):
            return await worker.unsubscribe(sub_id)
        case Status():
            return await worker.status()
        case TableChecksums(tables=tables):
            return await worker.table_checksums(tables or None)
        case Close():
            await worker.close()
            return None
        case PortCall(method=method, args=args):
            return await dispatch_port_call(worker, method, args)
    raise CommandError(f"no handler for {type(command).__name__}")


async def handle_request(worker: ChangesWorker, request: Mapping[str, Any]) -> dict[str, Any]:
    """One request in, one JSON-able reply out (``ok`` with ``result``, or ``error``)."""
    request_id = request.get("id") if isinstance(request, Mapping) else None
    try:
        result = await handle(worker, command_from_dict(request))
    except Exception as exc:
        return _error_reply(request_id, request.get("cmd"), exc)
    return {"id": request_id, "ok": True, "result": result}


# The typed one-row writes ``write_now`` runs; their names are also their ``WriteOp.op``.
_ONE_ROW_WRITES: dict[str, type[Insert]] = {
    cls.NAME: cls for cls in (Insert, Update, Delete, Upsert)
}


def write_now(worker: ChangesWorker, request: dict[str, Any]) -> dict[str, Any] | None:
    """``handle_request`` for a typed one-row write, run to its end in this call.

    None when it is not one (or ``args`` is not an object: ``handle_request`` names
    that), or when the worker is busy: then ``handle_request`` queues it as usual.
    Why: ``db.insert/update/delete/upsert`` from the page is the hot path, and the
    coroutines around the same transaction cost about as much as its SQL in Pyodide.
    The same checks (``_str``, ``_row``, as ``Insert.from_args``), the same transaction
    (``ChangesWorker.write_row``) and the same reply.
    """
    cmd = request.get("cmd")
    args = request.get("args")
    if type(cmd) is not str or cmd not in _ONE_ROW_WRITES or type(args) is not dict or worker.busy:
        return None
    request_id = request.get("id")
    try:
        # ``_row`` without its copy: the writer copies the row before it stamps it.
        table = _str(args, "table")
        row = args.get("row")
        if type(row) is not dict:
            row = _row(args)  # raises the same error
        for name in row:
            if type(name) is not str:
                row = _row(args)  # raises the same error
        result = worker.write_row(cmd, table, row)
    except Exception as exc:
        return _error_reply(request_id, cmd, exc)
    if result is None:  # not reached: ``busy`` was checked, and nothing ran since
        return None
    return {"id": request_id, "ok": True, "result": result}


def _error_reply(request_id: Any, cmd: Any, exc: Exception) -> dict[str, Any]:
    if not isinstance(exc, ValueError | sqlite3.Error):
        log.exception("command %r failed", cmd)
    message = getattr(exc, "message", None) or str(exc)
    return {
        "id": request_id,
        "ok": False,
        "error": {"type": type(exc).__name__, "message": message},
    }
