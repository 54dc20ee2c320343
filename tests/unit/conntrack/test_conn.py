"""Conn.tw: the TcpWindow is the sequence of twelve u32 in TW_FIELDS order that the TCP
tracker indexes and ct_sync's window section carries word for word."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.conn import TW_FIELDS, TcpWindow, new_tcp_window, window_of

U32 = st.integers(0, 0xFFFFFFFF)


def test_a_new_window_is_twelve_zeros() -> None:
    tw = new_tcp_window()
    assert len(tw) == 12 and list(tw) == [0] * 12


def test_each_index_is_the_field_of_that_name() -> None:
    tw = TcpWindow()
    for i in range(12):
        tw[i] = 1000 + i
    assert [getattr(tw, name) for name in TW_FIELDS] == [1000 + i for i in range(12)]
    assert [tw[i] for i in range(12)] == list(tw)
    assert tw[-1] == tw[11] == 1011 and tw[-12] == tw[0] == 1000
    tw[-2] = 7
    assert tw.td_maxack0 == 7


@pytest.mark.parametrize("i", [12, 13, -13, 100])
def test_out_of_range_indices_raise(i: int) -> None:
    tw = TcpWindow()
    with pytest.raises(IndexError):
        tw[i]
    with pytest.raises(IndexError):
        tw[i] = 1


@pytest.mark.parametrize("value", [-1, 1 << 32, 1 << 40])
def test_numbers_outside_u32_are_refused_as_the_array_did(value: int) -> None:
    tw = TcpWindow()
    with pytest.raises(OverflowError):
        tw[3] = value
    assert list(tw) == [0] * 12


@given(st.lists(U32, min_size=12, max_size=12))
def test_window_of_and_copy_round_trip(values: list[int]) -> None:
    tw = window_of(values)
    assert list(tw) == values
    dup = tw.copy()
    assert list(dup) == values and dup is not tw
    dup[0] = (values[0] + 1) & 0xFFFFFFFF
    assert tw[0] == values[0]  # the copy is independent


def test_window_of_needs_twelve_numbers() -> None:
    with pytest.raises(ValueError):
        window_of([0] * 11)
