"""The CPython-testable parts of the Changes Worker's browser entry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tidesync.changes.browser_entry import (
    PageEvents,
    PageStatus,
    RequestRunner,
    _describe,
    conflicts_in,
    decode_from_page,
    encode_for_page,
    encode_reply,
    parse_pragmas,
    serve_sync_request,
)
from tidesync.changes.worker import ChangesWorker


def test_recommended_pragmas_parse_in_order() -> None:
    pragmas = parse_pragmas(
        ["PRAGMA locking_mode=EXCLUSIVE", "PRAGMA journal_mode=WAL", "PRAGMA cache_size=-16384"]
    )
    assert list(pragmas.items()) == [
        ("locking_mode", "EXCLUSIVE"),
        ("journal_mode", "WAL"),
        ("cache_size", "-16384"),
    ]


def test_anything_but_a_plain_pragma_is_refused() -> None:
    with pytest.raises(ValueError, match="not a simple PRAGMA"):
        parse_pragmas(["PRAGMA journal_mode=WAL; DROP TABLE tasks"])


async def test_a_lost_edit_is_described_with_what_was_written_and_what_won(
    tmp_path: Path,
) -> None:
    worker = ChangesWorker(str(tmp_path / "c.db"))
    await worker.insert("projects", {"id": "p1", "name": "mine"})
    change_id = (await worker.pending_changes())[0]["id"]
    results = [
        {"id": change_id, "status": "skipped", "reason": "lww", "row": {"id": "p1", "name": "x"}},
        {"id": "other", "status": "applied", "lsn": "0/2"},
    ]
    lost = conflicts_in({"results": results})
    assert lost == [{"id": change_id, "row": {"id": "p1", "name": "x"}, "deleted": False}]
    described = await _describe(worker, lost[0])
    assert described["table"] == "projects" and described["operation"] == "insert"
    assert described["local"]["name"] == "mine" and described["row"]["name"] == "x"
    await worker.close()


async def test_changes_read_for_sending_are_flushed_to_opfs_before_they_leave(
    tmp_path: Path,
) -> None:
    """A change must be power-loss durable before the server can have it (group flush)."""
    worker = ChangesWorker(str(tmp_path / "c.db"))
    events: list[str] = []

    def to_sync(reply: dict[str, Any]) -> None:
        events.append(f"reply {len(reply['result'] or [])}")

    async def ask(cmd: str, args: dict[str, Any]) -> None:
        await serve_sync_request(
            worker,
            {"id": 1, "cmd": cmd, "args": args},
            flush=lambda: events.append("flush"),
            to_sync=to_sync,
            to_page=lambda _m: None,
        )

    await ask("port.unsynced_changes", {"limit": 10})
    assert events == ["reply 0"]  # nothing to send: no flush
    await worker.insert("projects", {"id": "p1", "name": "mine"})
    events.clear()
    await ask("port.unsynced_changes", {"limit": 10})
    assert events == ["flush", "reply 1"]
    events.clear()
    await ask("port.local_state", {})
    assert "flush" not in events  # only reads for sending pay for a flush
    await worker.close()


# --- the page boundary: JSON text when it is exact -------------------------------------------


def test_replies_cross_as_json_text_when_json_carries_them_exactly() -> None:
    reply = {"id": 7, "ok": True, "result": [{"id": "a", "n": 1.5, "none": None, "t": "é"}]}
    text = encode_for_page(reply)
    assert text is not None
    assert json.loads(text) == reply


@pytest.mark.parametrize(
    "value",
    [b"\x00blob", float("nan"), float("inf"), 2**53 + 1, -(2**60)],
    ids=["bytes", "nan", "inf", "beyond-2**53", "negative-int64"],
)
def test_values_json_would_not_carry_exactly_take_the_structured_path(value: object) -> None:
    assert encode_for_page({"id": 1, "ok": True, "result": [{"v": value}]}) is None


def test_requests_arrive_as_json_text_or_objects_and_bad_text_is_an_error() -> None:
    request = {"id": 3, "cmd": "insert", "args": {"table": "tasks", "row": {"id": "x"}}}
    assert decode_from_page(json.dumps(request)) == request
    with pytest.raises(ValueError):
        decode_from_page("{not json")


@pytest.mark.parametrize(
    "text",
    ['{"id":1}', ' {"id":1} ', '{"id":1}\n', '{"id":1}x', '{"id":1}{}', "{", '{"a":}', "[1]", "1"],
)
def test_a_request_decodes_as_json_loads_does(text: str) -> None:
    """``decode_from_page`` calls the scanner itself for ``{...}`` text: the same value, and
    a ``ValueError`` for whatever ``json.loads`` refuses."""
    try:
        expected: Any = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            decode_from_page(text)
    else:
        assert decode_from_page(text) == expected


_EVENT = {"event": "tables_changed", "tables": ["tasks"], "source": "local"}


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 12}},
        {
            "id": 1,
            "ok": True,
            "result": {"rowsAffected": 1, "lastInsertRowid": 12},
            "events": [_EVENT],
        },
        {
            "id": -5,
            "ok": True,
            "result": {"rowsAffected": 0, "lastInsertRowid": None},
            "events": [],
        },
        {"id": 2, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 10**15 - 1}},
        {"id": 2, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 10**15}},
        {"id": 2, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 2**53 + 1}},
        {"id": 10**16, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 1}},
        {"id": "7", "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 1}},
        {"id": None, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 1}},
        {"id": True, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 1}},
        {"id": 3, "ok": True, "result": {"rowsAffected": True, "lastInsertRowid": 1}},
        {"id": 3, "ok": True, "result": {"lastInsertRowid": 1, "rowsAffected": 1}},
        {"id": 3, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 1, "x": 2}},
        {"id": 3, "ok": True, "result": [{"v": 1}]},
        {"id": 3, "ok": False, "error": {"type": "WriteError", "message": "no"}},
        {"ok": True, "id": 3, "result": {"rowsAffected": 1, "lastInsertRowid": 1}},
        {
            "id": 3,
            "ok": True,
            "result": {"rowsAffected": 1, "lastInsertRowid": 1},
            "events": [{**_EVENT, "tables": ["projects", "tasks"]}, {**_EVENT, "source": "server"}],
        },
        {
            "id": 3,
            "ok": True,
            "result": {"rowsAffected": 1, "lastInsertRowid": 1},
            "events": [{"source": "local", "tables": ["tasks"], "event": "tables_changed"}],
        },
        {
            "id": 3,
            "ok": True,
            "result": {"rowsAffected": 1, "lastInsertRowid": 1},
            "events": [{**_EVENT, "tables": ["t1234567890123456"]}],
        },
        {
            "id": 3,
            "ok": True,
            "result": {"rowsAffected": 1, "lastInsertRowid": 1},
            "events": [{**_EVENT, "tables": ['t"\u00e9\n']}],
        },
        {
            "id": 3,
            "ok": True,
            "result": {"rowsAffected": 1, "lastInsertRowid": 1},
            "events": [{**_EVENT, "tables": [1]}],
        },
        {"id": 3, "ok": True, "result": {"rowsAffected": 1, "lastInsertRowid": 1}, "events": "x"},
    ],
)
def test_a_write_reply_is_encoded_as_encode_for_page_does(message: dict[str, Any]) -> None:
    """``encode_reply`` (one-row writes, no JSON encoder) gives ``encode_for_page``'s text,
    None included (the structured path), twice (the second from its event cache)."""
    assert encode_reply(message) == encode_for_page(message)
    assert encode_reply(message) == encode_for_page(message)


# --- RequestRunner: run to the end at once when nothing waits, in order otherwise ------------


class _Stream:
    """A RequestRunner over real asyncio tasks, recording what ran when."""

    def __init__(self) -> None:
        self.busy = False
        self.log: list[str] = []
        self.tasks: set[asyncio.Future[Any]] = set()
        self.runner = RequestRunner(lambda: self.busy, self._spawn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))
        await asyncio.sleep(0)  # the runner's done callbacks


async def test_a_request_that_never_waits_is_done_before_run_returns() -> None:
    s = _Stream()

    async def quick(name: str) -> None:
        s.log.append(name)

    s.runner.run(quick("a"))
    assert s.log == ["a"]
    assert not s.tasks and s.runner.unfinished == 0


async def test_a_request_that_waits_is_resumed_and_later_ones_start_after_it() -> None:
    s = _Stream()
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        s.log.append("first:start")
        s.log.append("first:" + await gate)

    async def quick(name: str) -> None:
        s.log.append(name)

    s.runner.run(waits())
    s.runner.run(quick("second"))  # the first is unfinished: a task, started after it
    assert s.log == ["first:start"]
    assert s.runner.unfinished == 2
    gate.set_result("end")
    await s.settle()
    assert sorted(s.log) == ["first:end", "first:start", "second"]
    assert s.runner.unfinished == 0
    s.runner.run(quick("third"))  # the stream is idle again: at once
    assert s.log[-1] == "third"


async def test_a_request_that_sleeps_zero_is_resumed() -> None:
    s = _Stream()

    async def yields() -> None:
        await asyncio.sleep(0)
        s.log.append("after")

    s.runner.run(yields())
    assert s.log == []
    await s.settle()
    assert s.log == ["after"]


async def test_while_the_worker_is_busy_requests_become_tasks() -> None:
    s = _Stream()
    s.busy = True

    async def quick(name: str) -> None:
        s.log.append(name)

    s.runner.run(quick("a"))
    assert s.log == [] and s.runner.unfinished == 1
    s.busy = False
    s.runner.run(quick("b"))  # "a" is unfinished: "b" queues behind it
    await s.settle()
    assert s.log == ["a", "b"]


# --- PageEvents: a page write's tables_changed rides on its reply ----------------------------


def _changed(source: str) -> dict[str, Any]:
    return {"event": "tables_changed", "tables": ["tasks"], "source": source}


def test_a_local_change_during_a_page_request_rides_on_its_reply() -> None:
    events = PageEvents()
    events.requests = 1
    assert events.defer(_changed("local"), "local")
    reply = events.attach({"id": 7, "ok": True, "result": {"rowsAffected": 1}})
    assert reply == {
        "id": 7,
        "ok": True,
        "result": {"rowsAffected": 1},
        "events": [_changed("local")],
    }
    assert events.deferred == []
    assert events.attach({"id": 8, "ok": True, "result": None}) == {
        "id": 8,
        "ok": True,
        "result": None,
    }


def test_other_sources_and_local_changes_outside_a_page_request_are_posted_at_once() -> None:
    events = PageEvents()
    assert not events.defer(_changed("local"), "local")  # no page request runs
    events.requests = 1
    for source in ("server", "initial", "results", "reset", "repair"):
        assert not events.defer(_changed(source), source)
    assert events.deferred == []


def test_held_events_go_out_first_and_in_order_when_something_else_is_posted() -> None:
    events = PageEvents()
    events.requests = 2
    events.defer({**_changed("local"), "n": 1}, "local")
    events.defer({**_changed("local"), "n": 2}, "local")
    sent: list[dict[str, Any]] = []
    events.drain(sent.append)
    assert [m["n"] for m in sent] == [1, 2]
    assert events.deferred == []


def _sync(pending: int, local_seq: int) -> dict[str, Any]:
    return {"phase": "live", "pending": pending, "localSeq": local_seq}


def test_no_status_is_shown_for_a_commit_before_the_sync_worker_sent_one() -> None:
    status = PageStatus()
    assert status.local_committed() is None
    assert status.local_seq == 1


def test_a_commit_the_sync_worker_has_not_counted_shows_as_pending_at_once() -> None:
    """``await db.insert(...)`` then ``db.status.pending`` is not 0 (the write's reply
    carries the status), though the Sync Worker has not heard of the commit yet."""
    status = PageStatus()
    shown = status.from_sync(_sync(0, 0), "client-1")
    assert shown == {"phase": "live", "pending": 0, "clientId": "client-1"}
    assert status.local_committed() == {"phase": "live", "pending": 1, "clientId": "client-1"}
    # Already pending: no status per commit; the Sync Worker's next one has the count.
    assert status.local_committed() is None
    assert status.local_seq == 2
    # A status it sent before it heard of either commit still shows both pending.
    assert status.from_sync(_sync(0, 0), "client-1")["pending"] == 2
    # One counted (and in flight), one not yet heard of.
    assert status.from_sync(_sync(1, 1), "client-1")["pending"] == 2
    # Both counted and acknowledged: nothing pending.
    assert status.from_sync(_sync(0, 2), "client-1")["pending"] == 0
    assert status.local_committed() is not None  # 0 again: the next commit shows


def test_a_sync_status_without_a_commit_number_is_shown_as_it_came() -> None:
    status = PageStatus()
    status.local_committed()
    shown = status.from_sync({"phase": "connecting", "pending": 4}, None)
    assert shown == {"phase": "connecting", "pending": 4, "clientId": None}
    assert status.sync == {"phase": "connecting", "pending": 4, "clientId": None}
