"""tests/e2e: whole-site tests in real Chromium.

Reuses the browser harness of tests/pyodide (browser_harness.py, browser_fixtures.py):
``site_url``, ``playwright_sync``, ``browser_context``, ``harness_page``,
``py_worker``, ``opfs_dir``, ``new_context``; adds ``chromium`` (one browser per module),
``site_server`` and ``contexts``. Nothing here skips: a missing
Chromium or an unbuilt site (`make site`) fails the run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pyodide"))

from browser_fixtures import *  # noqa: F403
from browser_harness import CHROMIUM, CHROMIUM_ARGS, SITE_DIR, require_site


@pytest.fixture(scope="module")
def chromium(playwright_sync: Any) -> Iterator[Any]:
    """A non-persistent browser: each new_context() is a separate client (own OPFS)."""
    require_site()
    browser = playwright_sync.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def site_server(server_factory: Callable[..., Any]) -> Any:
    """The real sync server serving the built site, demo data seeded, 1 s heartbeats."""
    return server_factory(site=str(SITE_DIR), heartbeat=1, seed_demo=True)


@pytest.fixture
def contexts(chromium: Any) -> Iterator[Callable[[], Any]]:
    """New browser contexts on demand (each its own client: own OPFS), closed after."""
    opened: list[Any] = []

    def make() -> Any:
        context = chromium.new_context()
        opened.append(context)
        return context

    yield make
    for context in opened:
        with contextlib.suppress(Exception):
            context.close()
