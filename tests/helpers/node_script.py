"""Run a JavaScript module of the shim under Node, for its unit tests.

Node is the build's own runtime (``make site`` runs build/*.mjs with it), so the tests of
the shim's pure modules (no DOM, no worker: js_shim/paged_heap.mjs, wheel_files.mjs) run
there, on the same code the browser loads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def shim_module_url(name: str) -> str:
    """The ``file:`` URL of ``js_shim/<name>``, for a script's ``import``."""
    return (ROOT / "js_shim" / name).as_uri()


def run_node_script(folder: Path, script: str, *args: str) -> Any:
    """Run ``script`` (an ES module) with ``args``; the JSON of its last output line."""
    node = shutil.which("node")
    assert node, "node is required (make site runs the build's Node scripts)"
    path = folder / "check.mjs"
    path.write_text(script)
    done = subprocess.run([node, str(path), *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
