"""Stream classification and in-order delivery, with the 2**32 wrap in every test."""

from __future__ import annotations

import pytest

from pmct.serial import MASK32
from pmct.sync.seq import ReplayWindow, SeqClass, StreamRx, classify

WRAP = [0, 1, 0x7FFF_FFFF, 0x8000_0000, MASK32 - 2, MASK32]


@pytest.mark.parametrize("exp", WRAP)
def test_classify_around_the_wrap(exp: int) -> None:
    nxt = lambda n: (exp + n) & MASK32  # noqa: E731
    assert classify(exp, exp, {}, 100) == SeqClass.IN_ORDER
    assert classify(nxt(1), exp, {}, 100) == SeqClass.AHEAD
    assert classify(nxt(99), exp, {}, 100) == SeqClass.AHEAD
    assert classify(nxt(100), exp, {}, 100) == SeqClass.TOO_FAR
    assert classify(nxt(-1), exp, {}, 100) == SeqClass.DUPLICATE
    assert classify(nxt(-(2**31)), exp, {}, 100) == SeqClass.DUPLICATE
    assert classify(nxt(5), exp, {nxt(5): 0}, 100) == SeqClass.DUPLICATE


def test_in_order_delivery_across_the_wrap() -> None:
    rx: StreamRx[str] = StreamRx(MASK32 - 1, 16)
    s = [(MASK32 - 1 + i) & MASK32 for i in range(5)]  # ... fffffffe ffffffff 0 1 2
    assert rx.accept(s[2], "c") == []
    assert rx.has_gap and rx.missing(8) == [(s[0], s[1])]
    assert rx.accept(s[4], "e") == []
    assert rx.missing(8) == [(s[0], s[1]), (s[3], s[3])]
    assert rx.missing(1) == [(s[0], s[1])]
    assert rx.accept(s[0], "a") == ["a"]
    assert rx.accept(s[1], "b") == ["b", "c"]
    assert rx.accept(s[3], "d") == ["d", "e"]
    assert rx.expected == 3 and not rx.has_gap and rx.missing(8) == []


def test_note_highest_reveals_a_lost_tail() -> None:
    rx: StreamRx[int] = StreamRx(10, 64)
    rx.accept(10, 0)
    assert not rx.has_gap
    rx.note_highest(13)  # an announce with seq 13 arrived (and is buffered)
    assert rx.has_gap and rx.missing(4) == [(11, 13)]
    rx.note_highest(5)  # older information never lowers it
    assert rx.highest == 13


def test_skip_to_drops_what_is_lost_and_delivers_the_rest() -> None:
    rx: StreamRx[int] = StreamRx(MASK32, 64)
    for s in (1, 2, 4):
        rx.accept(s, s)
    assert rx.skip_to(1) == [1, 2]  # MASK32 and 0 are given up
    assert rx.expected == 3 and rx.missing(8) == [(3, 3)]
    assert rx.skip_to(2) == []  # not ahead: nothing happens
    assert rx.skip_to(5) == []  # 3 and 4 are before 5: gone
    assert rx.pending == {} and rx.expected == 5 and not rx.has_gap


def test_replay_window() -> None:
    w = ReplayWindow(MASK32 - 1, size=4)
    assert not w.check(MASK32 - 1)  # the first seq is remembered
    assert w.check(1)  # newer, across the wrap: slides by 3
    assert w.check(MASK32) and not w.check(MASK32)  # inside the window once
    assert not w.check(MASK32 - 2)  # older than the window
    assert w.check(0) and not w.check(0)
    assert not w.check(0x8000_0002)  # more than half the space ahead counts as behind


def test_missing_only_asks_for_what_can_be_buffered() -> None:
    rx: StreamRx[int] = StreamRx(MASK32 - 1, 4)
    rx.note_highest(20)  # known to exist, far beyond the 4-seq buffer
    assert rx.missing(8) == [(MASK32 - 1, 1)]  # expected .. expected + 3
    rx.accept(MASK32, 1)
    assert rx.missing(8) == [(MASK32 - 1, MASK32 - 1), (0, 1)]
