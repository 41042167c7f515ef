"""The wire codec: every message round-trips; every refusal names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidesync.worker_sync.shared.message_types import (
    MAX_NESTING,
    MESSAGE_CLASSES,
    ChangeResult,
    ChangeStatus,
    ChunkSequence,
    CltCatchupReceived,
    CltChangesApplied,
    CltChangesReceived,
    CltError,
    CltHeartbeat,
    CltInitProcessed,
    CltInitReceived,
    CltRequestChecksums,
    CltResyncReceived,
    CltResyncTables,
    CltSendChanges,
    ErrorCode,
    InitChunkFrame,
    InitSequence,
    Message,
    MessageType,
    Operation,
    ProtocolError,
    SrvCatchupChanges,
    SrvCatchupCompleted,
    SrvChangesApplied,
    SrvChangesReceived,
    SrvError,
    SrvHeartbeat,
    SrvInitChanges,
    SrvInitComplete,
    SrvInitRows,
    SrvInitStart,
    SrvLiveChanges,
    SrvLsnUpdate,
    SrvResyncChanges,
    SrvResyncComplete,
    SrvResyncStart,
    SrvTableChecksums,
    TableChange,
    decode_message,
    decode_server_frame,
    encode_message,
    make,
)

CID = "client-a"
NOW = 1_790_000_000_000

CHANGE = TableChange(
    id="c1",
    table="tasks",
    operation=Operation.UPDATE,
    data={"id": "t1", "title": "x", "done": True, "n": 1.5, "gone": None},
    updated_at="2026-11-25T10:00:00.123Z",
    lsn=0x1_0000_001F,
    client_id="client-b",
)
INSERT = TableChange.from_wire({**CHANGE.to_wire(), "operation": "insert"})
LOCAL_CHANGE = TableChange(
    id="c2",
    table="tasks",
    operation=Operation.DELETE,
    data={"id": "t2"},
    updated_at="2026-11-25T10:00:00.124Z",
)

EXAMPLES: dict[type[Message], dict[str, Any]] = {
    SrvInitStart: {"server_lsn": 31},
    SrvInitChanges: {"changes": (CHANGE,), "sequence": InitSequence("tasks", 1, 3)},
    SrvInitComplete: {"server_lsn": 31},
    SrvInitRows: {
        "sequence": InitSequence("tasks", 1, 3),
        "columns": ("id", "title", "updated_at"),
        "rows": (("t1", "a", "2026-11-25T10:00:00.000Z"), ("t2", None, "2026-11-25T10:00:01.000Z")),
        "versions": (None, ("2026-11-25T10:00:02.000Z", "author-1")),
    },
    SrvCatchupChanges: {"changes": (CHANGE,), "last_lsn": 40, "sequence": ChunkSequence(2, 5)},
    SrvCatchupCompleted: {
        "start_lsn": 1,
        "final_lsn": 40,
        "change_count": 9,
        "success": False,
        "error": "x",
    },
    SrvLiveChanges: {"changes": (CHANGE, LOCAL_CHANGE), "last_lsn": 41},
    SrvLsnUpdate: {"lsn": 42},
    SrvChangesReceived: {"change_ids": ("c1", "c2")},
    SrvChangesApplied: {
        "applied_changes": ("c1",),
        "results": (
            ChangeResult(id="c1", status=ChangeStatus.APPLIED, lsn=43),
            ChangeResult(id="c2", status=ChangeStatus.SKIPPED, row={"id": "t2", "title": "s"}),
            ChangeResult(id="c3", status=ChangeStatus.SKIPPED, row_deleted=True),
            ChangeResult(id="c4", status=ChangeStatus.REJECTED, reason="unknown column"),
        ),
    },
    SrvHeartbeat: {},
    SrvError: {"code": "out_of_phase", "error": "nope", "ref_message_id": "m-1"},
    SrvTableChecksums: {"lsn": 7, "checksums": {"tasks": "abc"}},
    CltInitReceived: {"table": "tasks", "chunk": 3},
    CltInitProcessed: {},
    CltCatchupReceived: {"chunk": 2, "lsn": 40},
    CltChangesReceived: {"change_ids": ("c1",)},
    CltChangesApplied: {"change_ids": ("c1",), "last_lsn": 41},
    CltSendChanges: {"changes": (LOCAL_CHANGE,)},
    CltHeartbeat: {"lsn": 41, "active": False},
    CltError: {"code": "invalid_json", "error": "bad"},
    CltRequestChecksums: {"tables": ("tasks",)},
    SrvResyncStart: {"lsn": 50, "tables": ("projects", "tasks")},
    SrvResyncChanges: {"changes": (CHANGE,), "sequence": InitSequence("tasks", 2, 3)},
    SrvResyncComplete: {"lsn": 50, "tables": ("projects", "tasks")},
    CltResyncTables: {"tables": ("tasks",)},
    CltResyncReceived: {"table": "tasks", "chunk": 2},
}


SEQ_TASKS = {"table": "tasks", "chunk": 1, "total": 1}


def wire(message_type: str, **fields: Any) -> str:
    body = {"type": message_type, "messageId": "m-1", "timestamp": NOW, "clientId": CID}
    body.update(fields)
    return json.dumps(body)


def refusal(text: str, expect: str | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_message(text, expect=expect)
    return info.value


def test_examples_cover_every_message_class() -> None:
    assert set(EXAMPLES) == set(MESSAGE_CLASSES.values())


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.TYPE.value)
def test_every_message_round_trips(cls: type[Message]) -> None:
    message = make(cls, CID, NOW, **EXAMPLES[cls])
    text = encode_message(message)
    assert json.loads(text)["type"] == cls.TYPE.value
    assert decode_message(text) == message


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.TYPE.value)
def test_each_side_only_accepts_its_peer_messages(cls: type[Message]) -> None:
    text = encode_message(make(cls, CID, NOW, **EXAMPLES[cls]))
    side = cls.TYPE.value.split("_")[0]
    other = "clt" if side == "srv" else "srv"
    assert decode_message(text, expect=side).type is cls.TYPE
    assert refusal(text, expect=other).code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.TYPE.value)
def test_server_frames_decode_as_decode_message_does_but_init_chunks_stay_text(
    cls: type[Message],
) -> None:
    values = EXAMPLES[cls]
    if cls is SrvInitChanges:  # a snapshot chunk holds inserts into its table
        values = {**values, "changes": (INSERT,)}
    message = make(cls, CID, NOW, **values)
    text = encode_message(message)
    if not cls.TYPE.value.startswith("srv_"):
        with pytest.raises(ProtocolError) as info:
            decode_server_frame(text)
        assert info.value.code is ErrorCode.UNKNOWN_TYPE
        return
    decoded = decode_server_frame(text)
    if cls is SrvInitRows:
        assert isinstance(decoded, InitChunkFrame) and isinstance(message, SrvInitRows)
        assert decoded.type is MessageType.SRV_INIT_ROWS and decoded.text == text
        assert (decoded.sequence, decoded.rows) == (message.sequence, len(message.rows))
        return
    if cls is not SrvInitChanges:
        assert decoded == message
        return
    assert isinstance(decoded, InitChunkFrame) and isinstance(message, SrvInitChanges)
    assert decoded.type is MessageType.SRV_INIT_CHANGES and decoded.text == text
    assert (decoded.message_id, decoded.timestamp, decoded.client_id) == (
        message.message_id,
        message.timestamp,
        message.client_id,
    )
    assert (decoded.sequence, decoded.rows) == (message.sequence, len(message.changes))


def _rows_frame(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "srv_init_rows",
        "clientId": CID,
        "messageId": "m-rows",
        "timestamp": NOW,
        "sequence": {"table": "tasks", "chunk": 1, "total": 1},
        "columns": ["id", "done", "updated_at"],
        "rows": [["t1", 0, "2026-11-25T10:00:00.000Z"], ["t2", 1, "2026-11-25T10:00:00.000Z"]],
        "versions": [None, ["2026-11-25T10:00:05.000Z", None]],
    }
    body.update(fields)
    return body


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"columns": []}, "columns"),
        ({"columns": "id"}, "columns"),
        ({"columns": ["id", "id", "updated_at"]}, "columns"),
        ({"columns": ["id", 5, "updated_at"]}, "columns[1]"),
        ({"columns": ["id", "", "updated_at"]}, "columns[1]"),
        ({"rows": []}, "rows"),
        ({"rows": {"0": []}}, "rows"),
        ({"rows": [["t1", 0, "2026-11-25T10:00:00.000Z"], "t2"]}, "rows[1]"),
        ({"rows": [["t1", [0], "2026-11-25T10:00:00.000Z"]], "versions": [None]}, "rows[0][1]"),
        (
            {"rows": [["t1", {"a": 1}, "2026-11-25T10:00:00.000Z"]], "versions": [None]},
            "rows[0][1]",
        ),
        ({"rows": [["t1", 0]], "versions": [["2026-11-25T10:00:05.000Z", None]]}, "rows[0]"),
        (
            {"rows": [["t1", 0, "x", 1]], "versions": [["2026-11-25T10:00:05.000Z", None]]},
            "rows[0]",
        ),
        ({"versions": [None]}, "versions"),
        ({"versions": None}, "versions"),
        ({"versions": [None, "2026-11-25T10:00:05.000Z"]}, "versions[1]"),
        ({"versions": [None, ["2026-11-25T10:00:05.000Z"]]}, "versions[1]"),
        ({"versions": [None, ["yesterday", None]]}, "versions[1][0]"),
        ({"versions": [None, ["2026-11-25 10:00:05", None]]}, "versions[1][0]"),
        ({"versions": [None, ["2026-11-25T10:00:05.000Z", ""]]}, "versions[1][1]"),
        ({"versions": [None, ["2026-11-25T10:00:05.000Z", 7]]}, "versions[1][1]"),
        ({"rows": [["t1", 0, "soon"]], "versions": [None]}, "versions[0]"),
        ({"rows": [["t1", 0, None]], "versions": [None]}, "versions[0]"),
        ({"columns": ["id", "done", "title"]}, "versions[0]"),  # null needs an updated_at column
        ({"sequence": {"table": "tasks", "chunk": "1", "total": 1}}, "sequence.chunk"),
    ],
)
def test_bad_init_rows_frames_are_refused_naming_the_field(
    fields: dict[str, Any], path: str
) -> None:
    """Every check of ``srv_init_rows``, on the bulk path (``decode_server_frame``) and the
    generic one (``decode_message``) alike: same code, same field, the frame's messageId."""
    text = json.dumps(_rows_frame(**fields))
    for decode in (decode_server_frame, lambda t: decode_message(t, expect="srv")):
        with pytest.raises(ProtocolError) as info:
            decode(text)
        assert info.value.code is ErrorCode.INVALID_FIELD, info.value.message
        assert info.value.field == path, info.value.message
        assert info.value.ref_message_id == "m-rows"


@pytest.mark.parametrize("name", ["columns", "rows", "versions", "sequence"])
def test_an_init_rows_frame_missing_a_field_is_refused_naming_it(name: str) -> None:
    frame = _rows_frame()
    del frame[name]
    for decode in (decode_server_frame, lambda t: decode_message(t, expect="srv")):
        with pytest.raises(ProtocolError) as info:
            decode(json.dumps(frame))
        assert (info.value.code, info.value.field) == (ErrorCode.MISSING_FIELD, name)


def test_init_rows_frame_with_explicit_versions_only_needs_no_updated_at_column() -> None:
    frame = _rows_frame(
        columns=["id", "done"],
        rows=[["t1", 0], ["t2", True]],
        versions=[["2026-11-25T10:00:05.000Z", None], ["2026-11-25T10:00:06.000Z", "a1"]],
    )
    decoded = decode_server_frame(json.dumps(frame))
    assert isinstance(decoded, InitChunkFrame) and decoded.rows == 2
    message = decode_message(json.dumps(frame))
    assert isinstance(message, SrvInitRows)
    assert [(c.data, c.updated_at, c.client_id) for c in message.changes()] == [
        ({"id": "t1", "done": 0}, "2026-11-25T10:00:05.000Z", None),
        ({"id": "t2", "done": True}, "2026-11-25T10:00:06.000Z", "a1"),
    ]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"id": ""}, ErrorCode.INVALID_FIELD),
        ({"updated_at": "yesterday"}, ErrorCode.INVALID_FIELD),
        ({"lsn": "nope"}, ErrorCode.INVALID_FIELD),
        ({"data": {"id": [[[]]]}}, None),  # nested values are the Changes side's to refuse
        ({"lsn": "0/5"}, None),  # not the usual shape, still a valid change
        ({"clientId": None}, None),
        ({"clientId": ""}, ErrorCode.INVALID_FIELD),
        ({"data": {}}, ErrorCode.INVALID_FIELD),
        ({"updated_at": 5}, ErrorCode.INVALID_FIELD),
        ({"table": ["tasks"]}, ErrorCode.INVALID_FIELD),  # not hashable: the bulk check
        ({"clientId": {"a": 1}}, ErrorCode.INVALID_FIELD),
        ({"operation": "delete"}, ErrorCode.INVALID_FIELD),
        ({"table": "projects"}, ErrorCode.INVALID_FIELD),
    ],
)
def test_an_init_chunk_refuses_what_decode_message_refuses(
    change: dict[str, Any], code: ErrorCode | None
) -> None:
    item = {**INSERT.to_wire(), **change}
    text = wire("srv_init_changes", changes=[INSERT.to_wire(), item], sequence=SEQ_TASKS)
    if code is None:
        assert isinstance(decode_server_frame(text), InitChunkFrame)
        return
    with pytest.raises(ProtocolError) as info:
        decode_server_frame(text)
    assert info.value.code is code and info.value.field is not None
    assert info.value.field.startswith("changes[1]") and info.value.ref_message_id == "m-1"


def test_an_init_chunk_nested_too_deep_is_refused_as_decode_message_refuses_it() -> None:
    nested: Any = 1
    for _ in range(MAX_NESTING):
        nested = [nested]
    item = {**INSERT.to_wire(), "data": {"id": "x", "deep": nested}}
    text = wire("srv_init_changes", changes=[item], sequence=SEQ_TASKS)
    assert refusal(text).code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError) as info:
        decode_server_frame(text)
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_lsn_and_wire_names_follow_the_protocol() -> None:
    text = encode_message(make(SrvLiveChanges, CID, NOW, **EXAMPLES[SrvLiveChanges]))
    raw = json.loads(text)
    assert raw["lastLSN"] == "0/29"
    assert raw["changes"][0]["lsn"] == "1/1F"
    assert raw["changes"][0]["clientId"] == "client-b"
    assert "lsn" not in raw["changes"][1]
    assert set(raw) == {"type", "messageId", "timestamp", "clientId", "changes", "lastLSN"}


def test_deleted_row_travels_as_null_and_absent_row_is_omitted() -> None:
    text = encode_message(make(SrvChangesApplied, CID, NOW, **EXAMPLES[SrvChangesApplied]))
    results = json.loads(text)["results"]
    assert results[2]["row"] is None
    assert "row" not in results[0]


def test_encode_fills_message_id_and_timestamp() -> None:
    raw = json.loads(encode_message(SrvHeartbeat(client_id=CID)))
    assert raw["messageId"] and raw["timestamp"] > 0


def test_timestamps_in_changes_are_normalized() -> None:
    change = {
        "id": "c",
        "table": "t",
        "operation": "insert",
        "data": {"id": 1},
        "updated_at": "2026-11-25T12:00:00+02:00",
    }
    msg = decode_message(wire("clt_send_changes", changes=[change]))
    assert isinstance(msg, CltSendChanges)
    assert msg.changes[0].updated_at == "2026-11-25T10:00:00.000Z"


def test_invalid_json_is_refused() -> None:
    assert refusal("{nope").code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize("text", ["[]", "3", '"x"'])
def test_a_frame_must_be_an_object(text: str) -> None:
    assert refusal(text).code is ErrorCode.INVALID_MESSAGE


def test_deep_nesting_is_refused() -> None:
    deep: Any = {}
    for _ in range(40):
        deep = {"x": deep}
    assert refusal(wire("srv_heartbeat", extra=deep)).code is ErrorCode.INVALID_MESSAGE


def test_missing_type_names_the_field() -> None:
    error = refusal(json.dumps({"messageId": "m-9"}))
    assert (error.code, error.field, error.ref_message_id) == (
        ErrorCode.MISSING_FIELD,
        "type",
        "m-9",
    )


def test_unknown_type_names_the_field() -> None:
    error = refusal(wire("srv_bogus"))
    assert (error.code, error.field) == (ErrorCode.UNKNOWN_TYPE, "type")


@pytest.mark.parametrize("common", ["messageId", "timestamp", "clientId"])
def test_missing_common_field_is_named(common: str) -> None:
    raw = json.loads(wire("srv_heartbeat"))
    del raw[common]
    error = refusal(json.dumps(raw))
    assert (error.code, error.field) == (ErrorCode.MISSING_FIELD, common)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (wire("srv_lsn_update"), "lsn"),
        (wire("srv_init_changes", changes=[]), "sequence"),
        (
            wire("srv_init_changes", changes=[], sequence={"table": "t", "chunk": 1}),
            "sequence.total",
        ),
        (
            wire(
                "clt_send_changes",
                changes=[{"id": "c", "table": "t", "operation": "insert", "data": {"id": 1}}],
            ),
            "changes[0].updated_at",
        ),
    ],
)
def test_missing_field_is_named_with_its_path(text: str, field: str) -> None:
    error = refusal(text)
    assert (error.code, error.field, error.ref_message_id) == (
        ErrorCode.MISSING_FIELD,
        field,
        "m-1",
    )
    assert field in error.message


GOOD_CHANGE = {
    "id": "c",
    "table": "t",
    "operation": "insert",
    "data": {"id": 1},
    "updated_at": "2026-11-25T10:00:00.000Z",
}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (wire("srv_lsn_update", lsn="12"), "lsn"),
        (wire("srv_lsn_update", lsn=12), "lsn"),
        (wire("srv_heartbeat", timestamp=-1), "timestamp"),
        (wire("srv_heartbeat", timestamp="now"), "timestamp"),
        (wire("srv_heartbeat", clientId=""), "clientId"),
        (wire("srv_heartbeat", clientId="x" * 200), "clientId"),
        (wire("srv_changes_received", changeIds="c1"), "changeIds"),
        (wire("srv_changes_received", changeIds=["c1", 2]), "changeIds[1]"),
        (wire("clt_changes_applied", changeIds=["c1", ""], lastLSN="0/1"), "changeIds[1]"),
        (wire("clt_changes_applied", changeIds=["c", "x" * 129], lastLSN="0/1"), "changeIds[1]"),
        (wire("clt_changes_applied", changeIds=[None], lastLSN="0/1"), "changeIds[0]"),
        (wire("clt_heartbeat", lsn="0/1", active="yes"), "active"),
        (wire("clt_init_received", table="t", chunk=True), "chunk"),
        (
            wire("clt_send_changes", changes=[{**GOOD_CHANGE, "operation": "upsert"}]),
            "changes[0].operation",
        ),
        (wire("clt_send_changes", changes=[{**GOOD_CHANGE, "data": {}}]), "changes[0].data"),
        (
            wire("clt_send_changes", changes=[GOOD_CHANGE, {**GOOD_CHANGE, "data": [1]}]),
            "changes[1].data",
        ),
        (
            wire("clt_send_changes", changes=[{**GOOD_CHANGE, "updated_at": "soon"}]),
            "changes[0].updated_at",
        ),
        (wire("clt_send_changes", changes=[{**GOOD_CHANGE, "lsn": "x"}]), "changes[0].lsn"),
        (
            wire(
                "srv_changes_applied", appliedChanges=[], results=[{"id": "c", "status": "maybe"}]
            ),
            "results[0].status",
        ),
        (
            wire("srv_catchup_completed", startLSN="0/0", finalLSN="0/1", changeCount=-1),
            "changeCount",
        ),
    ],
)
def test_invalid_field_is_named_with_its_path(text: str, field: str) -> None:
    error = refusal(text)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, field)
    assert field in error.message


@pytest.mark.parametrize("ids", [[], ["c1"], [f"c{i}" for i in range(500)], ["x" * 128]])
def test_an_id_list_decodes_to_the_same_ids(ids: list[str]) -> None:
    msg = decode_message(wire("clt_changes_applied", changeIds=ids, lastLSN="0/1"))
    assert isinstance(msg, CltChangesApplied) and msg.change_ids == tuple(ids)


def test_every_message_type_has_a_class() -> None:
    assert set(MESSAGE_CLASSES) == set(MessageType)


@pytest.mark.parametrize(
    "tables",
    [[], "tasks", ["tasks", "tasks"], ["tasks", ""], ["tasks", 7], ["t"] * 257],
    ids=["empty", "not-a-list", "twice", "empty-name", "number", "too-many"],
)
def test_a_table_resync_request_must_name_distinct_tables(tables: Any) -> None:
    error = refusal(wire("clt_resync_tables", tables=tables), expect="clt")
    assert error.code is ErrorCode.INVALID_FIELD and error.field is not None
    assert error.field.startswith("tables")
