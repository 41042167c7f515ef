"""Large JSON texts cross the MessageChannel between the workers as UTF-8 bytes
(``tidesync._pyodide.post_with_utf8`` on the Sync side, ``decode_from_page`` on the
Changes side), in a real Pyodide worker over a real ``MessageChannel``."""

from __future__ import annotations

from typing import Any


def test_a_large_text_argument_crosses_as_utf8_bytes_and_decodes_to_the_same_json(
    py_worker: Any,
) -> None:
    result = py_worker.run("""
import asyncio, json, js
from tidesync._pyodide import post_with_utf8, read_utf8_carrier
from tidesync._pyodide import ProxyGroup
from tidesync.changes.browser_entry import decode_from_page
from tidesync.worker_sync.shared.port_codec import channel_text

rows = [{"id": f"t{i}", "title": f"Gärten 🌱 東京 \\\\ \\" {i}"} for i in range(400)]
big = json.dumps({"type": "srv_init_changes", "changes": rows}, ensure_ascii=False)
channel = js.MessageChannel.new()
received = []
group = ProxyGroup()
channel.port2.onmessage = group.proxy(lambda event: received.append(decode_from_page(event.data)))
sent_big = post_with_utf8(channel.port1.postMessage, {"id": 7, "cmd": "port.stage_initial_chunk",
                          "args": {"table": "tasks", "changes_json": big}}, channel_text)
sent_small = post_with_utf8(channel.port1.postMessage, {"id": 8, "cmd": "port.x",
                            "args": {"changes_json": "[]"}}, channel_text)
lone = "\\ud800" + "x" * 5000
sent_lone = post_with_utf8(channel.port1.postMessage, {"id": 9, "cmd": "port.x",
                           "args": {"changes_json": lone}}, channel_text)
for _ in range(100):
    if received:
        break
    await asyncio.sleep(0.01)
message = received[0]
payload = message["args"]["changes_json"]
group.destroy()
[sent_big, sent_small, sent_lone, message["id"], message["cmd"], message["args"]["table"],
 type(payload).__name__, json.loads(payload) == json.loads(big),
 read_utf8_carrier("text") is None]
""")
    expected = [True, False, False, 7, "port.stage_initial_chunk", "tasks", "bytes", True, True]
    assert result == expected
