"""``BrowserWebSocketTransport`` (``js.WebSocket`` through Pyodide's FFI) against the
real sync server on loopback, inside a real Pyodide module worker in Chromium.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from browser_harness import free_port

PRELUDE = """
import asyncio, json, uuid
from tidesync._pyodide import live_proxy_count
from tidesync.worker_sync.worker_thread.browser_websocket import BrowserWebSocketTransport
from tidesync.worker_sync.worker_thread.transport import TransportClosed
from tidesync.worker_sync.shared.message_types import (
    CltHeartbeat, CltInitProcessed, decode_message, encode_message, make)

def url(client_id, lsn="0/0"):
    return f"{WS}?clientId={client_id}&lsn={lsn}"

async def until(transport, type_name, limit=20):
    for _ in range(limit):
        message = decode_message(await transport.recv(), expect="srv")
        if message.type.value == type_name:
            return message
    raise AssertionError(f"no {type_name}")

async def live(client_id):
    t = BrowserWebSocketTransport()
    await t.open(url(client_id))
    await until(t, "srv_init_complete")
    await t.send(encode_message(make(CltInitProcessed, client_id, 1)))
    await until(t, "srv_catchup_completed")
    return t
"""


@pytest.fixture
def ws_worker(py_worker: Any, server: Any) -> Any:
    py_worker.run(f"WS = {server.ws_url!r}\n" + PRELUDE)
    return py_worker


def test_frames_flow_both_ways_and_close_surfaces_as_transport_closed(ws_worker: Any) -> None:
    cid = str(uuid.uuid4())
    result = ws_worker.run(f"""
t = await live({cid!r})
await t.send(encode_message(make(CltHeartbeat, {cid!r}, 1, lsn=0, active=True)))
beat = await until(t, "srv_heartbeat")
await t.close()
try:
    await t.recv()
    closed = None
except TransportClosed as exc:
    closed = exc.code
[beat.client_id, closed]
""")
    assert result == [cid, 1000]


def test_a_second_connection_of_the_same_client_closes_the_first_with_4409(
    ws_worker: Any,
) -> None:
    cid = str(uuid.uuid4())
    code = ws_worker.run(f"""
first = await live({cid!r})
second = await live({cid!r})
try:
    while True:
        await first.recv()
except TransportClosed as exc:
    code = exc.code
await second.close()
code
""")
    assert code == 4409


def test_connection_refused_raises_transport_closed(ws_worker: Any) -> None:
    port = free_port()
    outcome = ws_worker.run(f"""
t = BrowserWebSocketTransport()
try:
    await t.open("ws://127.0.0.1:{port}/api/sync?clientId=x&lsn=0/0")
    outcome = "opened"
except TransportClosed as exc:
    outcome = exc.code
outcome
""")
    assert outcome == 1006


def test_no_proxy_leaks_over_hundreds_of_reconnects_and_thousands_of_frames(
    ws_worker: Any,
) -> None:
    counts = ws_worker.run("""
cid = str(uuid.uuid4())
before = live_proxy_count()
for _ in range(150):
    t = await live(cid)
    await t.close()
t = await live(cid)
answers = {}
for i in range(2000):
    await t.send(encode_message(make(CltHeartbeat, cid, 1, lsn=0, active=True)))
    # every frame is answered: a heartbeat, or rate_limited once past the server's burst
    reply = decode_message(await t.recv(), expect="srv")
    answers[reply.type.value] = answers.get(reply.type.value, 0) + 1
assert sum(answers.values()) == 2000, answers
await t.close()
await asyncio.sleep(0)   # proxies are freed on the next loop turn
await asyncio.sleep(0)
[before, live_proxy_count()]
""")
    assert counts[1] == counts[0]


OPEN_EARLY = """
const m = await import('/js/sync_socket.mjs');
globalThis.frameUtf8 = m.frameUtf8;
globalThis.early = m.openEarly(URL_);
// what the Sync Worker's boot would take: the server's first frames arrive meanwhile
const t0 = performance.now();
while (globalThis.early.events.filter((e) => e.type === 'message').length < 2
       && performance.now() - t0 < 10000) {
  await new Promise((r) => setTimeout(r, 20));
}
return globalThis.early.events.map((e) => e.type);
"""


def test_the_socket_opened_before_boot_is_adopted_with_its_kept_frames_first(
    ws_worker: Any, server: Any
) -> None:
    """sync_socket.openEarly keeps what arrives before Python is up; the transport asked
    for that very URL takes it over, replays the kept events in order (open, then the
    snapshot's first frames) and goes on with the same socket."""
    cid = str(uuid.uuid4())
    early_url = f"{server.ws_url}?clientId={cid}&lsn=0/0"
    kept = ws_worker.js(OPEN_EARLY.replace("URL_", repr(early_url)))
    assert kept[0] == "open" and kept.count("message") >= 2
    result = ws_worker.run(f"""
import js
from tidesync.worker_sync.worker_thread.browser_websocket import EarlySocket
early = EarlySocket(js.early)
t = BrowserWebSocketTransport(early, js.frameUtf8)
await t.open(url({cid!r}))
first = decode_message(await t.recv(), expect="srv")
complete = await until(t, "srv_init_complete")
await t.send(encode_message(make(CltInitProcessed, {cid!r}, 1)))
caught_up = await until(t, "srv_catchup_completed")
again = BrowserWebSocketTransport(early, js.frameUtf8)  # a later attempt: a socket of its own
await again.open(url({cid!r}))  # replaces the first one on the server (4409 there)
try:
    while True:
        await t.recv()
except TransportClosed as exc:
    code = exc.code
await again.close()
[first.type.value, caught_up.type.value, early.outcome, code, js.early.events.length]
""")
    assert result == ["srv_init_start", "srv_catchup_completed", "adopted", 4409, 0]


def test_an_early_socket_for_another_url_is_closed_and_a_new_one_opened(
    ws_worker: Any, server: Any
) -> None:
    other = str(uuid.uuid4())
    ws_worker.js(OPEN_EARLY.replace("URL_", repr(f"{server.ws_url}?clientId={other}&lsn=0/0")))
    cid = str(uuid.uuid4())
    result = ws_worker.run(f"""
import js
from tidesync.worker_sync.worker_thread.browser_websocket import EarlySocket
early = EarlySocket(js.early)
t = BrowserWebSocketTransport(early, js.frameUtf8)
await t.open(url({cid!r}))
start = decode_message(await t.recv(), expect="srv")
await asyncio.sleep(0.2)
state = js.early.ws.readyState   # 2 closing, 3 closed
await t.close()
dropped = EarlySocket(None)
dropped.drop()
[early.outcome, start.type.value, state >= 2, dropped.outcome]
""")
    assert result == ["replaced", "srv_init_start", True, "none"]


def test_text_frames_cross_as_utf8_and_keep_every_character(ws_worker: Any, server: Any) -> None:
    """A snapshot row with text outside ASCII and outside the BMP arrives intact through
    ``frameUtf8`` (TextEncoder -> bytes -> str), the path every frame takes in the worker."""
    import sqlite3

    name = 'Gärten 🌱 — 東京 \\"quoted\\"'
    with sqlite3.connect(server.db_path) as conn:
        conn.execute(
            "INSERT INTO projects (id, name, updated_at) VALUES ('utf8-1', ?, ?)",
            (name, "2026-12-05T00:00:00.000Z"),
        )
    cid = str(uuid.uuid4())
    result = ws_worker.run(f"""
import js
m = await js.eval("import('/js/sync_socket.mjs')")
t = BrowserWebSocketTransport(None, m.frameUtf8)
await t.open(url({cid!r}))
names = []
while not names:  # srv_init_start, then the projects chunk
    message = json.loads(await t.recv())
    names = [change["data"].get("name") for change in message.get("changes") or []]
await t.close()
names
""")
    assert name in result
