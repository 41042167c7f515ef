"""LSN text form and the client's monotonic position (PROTOCOL.md "LSN")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidesync.worker_sync.shared.lsn_manager import (
    MAX_LSN,
    ZERO_LSN,
    LsnError,
    LsnManager,
    format_lsn,
    is_lsn,
    parse_lsn,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/1A2B", 0x1A2B), ("1/0", 1 << 32), ("FFFFFFFF/FFFFFFFF", MAX_LSN)],
)
def test_parse_and_format_are_inverse_on_canonical_text(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


def test_lower_case_hex_is_read_but_written_upper_case() -> None:
    assert format_lsn(parse_lsn("a/bc")) == "A/BC"


@given(st.integers(min_value=0, max_value=MAX_LSN))
def test_round_trip_of_any_64_bit_value(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


@given(st.integers(0, MAX_LSN), st.integers(0, MAX_LSN))
def test_integer_order_is_log_order_even_where_text_order_differs(a: int, b: int) -> None:
    assert (parse_lsn(format_lsn(a)) < parse_lsn(format_lsn(b))) == (a < b)


def test_text_comparison_would_be_wrong() -> None:
    assert parse_lsn("0/A") > parse_lsn("0/9")
    assert "0/A" > "0/10" and parse_lsn("0/A") < parse_lsn("0/10")


@pytest.mark.parametrize(
    "bad", ["", "0", "0/", "/0", "0/0/0", "-1/0", "0/ 1", "0/G", "123456789/0", " 0/0", None, 5]
)
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises(LsnError):
        parse_lsn(bad)
    assert not is_lsn(bad)


@pytest.mark.parametrize("value", [-1, MAX_LSN + 1])
def test_format_refuses_out_of_range(value: int) -> None:
    with pytest.raises(LsnError, match="out of range"):
        format_lsn(value)


def test_manager_moves_only_forward() -> None:
    lsn = LsnManager()
    assert lsn.current == ZERO_LSN and lsn.text == "0/0"
    assert lsn.advance(10) is True
    assert lsn.advance(10) is False
    assert lsn.advance(3) is False
    assert lsn.current == 10


def test_manager_tells_new_from_already_applied() -> None:
    lsn = LsnManager(10)
    assert lsn.is_new(11) and not lsn.is_new(10) and not lsn.is_new(2)


def test_reset_is_the_only_way_back_to_zero() -> None:
    lsn = LsnManager(1 << 40)
    lsn.reset()
    assert lsn.current == 0
    assert lsn.advance(1)


def test_manager_refuses_out_of_range() -> None:
    with pytest.raises(LsnError):
        LsnManager().advance(MAX_LSN + 1)
