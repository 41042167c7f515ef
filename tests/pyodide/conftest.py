"""tests/pyodide: real Pyodide in real Chromium; fixtures live in browser_fixtures.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_fixtures import *  # noqa: F403
