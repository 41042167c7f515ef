"""The native client's start from the server's image of a new database (``GET /api/bootstrap``).

The same step as the browser's (``js_shim/bootstrap_fetch.mjs`` and
``changes.browser_entry.adopt_download``): a database file that does not exist yet (or
is empty) is started from the server's image, checked by ``adopt_image``, and the sync
then only catches up from its LSN.  A server without the endpoint, a small snapshot
(204), a network error or a failed check leave the file empty, and the initial sync
streams as PROTOCOL.md describes.  The download is plain HTTP with the standard
library, in a thread.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidesync.changes.bootstrap_image import ImageInfo, ImageRejected, adopt_image
from tidesync.schema import Schema

__all__ = ["bootstrap_url", "is_new_database", "start_from_image"]

log = logging.getLogger(__name__)

#: Largest image accepted, bytes once decompressed (a bound on memory, not a policy).
MAX_IMAGE_BYTES = 1 << 31
_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def bootstrap_url(sync_url: str, page_size: int) -> str | None:
    """``ws(s)://host/api/sync?...`` -> ``http(s)://host/api/bootstrap?...&pageSize=N``."""
    parts = urlsplit(sync_url)
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.netloc:
        return None
    path = parts.path.rsplit("/", 1)[0] + "/bootstrap"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "pageSize"]
    query.append(("pageSize", str(page_size)))
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def _download(url: str, timeout: float) -> bytes | None:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                return None
            body: bytes = response.read(MAX_IMAGE_BYTES + 1)
            if response.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
    except urllib.error.HTTPError as exc:
        log.info("no bootstrap image: HTTP %s", exc.code)
        return None
    if len(body) > MAX_IMAGE_BYTES:
        raise ImageRejected("larger than the client accepts")
    return body


async def start_from_image(
    conn: sqlite3.Connection, schema: Schema, sync_url: str, *, timeout: float = 60.0
) -> ImageInfo | None:
    """Adopt the server's image into the empty database ``conn``; None when not (logged).

    ``conn`` is left as it was when anything fails, and its auto-checkpoint as it was
    (the caller defers the checkpoint of the image's WAL: ``checkpoint_later``).
    """
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    url = bootstrap_url(sync_url, page_size)
    if url is None:
        return None
    try:
        image = await asyncio.to_thread(_download, url, timeout)
        if image is None:
            return None
        return adopt_image(conn, schema, image)
    # The download's errors, and ``ImageRejected`` (a ``ValueError``): ``conn`` is untouched.
    except (OSError, EOFError, ValueError) as exc:
        log.warning("bootstrap image not used: %s", exc)
        return None


def is_new_database(path: str) -> bool:
    """No file at ``path`` yet, or an empty one (nothing else is ever replaced)."""
    file = Path(path)
    return not file.exists() or file.stat().st_size == 0
