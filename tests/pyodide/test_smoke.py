"""Pyodide boots in a module worker of real Chromium, with the tidesync wheel installed."""

from browser_harness import PyWorker


def test_worker_boots_python_314_with_sqlite_and_tidesync(py_worker: PyWorker) -> None:
    info = py_worker.run(
        "import sys, sqlite3, tidesync\n"
        "{'py': list(sys.version_info[:2]), 'sqlite': sqlite3.sqlite_version,"
        " 'tidesync': tidesync.__file__}"
    )
    assert info["py"] == [3, 14]
    assert info["sqlite"].startswith("3.")
    assert "site-packages/tidesync" in info["tidesync"]
    assert py_worker.run("1 + 1") == 2
