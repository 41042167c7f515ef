"""Log Sequence Numbers: parsing, formatting and the client's monotonic position.

PROTOCOL.md "LSN": the text form is Postgres' ``pg_lsn`` (``H/L``, upper-case hex,
meaning ``H << 32 | L``).  LSNs are compared as integers, never as strings, so the
rest of tidesync handles them as ``int`` and converts only at the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_LSN",
    "ZERO_LSN",
    "LsnError",
    "LsnManager",
    "format_lsn",
    "is_lsn",
    "parse_lsn",
]

ZERO_LSN = 0
MAX_LSN = (1 << 64) - 1
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class LsnError(ValueError):
    """Raised for text that is not an LSN, or an LSN that would move backwards."""


def parse_lsn(text: object) -> int:
    """Return the 64-bit value of ``text`` (``"0/1A2B"`` -> ``0x1A2B``).

    Accepts lower-case hex too (a lenient reader), but never anything else: no
    signs, no spaces, at most 8 hex digits per half (a half is 32 bits).
    """
    if not isinstance(text, str):
        raise LsnError(f"LSN must be a string like '0/1A2B', got {type(text).__name__}")
    match = _LSN_RE.fullmatch(text)  # not ``match`` with ``$``: that accepts "0/1\n"
    if match is None:
        raise LsnError(f"not an LSN: {text[:40]!r} (expected 'H/L' in hex, e.g. '0/1A2B')")
    return int(match.group(1), 16) << 32 | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Return the canonical text form of ``value`` (``0x1A2B`` -> ``"0/1A2B"``)."""
    if not 0 <= value <= MAX_LSN:
        raise LsnError(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def is_lsn(text: object) -> bool:
    """True when ``text`` parses as an LSN."""
    try:
        parse_lsn(text)
    except LsnError:
        return False
    return True


@dataclass
class LsnManager:
    """The client's applied position in the server's log.

    Invariant: the LSN only moves forward, and only together with the changes it
    covers (callers persist it in the same SQLite transaction).  ``reset`` is the
    one way back to ``0/0``, used when the server says ``lsn_ahead``.
    """

    current: int = ZERO_LSN

    @property
    def text(self) -> str:
        return format_lsn(self.current)

    def advance(self, lsn: int) -> bool:
        """Move to ``lsn``; return False (and stay) when it is not ahead of us.

        An older LSN is not an error: a duplicated or reordered frame may repeat one.
        """
        if lsn < ZERO_LSN or lsn > MAX_LSN:
            raise LsnError(f"LSN out of range: {lsn}")
        if lsn <= self.current:
            return False
        self.current = lsn
        return True

    def is_new(self, lsn: int) -> bool:
        """True when a change at ``lsn`` has not been applied yet."""
        return lsn > self.current

    def reset(self) -> None:
        self.current = ZERO_LSN
