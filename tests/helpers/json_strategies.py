"""Hypothesis strategies for arbitrary JSON values, shared by the fuzz suites."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["json_strategies"]


def json_strategies(
    *, int_bits: int = 70, text_size: int = 30, key_size: int = 10, max_leaves: int = 10
) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """(scalars, values): JSON scalars (integers up to ``int_bits`` bits, beyond what SQLite
    and JavaScript hold exactly; finite floats) and nested lists/objects of them."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(1 << int_bits), max_value=1 << int_bits),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=text_size),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=key_size), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )
    return scalars, values
