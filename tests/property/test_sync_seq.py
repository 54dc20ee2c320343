"""Hypothesis: in-order delivery and hole reporting, for any arrival order, at any wrap point."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pmct.serial import MASK32
from pmct.sync.seq import ReplayWindow, SeqClass, StreamRx

starts = st.one_of(st.integers(0, MASK32), st.integers(MASK32 - 40, MASK32))


@given(starts, st.lists(st.integers(0, 49), min_size=1, max_size=150))
def test_every_seq_is_delivered_once_and_in_order(start: int, arrivals: list[int]) -> None:
    rx: StreamRx[int] = StreamRx(start, 64)
    delivered: list[int] = []
    for off in arrivals:
        seq = (start + off) & MASK32
        cls = rx.classify(seq)
        if cls in (SeqClass.IN_ORDER, SeqClass.AHEAD):
            delivered.extend(rx.accept(seq, off))
        else:
            assert cls == SeqClass.DUPLICATE
    assert delivered == list(range(len(delivered)))  # a prefix, in order, no repeats
    got = set(arrivals)
    assert len(delivered) == next(i for i in range(51) if i not in got)
    # the holes are exactly the missing seqs between the next expected one and the highest
    holes = set()
    for first, last in rx.missing(128):
        n = (last - first) & MASK32
        holes |= {(first - start + i) & MASK32 for i in range(n + 1)}
    top = max(arrivals)
    assert holes == {i for i in range(len(delivered), top + 1) if i not in got}


@given(starts, st.lists(st.integers(0, 200), max_size=100), st.integers(1, 64))
def test_replay_window_accepts_each_fresh_seq_once(start: int, offs: list[int], size: int) -> None:
    w = ReplayWindow(start, size)
    accepted: set[int] = set()
    highest = 0
    for off in offs:
        ok = w.check((start + off) & MASK32)
        if ok:
            assert off not in accepted and off != 0
            accepted.add(off)
        else:
            assert off in accepted or off == 0 or off <= highest - size
        highest = max(highest, off) if ok else highest
