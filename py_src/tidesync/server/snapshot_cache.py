"""Snapshots kept encoded for the clients that join later (server, initial sync).

Why: every new client's initial sync reads the same rows, looks up each row's
version and encodes them, ~0.27 s of server CPU per 100k demo tasks, the same
work again for every client that joins.  The chunks the first client got are
kept as encoded text and the next clients get that text spliced into frames of
their own (``SrvInitRows.body_json``), the way ElectricSQL serves one shape log
to every client of a shape.

Why it is correct: a snapshot is one consistent read at one LSN (PROTOCOL.md
"Initial sync") and the session catches a client up from its snapshot's LSN,
whatever the server's LSN is by then.  A kept snapshot at X is as good a start
as a new one, with the changes after X coming in the catchup.  It is used while
those changes are few (at most a tenth of its rows and at most ``max_lag``;
past that a new read is cheaper than the catchup), for the same schema and chunk
size, and only for ``srv_init_rows`` (old clients' ``srv_init_changes`` and
table re-syncs read the database as before).

Bounded: one snapshot is kept, and only one whose text fits ``max_bytes``.  A
session that stops half-way (its client left) keeps nothing; the next one
records again.  Sessions read snapshots in worker threads, hence the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tidesync.schema import Schema
from tidesync.server.snapshot import Snapshot

__all__ = [
    "CachedSnapshot",
    "EncodedSnapshot",
    "RecordingSnapshot",
    "SnapshotCache",
    "still_fresh",
]

log = logging.getLogger(__name__)

#: Default bound of the kept text, characters (~6x the 100k demo tasks' 10.4 MB).
DEFAULT_MAX_BYTES = 64 << 20
#: Default bound of the changes a client may have to catch up after a kept snapshot.
DEFAULT_MAX_LAG = 10_000

SnapshotKey = tuple[tuple[tuple[str, tuple[str, ...]], ...], int]


def still_fresh(kept_lsn: int, kept_rows: int, current_lsn: int, max_lag: int) -> bool:
    """Whether a snapshot kept at ``kept_lsn`` is still a good start for a new client: the
    changes since are at most a tenth of its rows and at most ``max_lag`` (past that a new
    read costs less than the catchup).  The kept snapshot and the bootstrap image share it.
    """
    lag = current_lsn - kept_lsn
    return 0 <= lag <= min(max_lag, kept_rows // 10)


def snapshot_key(schema: Schema, chunk_rows: int) -> SnapshotKey:
    """What a kept snapshot must match: every table's columns, in order, and the chunk size."""
    return (tuple((n, schema.tables[n].column_names) for n in schema.order), chunk_rows)


@dataclass(frozen=True)
class EncodedSnapshot:
    """One snapshot's ``srv_init_rows`` chunk bodies, table by table, at ``lsn``."""

    key: SnapshotKey
    lsn: int
    counts: dict[str, int]  # rows per table with rows, in the order they are sent
    bodies: dict[str, tuple[str, ...]]
    size: int  # characters of all bodies

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


class CachedSnapshot:
    """Replays an ``EncodedSnapshot``: what a session reads instead of a ``Snapshot``."""

    def __init__(self, encoded: EncodedSnapshot) -> None:
        self.lsn = encoded.lsn
        self.tables = tuple(encoded.counts)
        self._bodies = encoded.bodies
        self._next = dict.fromkeys(self.tables, 0)

    def chunks_of(self, table: str, chunk_rows: int) -> int:
        return len(self._bodies.get(table, ()))

    def read_body(self, table: str, chunk_rows: int) -> str:
        index = self._next[table]
        self._next[table] = index + 1
        return self._bodies[table][index]

    def close(self) -> None:
        """Nothing to release: the text is shared and stays in the cache."""


@dataclass
class _Recording:
    key: SnapshotKey
    lsn: int
    counts: dict[str, int]
    expected: int  # chunks in all
    bodies: dict[str, list[str]] = field(default_factory=dict)
    chunks: int = 0
    size: int = 0


class RecordingSnapshot:
    """A new ``Snapshot`` whose chunk bodies are kept, once all are read, for later clients."""

    def __init__(self, snapshot: Snapshot, cache: SnapshotCache, recording: _Recording) -> None:
        self._snapshot = snapshot
        self._cache = cache
        self._recording: _Recording | None = recording
        self.lsn = snapshot.lsn
        self.tables = snapshot.tables

    def chunks_of(self, table: str, chunk_rows: int) -> int:
        return self._snapshot.chunks_of(table, chunk_rows)

    def read_body(self, table: str, chunk_rows: int) -> str:
        body = self._snapshot.read_body(table, chunk_rows)
        recording = self._recording
        if recording is not None:
            recording.bodies.setdefault(table, []).append(body)
            recording.chunks += 1
            recording.size += len(body)
            if recording.size > self._cache.max_bytes:
                log.info("snapshot at %d is over the cache's bound; not kept", recording.lsn)
                self._release(recording)
            elif recording.chunks == recording.expected:
                self._cache.publish(recording)
                self._recording = None
        return body

    def _release(self, recording: _Recording) -> None:
        self._recording = None
        self._cache.forget(recording)

    def close(self) -> None:
        self._snapshot.close()
        if self._recording is not None:  # stopped half-way: nothing kept
            self._release(self._recording)


class SnapshotCache:
    """The one kept snapshot, and which session records the next."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_lag: int = DEFAULT_MAX_LAG) -> None:
        self.max_bytes = max_bytes
        self.max_lag = max_lag
        self._lock = threading.Lock()
        self._kept: EncodedSnapshot | None = None
        self._recording: _Recording | None = None
        #: Initial syncs served from the kept snapshot, and snapshots kept (for health/tests).
        self.hits = 0
        self.kept = 0

    def open(
        self,
        open_snapshot: Callable[[], Snapshot],
        schema: Schema,
        chunk_rows: int,
        current_lsn: int,
    ) -> CachedSnapshot | RecordingSnapshot | Snapshot:
        """A reader of ``srv_init_rows`` chunks: the kept snapshot when it is still good,
        else a new ``Snapshot``, recorded unless another session records one already."""
        key = snapshot_key(schema, chunk_rows)
        with self._lock:
            kept = self._kept
            if (
                kept is not None
                and kept.key == key
                and still_fresh(kept.lsn, kept.rows, current_lsn, self.max_lag)
            ):
                self.hits += 1
                return CachedSnapshot(kept)
        snapshot = open_snapshot()
        expected = sum(snapshot.chunks_of(t, chunk_rows) for t in snapshot.tables)
        with self._lock:
            if self.max_bytes <= 0 or expected == 0 or self._recording is not None:
                return snapshot
            kept = self._kept
            if kept is not None and kept.key == key and kept.lsn >= snapshot.lsn:
                return snapshot  # one as new was kept meanwhile
            counts = {t: snapshot.counts[t] for t in snapshot.tables}
            recording = _Recording(key, snapshot.lsn, counts, expected)
            self._recording = recording
        return RecordingSnapshot(snapshot, self, recording)

    def publish(self, recording: _Recording) -> None:
        encoded = EncodedSnapshot(
            key=recording.key,
            lsn=recording.lsn,
            counts=recording.counts,
            bodies={t: tuple(b) for t, b in recording.bodies.items()},
            size=recording.size,
        )
        with self._lock:
            if self._recording is recording:
                self._recording = None
            if self._kept is None or self._kept.key != encoded.key or self._kept.lsn < encoded.lsn:
                self._kept = encoded
                self.kept += 1
        log.info(
            "kept the snapshot at %d for later clients: %d rows, %d chunks, %.1f MB",
            encoded.lsn,
            encoded.rows,
            recording.chunks,
            encoded.size / 1e6,
        )

    def forget(self, recording: _Recording) -> None:
        with self._lock:
            if self._recording is recording:
                self._recording = None

    def stats(self) -> dict[str, int | None]:
        with self._lock:
            kept = self._kept
            return {
                "hits": self.hits,
                "kept": self.kept,
                "lsn": kept.lsn if kept is not None else None,
                "rows": kept.rows if kept is not None else 0,
                "bytes": kept.size if kept is not None else 0,
            }
