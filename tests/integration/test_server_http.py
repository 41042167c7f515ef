"""HTTP side of the real server: health and the static site's types and caching."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.helpers.server_process import ServerHandle


def _get(url: str) -> tuple[str, str | None, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.headers["Cache-Control"], response.read()


def test_health_reports_lsn_and_clients(server: ServerHandle) -> None:
    assert server.health() == {
        "status": "ok",
        "lsn": "0/0",
        "clients": 0,
        "snapshotCache": {"hits": 0, "kept": 0, "lsn": None, "rows": 0, "bytes": 0},
    }


def test_site_files_get_module_and_wasm_types_and_cache_rules(
    tmp_path: Path, server_factory: Callable[..., ServerHandle]
) -> None:
    site = tmp_path / "site"
    (site / "pyodide").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hi</h1>")
    (site / "app.mjs").write_text("export {}")
    (site / "manifest.webmanifest").write_text("{}")
    (site / "pyodide" / "pyodide.asm.wasm").write_bytes(b"\0asm")
    server = server_factory(site=site, seed_demo=True)
    kind, cache, body = _get(server.http_url + "/")
    assert kind.startswith("text/html") and cache == "no-cache" and b"hi" in body
    assert _get(server.http_url + "/app.mjs")[0].startswith("text/javascript")
    assert _get(server.http_url + "/manifest.webmanifest")[0] == "application/manifest+json"
    kind, cache, _ = _get(server.http_url + "/pyodide/pyodide.asm.wasm")
    assert kind == "application/wasm" and "immutable" in (cache or "")
    assert server.health()["lsn"] != "0/0"  # --seed-demo went through the history


def _post(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_seed_endpoint_exists_only_with_allow_seed_and_writes_through_history(
    server_factory: Callable[..., ServerHandle],
) -> None:
    closed = server_factory()
    assert _post(closed.http_url + "/api/seed?tasks=10")[0] in (404, 405)
    open_ = server_factory(allow_seed=True)
    assert _post(open_.http_url + "/api/seed?tasks=nope")[0] == 400
    assert _post(open_.http_url + "/api/seed?tasks=0")[0] == 400
    status, body = _post(open_.http_url + "/api/seed?tasks=250")
    assert status == 200 and b'"added":250' in body
    # 250 tasks + 10 projects, each captured as a history row
    assert open_.health()["lsn"] == "0/104"
