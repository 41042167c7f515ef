"""Timestamps for last-write-wins, and the client's hybrid logical clock.

PROTOCOL.md "Convergence rules": ``updated_at`` comes from a clock that never runs
backwards and never falls behind the newest server time the client has seen, so a
client with a slow clock does not lose every conflict and two changes of one
client never share a time.  The wire form is ISO 8601 UTC with milliseconds; the
logical part of the clock is folded into the milliseconds (a tick that would not
move forward takes ``last + 1 ms``), which keeps the wire format plain ISO.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "HybridLogicalClock",
    "TimestampError",
    "format_timestamp",
    "is_canonical_timestamp",
    "lww_key",
    "normalize_timestamp",
    "parse_timestamp",
]

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$"
)


# The canonical wire form, which nearly every timestamp already has (``format_timestamp``).
_CANONICAL_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
# Calendar dates already found valid in canonical timestamps (a snapshot repeats a few),
# with the epoch milliseconds of their midnight.
_VALID_DATES: dict[str, int] = {}
_MAX_VALID_DATES = 4096


class TimestampError(ValueError):
    """Raised for text that is not an ISO 8601 timestamp."""


def parse_timestamp(text: object) -> int:
    """Milliseconds since the epoch for an ISO 8601 timestamp (naive means UTC)."""
    if not isinstance(text, str):
        raise TimestampError(f"timestamp must be an ISO 8601 string, got {type(text).__name__}")
    # Every change's time, twice per change: no datetime for the wire form.  ``get``:
    # the server's threads share the cache, another may have just cleared it.
    midnight = _VALID_DATES.get(text[:10]) if is_canonical_timestamp(text) else None
    if midnight is not None:
        return (
            midnight
            + int(text[11:13]) * 3_600_000
            + int(text[14:16]) * 60_000
            + int(text[17:19]) * 1000
            + int(text[20:23])
        )
    match = _ISO_RE.match(text)
    if match is None:
        raise TimestampError(f"not an ISO 8601 timestamp: {text[:40]!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError as exc:
        raise TimestampError(f"not a valid date/time: {text[:40]!r}") from exc
    millis = int((frac or "0").ljust(3, "0")[:3])
    offset_minutes = 0
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset_minutes = sign * (int(digits[:2]) * 60 + int(digits[2:]))
    return int(moment.timestamp()) * 1000 + millis - offset_minutes * 60_000


# The last second ``format_timestamp`` formatted, and its text up to the seconds.
_last_second: tuple[int, str] = (-1, "")


def format_timestamp(millis: int) -> str:
    """Canonical wire form: ``2026-11-25T10:00:00.123Z``.

    The date and time of day are formatted once per second and kept: every local
    write stamps a fresh time, and ``datetime`` + ``strftime`` were most of the cost
    of that in Pyodide.  One tuple, replaced whole, so threads (the server's) never
    see a second paired with another second's text.
    """
    second, ms = divmod(millis, 1000)
    global _last_second
    cached = _last_second
    if cached[0] != second:
        cached = (second, datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _last_second = cached
    return f"{cached[1]}.{ms:03d}Z"


def normalize_timestamp(text: object) -> str:
    """Parse and re-format, so stored times compare correctly as text too.

    Text already in the canonical form is returned as is once its date and time
    are checked: the full parse costs ~30 us, and every row of a snapshot and
    every change of a batch goes through here on both sides.
    """
    if isinstance(text, str) and is_canonical_timestamp(text):
        return text
    return format_timestamp(parse_timestamp(text))


def is_canonical_timestamp(text: str) -> bool:
    """``text`` is exactly ``format_timestamp``'s output for some time since 1970."""
    if len(text) != 24 or _CANONICAL_RE.fullmatch(text) is None:
        return False
    if not (text[:4] >= "1970" and text[11:13] <= "23" and text[14:16] <= "59"):
        return False
    if text[17:19] > "59":
        return False
    date = text[:10]
    if date not in _VALID_DATES:
        try:
            midnight = datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), tzinfo=UTC)
        except ValueError:
            return False
        if len(_VALID_DATES) >= _MAX_VALID_DATES:
            _VALID_DATES.clear()
        _VALID_DATES[date] = int(midnight.timestamp()) * 1000
    return True


def lww_key(updated_at: str, client_id: str | None) -> tuple[int, str]:
    """The total order of last-write-wins: newer time first, then larger clientId.

    A change with no known author (written on the server by another program)
    sorts below every client at the same millisecond.
    """
    return (parse_timestamp(updated_at), client_id or "")


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class HybridLogicalClock:
    """Monotonic millisecond clock that also follows times observed from the server.

    ``now_ms`` is injected so tests (and the simulator) drive it; ``last`` is
    persisted by the Changes Worker so a restart never re-issues a time.
    """

    now_ms: Callable[[], int] = field(default=_wall_clock_ms)
    last: int = 0

    def tick(self) -> int:
        """A fresh time, strictly after every time this clock issued or observed."""
        self.last = max(self.now_ms(), self.last + 1)
        return self.last

    def tick_iso(self) -> str:
        """``format_timestamp(self.tick())`` (inlined: a call less per local write)."""
        now = self.now_ms()
        last = self.last + 1
        self.last = now if now > last else last
        return format_timestamp(self.last)

    def observe(self, remote_ms: int) -> None:
        """Never fall behind a time seen from the server (message or change)."""
        if remote_ms > self.last:
            self.last = remote_ms
