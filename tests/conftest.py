"""Shared fixtures: the real sync server as a subprocess (see tests/helpers/server_process.py).

* ``server_factory(schema_sql=None, **cli_options)`` starts a server in its own
  temporary directory (``tmp_path / "server-N"``); every server is stopped at
  teardown.
* ``server``: one server with the demo schema.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.server_process import ServerHandle, start_server

ServerFactory = Callable[..., ServerHandle]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[ServerHandle] = []

    def factory(schema_sql: str | None = None, **cli_options: Any) -> ServerHandle:
        workdir = tmp_path / f"server-{len(started) + 1}"
        handle = start_server(workdir, schema_sql, **cli_options)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerHandle:
    return server_factory()
