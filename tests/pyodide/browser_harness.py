"""Real-Chromium harness: a static server for ``_site/`` and Pyodide module workers.

Used by tests/pyodide (fixtures in its conftest.py) and tests/e2e. Everything runs
real Pyodide (the pinned npm build copied into ``_site/pyodide``) inside MODULE
Web Workers of Debian's ``/usr/bin/chromium`` driven by Playwright; nothing is
mocked and nothing is skipped: a missing browser or an unbuilt site is an error.

Layout served (one origin, http://127.0.0.1:<random port>/):

    /                 _site/            (make site)
    /__tests__/       tests/pyodide/www/  (index.html, harness.mjs, py_worker.mjs)

Typical use::

    page = HarnessPage.open(context, server.url)   # loads /__tests__/index.html
    w = page.start_worker("w1")                     # Pyodide + tidesync wheel, booted
    w.mount(dir="t1", files=["app.sqlite3"])        # OPFS at /opfs
    w.run("import sqlite3; ...; result_value")      # last expression is returned
    w.close_opfs(); page.close()
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SITE_DIR = Path(os.environ.get("TIDESYNC_SITE_DIR", ROOT / "_site"))
WWW_DIR = Path(__file__).resolve().parent / "www"
CHROMIUM = os.environ.get("TIDESYNC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
HARNESS_PATH = "/__tests__/index.html"
# Pyodide boot in a worker takes 1-4 s here; generous for loaded CI machines.
BOOT_TIMEOUT_MS = 60_000
CALL_TIMEOUT_MS = 120_000

MIME = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".zip": "application/zip",
    ".whl": "application/zip",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".d.ts": "text/plain",
}


def require_site() -> Path:
    """Fail loudly (never skip) when the site has not been built."""
    manifest = SITE_DIR / "manifest.json"
    if not manifest.exists():
        raise RuntimeError(f"{manifest} missing: run `make site` first")
    data = json.loads(manifest.read_text())
    if not (SITE_DIR / data["wheel"]).exists():
        raise RuntimeError(f"{SITE_DIR / data['wheel']} missing: run `make site` again")
    return SITE_DIR


def require_chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: run `make chromium` "
            "(or set TIDESYNC_CHROMIUM); browser tests never skip"
        )
    return CHROMIUM


# --------------------------------------------------------------------------- server


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}
    mounts: dict[str, Path] = {}

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in self.mounts.items():
            if prefix != "/" and clean.startswith(prefix):
                rel = clean[len(prefix) :]
                return str(_safe_join(root, rel))
        return str(_safe_join(self.mounts["/"], clean.lstrip("/")))

    def end_headers(self) -> None:
        # Pinned Pyodide files may be cached (Chromium then reuses the compiled wasm,
        # which makes every further worker boot faster); everything else is fresh.
        if self.path.startswith("/pyodide/"):
            self.send_header("Cache-Control", "public, max-age=3600")
        else:
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _safe_join(root: Path, rel: str) -> Path:
    from urllib.parse import unquote

    target = (root / unquote(rel)).resolve()
    if root.resolve() not in (target, *target.parents):
        return root / "__forbidden__"
    return target


class StaticServer:
    """Threaded HTTP server on 127.0.0.1 with a random free port."""

    def __init__(self, mounts: dict[str, Path]):
        handler = type("Handler", (_Handler,), {"mounts": dict(mounts)})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def site_server() -> StaticServer:
    return StaticServer({"/": require_site(), "/__tests__/": WWW_DIR})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- browser


def launch_persistent(playwright: Any, user_data_dir: str | Path, **kw: Any) -> Any:
    """A persistent Chromium context (OPFS survives pages, crashes and relaunches)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=require_chromium(),
        headless=kw.pop("headless", True),
        args=CHROMIUM_ARGS,
        **kw,
    )


class WorkerError(RuntimeError):
    pass


class PyWorker:
    """One module Web Worker in a HarnessPage running Pyodide with tidesync installed."""

    def __init__(self, page: HarnessPage, name: str, boot: dict[str, Any]):
        self.page = page
        self.name = name
        self.boot_info = boot

    def _call(self, op: str, args: dict[str, Any] | None = None, timeout_ms: int = 0) -> Any:
        try:
            return self.page.page.evaluate(
                "([n, op, a]) => window.tidesyncTest.call(n, op, a)",
                [self.name, op, args or {}],
            )
        except Exception as e:  # playwright.Error: make the Python side readable
            raise WorkerError(f"{self.name}.{op}: {e}\n{self.page.log_tail()}") from None

    def run(self, code: str) -> Any:
        """Run Python (``runPythonAsync``, top-level await allowed) in this worker's
        namespace; return the last expression converted to JSON-able values."""
        return self._call("run", {"code": code})

    def mount(self, **options: Any) -> dict[str, Any]:
        """``mountOpfs(pyodide, options)``; Python then sees ``opfs_storage``."""
        return self._call("mount", {"options": options})  # type: ignore[no-any-return]

    def close_opfs(self) -> None:
        self._call("close")

    def stats(self, reset: bool = False) -> dict[str, int]:
        return self._call("stats", {"reset": reset})  # type: ignore[no-any-return]

    def js(self, code: str) -> Any:
        """Run ``async (ctx) => { <code> }`` in the worker; ctx = {pyodide, storage, opfs}."""
        return self._call("js", {"code": code})

    def terminate(self) -> None:
        self.page.page.evaluate("(n) => window.tidesyncTest.terminate(n)", self.name)


class HarnessPage:
    """A page on /__tests__/index.html that can start Pyodide workers."""

    def __init__(self, page: Any, base_url: str):
        self.page = page
        self.base_url = base_url
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.set_default_timeout(CALL_TIMEOUT_MS)

    @classmethod
    def open(cls, context: Any, base_url: str) -> HarnessPage:
        hp = cls(context.new_page(), base_url)
        hp.page.goto(base_url + HARNESS_PATH)
        hp.page.wait_for_function("window.tidesyncTest && window.tidesyncTest.loaded")
        return hp

    def start_worker(self, name: str = "w") -> PyWorker:
        try:
            boot = self.page.evaluate("(n) => window.tidesyncTest.start(n)", name)
        except Exception as e:
            raise WorkerError(f"worker {name} failed to boot: {e}\n{self.log_tail()}") from None
        return PyWorker(self, name, boot)

    def list_opfs(self, dir: str) -> dict[str, int]:
        return self.page.evaluate("(d) => window.tidesyncTest.listOpfs(d)", dir)  # type: ignore[no-any-return]

    def remove_opfs_dir(self, dir: str) -> None:
        self.page.evaluate("(d) => window.tidesyncTest.removeOpfsDir(d)", dir)

    def log_tail(self, n: int = 40) -> str:
        try:
            worker_log = self.page.evaluate("() => window.tidesyncTest.log.slice(-40)")
        except Exception:
            worker_log = []
        lines = [*self.console[-n:], *worker_log]
        return "\n".join(lines[-n:])

    def crash(self) -> None:
        """Kill this page's renderer process (and its workers) like a tab crash."""
        cdp = self.page.context.new_cdp_session(self.page)
        crashed: list[bool] = []
        self.page.on("crash", lambda _p: crashed.append(True))
        # Page.crash never answers (the renderer dies); that is the point.
        with suppress(Exception):
            cdp.send("Page.crash", timeout=2000)
        for _ in range(50):
            if crashed:
                break
            with suppress(Exception):
                self.page.wait_for_timeout(100)
        if not crashed:
            raise RuntimeError("Page.crash did not crash the renderer")

    def close(self) -> None:
        with suppress(Exception):
            self.page.close()


@contextmanager
def temp_user_data_dir(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


__all__ = [
    "CHROMIUM_ARGS",
    "HarnessPage",
    "PyWorker",
    "StaticServer",
    "WorkerError",
    "free_port",
    "launch_persistent",
    "require_chromium",
    "require_site",
    "site_server",
    "temp_user_data_dir",
]
