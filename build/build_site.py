#!/usr/bin/env python3
"""Assemble the servable static site in ``_site/`` (``make site``).

Layout produced::

    _site/
      index.html ...          copied from web_demo/ (the demo page, if any)
      manifest.json           {"pyodide", "wheel": "wheels/<file>.whl", "wheelSha256",
                              "stdlibSha256", "snapshot", "version", "files"}
      pyodide/                pyodide.mjs, pyodide.asm.mjs, pyodide.asm.wasm,
                              pyodide-lock.json (npm package, pinned), python_stdlib.zip
                              (the package's, compiled to bytecode)
      wheels/tidesync-*.whl   the pure-Python wheel built from this repository (plus bytecode)
      js/                     js_shim/ (worker bootstraps, OPFS file system, page API)
      snapshot/<key>.pages.bin.gz
                              the workers' Pyodide memory snapshot for a first visit,
                              taken under Node by build/make_snapshot.mjs (a gzipped
                              paged heap: js_shim/paged_heap.mjs)

Pyodide comes from the npm package ``pyodide`` pinned in build/package.json and
build/package-lock.json; ``npm ci --prefix build`` runs only when the installed
tree does not match the lock (a stamp file in node_modules records the lock hash).

The wheel is rebuilt only when the hash of its inputs (pyproject.toml and every
file under py_src/) changes. Workers install it without micropip: they fetch it
and call ``pyodide.unpackArchive(buffer, "wheel")`` (see js_shim/boot.mjs).

Bytecode: Pyodide's npm package ships the stdlib as sources, which every cold boot
compiled again in wasm. build/precompile.mjs runs the pinned Pyodide under Node to
serve ``pyodide/python_stdlib.zip`` as ``.pyc`` (Pyodide's own "pyc" distribution)
and to add ``__pycache__`` bytecode to the wheel (sources kept); see precompile.py.

Memory snapshot (on by default; ``TIDESYNC_SITE_SNAPSHOT=0`` builds a site without one): a
first visit has no stored snapshot and would boot the interpreter and import every module
before anything is readable. build/make_snapshot.mjs takes that heap at build time (the
site's own Pyodide, stdlib, wheel and js/boot.mjs) and the manifest names it with what it
was made from; js_shim/boot.mjs restores it when it matches and stores it for the next
start. Measured (docs/performance.md): a first visit is readable ~0.5 s sooner and a
100k-row first visit (the server's image) live ~0.5 s sooner; a reload at the very moment
the first visit went live can be up to ~0.1 s slower (V8 had not yet cached its optimised
code; later runs put it at less, see docs/performance.md).

Idempotent: running it twice with nothing changed copies nothing and runs neither
npm nor pip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
SITE = Path(os.environ.get("TIDESYNC_SITE_DIR", ROOT / "_site"))
PYODIDE_VERSION = "314.0.7"
PYODIDE_FILES = (
    "pyodide.mjs",
    "pyodide.asm.mjs",
    "pyodide.asm.wasm",
    "python_stdlib.zip",
    "pyodide-lock.json",
)
# Served compiled (precompile_stdlib), not copied as npm ships it.
STDLIB = "python_stdlib.zip"
PRECOMPILE = (BUILD / "precompile.mjs", BUILD / "precompile.py")
MAKE_SNAPSHOT = BUILD / "make_snapshot.mjs"
NODE_MODULES = BUILD / "node_modules"
LOCK_STAMP = NODE_MODULES / ".tidesync-lock.sha256"


def log(msg: str) -> None:
    print(f"build_site: {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> list[Path]:
    if not root.exists():
        return []
    skip_dirs = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in skip_dirs and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            out.append(Path(dirpath) / name)
    return out


def hash_inputs(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- pyodide


def ensure_node_modules() -> Path:
    lock = BUILD / "package-lock.json"
    want = sha256_file(lock)
    pkg_dir = NODE_MODULES / "pyodide"
    have = LOCK_STAMP.read_text().strip() if LOCK_STAMP.exists() else ""
    if have == want and all((pkg_dir / f).exists() for f in PYODIDE_FILES):
        return pkg_dir
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("build_site: npm not found (apt-get install nodejs npm)")
    log(f"npm ci --prefix build (pyodide {PYODIDE_VERSION})")
    subprocess.run(
        [npm, "ci", "--prefix", str(BUILD), "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
        cwd=BUILD,
    )
    installed = json.loads((pkg_dir / "package.json").read_text())["version"]
    if installed != PYODIDE_VERSION:
        sys.exit(f"build_site: npm installed pyodide {installed}, expected {PYODIDE_VERSION}")
    LOCK_STAMP.write_text(want + "\n")
    return pkg_dir


def copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy src to dst unless dst already has the same size and mtime."""
    if dst.exists():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return True


def sync_tree(src: Path, dst: Path, *, prune: bool = True) -> int:
    """Mirror src into dst (files only); return the number of files copied."""
    copied = 0
    wanted = set()
    for f in tree_files(src):
        rel = f.relative_to(src)
        wanted.add(rel)
        copied += copy_if_changed(f, dst / rel)
    if prune and dst.exists():
        for f in tree_files(dst):
            if f.relative_to(dst) not in wanted:
                f.unlink()
    return copied


# --------------------------------------------------------------------------- wheel


def node_binary() -> str:
    """Node runs the pinned Pyodide at build time (bytecode, the site's snapshot)."""
    node = shutil.which("node")
    if node is None:
        sys.exit("build_site: node not found (apt-get install nodejs npm)")
    return node


def precompile(pkg_dir: Path, *jobs: tuple[str, Path, Path]) -> None:
    """Compile to bytecode in the pinned Pyodide under Node (build/precompile.py)."""
    args = [node_binary(), str(BUILD / "precompile.mjs"), str(pkg_dir)]
    for kind, src, dst in jobs:
        args += [kind, str(src), str(dst)]
    env = dict(os.environ)
    compiled = SITE / "pyodide" / STDLIB
    if compiled.exists() and all(kind != "stdlib" for kind, _, _ in jobs):
        env["TIDESYNC_BOOT_STDLIB"] = str(compiled)  # boots faster; same output
    subprocess.run(args, check=True, env=env)


def precompile_stdlib(pkg_dir: Path) -> None:
    """pyodide/python_stdlib.zip as bytecode, redone when Pyodide or the compiler changes."""
    dst = SITE / "pyodide" / STDLIB
    stamp = SITE / "pyodide" / ".stdlib.sha256"
    want = hash_inputs([BUILD / "package-lock.json", *PRECOMPILE])
    if dst.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return
    log("compiling the Pyodide stdlib to bytecode")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    precompile(pkg_dir, ("stdlib", pkg_dir / STDLIB, tmp))
    os.replace(tmp, dst)
    stamp.write_text(want + "\n")


def build_wheel(pkg_dir: Path, inputs_hash: str) -> Path:
    wheels = SITE / "wheels"
    stamp = wheels / ".inputs.sha256"
    existing = sorted(wheels.glob("tidesync-*.whl")) if wheels.exists() else []
    if len(existing) == 1 and stamp.exists() and stamp.read_text().strip() == inputs_hash:
        return existing[0]
    log("building the tidesync wheel")
    with tempfile.TemporaryDirectory(prefix="tidesync-wheel-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                tmp,
                str(ROOT),
            ],
            check=True,
        )
        built = sorted(Path(tmp).glob("tidesync-*.whl"))
        if len(built) != 1:
            sys.exit(f"build_site: expected one tidesync wheel, got {built}")
        if not built[0].name.endswith("-py3-none-any.whl"):
            sys.exit(f"build_site: wheel is not pure Python: {built[0].name}")
        wheels.mkdir(parents=True, exist_ok=True)
        for old in existing:
            old.unlink()
        dst = wheels / built[0].name
        precompile(pkg_dir, ("wheel", built[0], dst))
    stamp.write_text(inputs_hash + "\n")
    # setuptools leaves a build/lib tree next to our sources when run in-tree.
    for leftover in (BUILD / "lib", *BUILD.glob("bdist.*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    return dst


# --------------------------------------------------------------------------- snapshot


def build_snapshot(wheel: Path, made_from: dict[str, str]) -> dict[str, object] | None:
    """The site's memory snapshot (``snapshot/<key>.pages.bin.gz``) and its manifest entry.

    Redone when anything the heap holds changes: Pyodide (the lock), the stdlib zip, the
    wheel (``made_from``: the manifest's version and hashes of them), or the boot steps and
    module list (js_shim/boot.mjs, make_snapshot.mjs). The entry records ``made_from``, so
    a page never restores it with other files.
    """
    if os.environ.get("TIDESYNC_SITE_SNAPSHOT", "1") != "1":
        shutil.rmtree(SITE / "snapshot", ignore_errors=True)
        return None
    steps = hash_inputs(
        [
            BUILD / "package-lock.json",
            MAKE_SNAPSHOT,
            ROOT / "js_shim" / "boot.mjs",
            ROOT / "js_shim" / "paged_heap.mjs",
            ROOT / "js_shim" / "wheel_files.mjs",
        ]
    )
    key = hashlib.sha256(json.dumps([steps, made_from], sort_keys=True).encode()).hexdigest()[:16]
    out_dir = SITE / "snapshot"
    dst = out_dir / f"{key}.pages.bin.gz"
    meta = out_dir / f"{key}.json"
    if not (dst.exists() and meta.exists()):
        log("taking the Pyodide memory snapshot")
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        done = subprocess.run(
            [node_binary(), str(MAKE_SNAPSHOT), str(SITE), str(wheel), str(tmp)],
            check=True,
            capture_output=True,
            text=True,
        )
        raw = json.loads(done.stdout.strip().splitlines()[-1])["bytes"]
        for old in out_dir.iterdir():
            if old != tmp:
                old.unlink()
        os.replace(tmp, dst)
        meta.write_text(json.dumps({"bytes": raw}) + "\n")
    raw_bytes = json.loads(meta.read_text())["bytes"]
    return {"file": f"snapshot/{dst.name}", "bytes": raw_bytes, "encoding": "pages", **made_from}


# --------------------------------------------------------------------------- main


def main() -> int:
    SITE.mkdir(parents=True, exist_ok=True)

    pkg_dir = ensure_node_modules()
    n = 0
    for name in PYODIDE_FILES:
        if name != STDLIB:
            n += copy_if_changed(pkg_dir / name, SITE / "pyodide" / name)
    if n:
        log(f"pyodide: copied {n} file(s)")
    precompile_stdlib(pkg_dir)

    # The lock and the compiler are inputs too: the wheel carries their bytecode.
    wheel_inputs = [ROOT / "pyproject.toml", *tree_files(ROOT / "py_src")]
    wheel_hash = hash_inputs([*wheel_inputs, BUILD / "package-lock.json", *PRECOMPILE])
    wheel = build_wheel(pkg_dir, wheel_hash)

    n = sync_tree(ROOT / "js_shim", SITE / "js")
    if n:
        log(f"js: copied {n} file(s)")
    # web_demo/ goes to the site root; never prune there (pyodide/, js/, wheels/ live there).
    n = sync_tree(ROOT / "web_demo", SITE, prune=False)
    if n:
        log(f"web_demo: copied {n} file(s)")
    # What the workers' memory snapshot is keyed by (js_shim/boot.mjs): a snapshot taken
    # with another wheel's modules imported must never be restored, and the heap also holds
    # zipimport's index of the stdlib zip.
    made_from = {
        "pyodide": PYODIDE_VERSION,
        "wheelSha256": sha256_file(wheel),
        "stdlibSha256": sha256_file(SITE / "pyodide" / STDLIB),
    }
    # After js/: the snapshot is taken with the site's own boot.mjs.
    snapshot = build_snapshot(wheel, made_from)

    version_inputs = [
        BUILD / "package-lock.json",
        *PRECOMPILE,
        MAKE_SNAPSHOT,
        *wheel_inputs,
        *tree_files(ROOT / "js_shim"),
        *tree_files(ROOT / "web_demo"),
    ]
    # Every file the site serves from js/ and the demo, so a service worker can
    # precache the shell without a hand-kept list (pyodide/ and the wheel are named apart).
    shell = sorted(
        [f"js/{p.relative_to(ROOT / 'js_shim').as_posix()}" for p in tree_files(ROOT / "js_shim")]
        + [p.relative_to(ROOT / "web_demo").as_posix() for p in tree_files(ROOT / "web_demo")]
    )
    manifest = {
        "pyodide": made_from["pyodide"],
        "wheel": f"wheels/{wheel.name}",
        "wheelSha256": made_from["wheelSha256"],
        "stdlibSha256": made_from["stdlibSha256"],
        **({"snapshot": snapshot} if snapshot else {}),
        "version": hash_inputs(version_inputs)[:16],
        "files": [f for f in shell if not f.endswith((".py", ".md"))],
    }
    text = json.dumps(manifest, indent=2) + "\n"
    mpath = SITE / "manifest.json"
    if not mpath.exists() or mpath.read_text() != text:
        mpath.write_text(text)
        log(f"manifest.json: version {manifest['version']}")
    log(f"ok: {SITE.relative_to(ROOT) if SITE.is_relative_to(ROOT) else SITE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
