"""Hypothesis fuzzing of what the server accepts from a client (issue 5, "Bad input").

The real session and store in-process (no sockets): arbitrary frames and
arbitrary changes never raise out of the session, every bad frame gets
``srv_error``, every bad change a ``rejected`` result with a reason, and a
rejected change leaves the server's tables exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.json_strategies import json_strategies

from tidesync.checksums import table_checksum
from tidesync.schema import Schema
from tidesync.server.hub import Hub
from tidesync.server.session import Phase, Session, SessionConfig, open_session
from tidesync.server.store import Store
from tidesync.worker_sync.shared import message_types as mt

NOW = 1_700_000_000_000
CLIENT = "fuzzer"
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars, json_values = json_strategies(text_size=40, key_size=12, max_leaves=12)
names = st.one_of(
    st.sampled_from(["projects", "tasks", "id", "title", "done", "project_id", "updated_at"]),
    st.sampled_from(
        ["id; DROP TABLE tasks", 'title"', "x' OR '1'='1", "[done]", "sqlite_master", "_ts_ctx"]
    ),
    st.text(min_size=1, max_size=20),
)
change_dicts = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "table": names,
        "operation": st.sampled_from(["insert", "update", "delete"]),
        "data": st.dictionaries(names, json_values, max_size=5),
        "updated_at": st.sampled_from(
            ["2030-01-01T00:00:00.000Z", "2001-01-01T00:00:00Z", "2030-01-01T00:00:00+02:00"]
        ),
    }
)


class _Server:
    """One store and live session for a whole hypothesis run (cheap per example)."""

    def __init__(self, path: Path) -> None:
        self.hub = Hub(Store(path))
        self.schema = Schema.demo()
        lsn = mt.format_lsn(self.hub.current_lsn())
        session, out = open_session(CLIENT, lsn, self.hub, SessionConfig(), NOW)
        assert session is not None, out
        if session.phase is Phase.INIT_WAIT:
            session.receive(_frame(mt.CltInitProcessed), NOW)
        self.session: Session = session
        self.path = path
        self.now = NOW

    def receive(self, text: str) -> list[mt.Message]:
        self.now += 10  # keep under the rate limit's refill
        return list(self.session.receive(text, self.now).messages)

    def checksums(self) -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            cursor = conn.cursor()
            return {n: table_checksum(cursor, self.schema.tables[n]) for n in self.schema.order}

    def integrity(self) -> str:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _frame(cls: type[mt.Message], **fields: Any) -> str:
    return mt.encode_message(mt.make(cls, CLIENT, NOW, **fields))


def _server(tmp_path_factory: Any) -> _Server:
    return _Server(tmp_path_factory.mktemp("fuzz") / "server.db")


@SETTINGS
@given(raw=json_values)
def test_arbitrary_json_frames_get_srv_error_and_change_nothing(
    tmp_path_factory: Any, raw: Any
) -> None:
    server = _FRAMES.get() or _FRAMES.set(_server(tmp_path_factory))
    before = server.checksums()
    out = server.receive(json.dumps(raw))
    assert [type(m) for m in out] == [mt.SrvError]
    assert server.checksums() == before
    assert server.session.phase is Phase.LIVE  # the connection stays usable


@SETTINGS
@given(frame=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(repr)))
def test_non_json_frames_get_invalid_json_errors(tmp_path_factory: Any, frame: str) -> None:
    server = _FRAMES.get() or _FRAMES.set(_server(tmp_path_factory))
    out = server.receive(frame)
    assert len(out) == 1 and isinstance(out[0], mt.SrvError)


@SETTINGS
@given(
    mutation=st.dictionaries(
        st.sampled_from(
            [
                "type",
                "messageId",
                "timestamp",
                "clientId",
                "changes",
                "lsn",
                "active",
                "lastLSN",
                "changeIds",
            ]
        ),
        json_values,
        min_size=1,
        max_size=3,
    )
)
def test_valid_messages_with_mutated_fields_never_break_the_session(
    tmp_path_factory: Any, mutation: dict[str, Any]
) -> None:
    server = _FRAMES.get() or _FRAMES.set(_server(tmp_path_factory))
    base = json.loads(_frame(mt.CltHeartbeat, lsn=0, active=True))
    base.update(mutation)
    before = server.checksums()
    out = server.receive(json.dumps(base))
    assert out, "every frame is answered"
    assert all(
        isinstance(
            m,
            mt.SrvHeartbeat
            | mt.SrvError
            | mt.SrvChangesReceived
            | mt.SrvChangesApplied
            | mt.SrvLiveChanges
            | mt.SrvLsnUpdate,
        )
        for m in out
    )
    if not any(isinstance(m, mt.SrvChangesApplied) for m in out):
        assert server.checksums() == before


@SETTINGS
@given(changes=st.lists(change_dicts, min_size=1, max_size=4))
def test_every_fuzzed_change_gets_a_result_and_rejected_ones_change_nothing(
    tmp_path_factory: Any, changes: list[dict[str, Any]]
) -> None:
    server = _CHANGES.get() or _CHANGES.set(_server(tmp_path_factory))
    frame = json.loads(_frame(mt.CltSendChanges, changes=()))
    frame["changes"] = changes
    before = server.checksums()
    out = server.receive(json.dumps(frame))
    errors = [m for m in out if isinstance(m, mt.SrvError)]
    applied = [m for m in out if isinstance(m, mt.SrvChangesApplied)]
    if errors:  # structurally invalid (e.g. empty data): the whole message refused
        assert not applied and server.checksums() == before
        return
    assert len(applied) == 1
    results = {r.id: r for r in applied[0].results}
    assert set(results) == {c["id"] for c in changes}
    for result in results.values():
        if result.status is mt.ChangeStatus.REJECTED:
            assert result.reason, result
        if result.status is mt.ChangeStatus.APPLIED:
            assert result.lsn is not None
    if all(r.status is not mt.ChangeStatus.APPLIED for r in results.values()):
        assert server.checksums() == before
    assert server.integrity() == "ok"


class _Holder:
    """A server shared across one test's examples (hypothesis re-runs the body many times)."""

    def __init__(self) -> None:
        self.value: _Server | None = None

    def get(self) -> _Server | None:
        return self.value

    def set(self, value: _Server) -> _Server:
        self.value = value
        return value


_FRAMES = _Holder()
_CHANGES = _Holder()


def test_a_change_whose_key_is_a_list_is_rejected_without_failing_its_batch(
    tmp_path: Path,
) -> None:
    """Found by the fuzzer: looking up "the current row" for a list key failed the batch,
    so the client would have resent it forever."""
    server = _Server(tmp_path / "server.db")
    frame = json.loads(_frame(mt.CltSendChanges, changes=()))
    good = {"id": "ok", "name": "fine", "updated_at": "2030-01-01T00:00:00.000Z"}
    frame["changes"] = [
        {
            "id": "bad",
            "table": "projects",
            "operation": "insert",
            "data": {"id": [1, 2]},
            "updated_at": "2030-01-01T00:00:00.000Z",
        },
        {
            "id": "good",
            "table": "projects",
            "operation": "insert",
            "data": good,
            "updated_at": "2030-01-01T00:00:00.000Z",
        },
    ]
    applied = [m for m in server.receive(json.dumps(frame)) if isinstance(m, mt.SrvChangesApplied)]
    assert applied and applied[0].success
    results = {r.id: r for r in applied[0].results}
    assert results["bad"].status is mt.ChangeStatus.REJECTED and results["bad"].reason
    assert results["good"].status is mt.ChangeStatus.APPLIED
