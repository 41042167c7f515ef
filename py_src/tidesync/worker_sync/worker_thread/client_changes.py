"""The local changes in flight to the server: which batch is sent and not yet answered.

Pure state, no I/O.  The durable truth (which changes are unsynced) lives in
the Changes Worker's ``local_changes``; this object only remembers what was
put on *this* connection, so that:

* one batch is in flight at a time, oldest first (PROTOCOL.md "Client changes"
  1: the server applies them in order; a second batch could overtake a resend);
* ``srv_changes_applied`` clears exactly the ids it answers; a result for an
  id not in flight is ignored with a log line (a late answer from an earlier
  connection, or a confused server);
* when the connection ends, everything in flight becomes unsent again and is
  sent again after reconnecting (PROTOCOL.md "Client changes" 4; the change
  ids make the resend idempotent on the server).

* ``backlog`` says whether changes may wait in the database beyond those in
  flight; while it is False the pending count is ``len(in_flight)`` and a
  flush has nothing to read, so neither costs a round trip to the Changes
  Worker.  Anything that may leave a change pending outside the batch sets it
  (a local commit: ``local_commit``; a batch cut short, refused or lost).

Call order per batch: ``can_send`` -> ``reading`` -> ``start_batch`` ->
(``on_received``) -> ``on_applied``; ``local_commit`` and ``on_disconnect`` at
any time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tidesync.worker_sync.shared.message_types import ChangeResult, TableChange

__all__ = ["DEFAULT_BATCH_SIZE", "ClientChanges"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
#: A batch's encoded changes stay under this, well below the server's 1 MiB frame
#: limit (docs/protocol.md), so large rows never make a batch the server refuses.
DEFAULT_BATCH_BYTES = 512 * 1024
_CHANGE_OVERHEAD = 256  # id, table, operation, updated_at and JSON punctuation, generously


def _encoded_size(change: TableChange) -> int:
    data = json.dumps(change.data, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(data.encode("utf-8")) + _CHANGE_OVERHEAD


@dataclass
class ClientChanges:
    """Changes sent on the current connection and not yet answered.

    Invariant: ``in_flight`` is empty or holds exactly the ids of the last
    batch not yet answered; nothing is sent while it is non-empty.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    batch_bytes: int = DEFAULT_BATCH_BYTES
    _in_flight: dict[str, bool] = field(default_factory=dict)  # id -> received by server
    _batch_message_id: str | None = None
    #: Changes may be pending in the database that are not in flight (see the module doc).
    backlog: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")

    @property
    def in_flight(self) -> tuple[str, ...]:
        """Ids sent and not yet answered, in send order."""
        return tuple(self._in_flight)

    @property
    def batch_message_id(self) -> str | None:
        """``messageId`` of the ``clt_send_changes`` in flight (to match ``srv_error``)."""
        return self._batch_message_id if self._in_flight else None

    def can_send(self) -> bool:
        return not self._in_flight

    def local_commit(self) -> None:
        """A local commit recorded changes: they may be waiting outside the batch."""
        self.backlog = True

    def reading(self) -> None:
        """The unsynced changes are about to be read: whatever waits, the read will see.

        Called before the read is sent, so a commit heard of while it is on its way
        (``local_commit``) sets ``backlog`` again.
        """
        self.backlog = False

    def pending(self) -> int | None:
        """How many local changes await the server, when known without asking; else None."""
        return None if self.backlog else len(self._in_flight)

    def start_batch(
        self, unsynced: Sequence[TableChange], message_id: str
    ) -> tuple[TableChange, ...]:
        """Take the next batch and mark it in flight.

        Oldest first, at most ``batch_size`` changes and ``batch_bytes`` of encoded
        changes (always at least one change).  ``unsynced`` is what the read after
        ``reading`` returned (at most ``batch_size``): when it filled the limit or the
        batch leaves some of it, more is waiting (``backlog``).
        """
        if self._in_flight:
            raise RuntimeError("a batch is already in flight; wait for srv_changes_applied")
        taken: list[TableChange] = []
        size = 0
        for change in unsynced[: self.batch_size]:
            size += _encoded_size(change)
            if taken and size > self.batch_bytes:
                break
            taken.append(change)
        batch = tuple(taken)
        if len(unsynced) >= self.batch_size or len(batch) < len(unsynced):
            self.backlog = True
        self._in_flight = {change.id: False for change in batch}
        self._batch_message_id = message_id if batch else None
        return batch

    def on_received(self, change_ids: Iterable[str]) -> None:
        """``srv_changes_received``: the server parsed them (no state change needed)."""
        for change_id in change_ids:
            if change_id in self._in_flight:
                self._in_flight[change_id] = True
            else:
                log.info("srv_changes_received for change %s not in flight; ignored", change_id)

    def on_applied(
        self, results: Sequence[ChangeResult], applied_ids: Iterable[str] = ()
    ) -> list[ChangeResult]:
        """``srv_changes_applied``: clear the answered ids, return the results we sent for.

        ``applied_ids`` (``appliedChanges``) also clears ids without a result
        entry, for servers that only list them.
        """
        known: list[ChangeResult] = []
        for result in results:
            if self._in_flight.pop(result.id, None) is None:
                log.info("result for change %s not in flight; ignored", result.id)
                continue
            known.append(result)
        for change_id in applied_ids:
            if self._in_flight.pop(change_id, None) is not None:
                self.backlog = True  # cleared without a result: still pending locally
        return known

    def fail_batch(self) -> tuple[str, ...]:
        """The server refused the whole batch (``srv_error`` for it): nothing in flight."""
        dropped = self.in_flight
        self._in_flight.clear()
        self.backlog = True
        return dropped

    def on_disconnect(self) -> tuple[str, ...]:
        """The connection ended: what was in flight is unsent again; returns those ids."""
        dropped = self.in_flight
        if dropped:
            log.info(
                "%d change(s) in flight when the connection ended; resending later", len(dropped)
            )
        self._in_flight.clear()
        self._batch_message_id = None
        self.backlog = True
        return dropped
