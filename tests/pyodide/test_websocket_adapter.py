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
