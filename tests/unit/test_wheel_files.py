"""js_shim/wheel_files.mjs: how both workers read the site's stored wheel at every boot.

Run under Node (the build's runtime, required by ``make site``) on archives written by
Python's ``zipfile``: the files come out byte for byte, a wheel with a compressed entry
is left to Pyodide's ``unpackArchive`` (null), and a damaged or unsafe archive is refused
with a clear error instead of writing anything.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from tests.helpers.node_script import run_node_script, shim_module_url

MODULE = shim_module_url("wheel_files.mjs")

SCRIPT = """
import { crc32, storedZipFiles } from "%s";
const cases = JSON.parse(process.argv[2]);
const out = {};
for (const [name, b64] of Object.entries(cases)) {
  try {
    const files = storedZipFiles(new Uint8Array(Buffer.from(b64, "base64")));
    out[name] = files === null ? null
      : files.map((f) => [f.path, Buffer.from(f.data).toString("base64")]);
  } catch (err) {
    out[name] = {error: String(err.message)};
  }
}
out.crcOfCheck = crc32(new TextEncoder().encode("123456789"));
console.log(JSON.stringify(out));
"""

FILES = {
    "tidesync/__init__.py": b"VERSION = 1\n",
    "tidesync/changes/__pycache__/worker.cpython-313.pyc": bytes(range(256)) * 3,
    "tidesync-0.1.0.dist-info/RECORD": b"",
    "tidesync/empty.txt": b"",
}


def _zip(files: dict[str, bytes], method: int = zipfile.ZIP_STORED, comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr(zipfile.ZipInfo("tidesync/"), b"")  # a directory entry
        for name, data in files.items():
            zf.writestr(name, data)
        zf.comment = comment
    return buf.getvalue()


def _flip_first(blob: bytes, needle: bytes) -> bytes:
    at = blob.index(needle)
    return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]


def _cases() -> dict[str, bytes]:
    good = _zip(FILES)
    deflated = _zip(FILES, zipfile.ZIP_DEFLATED)
    # One entry's data changed after its CRC was written (same length: only the CRC tells).
    corrupt = _flip_first(good, b"VERSION")
    return {
        "good": good,
        "with_comment": _zip(FILES, comment=b"x" * 300),
        "deflated": deflated,
        "corrupt": corrupt,
        "climbs_out": _zip({"../evil.py": b"x"}),
        "absolute": _zip({"/etc/evil.py": b"x"}),
        "backslash": _zip({"tidesync\\evil.py": b"x"}),
        "dot": _zip({"tidesync/./evil.py": b"x"}),
        "cut_short": good[: len(good) // 2],
        "not_a_zip": b"PK but not really" * 10,
        "empty": b"",
    }


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    cases = {k: base64.b64encode(v).decode() for k, v in _cases().items()}
    folder = tmp_path_factory.mktemp("wheel")
    return run_node_script(folder, SCRIPT % MODULE, json.dumps(cases))  # type: ignore[no-any-return]


def _decoded(entries: object) -> dict[str, bytes]:
    assert isinstance(entries, list)
    return {path: base64.b64decode(data) for path, data in entries}


def test_crc32_is_the_zip_polynomial(result: dict[str, object]) -> None:
    assert result["crcOfCheck"] == 0xCBF43926  # the standard check value


@pytest.mark.parametrize("case", ["good", "with_comment"])
def test_a_stored_wheel_gives_every_file_byte_for_byte(
    result: dict[str, object], case: str
) -> None:
    assert _decoded(result[case]) == FILES  # directory entries give no file


def test_a_wheel_with_compressed_entries_is_left_to_pyodide(result: dict[str, object]) -> None:
    assert result["deflated"] is None


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("corrupt", "tidesync/__init__.py: CRC-32 does not match"),
        ("climbs_out", 'unsafe path "../evil.py"'),
        ("absolute", 'unsafe path "/etc/evil.py"'),
        ("backslash", "unsafe path"),
        ("dot", "unsafe path"),
        ("cut_short", "no end of central directory record"),
        ("not_a_zip", "no end of central directory record"),
        ("empty", "no end of central directory record"),
    ],
)
def test_a_damaged_or_unsafe_wheel_is_refused(
    result: dict[str, object], case: str, message: str
) -> None:
    got = result[case]
    assert isinstance(got, dict), got
    assert message in got["error"]
