"""HTTP side of the real server: health and the static site's types and caching."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
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
        "bootstrap": {"served": 0, "built": 0, "lsn": None, "rows": 0, "bytes": 0},
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


def _bootstrap(url: str, *, gzip_ok: bool = True) -> tuple[int, Message, bytes]:
    headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _adopt(image: bytes, path: Path) -> int:
    """Adopt ``image`` into a new client database with the browser's settings; its tasks."""
    from tidesync.changes.bootstrap_image import adopt_image
    from tidesync.changes.db import open_connection
    from tidesync.schema import Schema

    conn = open_connection(
        str(path), {"page_size": 2048, "locking_mode": "EXCLUSIVE", "journal_mode": "WAL"}
    )
    try:
        adopt_image(conn, Schema.demo(), image)
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        conn.close()


def test_bootstrap_serves_a_checked_database_image_gzipped_built_once_per_lsn(
    tmp_path: Path, server_factory: Callable[..., ServerHandle]
) -> None:
    import gzip

    server = server_factory(allow_seed=True, bootstrap_min_rows=1000)
    assert _post(server.http_url + "/api/seed?tasks=1500")[0] == 200
    url = server.http_url + "/api/bootstrap?pageSize=2048"
    status, headers, body = _bootstrap(url)
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/vnd.sqlite3"
    assert headers["Access-Control-Allow-Origin"] == "*"  # the site may be another origin
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Tidesync-Lsn"] == server.health()["lsn"]
    image = gzip.decompress(body)
    assert image.startswith(b"SQLite format 3\x00")
    tasks = int(headers["X-Tidesync-Rows"]) - 10  # seed_tasks adds 10 projects
    assert tasks == 1500
    assert _adopt(image, tmp_path / "client.db") == 1500
    # A client without gzip gets the same file; neither request built it again.
    status, headers, plain = _bootstrap(url, gzip_ok=False)
    assert status == 200 and "Content-Encoding" not in headers and plain == image
    assert server.health()["bootstrap"] == {
        "served": 2,
        "built": 1,
        "lsn": server.health()["bootstrap"]["lsn"],
        "rows": 1510,
        "bytes": len(body),
    }


def test_bootstrap_answers_204_for_a_small_snapshot_400_for_a_bad_page_size(
    server_factory: Callable[..., ServerHandle],
) -> None:
    server = server_factory(seed_demo=True)  # a handful of rows: streaming them is cheaper
    assert _bootstrap(server.http_url + "/api/bootstrap?pageSize=2048")[0] == 204
    for bad in ("", "1000", "256", "131072", "x"):
        status, headers, body = _bootstrap(server.http_url + f"/api/bootstrap?pageSize={bad}")
        assert status == 400, bad
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert b"page size" in body or b"invalid literal" in body


def test_bootstrap_is_404_when_the_server_runs_without_images(
    server_factory: Callable[..., ServerHandle],
) -> None:
    """As a server without the endpoint answers: clients then stream the initial sync."""
    server = server_factory(bootstrap_mib=0, seed_demo=True)
    assert _bootstrap(server.http_url + "/api/bootstrap?pageSize=2048")[0] == 404
    assert "bootstrap" not in server.health()
