"""Pyodide boots in a module worker of real Chromium, with the tidesync wheel installed."""

from browser_harness import PyWorker


def test_worker_boots_python_314_with_sqlite_and_tidesync(py_worker: PyWorker) -> None:
    info = py_worker.run(
        "import sys, sqlite3, importlib.metadata as md, tidesync\n"
        "{'py': list(sys.version_info[:2]), 'sqlite': sqlite3.sqlite_version,"
        " 'dist': md.version('tidesync')}"
    )
    assert info["py"] == [3, 14]
    assert info["sqlite"].startswith("3.")
    assert info["dist"]
    assert py_worker.run("1 + 1") == 2
    assert py_worker.boot_info["bootMillis"] > 0


def test_wheel_install_paths(py_worker: PyWorker) -> None:
    """Both ways of installing a pure-Python wheel without micropip work in Pyodide 314.

    (js_shim/boot.mjs uses unpackArchive without extractDir, which unpacks into the
    current directory, /home/pyodide; importable because '' is on sys.path.)
    """
    res = py_worker.js(
        """
        const py = ctx.pyodide;
        const site = py.runPython("import sysconfig; sysconfig.get_path('purelib')");
        const m = await (await fetch('/manifest.json')).json();
        const url = new URL('/' + m.wheel, location.href).href;
        py.unpackArchive(await (await fetch(url)).arrayBuffer(), 'wheel', {extractDir: site});
        const unpacked = py.FS.readdir(site).filter((n) => n.startsWith('tidesync'));
        await py.loadPackage(url);
        return {site, unpacked};
        """
    )
    assert "tidesync" in res["unpacked"]
    assert any(n.endswith(".dist-info") for n in res["unpacked"])
