"""tests/e2e: whole-site tests in real Chromium.

Reuses the browser harness of tests/pyodide (browser_harness.py, browser_fixtures.py):
``site_url``, ``playwright_sync``, ``browser_context``, ``harness_page``,
``py_worker``, ``opfs_dir``, ``new_context``. Nothing here skips: a missing
Chromium or an unbuilt site (`make site`) fails the run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pyodide"))

from browser_fixtures import *  # noqa: F403
