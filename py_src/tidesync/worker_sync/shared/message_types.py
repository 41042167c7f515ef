"""Every message of the wire protocol as a frozen dataclass, with one decode/encode path.

PROTOCOL.md is the contract.  ``decode_message`` is the only way text from a
socket becomes a message and ``encode_message`` the only way back; both sides
(server, Sync Worker, native client, simulator) use them, so validation lives in
one place.  A message that cannot be decoded raises ``ProtocolError`` naming the
offending field, which the server turns into ``srv_error`` and the client into
``clt_error``.

Extensions to PROTOCOL.md v1 (documented in docs/protocol.md, all optional so
clients that ignore them keep working):

* ``TableChange.clientId``: the author of a server change (absent for writes
  made on the server by other programs), needed for the clientId tie-break of
  last-write-wins on the client.
* ``ChangeResult.row`` is also sent with ``rejected`` so the client can undo a
  change the server refused.
* ``srv_table_checksums`` / ``clt_request_checksums`` for integrity checks.
* ``clt_resync_tables`` -> ``srv_resync_start``, ``srv_resync_changes`` (acked by
  ``clt_resync_received``), ``srv_resync_complete``: a snapshot of named tables
  only, to repair a table whose checksum differs without a full re-sync.
* ``srv_init_rows``: a snapshot chunk as column names and rows of values, sent
  instead of ``srv_init_changes`` only to a client that asked for it in the
  handshake (``initFormat=rows`` on ``/api/sync``); far less text to write and parse.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from functools import partial
from itertools import chain, repeat
from typing import Any, ClassVar, TypeVar

from tidesync.worker_sync.shared.hlc import (
    TimestampError,
    is_canonical_timestamp,
    normalize_timestamp,
)
from tidesync.worker_sync.shared.lsn_manager import LsnError, format_lsn, parse_lsn

__all__ = [
    "MESSAGE_CLASSES",
    "ChangeResult",
    "ChangeStatus",
    "ChunkSequence",
    "CltCatchupReceived",
    "CltChangesApplied",
    "CltChangesReceived",
    "CltError",
    "CltHeartbeat",
    "CltInitProcessed",
    "CltInitReceived",
    "CltRequestChecksums",
    "CltResyncReceived",
    "CltResyncTables",
    "CltSendChanges",
    "ErrorCode",
    "InitChunkFrame",
    "InitSequence",
    "JsonValue",
    "Message",
    "MessageType",
    "Operation",
    "ProtocolError",
    "SrvCatchupChanges",
    "SrvCatchupCompleted",
    "SrvChangesApplied",
    "SrvChangesReceived",
    "SrvError",
    "SrvHeartbeat",
    "SrvInitChanges",
    "SrvInitComplete",
    "SrvInitRows",
    "SrvInitStart",
    "SrvLiveChanges",
    "SrvLsnUpdate",
    "SrvResyncChanges",
    "SrvResyncComplete",
    "SrvResyncStart",
    "SrvTableChecksums",
    "TableChange",
    "decode_message",
    "decode_server_frame",
    "encode_changes",
    "encode_init_rows_body",
    "encode_message",
    "make",
    "new_message_id",
    "results_from_wire",
    "results_to_wire",
]

JsonValue = str | int | float | bool | None
M = TypeVar("M", bound="Message")

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 128


class MessageType(StrEnum):
    SRV_INIT_START = "srv_init_start"
    SRV_INIT_CHANGES = "srv_init_changes"
    SRV_INIT_COMPLETE = "srv_init_complete"
    SRV_INIT_ROWS = "srv_init_rows"
    SRV_CATCHUP_CHANGES = "srv_catchup_changes"
    SRV_CATCHUP_COMPLETED = "srv_catchup_completed"
    SRV_LIVE_CHANGES = "srv_live_changes"
    SRV_LSN_UPDATE = "srv_lsn_update"
    SRV_CHANGES_RECEIVED = "srv_changes_received"
    SRV_CHANGES_APPLIED = "srv_changes_applied"
    SRV_HEARTBEAT = "srv_heartbeat"
    SRV_ERROR = "srv_error"
    SRV_TABLE_CHECKSUMS = "srv_table_checksums"
    SRV_RESYNC_START = "srv_resync_start"
    SRV_RESYNC_CHANGES = "srv_resync_changes"
    SRV_RESYNC_COMPLETE = "srv_resync_complete"
    CLT_INIT_RECEIVED = "clt_init_received"
    CLT_INIT_PROCESSED = "clt_init_processed"
    CLT_CATCHUP_RECEIVED = "clt_catchup_received"
    CLT_CHANGES_RECEIVED = "clt_changes_received"
    CLT_CHANGES_APPLIED = "clt_changes_applied"
    CLT_SEND_CHANGES = "clt_send_changes"
    CLT_HEARTBEAT = "clt_heartbeat"
    CLT_ERROR = "clt_error"
    CLT_REQUEST_CHECKSUMS = "clt_request_checksums"
    CLT_RESYNC_TABLES = "clt_resync_tables"
    CLT_RESYNC_RECEIVED = "clt_resync_received"


class Operation(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class ChangeStatus(StrEnum):
    APPLIED = "applied"
    SKIPPED = "skipped"
    REJECTED = "rejected"


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    OUT_OF_PHASE = "out_of_phase"
    LSN_AHEAD = "lsn_ahead"
    BAD_LSN = "bad_lsn"
    FRAME_TOO_LARGE = "frame_too_large"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A message the receiver cannot process; ``field`` names the offending field."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        ref_message_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.ref_message_id = ref_message_id


def new_message_id() -> str:
    return str(uuid.uuid4())


# --- field codecs ---------------------------------------------------------------------------

Decoder = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]


def _invalid(path: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, f"field '{path}' {what}", field=path)


def _dec_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _invalid(path, f"must be a string, got {type(value).__name__}")
    return value


def _dec_id(value: Any, path: str) -> str:
    text = _dec_str(value, path)
    if not text or len(text) > MAX_ID_LENGTH:
        raise _invalid(path, f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return text


def _dec_name(value: Any, path: str) -> str:
    text = _dec_str(value, path)
    if not text or len(text) > MAX_NAME_LENGTH:
        raise _invalid(path, f"must be a non-empty name of at most {MAX_NAME_LENGTH} characters")
    return text


def _dec_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(path, f"must be an integer, got {type(value).__name__}")
    return value


def _dec_count(value: Any, path: str) -> int:
    number = _dec_int(value, path)
    if number < 0:
        raise _invalid(path, "must not be negative")
    return number


def _dec_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(path, f"must be true or false, got {type(value).__name__}")
    return value


def _dec_lsn(value: Any, path: str) -> int:
    try:
        return parse_lsn(value)
    except LsnError as exc:
        raise _invalid(path, str(exc)) from None


def _dec_time(value: Any, path: str) -> str:
    try:
        return normalize_timestamp(value)
    except TimestampError as exc:
        raise _invalid(path, str(exc)) from None


def _dec_id_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _invalid(path, "must be a list of ids")
    # Every acknowledgement carries all the ids of its batch, and a server decodes one per
    # client per batch: the valid case is checked in C; the loop only names a bad item.
    ids = tuple(value)
    if _STR_ONLY.issuperset(map(type, ids)):
        lengths = list(map(len, ids))
        if not ids or (min(lengths) > 0 and max(lengths) <= MAX_ID_LENGTH):
            return ids
    return tuple(_dec_id(item, f"{path}[{i}]") for i, item in enumerate(value))


_STR_ONLY = frozenset({str})


def _dec_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(path, f"must be an object, got {type(value).__name__}")
    return value


def _identity(value: Any) -> Any:
    return value


def _wire(
    name: str,
    decode: Decoder,
    encode: Encoder = _identity,
    *,
    optional: bool = False,
    default: Any = MISSING,
) -> Any:
    """A dataclass field with its wire name and codec."""
    meta = {"wire": name, "decode": decode, "encode": encode, "optional": optional}
    if default is not MISSING:
        return field(default=default, metadata=meta)
    if optional:
        return field(default=None, metadata=meta)
    return field(metadata=meta)


def _decode_fields(cls: type[Any], raw: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for spec in fields(cls):
        if "wire" not in spec.metadata:
            continue
        wire = spec.metadata["wire"]
        path = f"{prefix}{wire}"
        if wire not in raw or (raw[wire] is None and spec.metadata["optional"]):
            if spec.metadata["optional"] or spec.default is not MISSING:
                continue
            raise ProtocolError(
                ErrorCode.MISSING_FIELD, f"missing required field '{path}'", field=path
            )
        values[spec.name] = spec.metadata["decode"](raw[wire], path)
    return values


def _encode_fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in fields(obj):
        if "wire" not in spec.metadata:
            continue
        value = getattr(obj, spec.name)
        if value is None and spec.metadata["optional"]:
            continue
        out[spec.metadata["wire"]] = spec.metadata["encode"](value)
    return out


# --- nested structures ----------------------------------------------------------------------


def _dec_data(value: Any, path: str) -> dict[str, JsonValue]:
    data = _dec_object(value, path)
    if not data:
        raise _invalid(path, "must hold at least the row's primary key")
    return data


@dataclass(frozen=True)
class TableChange:
    """One row change (PROTOCOL.md "TableChange").

    ``data`` is kept as received; whether its columns and values fit the schema
    is decided by whoever applies it (the server answers ``rejected``).
    """

    id: str = _wire("id", _dec_id)
    table: str = _wire("table", _dec_name)
    operation: Operation = _wire("operation", lambda v, p: _dec_enum(Operation, v, p), str)
    data: dict[str, Any] = _wire("data", _dec_data)
    updated_at: str = _wire("updated_at", _dec_time)
    lsn: int | None = _wire("lsn", _dec_lsn, format_lsn, optional=True)
    client_id: str | None = _wire("clientId", _dec_id, optional=True)

    @classmethod
    def from_wire(cls, raw: Any, path: str = "change") -> TableChange:
        """Validate one change; the common shape is checked inline (snapshots hold 100k).

        Anything unusual (a bad field, an LSN, a time not in canonical form) goes
        through the generic field decoders, which produce the error naming the field.
        """
        if type(raw) is dict and _usual_shape(raw):
            ident, table, op = raw["id"], raw["table"], _OPERATIONS[raw["operation"]]
            data, stamp, author = raw["data"], raw["updated_at"], raw.get("clientId")
            lsn_text = raw.get("lsn")
            if lsn_text is None:
                return cls(ident, table, op, data, stamp, None, author)
            with contextlib.suppress(LsnError):
                return cls(ident, table, op, data, stamp, parse_lsn(lsn_text), author)
        return cls(**_decode_fields(cls, _dec_object(raw, path), f"{path}."))

    @classmethod
    def check_wire(cls, raw: Any, path: str, depth: int) -> None:
        """Raise what ``from_wire`` would raise for ``raw``, without building the change.

        For a snapshot chunk the Sync Worker routes as text (``InitChunkFrame``):
        the same checks, and the depth check ``decode_message`` makes (``raw`` sits
        ``depth`` levels inside its frame), at a fraction of the cost per row.
        """
        if (
            type(raw) is dict
            and _usual_shape(raw)
            and _SCALARS.issuperset(map(type, raw["data"].values()))
        ):
            lsn_text = raw.get("lsn")
            if lsn_text is None:
                return
            with contextlib.suppress(LsnError):
                parse_lsn(lsn_text)
                return
        _check_depth(raw, depth)
        cls.from_wire(raw, path)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "table": self.table,
            "operation": self.operation.value,
            "data": self.data,
            "updated_at": self.updated_at,
        }
        if self.lsn is not None:
            out["lsn"] = format_lsn(self.lsn)
        if self.client_id is not None:
            out["clientId"] = self.client_id
        return out


_OPERATIONS: dict[str, Operation] = {op.value: op for op in Operation}


def _usual_shape(raw: dict[str, Any]) -> bool:
    """The common shape of a change, checked inline (snapshots hold 100k): every field
    of the right type and form, the LSN aside.  Anything else takes the generic field
    decoders, which produce the error naming the field."""
    ident, table, op = raw.get("id"), raw.get("table"), raw.get("operation")
    data, stamp, author = raw.get("data"), raw.get("updated_at"), raw.get("clientId")
    return (
        type(ident) is str
        and 0 < len(ident) <= MAX_ID_LENGTH
        and type(table) is str
        and 0 < len(table) <= MAX_NAME_LENGTH
        and type(op) is str
        and op in _OPERATIONS
        and type(data) is dict
        and bool(data)
        and type(stamp) is str
        and (author is None or (type(author) is str and 0 < len(author) <= MAX_ID_LENGTH))
        and is_canonical_timestamp(stamp)
    )


def _dec_enum(enum: type[Any], value: Any, path: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise _invalid(path, f"must be one of {allowed}; got {str(value)[:40]!r}") from None


def _dec_changes(value: Any, path: str) -> tuple[TableChange, ...]:
    if not isinstance(value, list):
        raise _invalid(path, "must be a list of changes")
    return tuple(TableChange.from_wire(item, f"{path}[{i}]") for i, item in enumerate(value))


def _enc_changes(changes: tuple[TableChange, ...]) -> list[dict[str, Any]]:
    return [change.to_wire() for change in changes]


@dataclass(frozen=True)
class InitSequence:
    table: str = _wire("table", _dec_name)
    chunk: int = _wire("chunk", _dec_count)
    total: int = _wire("total", _dec_count)


@dataclass(frozen=True)
class ChunkSequence:
    chunk: int = _wire("chunk", _dec_count)
    total: int = _wire("total", _dec_count)


@dataclass(frozen=True)
class ChangeResult:
    id: str = _wire("id", _dec_id)
    status: ChangeStatus = _wire("status", lambda v, p: _dec_enum(ChangeStatus, v, p), str)
    lsn: int | None = _wire("lsn", _dec_lsn, format_lsn, optional=True)
    reason: str | None = _wire("reason", _dec_str, optional=True)
    # ``row`` is tri-state on the wire: absent (no information), null (deleted), object.
    row: dict[str, Any] | None = _wire("row", _dec_object, optional=True)
    row_deleted: bool = False


def _nested(cls: type[Any]) -> tuple[Decoder, Encoder]:
    def decode(value: Any, path: str) -> Any:
        return cls(**_decode_fields(cls, _dec_object(value, path), f"{path}."))

    return decode, _encode_fields


def _dec_results(value: Any, path: str) -> tuple[ChangeResult, ...]:
    if not isinstance(value, list):
        raise _invalid(path, "must be a list of results")
    results = []
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        raw = _dec_object(item, item_path)
        result = ChangeResult(**_decode_fields(ChangeResult, raw, f"{item_path}."))
        if "row" in raw and raw["row"] is None:
            result = ChangeResult(
                id=result.id,
                status=result.status,
                lsn=result.lsn,
                reason=result.reason,
                row=None,
                row_deleted=True,
            )
        results.append(result)
    return tuple(results)


def _enc_results(results: tuple[ChangeResult, ...]) -> list[dict[str, Any]]:
    out = []
    for result in results:
        item = _encode_fields(result)
        if result.row_deleted:
            item["row"] = None
        out.append(item)
    return out


def _dec_checksums(value: Any, path: str) -> dict[str, str]:
    raw = _dec_object(value, path)
    return {_dec_name(k, f"{path}.{k}"): _dec_str(v, f"{path}.{k}") for k, v in raw.items()}


#: More table names than any schema here has; bounds what one request can ask for.
MAX_RESYNC_TABLES = 256


def _dec_distinct_names(value: Any, path: str, noun: str, limit: int) -> tuple[str, ...]:
    """A non-empty list of at most ``limit`` distinct names of ``noun``s (tables, columns)."""
    if not isinstance(value, list) or not value:
        raise _invalid(path, f"must be a non-empty list of {noun} names")
    if len(value) > limit:
        raise _invalid(path, f"must name at most {limit} {noun}s")
    names = tuple(_dec_name(item, f"{path}[{i}]") for i, item in enumerate(value))
    if len(set(names)) != len(names):
        raise _invalid(path, f"must not name a {noun} twice")
    return names


def _dec_table_names(value: Any, path: str) -> tuple[str, ...]:
    """A non-empty list of distinct table names (``clt_resync_tables``, ``srv_resync_*``)."""
    return _dec_distinct_names(value, path, "table", MAX_RESYNC_TABLES)


_INIT_SEQ = _nested(InitSequence)
_CHUNK_SEQ = _nested(ChunkSequence)

# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Message:
    """Common fields of every message (PROTOCOL.md "Common fields")."""

    TYPE: ClassVar[MessageType]
    client_id: str = _wire("clientId", _dec_id)
    message_id: str = _wire("messageId", _dec_id, default="")
    timestamp: int = _wire("timestamp", _dec_count, default=0)

    @property
    def type(self) -> MessageType:
        return self.TYPE


@dataclass(frozen=True, kw_only=True)
class SrvInitStart(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_INIT_START
    server_lsn: int = _wire("serverLSN", _dec_lsn, format_lsn)


@dataclass(frozen=True, kw_only=True)
class SrvInitChanges(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_INIT_CHANGES
    changes: tuple[TableChange, ...] = _wire("changes", _dec_changes, _enc_changes)
    sequence: InitSequence = _wire("sequence", *_INIT_SEQ)


#: SQLite's default column limit: bounds the ``columns`` of one ``srv_init_rows`` chunk.
MAX_COLUMNS = 2000
RowVersion = tuple[str, str | None]


def _dec_columns(value: Any, path: str) -> tuple[str, ...]:
    """A non-empty list of distinct column names (``srv_init_rows``)."""
    return _dec_distinct_names(value, path, "column", MAX_COLUMNS)


def _dec_rows(value: Any, path: str) -> tuple[tuple[JsonValue, ...], ...]:
    """A non-empty list of rows, each a list of JSON scalars (lengths: ``SrvInitRows``)."""
    if not isinstance(value, list) or not value:
        raise _invalid(path, "must be a non-empty list of rows")
    if set(map(type, value)) == {list} and _SCALARS.issuperset(
        map(type, chain.from_iterable(value))
    ):
        return tuple(map(tuple, value))
    for i, row in enumerate(value):  # name the bad row
        if not isinstance(row, list):
            raise _invalid(f"{path}[{i}]", "must be a list of values")
        for j, item in enumerate(row):
            if type(item) not in _SCALARS:
                raise _invalid(f"{path}[{i}][{j}]", "must be text, a number, a boolean or null")
    raise AssertionError("unreachable")  # pragma: no cover


def _dec_version(value: Any, path: str) -> RowVersion | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise _invalid(path, "must be null or [updated_at, clientId or null]")
    stamp = value[0]
    if type(stamp) is not str or not is_canonical_timestamp(stamp):
        raise _invalid(f"{path}[0]", "must be a time in the form YYYY-MM-DDTHH:MM:SS.mmmZ")
    author = None if value[1] is None else _dec_id(value[1], f"{path}[1]")
    return (stamp, author)


def _dec_versions(value: Any, path: str) -> tuple[RowVersion | None, ...]:
    if not isinstance(value, list):
        raise _invalid(path, "must be a list, one entry per row")
    if set(map(type, value)) <= {type(None)}:
        return tuple(value)
    return tuple(_dec_version(item, f"{path}[{i}]") for i, item in enumerate(value))


def _enc_versions(versions: Sequence[Sequence[str | None] | None]) -> list[Any]:
    return [None if v is None else list(v) for v in versions]


@dataclass(frozen=True, kw_only=True)
class SrvInitRows(Message):
    """Extension: one snapshot chunk as ``columns`` once and ``rows`` of values.

    Sent instead of ``srv_init_changes`` to a client that asked with
    ``initFormat=rows`` (docs/protocol.md); acknowledged with ``clt_init_received``
    like it.  Row ``i`` is an ``insert`` into ``sequence.table`` of
    ``dict(zip(columns, rows[i]))``.  ``versions[i]`` is the row's last-write-wins
    version ``[updated_at, clientId or null]``, or null when it is implied: the
    time is the row's own ``updated_at`` column and there is no author.
    """

    TYPE: ClassVar[MessageType] = MessageType.SRV_INIT_ROWS
    sequence: InitSequence = _wire("sequence", *_INIT_SEQ)
    columns: Sequence[str] = _wire("columns", _dec_columns, list)
    rows: Sequence[Sequence[JsonValue]] = _wire("rows", _dec_rows, list)
    versions: Sequence[Sequence[str | None] | None] = _wire(
        "versions", _dec_versions, _enc_versions
    )
    # Not on the wire: ``columns``, ``rows`` and ``versions`` already encoded
    # (``encode_init_rows_body``), then left empty here.  The server keeps a snapshot's
    # chunks encoded for the clients that join after (``server/snapshot_cache.py``) and
    # splices the same text into each session's frame, as live batches do.
    body_json: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.body_json is None:
            _check_row_shapes(self.columns, self.rows, self.versions)

    def changes(self) -> tuple[TableChange, ...]:
        """The rows as the ``insert`` changes ``srv_init_changes`` would carry."""
        return tuple(
            TableChange(
                f"{self.message_id}:{i}",
                self.sequence.table,
                Operation.INSERT,
                data,
                str(version[0] if version is not None else data["updated_at"]),
                None,
                version[1] if version is not None else None,
            )
            for i, (data, version) in enumerate(
                zip(
                    (dict(zip(self.columns, r, strict=True)) for r in self.rows),
                    self.versions,
                    strict=True,
                )
            )
        )


def _check_row_shapes(columns: Sequence[str], rows: Sequence[Any], versions: Sequence[Any]) -> None:
    """What ties the fields of ``srv_init_rows`` together: one version per row, one value
    per column in every row, and an implied version only where the row's ``updated_at``
    is a canonical time."""
    if len(versions) != len(rows):
        raise _invalid("versions", f"must have one entry per row ({len(rows)})")
    width = len(columns)
    if rows and set(map(len, rows)) != {width}:
        index = next(i for i, r in enumerate(rows) if len(r) != width)
        raise _invalid(f"rows[{index}]", f"must hold {width} values, one per column")
    if None not in versions:
        return
    if "updated_at" not in columns:
        index = versions.index(None)
        raise _invalid(f"versions[{index}]", "may only be null when a column is updated_at")
    at = list(columns).index("updated_at")
    implied = {r[at] for r, v in zip(rows, versions, strict=True) if v is None}
    if not all(type(s) is str and is_canonical_timestamp(s) for s in implied):
        index = next(
            i
            for i, (r, v) in enumerate(zip(rows, versions, strict=True))
            if v is None and not (type(r[at]) is str and is_canonical_timestamp(r[at]))
        )
        raise _invalid(f"versions[{index}]", "is null but the row's updated_at is not a time")


@dataclass(frozen=True, kw_only=True)
class SrvInitComplete(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_INIT_COMPLETE
    server_lsn: int = _wire("serverLSN", _dec_lsn, format_lsn)


@dataclass(frozen=True, kw_only=True)
class SrvCatchupChanges(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_CATCHUP_CHANGES
    changes: tuple[TableChange, ...] = _wire("changes", _dec_changes, _enc_changes)
    last_lsn: int = _wire("lastLSN", _dec_lsn, format_lsn)
    sequence: ChunkSequence = _wire("sequence", *_CHUNK_SEQ)


@dataclass(frozen=True, kw_only=True)
class SrvCatchupCompleted(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_CATCHUP_COMPLETED
    start_lsn: int = _wire("startLSN", _dec_lsn, format_lsn)
    final_lsn: int = _wire("finalLSN", _dec_lsn, format_lsn)
    change_count: int = _wire("changeCount", _dec_count)
    success: bool = _wire("success", _dec_bool, default=True)
    error: str | None = _wire("error", _dec_str, optional=True)


@dataclass(frozen=True, kw_only=True)
class SrvLiveChanges(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_LIVE_CHANGES
    changes: tuple[TableChange, ...] = _wire("changes", _dec_changes, _enc_changes)
    last_lsn: int = _wire("lastLSN", _dec_lsn, format_lsn)
    # Not on the wire: ``changes`` already encoded (``encode_changes``).  The server's
    # fan-out sends one batch to every live session; encoding it once and splicing
    # the text into each session's frame keeps that cost independent of the sessions.
    changes_json: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class SrvLsnUpdate(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_LSN_UPDATE
    lsn: int = _wire("lsn", _dec_lsn, format_lsn)


@dataclass(frozen=True, kw_only=True)
class SrvChangesReceived(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_CHANGES_RECEIVED
    change_ids: tuple[str, ...] = _wire("changeIds", _dec_id_list, list)


@dataclass(frozen=True, kw_only=True)
class SrvChangesApplied(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_CHANGES_APPLIED
    applied_changes: tuple[str, ...] = _wire("appliedChanges", _dec_id_list, list)
    success: bool = _wire("success", _dec_bool, default=True)
    error: str | None = _wire("error", _dec_str, optional=True)
    results: tuple[ChangeResult, ...] = _wire("results", _dec_results, _enc_results, default=())


@dataclass(frozen=True, kw_only=True)
class SrvHeartbeat(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_HEARTBEAT


@dataclass(frozen=True, kw_only=True)
class SrvError(Message):
    TYPE: ClassVar[MessageType] = MessageType.SRV_ERROR
    code: str = _wire("code", _dec_str)
    error: str = _wire("error", _dec_str)
    ref_message_id: str | None = _wire("refMessageId", _dec_str, optional=True)


@dataclass(frozen=True, kw_only=True)
class SrvTableChecksums(Message):
    """Extension: per-table checksums of the server's tables at ``lsn``."""

    TYPE: ClassVar[MessageType] = MessageType.SRV_TABLE_CHECKSUMS
    lsn: int = _wire("lsn", _dec_lsn, format_lsn)
    checksums: dict[str, str] = _wire("checksums", _dec_checksums, dict)


@dataclass(frozen=True, kw_only=True)
class SrvResyncStart(Message):
    """Extension: the answer to ``clt_resync_tables``; ``tables`` as read at ``lsn``."""

    TYPE: ClassVar[MessageType] = MessageType.SRV_RESYNC_START
    lsn: int = _wire("lsn", _dec_lsn, format_lsn)
    tables: tuple[str, ...] = _wire("tables", _dec_table_names, list)


@dataclass(frozen=True, kw_only=True)
class SrvResyncChanges(Message):
    """Extension: one chunk of a table re-sync, shaped like ``srv_init_changes``."""

    TYPE: ClassVar[MessageType] = MessageType.SRV_RESYNC_CHANGES
    changes: tuple[TableChange, ...] = _wire("changes", _dec_changes, _enc_changes)
    sequence: InitSequence = _wire("sequence", *_INIT_SEQ)


@dataclass(frozen=True, kw_only=True)
class SrvResyncComplete(Message):
    """Extension: every chunk of ``tables`` at ``lsn`` was sent (and acknowledged)."""

    TYPE: ClassVar[MessageType] = MessageType.SRV_RESYNC_COMPLETE
    lsn: int = _wire("lsn", _dec_lsn, format_lsn)
    tables: tuple[str, ...] = _wire("tables", _dec_table_names, list)


@dataclass(frozen=True, kw_only=True)
class CltInitReceived(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_INIT_RECEIVED
    table: str = _wire("table", _dec_name)
    chunk: int = _wire("chunk", _dec_count)


@dataclass(frozen=True, kw_only=True)
class CltInitProcessed(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_INIT_PROCESSED


@dataclass(frozen=True, kw_only=True)
class CltCatchupReceived(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_CATCHUP_RECEIVED
    chunk: int = _wire("chunk", _dec_count)
    lsn: int = _wire("lsn", _dec_lsn, format_lsn)


@dataclass(frozen=True, kw_only=True)
class CltChangesReceived(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_CHANGES_RECEIVED
    change_ids: tuple[str, ...] = _wire("changeIds", _dec_id_list, list)


@dataclass(frozen=True, kw_only=True)
class CltChangesApplied(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_CHANGES_APPLIED
    change_ids: tuple[str, ...] = _wire("changeIds", _dec_id_list, list)
    last_lsn: int = _wire("lastLSN", _dec_lsn, format_lsn)


@dataclass(frozen=True, kw_only=True)
class CltSendChanges(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_SEND_CHANGES
    changes: tuple[TableChange, ...] = _wire("changes", _dec_changes, _enc_changes)


@dataclass(frozen=True, kw_only=True)
class CltHeartbeat(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_HEARTBEAT
    lsn: int = _wire("lsn", _dec_lsn, format_lsn)
    active: bool = _wire("active", _dec_bool, default=True)


@dataclass(frozen=True, kw_only=True)
class CltError(Message):
    TYPE: ClassVar[MessageType] = MessageType.CLT_ERROR
    code: str = _wire("code", _dec_str)
    error: str = _wire("error", _dec_str)
    ref_message_id: str | None = _wire("refMessageId", _dec_str, optional=True)


@dataclass(frozen=True, kw_only=True)
class CltRequestChecksums(Message):
    """Extension: ask for ``srv_table_checksums`` at the client's current LSN."""

    TYPE: ClassVar[MessageType] = MessageType.CLT_REQUEST_CHECKSUMS
    tables: tuple[str, ...] = _wire("tables", _dec_id_list, list, default=())


@dataclass(frozen=True, kw_only=True)
class CltResyncTables(Message):
    """Extension: ask for a snapshot of ``tables`` only (repair after a checksum mismatch)."""

    TYPE: ClassVar[MessageType] = MessageType.CLT_RESYNC_TABLES
    tables: tuple[str, ...] = _wire("tables", _dec_table_names, list)


@dataclass(frozen=True, kw_only=True)
class CltResyncReceived(Message):
    """Extension: a ``srv_resync_changes`` chunk is staged (flow control, as for init)."""

    TYPE: ClassVar[MessageType] = MessageType.CLT_RESYNC_RECEIVED
    table: str = _wire("table", _dec_name)
    chunk: int = _wire("chunk", _dec_count)


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        SrvInitStart,
        SrvInitChanges,
        SrvInitComplete,
        SrvInitRows,
        SrvCatchupChanges,
        SrvCatchupCompleted,
        SrvLiveChanges,
        SrvLsnUpdate,
        SrvChangesReceived,
        SrvChangesApplied,
        SrvHeartbeat,
        SrvError,
        SrvTableChecksums,
        SrvResyncStart,
        SrvResyncChanges,
        SrvResyncComplete,
        CltInitReceived,
        CltInitProcessed,
        CltCatchupReceived,
        CltChangesReceived,
        CltChangesApplied,
        CltSendChanges,
        CltHeartbeat,
        CltError,
        CltRequestChecksums,
        CltResyncTables,
        CltResyncReceived,
    )
}

MAX_NESTING = 32
_SCALARS = frozenset({str, int, float, bool, type(None)})
_COMMON_WIRE_FIELDS = ("messageId", "timestamp", "clientId")


def _check_depth(value: Any, depth: int = 0) -> None:
    """Refuse nesting deeper than ``MAX_NESTING``; recurses into containers only (it runs
    over every value of every frame, so scalars must not cost a call each)."""
    if depth > MAX_NESTING:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"nesting deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return
    if depth == MAX_NESTING and items:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"nesting deeper than {MAX_NESTING} levels")
    if _SCALARS.issuperset(map(type, items)):  # a row's data: scalars only, checked in C
        return
    for item in items:
        if isinstance(item, dict | list):
            _check_depth(item, depth + 1)


def _parse(text: str | bytes) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    return raw


def _decode_parsed(raw: dict[str, Any], expect: str | None) -> tuple[type[Any], dict[str, Any]]:
    """The message class and its decoded field values (everything after the depth check)."""
    ref = raw.get("messageId") if isinstance(raw.get("messageId"), str) else None
    if "type" not in raw:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD,
            "missing required field 'type'",
            field="type",
            ref_message_id=ref,
        )
    type_name = raw["type"]
    try:
        message_type = MessageType(type_name)
    except ValueError:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {str(type_name)[:60]!r}",
            field="type",
            ref_message_id=ref,
        ) from None
    if expect is not None and not message_type.value.startswith(expect + "_"):
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"message type {message_type.value!r} is not sent by this side",
            field="type",
            ref_message_id=ref,
        )
    cls = MESSAGE_CLASSES[message_type]
    for common in _COMMON_WIRE_FIELDS:
        if common not in raw:
            raise ProtocolError(
                ErrorCode.MISSING_FIELD,
                f"missing required field '{common}'",
                field=common,
                ref_message_id=ref,
            )
    try:
        return cls, _decode_fields(cls, raw, "")
    except ProtocolError as exc:
        exc.ref_message_id = ref
        raise


def decode_message(text: str | bytes, *, expect: str | None = None) -> Message:
    """Parse one frame into its message dataclass.

    ``expect`` is ``"srv"`` or ``"clt"`` to refuse messages of the other side.
    Raises ``ProtocolError`` with a code and the offending field.
    """
    raw = _parse(text)
    _check_depth(raw)
    cls, values = _decode_parsed(raw, expect)
    try:
        result: Message = cls(**values)
    except ProtocolError as exc:  # checks across fields (``SrvInitRows``)
        exc.ref_message_id = values.get("message_id")
        raise
    return result


@dataclass(frozen=True, kw_only=True)
class InitChunkFrame:
    """An ``srv_init_changes`` frame whose changes are left undecoded (``decode_server_frame``).

    Why: the Sync Worker only routes a snapshot chunk to the Changes Worker, which
    decodes and validates every row anyway as it stages it (one ``json.loads`` of
    ``text``, column checks against the schema, bound values).  Building 2,500
    ``TableChange`` objects here and encoding them again to cross the MessageChannel
    was the largest cost of an initial sync.  The envelope is checked exactly as
    ``decode_message`` checks it; each change only for being an insert into
    ``sequence.table`` (what the Sync side itself relies on).
    """

    TYPE: ClassVar[MessageType] = MessageType.SRV_INIT_CHANGES
    client_id: str
    message_id: str
    timestamp: int
    sequence: InitSequence
    rows: int  # how many changes (or rows) the frame holds
    text: str = field(repr=False)  # the frame as received
    #: ``srv_init_rows`` for the compact chunk (extension), which the Changes side
    #: tells apart by its fields; the Sync side handles both kinds alike.
    kind: MessageType = MessageType.SRV_INIT_CHANGES

    @property
    def type(self) -> MessageType:
        return self.kind


def _plain_inserts(changes: list[Any], table: str) -> bool:
    """Whether every change passes ``TableChange.check_wire`` as an insert into ``table``
    with no ``lsn``: the usual snapshot chunk, checked field by field over the whole list
    with C-level builtins (no Python per row but one call per distinct time and author).
    False sends the chunk through the per-row checks, which name what is wrong.
    """
    try:
        return _plain_inserts_unguarded(changes, table)
    except TypeError:  # a list or an object where a string belongs: not hashable
        return False


def _plain_inserts_unguarded(changes: list[Any], table: str) -> bool:
    if not changes or set(map(type, changes)) != {dict}:
        return False
    get = partial(map, dict.get, changes)
    if set(get(repeat("table"))) != {table} or set(get(repeat("operation"))) != {"insert"}:
        return False
    if set(get(repeat("lsn"))) != {None}:
        return False
    ids = list(get(repeat("id")))
    if (
        set(map(type, ids)) != {str}
        or not 0 < min(map(len, ids)) <= max(map(len, ids)) <= MAX_ID_LENGTH
    ):
        return False
    datas: list[Any] = list(get(repeat("data")))
    if set(map(type, datas)) != {dict} or min(map(len, datas)) == 0:
        return False
    if not _SCALARS.issuperset(map(type, chain.from_iterable(map(dict.values, datas)))):
        return False
    stamps = set(get(repeat("updated_at")))
    if not all(type(s) is str and is_canonical_timestamp(s) for s in stamps):
        return False
    authors = set(get(repeat("clientId")))
    return all(a is None or (type(a) is str and 0 < len(a) <= MAX_ID_LENGTH) for a in authors)


def decode_server_frame(text: str) -> Message | InitChunkFrame:
    """``decode_message(text, expect="srv")``, except that a snapshot chunk stays text.

    The same frames are refused with the same errors; a chunk's changes are
    checked (``TableChange.check_wire``) but not built, and whether their columns
    and values fit the schema is the Changes side's to decide, as for any change.
    """
    raw = _parse(text)
    if raw.get("type") == MessageType.SRV_INIT_ROWS.value and type(raw.get("rows")) is list:
        return _decode_rows_frame(raw, text)
    changes = raw.get("changes")
    if raw.get("type") != MessageType.SRV_INIT_CHANGES.value or type(changes) is not list:
        _check_depth(raw)
        cls, values = _decode_parsed(raw, "srv")
        result: Message = cls(**values)
        return result
    envelope = {**raw, "changes": []}
    _check_depth(envelope)
    _, values = _decode_parsed(envelope, "srv")
    sequence: InitSequence = values["sequence"]
    table = sequence.table
    ref = values.get("message_id")
    if not _plain_inserts(changes, table):
        for index, item in enumerate(changes):  # find the change to refuse, and why
            try:
                TableChange.check_wire(item, f"changes[{index}]", 2)
            except ProtocolError as exc:
                exc.ref_message_id = ref
                raise
            if item["operation"] != "insert" or item["table"] != table:
                raise ProtocolError(
                    ErrorCode.INVALID_FIELD,
                    f"field 'changes[{index}]' must be an insert into {table!r}",
                    field=f"changes[{index}]",
                    ref_message_id=ref,
                )
    return InitChunkFrame(
        client_id=values["client_id"],
        message_id=values.get("message_id", ""),
        timestamp=values.get("timestamp", 0),
        sequence=sequence,
        rows=len(changes),
        text=text,
    )


def _decode_rows_frame(raw: dict[str, Any], text: str) -> InitChunkFrame:
    """``srv_init_rows`` checked as ``decode_message`` checks it, its rows left as text.

    The usual chunk (every row a list of scalars, every version null) is checked with
    C-level builtins over the whole list; explicit versions are checked one by one, and
    the field decoders run per row only to name what is wrong.
    """
    rows, versions = raw["rows"], raw.get("versions")
    envelope = {**raw, "rows": [[]]}
    if "versions" in raw:  # a missing one is refused as ``decode_message`` refuses it
        envelope["versions"] = []
    _check_depth(envelope)
    _, values = _decode_parsed(envelope, "srv")
    ref = values.get("message_id")
    try:
        if not rows:
            raise _invalid("rows", "must be a non-empty list of rows")
        if not (
            set(map(type, rows)) == {list}
            and _SCALARS.issuperset(map(type, chain.from_iterable(rows)))
        ):
            _dec_rows(rows, "rows")
        if type(versions) is not list or not set(map(type, versions)) <= {type(None)}:
            versions = _dec_versions(versions, "versions")
        _check_row_shapes(values["columns"], rows, versions)
    except ProtocolError as exc:
        exc.ref_message_id = ref
        raise
    return InitChunkFrame(
        client_id=values["client_id"],
        message_id=values.get("message_id", ""),
        timestamp=values.get("timestamp", 0),
        sequence=values["sequence"],
        rows=len(rows),
        text=text,
        kind=MessageType.SRV_INIT_ROWS,
    )


def _wire_json(value: Any) -> str:
    """JSON text as every frame is written: compact, UTF-8 as it is, no NaN or infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_changes(changes: Sequence[TableChange]) -> str:
    """A ``changes`` array as JSON text, exactly as ``encode_message`` writes it."""
    return _wire_json(_enc_changes(tuple(changes)))


def encode_init_rows_body(
    columns: Sequence[str],
    rows: Sequence[Sequence[JsonValue]],
    versions: Sequence[Sequence[str | None] | None],
) -> str:
    """The ``columns``, ``rows`` and ``versions`` members of an ``srv_init_rows`` frame as
    JSON text (no braces), exactly as ``encode_message`` writes them; checked as the
    message's constructor checks them."""
    _check_row_shapes(columns, rows, versions)
    return (
        f'"columns":{_wire_json(list(columns))},"rows":{_wire_json(rows)},'
        f'"versions":{_wire_json(_enc_versions(versions))}'
    )


def _spliced(message: Message, extra: dict[str, Any], tail: str) -> str:
    """``encode_message`` for a message whose large fields are already encoded: its common
    fields and ``extra`` as JSON, then ``tail`` (the encoded members) before the brace."""
    head = json.dumps(
        {
            "type": message.TYPE.value,
            "clientId": message.client_id,
            "messageId": message.message_id or new_message_id(),
            "timestamp": message.timestamp or int(time.time() * 1000),
            **extra,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f"{head[:-1]},{tail}}}"


def encode_message(message: Message) -> str:
    """The wire text of ``message`` (fills ``messageId`` and ``timestamp`` when unset)."""
    if isinstance(message, SrvLiveChanges) and message.changes_json is not None:
        last = json.dumps(format_lsn(message.last_lsn))
        return _spliced(message, {}, f'"changes":{message.changes_json},"lastLSN":{last}')
    if isinstance(message, SrvInitRows) and message.body_json is not None:
        sequence = _encode_fields(message.sequence)
        return _spliced(message, {"sequence": sequence}, message.body_json)
    body: dict[str, Any] = {"type": message.TYPE.value}
    body.update(_encode_fields(message))
    if not body.get("messageId"):
        body["messageId"] = new_message_id()
    if not body.get("timestamp"):
        body["timestamp"] = int(time.time() * 1000)
    return _wire_json(body)


def make(cls: type[M], client_id: str, now_ms: int, **values: Any) -> M:
    """Build a message with fresh common fields: ``make(SrvHeartbeat, cid, now)``."""
    return cls(client_id=client_id, message_id=new_message_id(), timestamp=now_ms, **values)


def results_to_wire(results: Sequence[ChangeResult]) -> list[dict[str, Any]]:
    """``ChangeResult``s as JSON-able dicts (the ``results`` field's encoding)."""
    return _enc_results(tuple(results))


def results_from_wire(raw: Any, path: str = "results") -> tuple[ChangeResult, ...]:
    """Validated ``ChangeResult``s from JSON-able dicts; raises ``ProtocolError``."""
    return _dec_results(raw, path)
