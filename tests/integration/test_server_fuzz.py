"""Hypothesis fuzzing of the REAL server process over a raw WebSocket (issue 5, "Bad input").

One server subprocess (demo schema, seeded with the demo data) serves the whole
module; each property talks to it through a hand-written JSON client that shares
no code with tidesync's own client.  Every fuzzed frame is followed by a
*probe*: a ``clt_send_changes`` of one change to a table that does not exist,
with a fresh id.  Everything the server sends before the probe's
``srv_changes_received`` is its answer to the fuzzed frame, and the probe's own
``rejected`` result proves the connection is still usable.

For frames that are invalid by construction the answer must be exactly one
``srv_error`` (not ``internal``, not ``rate_limited``: the input itself was
judged), or, for changes, a ``srv_changes_applied`` whose every result is
``rejected`` with a reason; and the server's data must be unchanged: app-table
checksums, the history's last LSN and the applied-change ledger are equal before
and after.  At the end of the module the process is alive, ``/api/health``
answers, ``PRAGMA integrity_check`` is ``ok`` and the log has no traceback.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from tests.helpers.json_strategies import json_strategies
from tests.helpers.server_process import ServerHandle, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tidesync.checksums import table_checksum
from tidesync.schema import Schema

TIMEOUT = 10.0
MAX_FRAME = 1 << 20
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCHEMA = Schema.demo()
CLIENT_TYPES = [
    "clt_init_received",
    "clt_init_processed",
    "clt_catchup_received",
    "clt_changes_received",
    "clt_changes_applied",
    "clt_send_changes",
    "clt_heartbeat",
    "clt_error",
    "clt_request_checksums",
    "clt_resync_tables",
    "clt_resync_received",
]
JUDGED = {  # error codes that say the input itself was looked at and refused
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "missing_field",
    "invalid_field",
    "out_of_phase",
    "frame_too_large",
}
OPTIONAL_FIELDS = {"refMessageId", "active", "tables"}  # absent is fine; not "wrong type"
SQL_NAMES = [
    "id; DROP TABLE tasks",
    "id; DROP TABLE tasks; --",
    'title"',
    '"title"',
    "title'",
    "x' OR '1'='1",
    "[done]",
    "`done`",
    "done)",
    "done, updated_at",
    "sqlite_master",
    "_ts_change_history",
    "_ts_context",
    "tasks--",
    "main.tasks",
    "temp.x",
    "tasks WHERE 1",
    "",
    "\x00",
    "ta\x00sks",
    "TASKS ",
    "ID",
]


# --- the raw client -------------------------------------------------------------------------


def _frame(client_id: str, type_: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "messageId": str(uuid.uuid4()),
        "timestamp": 1_790_000_000_000,
        "clientId": client_id,
        **fields,
    }


def _change(table: str, operation: str, data: Any, **extra: Any) -> dict[str, Any]:
    body = {
        "id": str(uuid.uuid4()),
        "table": table,
        "operation": operation,
        "data": data,
        "updated_at": "2031-01-01T00:00:00.000Z",
    }
    body.update(extra)
    return body


@dataclass
class Answer:
    messages: list[dict[str, Any]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "srv_error"]

    @property
    def applied(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "srv_changes_applied"]


class Raw:
    """One live connection of a hand-written client."""

    def __init__(self, server: ServerHandle) -> None:
        self.client_id = f"fuzz-{uuid.uuid4()}"
        lsn = server.health()["lsn"]
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(
                f"{server.ws_url}?clientId={self.client_id}&lsn={lsn}",
                max_size=None,
                open_timeout=TIMEOUT,
            )
        )
        first = self.recv()
        assert first["type"] == "srv_catchup_completed", first

    def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=TIMEOUT))
        return message

    def exchange(self, frame: str | bytes) -> Answer:
        """Send ``frame`` then the probe; return what answered ``frame`` (probe checked)."""
        probe = _change("no_such_table_probe", "insert", {"id": "probe"})
        self.ws.send(frame)
        self.ws.send(json.dumps(_frame(self.client_id, "clt_send_changes", changes=[probe])))
        before_probe: list[dict[str, Any]] = []
        while True:
            message = self.recv()
            if message["type"] == "srv_changes_received" and message["changeIds"] == [probe["id"]]:
                break
            if message["type"] not in ("srv_lsn_update", "srv_live_changes", "srv_heartbeat"):
                before_probe.append(message)
        while True:
            message = self.recv()
            if message["type"] == "srv_changes_applied" and any(
                r["id"] == probe["id"] for r in message["results"]
            ):
                (result,) = message["results"]
                assert result["status"] == "rejected" and result.get("reason"), result
                return Answer(before_probe)
            if message["type"] not in ("srv_lsn_update", "srv_live_changes", "srv_heartbeat"):
                raise AssertionError(f"unexpected message after the probe: {message}")

    def close(self) -> None:
        self._stack.close()


# --- the server's state ---------------------------------------------------------------------


def _state(server: ServerHandle) -> tuple[Any, ...]:
    """What must not move when a frame is refused: tables, last LSN, applied-change ledger."""
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        conn.execute("BEGIN")
        cursor = conn.cursor()
        sums = tuple(table_checksum(cursor, SCHEMA.tables[n]) for n in SCHEMA.order)
        lsn = conn.execute("SELECT COALESCE(max(lsn), 0) FROM _ts_change_history").fetchone()[0]
        ledger = conn.execute("SELECT count(*) FROM _ts_applied_changes").fetchone()[0]
        conn.execute("COMMIT")
    return sums, lsn, ledger


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("fuzz-server"), seed_demo=True)
    yield handle
    try:
        assert handle.running, "the server process died"
        assert handle.health()["status"] == "ok"
        with contextlib.closing(sqlite3.connect(handle.db_path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert "Traceback" not in handle.log_text(), handle.log_text()[-5000:]
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def raw(fuzz_server: ServerHandle) -> Iterator[Raw]:
    client = Raw(fuzz_server)
    yield client
    client.close()


def _assert_refused(server: ServerHandle, raw: Raw, frame: str | bytes) -> Answer:
    """``frame`` is invalid: one judged ``srv_error`` (or all changes rejected), data unchanged."""
    before = _state(server)
    answer = raw.exchange(frame)
    if answer.applied:
        (applied,) = answer.applied
        assert applied["appliedChanges"] == [], applied
        for result in applied["results"]:
            assert result["status"] == "rejected" and result.get("reason"), result
    else:
        assert len(answer.errors) == 1, answer.messages
        assert answer.errors[0]["code"] in JUDGED, answer.errors[0]
    assert _state(server) == before, "a refused frame changed the server's data"
    return answer


# --- strategies -----------------------------------------------------------------------------

json_scalars, json_values = json_strategies(int_bits=80)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _templates(client_id: str) -> list[dict[str, Any]]:
    """One valid frame of every client message type (each has its phase-correct shape)."""
    good = _change("projects", "update", {"id": "fuzz-none", "name": "x"})
    return [
        _frame(client_id, "clt_init_received", table="tasks", chunk=1),
        _frame(client_id, "clt_init_processed"),
        _frame(client_id, "clt_catchup_received", chunk=1, lsn="0/1"),
        _frame(client_id, "clt_changes_received", changeIds=["a"]),
        _frame(client_id, "clt_changes_applied", changeIds=["a"], lastLSN="0/1"),
        _frame(client_id, "clt_send_changes", changes=[good]),
        _frame(client_id, "clt_heartbeat", lsn="0/1", active=True),
        _frame(client_id, "clt_error", code="x", error="y", refMessageId="z"),
        _frame(client_id, "clt_request_checksums", tables=["tasks"]),
        _frame(client_id, "clt_resync_tables", tables=["tasks", "projects"]),
        _frame(client_id, "clt_resync_received", table="tasks", chunk=1),
    ]


# --- properties -----------------------------------------------------------------------------


@FUZZ
@given(frame=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_frames_that_are_not_json_objects_get_srv_error_and_change_nothing(
    fuzz_server: ServerHandle, raw: Raw, frame: str | bytes
) -> None:
    try:
        parsed = json.loads(frame)
    except ValueError:
        parsed = None
    assume(not isinstance(parsed, dict))
    answer = _assert_refused(fuzz_server, raw, frame)
    assert answer.errors[0]["code"] in ("invalid_json", "invalid_message")


@FUZZ
@given(
    body=st.one_of(
        json_values.filter(lambda v: not isinstance(v, dict)),
        st.dictionaries(st.text(max_size=12), json_values, max_size=5),
        st.fixed_dictionaries(
            {
                "type": st.one_of(
                    st.sampled_from(["srv_heartbeat", "srv_error", "srv_live_changes", "clt_"]),
                    st.text(max_size=20),
                    json_values,
                ),
                "messageId": st.uuids().map(str),
                "timestamp": st.integers(0, 1 << 42),
            }
        ),
    )
)
def test_json_that_is_no_client_message_gets_srv_error_and_changes_nothing(
    fuzz_server: ServerHandle, raw: Raw, body: Any
) -> None:
    assume(not (isinstance(body, dict) and body.get("type") in CLIENT_TYPES))
    _assert_refused(fuzz_server, raw, json.dumps(body))


@FUZZ
@given(data=st.data())
def test_every_field_of_every_message_with_a_wrong_type_or_missing_gets_srv_error(
    fuzz_server: ServerHandle, raw: Raw, data: st.DataObject
) -> None:
    frame = data.draw(st.sampled_from(_templates(raw.client_id)), label="template")
    target = frame
    if frame["type"] == "clt_send_changes" and data.draw(st.booleans(), label="in the change"):
        target = frame["changes"][0]
    name = data.draw(st.sampled_from(sorted(k for k in target if k != "type")), label="field")
    original = target[name]
    if data.draw(st.booleans(), label="drop it") and name not in OPTIONAL_FIELDS:
        del target[name]
    else:
        target[name] = data.draw(
            json_values.filter(
                lambda v: (
                    _kind(v) != _kind(original) and not (v is None and name in OPTIONAL_FIELDS)
                )
            ),
            label="value",
        )
    _assert_refused(fuzz_server, raw, json.dumps(frame))


@FUZZ
@given(
    depth=st.integers(min_value=33, max_value=200_000),
    where=st.sampled_from(["top", "field", "value", "change", "list"]),
)
def test_deep_nesting_anywhere_gets_srv_error_and_changes_nothing(
    fuzz_server: ServerHandle, raw: Raw, depth: int, where: str
) -> None:
    nested = "[" * depth + "]" * depth
    frame = _frame(raw.client_id, "clt_send_changes", changes="@")
    if where == "top":
        text = nested
    elif where == "field":
        frame = _frame(raw.client_id, "clt_heartbeat", lsn="0/0", extra="@")
        text = json.dumps(frame).replace('"@"', nested)
    elif where == "value":
        change = _change("tasks", "insert", {"id": "deep", "title": "@"})
        frame["changes"] = [change]
        text = json.dumps(frame).replace('"@"', nested)
    elif where == "change":
        text = json.dumps(frame).replace('"@"', "[" + nested + "]")
    else:
        text = json.dumps(frame).replace('"@"', nested)
    assume(len(text.encode()) <= MAX_FRAME)
    _assert_refused(fuzz_server, raw, text)


@settings(FUZZ, max_examples=8)
@given(
    extra=st.integers(min_value=1, max_value=200_000),
    shape=st.sampled_from(["valid message", "garbage", "multibyte", "binary"]),
)
def test_frames_over_one_mib_get_frame_too_large_and_change_nothing(
    fuzz_server: ServerHandle, raw: Raw, extra: int, shape: str
) -> None:
    frame: str | bytes
    if shape == "valid message":
        row = {"id": "huge", "title": "x" * (MAX_FRAME + extra), "done": 0}
        change = _change("tasks", "insert", row)
        frame = json.dumps(_frame(raw.client_id, "clt_send_changes", changes=[change]))
    elif shape == "garbage":
        frame = "{" * (MAX_FRAME + extra)
    elif shape == "multibyte":  # fewer characters than the limit, more bytes
        title = "é" * ((MAX_FRAME + extra) // 2 + 1)
        assert len(title) < MAX_FRAME < len(title.encode())
        change = _change("tasks", "insert", {"id": "huge", "title": title, "done": 0})
        frame = json.dumps(
            _frame(raw.client_id, "clt_send_changes", changes=[change]), ensure_ascii=False
        )
    else:
        frame = b"\x00" * (MAX_FRAME + extra)
    answer = _assert_refused(fuzz_server, raw, frame)
    assert answer.errors[0]["code"] == "frame_too_large"


def _bad_change(kind: str, name: str, value: Any) -> dict[str, Any]:
    row = {"id": f"bad-{uuid.uuid4()}", "title": "t", "done": 0, "project_id": None}
    if kind == "unknown table":
        return _change(name or "x", "insert", row)
    if kind == "unknown column":
        assume(SCHEMA.tables["tasks"].column(name) is None)
        return _change("tasks", "insert", {**row, name: 1})
    if kind == "missing key":
        del row["id"]
        return _change("tasks", "insert", row)
    if kind == "null key":
        return _change("tasks", "update", {"id": None, "title": "t"})
    if kind == "key is not a plain value":
        return _change("tasks", "delete", {"id": value})
    if kind == "text in INTEGER":
        return _change("tasks", "insert", {**row, "done": str(value)})
    if kind == "nested value":
        return _change("tasks", "insert", {**row, "title": value})
    if kind == "huge int":
        return _change("tasks", "update", {"id": "t-any", "done": value})
    if kind == "NOT NULL column null":
        return _change("tasks", "insert", {**row, "title": None})
    if kind == "required column missing":
        del row["title"]
        return _change("tasks", "insert", row)
    raise AssertionError(kind)


@FUZZ
@given(
    kinds=st.lists(
        st.sampled_from(
            [
                "unknown table",
                "unknown column",
                "missing key",
                "null key",
                "key is not a plain value",
                "text in INTEGER",
                "nested value",
                "huge int",
                "NOT NULL column null",
                "required column missing",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    name=st.one_of(st.sampled_from(SQL_NAMES), st.text(min_size=1, max_size=30)),
    nested=st.one_of(
        st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=5), json_scalars)
    ),
    text=st.text(min_size=1, max_size=20).filter(lambda s: not s.strip().lstrip("-").isdigit()),
    big=st.one_of(st.integers(min_value=1 << 63), st.integers(max_value=-(1 << 63) - 1)),
)
def test_changes_the_schema_cannot_hold_are_rejected_with_a_reason_and_change_nothing(
    fuzz_server: ServerHandle,
    raw: Raw,
    kinds: list[str],
    name: str,
    nested: Any,
    text: str,
    big: int,
) -> None:
    values = {"key is not a plain value": nested, "nested value": nested, "huge int": big}
    changes = [_bad_change(k, name, values.get(k, text)) for k in kinds]
    frame = json.dumps(_frame(raw.client_id, "clt_send_changes", changes=changes))
    answer = _assert_refused(fuzz_server, raw, frame)
    if answer.applied:
        assert [r["id"] for r in answer.applied[0]["results"]] == [c["id"] for c in changes]


_STRICT_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


@FUZZ
@given(
    lsn=st.one_of(
        st.sampled_from(
            [
                "FFFFFFFFF/0",
                "0/FFFFFFFFF",
                "-1/0",
                "0/-1",
                "+0/1",
                " 0/0",
                "0/0 ",
                "0/0\n",
                "0/0\r\n",
                "0x0/0x1",
                "0//0",
                "0",
                "",
                "1e3/0",
                "\uff10/\uff10",
                "0/0/0",
                "%00",
                "ff/ff;",
            ]
        ),
        st.text(max_size=20),
        st.from_regex(r"[0-9A-Fa-f]{9,20}/[0-9A-Fa-f]{1,20}", fullmatch=True),
    ),
    where=st.sampled_from(["handshake", "clt_heartbeat", "clt_changes_applied"]),
)
@example(lsn="0/0\n", where="handshake")  # was accepted as 0/0 (``$`` matches before "\n")
@example(lsn="0/1\n", where="clt_heartbeat")
@example(lsn="FFFFFFFFF/0", where="handshake")
def test_lsns_out_of_range_or_garbage_are_refused_with_bad_lsn_or_srv_error(
    fuzz_server: ServerHandle, raw: Raw, lsn: str, where: str
) -> None:
    assume(_STRICT_LSN.fullmatch(lsn) is None)
    if where != "handshake":
        field = "lsn" if where == "clt_heartbeat" else "lastLSN"
        frame = _frame(raw.client_id, where, **{field: lsn, "changeIds": [], "active": True})
        answer = _assert_refused(fuzz_server, raw, json.dumps(frame))
        assert answer.errors[0]["code"] == "invalid_field", answer.errors
        return
    before = _state(fuzz_server)
    url = f"{fuzz_server.ws_url}?clientId=fuzz-{uuid.uuid4()}&lsn={quote(lsn, safe='')}"
    with connect(url, open_timeout=TIMEOUT) as ws:
        first = json.loads(ws.recv(timeout=TIMEOUT))
        assert first["type"] == "srv_error" and first["code"] == "bad_lsn", (lsn, first)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert _state(fuzz_server) == before
    assert fuzz_server.health()["status"] == "ok"


@FUZZ
@given(client_id=st.one_of(st.just(""), st.text(min_size=129, max_size=300), st.just("x" * 129)))
def test_a_missing_or_invalid_client_id_is_closed_with_4400(
    fuzz_server: ServerHandle, client_id: str
) -> None:
    url = f"{fuzz_server.ws_url}?clientId={quote(client_id, safe='')}&lsn=0/0"
    with connect(url, open_timeout=TIMEOUT) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert fuzz_server.health()["status"] == "ok"


def test_the_connection_and_the_data_survive_the_whole_fuzz_run(
    fuzz_server: ServerHandle, raw: Raw, tmp_path: Path
) -> None:
    """After every property above: a valid change still applies on the same connection."""
    row = {"id": f"after-{uuid.uuid4()}", "name": "still fine"}
    change = _change("projects", "insert", row)
    answer = raw.exchange(json.dumps(_frame(raw.client_id, "clt_send_changes", changes=[change])))
    (applied,) = answer.applied
    assert applied["appliedChanges"] == [change["id"]]
    with contextlib.closing(sqlite3.connect(fuzz_server.db_path)) as conn:
        name = conn.execute("SELECT name FROM projects WHERE id = ?", [row["id"]]).fetchone()
    assert name == ("still fine",)


NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e999", "-1e400"]


@settings(FUZZ, max_examples=20)
@given(
    literal=st.sampled_from(NON_FINITE),
    table_column=st.sampled_from(
        [("tasks", "done"), ("tasks", "title"), ("tasks", "project_id"), ("projects", "name")]
    ),
    operation=st.sampled_from(["insert", "update"]),
)
def test_non_finite_numbers_are_rejected_with_a_reason_and_change_nothing(
    fuzz_server: ServerHandle, raw: Raw, literal: str, table_column: tuple[str, str], operation: str
) -> None:
    """Python's json reads ``Infinity``/``NaN``/``1e999``; no JSON encoder can write them back."""
    table, column = table_column
    row: dict[str, Any] = {"id": "t-any" if operation == "update" else f"nf-{uuid.uuid4()}"}
    if operation == "insert":
        row.update({"name": "n"} if table == "projects" else {"title": "t", "done": 0})
    row[column] = "@"
    change = _change(table, operation, row)
    frame = json.dumps(_frame(raw.client_id, "clt_send_changes", changes=[change]))
    answer = _assert_refused(fuzz_server, raw, frame.replace('"@"', literal))
    assert answer.applied, "a non-finite number is a bad value, not a bad frame"


def test_an_infinite_value_is_rejected_so_initial_syncs_keep_working(
    fuzz_server: ServerHandle, raw: Raw
) -> None:
    """Found by this fuzzer: ``"done": Infinity`` was applied and stored as a REAL inf; every
    later snapshot holding the row failed to encode (allow_nan=False) and dropped the
    connection, so no new client could ever finish its initial sync."""
    change = _change("tasks", "insert", {"id": "inf-row", "title": "t", "done": "@"})
    frame = json.dumps(_frame(raw.client_id, "clt_send_changes", changes=[change]))
    (applied,) = raw.exchange(frame.replace('"@"', "Infinity")).applied
    assert applied["results"][0]["status"] == "rejected", applied
    client_id = f"fresh-{uuid.uuid4()}"
    url = f"{fuzz_server.ws_url}?clientId={client_id}&lsn=0/0"
    with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        while (message := json.loads(ws.recv(timeout=TIMEOUT)))["type"] != "srv_init_complete":
            if message["type"] == "srv_init_changes":
                seq = message["sequence"]
                ack = _frame(client_id, "clt_init_received", table=seq["table"], chunk=seq["chunk"])
                ws.send(json.dumps(ack))
    assert fuzz_server.health()["status"] == "ok"
