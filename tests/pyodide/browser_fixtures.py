"""Pytest fixtures for real Pyodide in real Chromium (see browser_harness.py).

Imported by tests/pyodide/conftest.py and tests/e2e/conftest.py with
``from browser_fixtures import *``.

Fixtures:
  site_url         session: base URL of a static server for _site/ (+ /__tests__/)
  playwright_sync  session: a started sync Playwright
  browser_context  session: persistent Chromium context (temp user-data-dir), shared
  harness_page     function: a HarnessPage in browser_context; .start_worker(name)
  py_worker        function: harness_page.start_worker("w") (Pyodide + tidesync wheel)
  opfs_dir         function: a fresh OPFS directory name, removed afterwards
  new_context      function: factory -> (context, user_data_dir) for tests that crash
                   or relaunch the browser; contexts are closed at teardown

pytest-pyodide is installed (dev extra) but not used here: its runners execute
Python on a page's main thread, and OPFS sync access handles exist only in
dedicated workers, which is where tidesync runs SQLite.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


from browser_harness import (
    HarnessPage,
    PyWorker,
    launch_persistent,
    require_chromium,
    site_server,
)

__all__ = [
    "browser_context",
    "harness_page",
    "new_context",
    "opfs_dir",
    "playwright_sync",
    "py_worker",
    "site_url",
]


@pytest.fixture(scope="session")
def site_url() -> Iterator[str]:
    with site_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def playwright_sync() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="session")
def browser_context(
    playwright_sync: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    ctx = launch_persistent(playwright_sync, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def harness_page(browser_context: Any, site_url: str) -> Iterator[HarnessPage]:
    page = HarnessPage.open(browser_context, site_url)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def py_worker(harness_page: HarnessPage) -> PyWorker:
    return harness_page.start_worker("w")


@pytest.fixture
def opfs_dir(browser_context: Any, site_url: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    page = HarnessPage.open(browser_context, site_url)
    try:
        page.remove_opfs_dir(name)
    except Exception:
        pass  # still locked by a worker of a test that failed; the profile is temporary
    finally:
        page.close()


@pytest.fixture
def new_context(
    playwright_sync: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., tuple[Any, Path]]]:
    opened: list[Any] = []

    def make(user_data_dir: Path | None = None) -> tuple[Any, Path]:
        udd = user_data_dir or tmp_path_factory.mktemp("chromium-profile")
        ctx = launch_persistent(playwright_sync, udd)
        opened.append(ctx)
        return ctx, udd

    yield make
    for ctx in opened:
        with contextlib.suppress(Exception):
            ctx.close()
