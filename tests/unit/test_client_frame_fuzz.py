"""Hypothesis fuzzing of the client's handling of server frames.

``MessageProcessor.handle_text`` with a REAL ``ChangesWorker`` as its port (a
SQLite file holding the demo schema, a committed snapshot at LSN 0/10 and
pending local changes), in every connected phase, fed:

* frames that are not server messages at all (text, bytes, arbitrary JSON);
* every server message with one field of the wrong type, or missing;
* valid server messages that do not fit the phase;
* valid catchup/live batches whose changes do not fit the schema (unknown tables,
  SQL in names, nested values, missing keys, out-of-range numbers).

``handle_text`` never raises.  A malformed or out-of-phase frame is answered
with ``clt_error`` and leaves the database byte-for-byte as it was (app rows,
``local_changes``, ``sync_state``).  A batch of changes that cannot apply never
touches the app tables and never makes the port fail (no ``internal`` error, no
reconnect).  Every example runs on a fresh copy of the same database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.helpers.json_strategies import json_strategies

from tidesync.changes.worker import ChangesWorker
from tidesync.worker_sync.shared.message_types import CltError, Operation, TableChange
from tidesync.worker_sync.worker_thread.client_changes import ClientChanges
from tidesync.worker_sync.worker_thread.message_processor import (
    PHASE_TABLE,
    Instruction,
    MessageProcessor,
    Reconnect,
    Send,
)
from tidesync.worker_sync.worker_thread.status import SyncPhase

NOW = 1_790_000_000_000
LSN = 0x10
P = SyncPhase
PHASES = [P.CONNECTING, P.INITIAL, P.CATCHUP, P.LIVE]
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Fields a server message may leave out (defaults or optional in PROTOCOL.md / docs).
OPTIONAL_FIELDS = {"success", "error", "results", "refMessageId", "lsn", "clientId"}


# --- the database under test ----------------------------------------------------------------


def _snapshot_change(table: str, row: dict[str, Any]) -> TableChange:
    return TableChange(
        id=uuid.uuid4().hex,
        table=table,
        operation=Operation.INSERT,
        data=row,
        updated_at="2026-11-25T10:00:00.000Z",
    )


async def _build_template(path: Path) -> None:
    """Snapshot committed at 0/10 (2 projects, 3 tasks) plus pending local changes."""
    worker = await ChangesWorker.open(str(path), now_ms=lambda: NOW)
    try:
        stamp = {"updated_at": "2026-11-25T10:00:00.000Z"}
        await worker.begin_initial_sync(LSN)
        await worker.stage_initial_chunk(
            "projects",
            [
                _snapshot_change("projects", {"id": f"p{i}", "name": f"P{i}", **stamp})
                for i in (1, 2)
            ],
        )
        tasks = [
            {"id": f"t{i}", "project_id": "p1", "title": f"T{i}", "done": 0, **stamp}
            for i in (1, 2, 3)
        ]
        await worker.stage_initial_chunk("tasks", [_snapshot_change("tasks", t) for t in tasks])
        await worker.commit_initial_sync(LSN)
        await worker.insert("tasks", {"id": "local", "project_id": "p2", "title": "mine"})
        await worker.update("tasks", {"id": "t1", "title": "edited offline"})
    finally:
        await worker.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client-fuzz") / "template.db"
    asyncio.run(_build_template(path))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-fuzz-examples")


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the client keeps: app rows, change history, sync state."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("projects", "tasks", "local_changes", "sync_state")
        }


def _app_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    dump = _dump(path)
    return {"projects": dump["projects"], "tasks": dump["tasks"]}


@contextlib.contextmanager
def _copy(template: Path, workdir: Path) -> Iterator[Path]:
    path = workdir / f"{uuid.uuid4().hex}.db"
    shutil.copyfile(template, path)
    try:
        yield path
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _feed(path: Path, phase: SyncPhase, frames: list[str | bytes]) -> list[Instruction]:
    """A fresh worker and processor on ``path`` in ``phase``; every frame through handle_text."""
    worker = await ChangesWorker.open(str(path), now_ms=lambda: NOW)
    try:
        proc = MessageProcessor(
            worker, ClientChanges(), client_id=worker.client_id, wall_ms=lambda: NOW
        )
        proc.begin(LSN)
        if phase is P.INITIAL:
            await worker.begin_initial_sync(LSN + 5)
        proc.phase = phase
        out: list[Instruction] = []
        for frame in frames:
            out += await proc.handle_text(frame)  # type: ignore[arg-type]
        return out
    finally:
        await worker.close()


def _run(path: Path, phase: SyncPhase, *frames: str | bytes) -> list[Instruction]:
    return asyncio.run(_feed(path, phase, list(frames)))


def _errors(out: list[Instruction]) -> list[CltError]:
    return [i.message for i in out if isinstance(i, Send) and isinstance(i.message, CltError)]


def _assert_refused(template: Path, workdir: Path, phase: SyncPhase, frame: str | bytes) -> str:
    """``frame`` is answered with exactly one clt_error and the database does not move."""
    with _copy(template, workdir) as path:
        before = _dump(path)
        out = _run(path, phase, frame)
        errors = _errors(out)
        assert len(errors) == 1 and len(out) == 1, out
        assert errors[0].code != "internal", errors[0]
        assert _dump(path) == before, "a refused frame changed the client database"
        return errors[0].code


# --- valid frames of every server message type ----------------------------------------------


def _srv(type_: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "messageId": str(uuid.uuid4()),
        "timestamp": NOW,
        "clientId": "whoever",
        **fields,
    }


def _wire_change(
    table: str = "tasks", operation: str = "update", data: Any = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "id": uuid.uuid4().hex,
        "table": table,
        "operation": operation,
        "data": data if data is not None else {"id": "t2", "title": "from server"},
        "updated_at": "2026-11-25T11:00:00.000Z",
        "lsn": "0/11",
        "clientId": "other-client",
    }
    body.update(extra)
    return body


def _templates() -> dict[str, dict[str, Any]]:
    init_row = {"id": "t9", "title": "x", "done": 0, "updated_at": "2026-11-25T10:00:00.000Z"}
    return {
        "srv_init_start": _srv("srv_init_start", serverLSN="0/15"),
        "srv_init_changes": _srv(
            "srv_init_changes",
            changes=[_wire_change(operation="insert", data=init_row, lsn=None)],
            sequence={"table": "tasks", "chunk": 1, "total": 1},
        ),
        "srv_init_rows": _srv(
            "srv_init_rows",
            sequence={"table": "tasks", "chunk": 1, "total": 1},
            columns=list(init_row),
            rows=[list(init_row.values())],
            versions=[["2026-11-25T10:00:00.000Z", "author-1"]],
        ),
        "srv_init_complete": _srv("srv_init_complete", serverLSN="0/15"),
        "srv_catchup_changes": _srv(
            "srv_catchup_changes",
            changes=[_wire_change()],
            lastLSN="0/11",
            sequence={"chunk": 1, "total": 1},
        ),
        "srv_catchup_completed": _srv(
            "srv_catchup_completed", startLSN="0/10", finalLSN="0/12", changeCount=1, success=True
        ),
        "srv_live_changes": _srv("srv_live_changes", changes=[_wire_change()], lastLSN="0/11"),
        "srv_lsn_update": _srv("srv_lsn_update", lsn="0/12"),
        "srv_changes_received": _srv("srv_changes_received", changeIds=["x1"]),
        "srv_changes_applied": _srv(
            "srv_changes_applied",
            appliedChanges=["x1"],
            success=True,
            results=[{"id": "x1", "status": "applied", "lsn": "0/13"}],
        ),
        "srv_heartbeat": _srv("srv_heartbeat"),
        "srv_error": _srv("srv_error", code="rate_limited", error="slow down", refMessageId="m"),
        "srv_table_checksums": _srv("srv_table_checksums", lsn="0/10", checksums={"tasks": "ab"}),
        "srv_resync_start": _srv("srv_resync_start", lsn="0/15", tables=["tasks"]),
        "srv_resync_changes": _srv(
            "srv_resync_changes",
            changes=[_wire_change(operation="insert", data=init_row, lsn=None)],
            sequence={"table": "tasks", "chunk": 1, "total": 1},
        ),
        "srv_resync_complete": _srv("srv_resync_complete", lsn="0/15", tables=["tasks"]),
    }


def _accepting(type_: str) -> list[SyncPhase]:
    return [phase for phase in PHASES if (phase, _type(type_)) in PHASE_TABLE]


def _type(name: str) -> Any:
    from tidesync.worker_sync.shared.message_types import MessageType

    return MessageType(name)


# --- strategies -----------------------------------------------------------------------------

json_scalars, json_values = json_strategies()
phases = st.sampled_from(PHASES)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


# --- properties -----------------------------------------------------------------------------


@FUZZ
@given(
    phase=phases,
    frame=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        json_values.map(json.dumps),
        st.dictionaries(st.text(max_size=12), json_values, max_size=5).map(json.dumps),
        st.integers(min_value=33, max_value=50_000).map(lambda n: "[" * n + "]" * n),
    ),
)
def test_frames_that_are_no_server_message_get_clt_error_and_change_nothing(
    template: Path, workdir: Path, phase: SyncPhase, frame: str | bytes
) -> None:
    try:
        parsed = json.loads(frame)
    except (ValueError, RecursionError):
        parsed = None
    assume(not (isinstance(parsed, dict) and str(parsed.get("type", "")).startswith("srv_")))
    _assert_refused(template, workdir, phase, frame)


@FUZZ
@given(data=st.data())
def test_every_field_of_every_server_message_with_a_wrong_type_or_missing_gets_clt_error(
    template: Path, workdir: Path, data: st.DataObject
) -> None:
    templates = _templates()
    type_ = data.draw(st.sampled_from(sorted(templates)), label="type")
    frame = templates[type_]
    phase = data.draw(st.sampled_from(_accepting(type_)), label="phase")
    target = frame
    if "changes" in frame and data.draw(st.booleans(), label="inside a change"):
        target = frame["changes"][0]
    elif "sequence" in frame and data.draw(st.booleans(), label="inside the sequence"):
        target = frame["sequence"]
    elif "results" in frame and data.draw(st.booleans(), label="inside a result"):
        target = frame["results"][0]
    elif "rows" in frame and data.draw(st.booleans(), label="inside a row"):
        target = {"row": frame["rows"], "version": frame["versions"]}  # the item, replaced
        frame["rows"] = [data.draw(json_values.filter(lambda v: not isinstance(v, list)))]
        if data.draw(st.booleans(), label="the version instead"):
            frame["rows"] = target["row"]
            frame["versions"] = [
                data.draw(json_values.filter(lambda v: v is not None and not isinstance(v, list)))
            ]
        _assert_refused(template, workdir, phase, json.dumps(frame))
        return
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
    _assert_refused(template, workdir, phase, json.dumps(frame))


@FUZZ
@given(data=st.data())
def test_valid_server_messages_out_of_phase_get_clt_error_and_change_nothing(
    template: Path, workdir: Path, data: st.DataObject
) -> None:
    templates = _templates()
    type_ = data.draw(st.sampled_from(sorted(templates)), label="type")
    refusing = [p for p in PHASES if p not in _accepting(type_)]
    assume(refusing)
    phase = data.draw(st.sampled_from(refusing), label="phase")
    code = _assert_refused(template, workdir, phase, json.dumps(templates[type_]))
    assert code == "out_of_phase"


NON_FINITE = "@non-finite@"
SQL_NAMES = [
    "id; DROP TABLE tasks",
    'title"',
    "x' OR '1'='1",
    "[done]",
    "sqlite_master",
    "local_changes",
    "sync_state",
    "_ts_stage",
    "tasks--",
    "main.tasks",
]


def _bad_change(kind: str, name: str, value: Any) -> dict[str, Any]:
    row = {"id": "t2", "title": "t", "done": 0, "project_id": "p1"}
    if kind == "unknown table":
        assume(name not in ("projects", "tasks"))
        return _wire_change(table=name, operation="insert", data=row)
    if kind == "unknown column":
        assume(name not in ("id", "title", "done", "project_id", "updated_at"))
        return _wire_change(data={"id": "t2", name: 1})
    if kind == "missing key":
        return _wire_change(data={"title": "no key"})
    if kind == "key is not a plain value":
        return _wire_change(operation="delete", data={"id": value})
    if kind == "text in INTEGER":
        return _wire_change(data={"id": "t2", "done": "not a number"})
    if kind == "nested value":
        return _wire_change(data={"id": "t2", "title": value})
    if kind == "huge int":
        return _wire_change(data={"id": "t2", "done": 1 << 70})
    if kind == "NOT NULL column null":
        return _wire_change(data={"id": "t2", "title": None})
    if kind == "insert without required columns":
        return _wire_change(operation="insert", data={"id": "t-new"})
    if kind == "non-finite number":  # the frame's text gets Infinity/NaN/1e999 here
        return _wire_change(data={"id": "t2", "done": NON_FINITE})
    raise AssertionError(kind)


@FUZZ
@given(
    kinds=st.lists(
        st.sampled_from(
            [
                "unknown table",
                "unknown column",
                "missing key",
                "key is not a plain value",
                "text in INTEGER",
                "nested value",
                "huge int",
                "NOT NULL column null",
                "insert without required columns",
                "non-finite number",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    literal=st.sampled_from(["Infinity", "-Infinity", "NaN", "1e999"]),
    name=st.one_of(st.sampled_from(SQL_NAMES), st.text(min_size=1, max_size=30)),
    nested=st.one_of(
        st.lists(json_scalars, min_size=1, max_size=3),
        st.dictionaries(st.text(max_size=5), json_scalars, min_size=1),
    ),
    live=st.booleans(),
)
def test_batches_of_changes_the_schema_cannot_hold_never_touch_the_app_tables(
    template: Path,
    workdir: Path,
    kinds: list[str],
    literal: str,
    name: str,
    nested: Any,
    live: bool,
) -> None:
    changes = [_bad_change(kind, name, nested) for kind in kinds]
    for index, change in enumerate(changes):
        change["lsn"] = f"0/{0x11 + index:X}"
    last = f"0/{0x11 + len(changes):X}"
    if live:
        frame, phase = _srv("srv_live_changes", changes=changes, lastLSN=last), P.LIVE
    else:
        frame = _srv(
            "srv_catchup_changes", changes=changes, lastLSN=last, sequence={"chunk": 1, "total": 1}
        )
        phase = P.CATCHUP
    with _copy(template, workdir) as path:
        before = _app_rows(path)
        out = _run(path, phase, json.dumps(frame).replace(f'"{NON_FINITE}"', literal))
        assert not any(isinstance(i, Reconnect) for i in out), out
        assert not [e for e in _errors(out) if e.code == "internal"], out
        assert _app_rows(path) == before, "an unappliable change reached the app tables"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            recorded = dict(
                conn.execute(
                    "SELECT id, state FROM local_changes "
                    "WHERE from_server = 1 AND error IS NOT NULL"
                ).fetchall()
            )
            lsn = conn.execute("SELECT value FROM sync_state WHERE key = 'lsn'").fetchone()[0]
        # The batch was taken, not dropped: each change recorded as failed (with its error),
        # the LSN past it (PROTOCOL.md: changes that can never apply do not block the log).
        assert {c["id"]: "failed" for c in changes}.items() <= recorded.items(), recorded
        assert int(lsn) == int(last.split("/")[1], 16)
        assert {"projects", "tasks", "local_changes", "sync_state"} <= names


def test_every_template_is_accepted_in_its_phase(template: Path, workdir: Path) -> None:
    """The templates the fuzzers mutate are valid: without this the properties prove little."""
    for type_, frame in _templates().items():
        for phase in _accepting(type_):
            with _copy(template, workdir) as path:
                out = _run(path, phase, json.dumps(frame))
                assert _errors(out) == [], (type_, phase, out)
