"""Run the REAL sync server as a subprocess on loopback, for integration tests.

Stable API (other test suites rely on it)::

    handle = start_server(tmp_path, schema_sql=None, **cli_options)
    handle.ws_url     # "ws://127.0.0.1:PORT/api/sync"  (add ?clientId=...&lsn=...)
    handle.http_url   # "http://127.0.0.1:PORT"
    handle.db_path    # Path of the server's SQLite file (tmp_path / "server.db")
    handle.port
    handle.health()   # the /api/health JSON: {"status", "lsn", "clients"}
    handle.kill()     # SIGKILL (crash); handle.stop(): SIGTERM (graceful)
    handle.restart()  # stop if running, start again on the same db and port
    handle.log_text() # what the server logged so far (stdout + stderr)

``cli_options`` become ``tidesync serve`` flags: ``heartbeat=1`` ->
``--heartbeat 1``, ``seed_demo=True`` -> ``--seed-demo``, ``site=dir`` ->
``--site dir``.  ``schema_sql`` is written to ``tmp_path / "schema.sql"`` and
passed as ``--schema``.  ``start_server`` returns once ``/api/health`` answers.

Fixtures (tests/conftest.py): ``server_factory`` (calls ``start_server``, stops
every server at teardown) and ``server`` (one demo-schema server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ServerHandle", "free_port", "start_server"]

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerHandle:
    """One server subprocess; see the module docstring."""

    def __init__(self, workdir: Path, args: list[str], db_path: Path, port: int) -> None:
        self.workdir = workdir
        self.args = args
        self.db_path = db_path
        self.port = port
        self.host = "127.0.0.1"
        self.http_url = f"http://{self.host}:{port}"
        self.ws_url = f"ws://{self.host}:{port}/api/sync"
        self.log_path = workdir / f"server-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerHandle:
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidesync", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        log.close()
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_text()}"
                )
            try:
                self.health()
                return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"server did not answer /api/health:\n{self.log_text()}")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http_url}/api/health", timeout=2) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal(self, sig: int, wait: float = 10.0) -> None:
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: graceful shutdown (clients get 1001/1012)."""
        self._signal(signal.SIGTERM)

    def restart(self) -> ServerHandle:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _flags(options: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        else:
            out += [flag, str(value)]
    return out


def start_server(tmp_path: Path, schema_sql: str | None = None, **cli_options: Any) -> ServerHandle:
    """Start ``python -m tidesync serve`` on a free loopback port; see the module docstring."""
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    options = dict(cli_options)
    db_path = Path(options.pop("db", tmp_path / "server.db"))
    port = int(options.pop("port", free_port()))
    options.setdefault("log_level", "INFO")
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(db_path)]
    if schema_sql is not None:
        schema_file = tmp_path / "schema.sql"
        schema_file.write_text(schema_sql, encoding="utf-8")
        args += ["--schema", str(schema_file)]
    args += _flags(options)
    return ServerHandle(tmp_path, args, db_path, port).start()
