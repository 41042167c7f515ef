"""Compile Python sources to bytecode inside the pinned Pyodide (run by precompile.mjs).

Pyodide's npm package ships its standard library as ``.py`` sources, so every cold
boot compiled ~150 modules in wasm before Python was usable (the interpreter's own
bootstrap plus asyncio, json, logging, dataclasses...), and our wheel's modules again.
Bytecode must come from the very interpreter that runs it (same magic number), which
is why this runs in Pyodide under Node at build time, never in the host CPython.

* The stdlib zip becomes ``.pyc`` only, as in Pyodide's own ``pyc`` distribution:
  zipimport prefers ``.pyc``, and without the sources the zip stays small. Code
  objects carry the path the zip is mounted at, so tracebacks name the right module.
* The wheel keeps its sources and gains ``__pycache__/*.<tag>.pyc`` next to them
  (listed in RECORD, so it stays a valid wheel): our tracebacks keep their lines.
  Modules that only run on CPython get none. Its entries are stored, not deflated:
  both workers install it at every boot, and js_shim/wheel_files.mjs then copies the
  files in from JavaScript instead of inflating them with zlib in wasm (the archive is
  ~1.3 MB instead of ~0.5 MB on the wire, before any HTTP compression).

Both use unchecked hash-based pycs (PEP 552): the sources and their bytecode ship in
one immutable file, so no loader needs to stat or hash a source to trust them.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import marshal
import sys
import sysconfig
import zipfile

# Never imported in the browser (they need CPython-only packages: starlette, websockets):
# no bytecode for them keeps the wheel each worker unpacks at every boot small.
CPYTHON_ONLY = (
    "tidesync/server/",
    "tidesync/sim/",
    "tidesync/native/",
    "tidesync/cli.py",
    "tidesync/__main__.py",
)

# The pyc header: magic, flags (0b01 = hash-based, unchecked), 8-byte source hash.
_UNCHECKED_HASH = (0b01).to_bytes(4, "little")


def _pyc(source: bytes, filename: str) -> bytes:
    code = compile(source, filename, "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + _UNCHECKED_HASH + importlib.util.source_hash(source)
    return header + marshal.dumps(code)


def _copy(
    zin: zipfile.ZipFile, zout: zipfile.ZipFile, info: zipfile.ZipInfo, stored: bool = False
) -> bytes:
    data = zin.read(info)
    if stored:
        info = zipfile.ZipInfo(info.filename, info.date_time)
        info.compress_type = zipfile.ZIP_STORED
    zout.writestr(info, data)
    return data


def stdlib(src: str, dst: str) -> int:
    """Rewrite the stdlib zip with every ``.py`` replaced by its ``.pyc``."""
    mounted = f"/lib/python{sys.version_info[0]}{sys.version_info[1]}.zip"
    n = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if not info.filename.endswith(".py"):
                _copy(zin, zout, info)
                continue
            pyc = _pyc(zin.read(info), f"{mounted}/{info.filename}")
            out = zipfile.ZipInfo(info.filename + "c", info.date_time)
            out.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(out, pyc)
            n += 1
    return n


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def wheel(src: str, dst: str) -> int:
    """Copy the wheel with a bytecode file for each module, listed in RECORD."""
    site = sysconfig.get_path("purelib")
    tag = sys.implementation.cache_tag
    added: list[tuple[str, bytes]] = []
    record_name = ""
    record: bytes = b""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename.endswith(".dist-info/RECORD"):
                record_name, record = info.filename, zin.read(info)
                continue
            data = _copy(zin, zout, info, stored=True)
            if info.filename.endswith(".py") and not info.filename.startswith(CPYTHON_ONLY):
                folder, _, name = info.filename.rpartition("/")
                cached = f"{folder}/__pycache__/{name[:-3]}.{tag}.pyc".lstrip("/")
                pyc = _pyc(data, f"{site}/{info.filename}")
                out = zipfile.ZipInfo(cached, info.date_time)
                out.compress_type = zipfile.ZIP_STORED
                zout.writestr(out, pyc)
                added.append((cached, pyc))
        if not record_name:
            raise SystemExit(f"{src}: no RECORD")
        rows = list(csv.reader(io.StringIO(record.decode())))
        keep = [r for r in rows if r and r[0] != record_name]
        keep += [[name, _record_hash(data), str(len(data))] for name, data in added]
        keep.append([record_name, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(keep)
        record_info = zipfile.ZipInfo(record_name, zin.getinfo(record_name).date_time)
        zout.writestr(record_info, text.getvalue())
    return len(added)
