"""``GET /api/bootstrap``: a new client's whole database as one SQLite file (extension).

Why: a client whose database does not exist yet would otherwise receive the snapshot
row by row and stage, check and copy every row in Pyodide (PROTOCOL.md "Initial
sync"); most of a first visit's CPU on a small machine.  The browser's Changes Worker
instead downloads this image while Pyodide boots, checks it and starts from it
(``tidesync.changes.bootstrap_image``, where the file's layout is defined and built),
then connects at the image's LSN and only catches up.  docs/protocol.md describes the
endpoint; the WebSocket protocol is unchanged and old clients never call it.

One image per page size is kept, gzipped, and served to every new client while the
changes since it are few (the kept snapshot's rule, ``snapshot_cache.py``: at most a
tenth of its rows and at most ``max_lag``); past that the next request builds a new
one.  Concurrent requests share one build.  A snapshot of fewer than ``min_rows``
rows gets no image (204): streaming it costs as little and sends fewer bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tidesync.changes.bootstrap_image import build_image, check_page_size
from tidesync.server.snapshot import Snapshot
from tidesync.server.snapshot_cache import DEFAULT_MAX_LAG, still_fresh
from tidesync.server.store import Store

__all__ = ["BootstrapImages", "KeptImage"]

log = logging.getLogger(__name__)

#: Snapshots below this many rows are streamed: on a first visit here the image gave
#: nothing at 10k demo tasks (0.92x the streamed open -> live) and 1.15x at 20k, 1.12x at
#: 30k, 1.3-1.4x at 100k (docs/performance.md), and it is ~2.5x the streamed bytes.
DEFAULT_MIN_ROWS = 10_000
#: Default bound of a kept image, gzipped bytes (the 100k demo tasks: ~6.7 MB).
DEFAULT_MAX_BYTES = 64 << 20
_CHUNK_ROWS = 5000


@dataclass(frozen=True)
class KeptImage:
    """One built image: the snapshot's LSN, its rows, and the file gzipped."""

    lsn: int
    rows: int
    page_size: int
    size: int  # bytes of the file itself
    gzipped: bytes

    def plain(self) -> bytes:
        """The file itself, for a client that does not take gzip."""
        return gzip.decompress(self.gzipped)


class BootstrapImages:
    """The kept images (one per page size) and the builds in flight."""

    def __init__(
        self,
        store: Store,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_lag: int = DEFAULT_MAX_LAG,
        min_rows: int = DEFAULT_MIN_ROWS,
    ) -> None:
        self._store = store
        self.max_bytes = max_bytes
        self.max_lag = max_lag
        self.min_rows = min_rows
        # Per page size: the LSN of the last build and its image (None: too few rows then).
        self._kept: dict[int, tuple[int, KeptImage | None]] = {}
        self._building: dict[int, asyncio.Future[KeptImage | None]] = {}
        #: Images served, and images built (for health and tests).
        self.served = 0
        self.built = 0

    async def get(self, page_size: int) -> KeptImage | None:
        """The image for ``page_size`` at a recent LSN, or None when the snapshot is small."""
        check_page_size(page_size)
        current = await asyncio.to_thread(self._store.current_lsn)
        kept = self._kept.get(page_size)
        if kept is not None and still_fresh(
            kept[0], kept[1].rows if kept[1] is not None else 0, current, self.max_lag
        ):
            image = kept[1]
        else:
            building = self._building.get(page_size)
            if building is None:
                building = asyncio.ensure_future(asyncio.to_thread(self._build, page_size))
                self._building[page_size] = building
                building.add_done_callback(lambda _: self._building.pop(page_size, None))
            image = await asyncio.shield(building)
        if image is not None:
            self.served += 1
        return image

    def _build(self, page_size: int) -> KeptImage | None:
        started = time.perf_counter()
        snapshot = Snapshot(self._store.path, self._store.schema)
        try:
            lsn = snapshot.lsn
            if sum(snapshot.counts.values()) < self.min_rows:
                image = None
            else:
                data, info = build_image(
                    self._store.schema, lsn, _chunks(snapshot), page_size=page_size
                )
                image = KeptImage(
                    lsn, info.rows, page_size, len(data), gzip.compress(data, 1, mtime=0)
                )
        finally:
            snapshot.close()
        if image is None or len(image.gzipped) <= self.max_bytes:
            self._kept[page_size] = (lsn, image)
        if image is not None:
            self.built += 1
            log.info(
                "bootstrap image at %d: %d rows, %.1f MB (%.1f MB gzipped), built in %.2f s",
                lsn,
                image.rows,
                image.size / 1e6,
                len(image.gzipped) / 1e6,
                time.perf_counter() - started,
            )
        return image

    def stats(self) -> dict[str, Any]:
        images = [i for _, i in self._kept.values() if i is not None]
        newest = max(images, key=lambda i: i.lsn, default=None)
        return {
            "served": self.served,
            "built": self.built,
            "lsn": newest.lsn if newest is not None else None,
            "rows": newest.rows if newest is not None else 0,
            "bytes": sum(len(i.gzipped) for i in images),
        }


def _chunks(snapshot: Snapshot) -> Iterator[tuple[str, Any, Any, Any]]:
    for table in snapshot.tables:
        for _ in range(snapshot.chunks_of(table, _CHUNK_ROWS)):
            yield (table, *snapshot.read_rows(table, _CHUNK_ROWS))
