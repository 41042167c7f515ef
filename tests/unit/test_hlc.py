"""Timestamps and the hybrid logical clock (PROTOCOL.md "Convergence rules")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidesync.worker_sync.shared.hlc import (
    HybridLogicalClock,
    TimestampError,
    format_timestamp,
    lww_key,
    normalize_timestamp,
    parse_timestamp,
)

T0 = parse_timestamp("2026-11-25T10:00:00.000Z")


def test_format_is_iso_utc_with_milliseconds() -> None:
    assert format_timestamp(T0 + 123) == "2026-11-25T10:00:00.123Z"


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_round_trip_of_any_millisecond(millis: int) -> None:
    assert parse_timestamp(format_timestamp(millis)) == millis


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00.000Z"),
        ("2026-11-25T10:00:00.5Z", "2026-11-25T10:00:00.500Z"),
        ("2026-11-25T10:00:00.123456789Z", "2026-11-25T10:00:00.123Z"),
        ("2026-11-25 10:00:00.123", "2026-11-25T10:00:00.123Z"),
        ("2026-11-25T12:00:00.000+02:00", "2026-11-25T10:00:00.000Z"),
        ("2026-11-25T05:30:00.000-0430", "2026-11-25T10:00:00.000Z"),
    ],
)
def test_normalize_accepts_common_forms(text: str, expected: str) -> None:
    assert normalize_timestamp(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-25", 17]
)
def test_not_a_timestamp_is_refused(bad: object) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(bad)


def test_normalized_text_sorts_like_time() -> None:
    a = normalize_timestamp("2026-11-25T10:00:00.9Z")
    b = normalize_timestamp("2026-11-25T10:00:01Z")
    assert a < b


def test_lww_newer_time_wins_then_larger_client_id() -> None:
    older = lww_key("2026-11-25T10:00:00.000Z", "zzz")
    newer = lww_key("2026-11-25T10:00:00.001Z", "aaa")
    assert newer > older
    assert lww_key("2026-11-25T10:00:00.000Z", "b") > lww_key("2026-11-25T10:00:00.000Z", "a")


def test_unknown_author_loses_a_tie_to_any_client() -> None:
    t = "2026-11-25T10:00:00.000Z"
    assert lww_key(t, None) < lww_key(t, "a")


def test_clock_follows_wall_time_when_it_moves_forward() -> None:
    wall = [T0]
    clock = HybridLogicalClock(now_ms=lambda: wall[0])
    assert clock.tick() == T0
    wall[0] = T0 + 50
    assert clock.tick() == T0 + 50


def test_clock_never_repeats_or_runs_backwards() -> None:
    wall = [T0]
    clock = HybridLogicalClock(now_ms=lambda: wall[0])
    first = clock.tick()
    second = clock.tick()  # same wall millisecond
    wall[0] = T0 - 10_000  # wall clock jumped back
    third = clock.tick()
    assert first < second < third


def test_clock_never_falls_behind_an_observed_server_time() -> None:
    clock = HybridLogicalClock(now_ms=lambda: T0)  # slow client
    clock.observe(T0 + 60_000)
    assert clock.tick() == T0 + 60_001
    clock.observe(T0)  # an older server time changes nothing
    assert clock.tick() == T0 + 60_002


def test_persisted_last_value_survives_a_restart() -> None:
    clock = HybridLogicalClock(now_ms=lambda: T0, last=T0 + 5)
    assert clock.tick_iso() == format_timestamp(T0 + 6)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), max_size=50))
def test_ticks_are_strictly_increasing_whatever_happens(steps: list[tuple[bool, int]]) -> None:
    wall = [T0]
    clock = HybridLogicalClock(now_ms=lambda: wall[0])
    last = clock.tick()
    for observe, offset in steps:
        if observe:
            clock.observe(T0 + offset)
        else:
            wall[0] = T0 + offset
        now = clock.tick()
        assert now > last
        last = now


def test_canonical_times_pass_through_and_invalid_ones_still_fail() -> None:
    """The fast path for text already in wire form checks the calendar like the parser."""
    for text in (
        "2026-11-25T10:00:00.123Z",
        "2024-02-29T23:59:59.999Z",
        "1970-01-01T00:00:00.000Z",
    ):
        assert normalize_timestamp(text) is text
    for text in (
        "2026-02-29T10:00:00.000Z",
        "2026-13-01T00:00:00.000Z",
        "2026-11-25T24:00:00.000Z",
        "2026-11-25T10:60:00.000Z",
        "2026-11-25T10:00:61.000Z",
        "0000-01-01T00:00:00.000Z",
    ):
        with pytest.raises(TimestampError):
            normalize_timestamp(text)
    assert normalize_timestamp("1969-12-31T23:59:59.999Z") == "1969-12-31T23:59:59.999Z"
    # Non-ASCII digits are not the wire form: parsed and rewritten, never passed through.
    assert normalize_timestamp("\uff12026-11-25T10:00:00.000Z") == "2026-11-25T10:00:00.000Z"
