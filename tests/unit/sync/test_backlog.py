"""The retransmission ring: bounded, exact, wrap-safe."""

from __future__ import annotations

import pytest

from pmct.serial import MASK32
from pmct.sync.backlog import Backlog


def test_ring_holds_the_last_n_across_the_wrap() -> None:
    b = Backlog(4, MASK32 - 2)
    assert b.count == 0 and b.oldest == MASK32 - 2 and b.get(MASK32 - 2) is None
    seqs = [(MASK32 - 2 + i) & MASK32 for i in range(7)]
    for s in seqs:
        b.add(s, s.to_bytes(4, "big"))
    assert b.newest == seqs[-1] and b.count == 4 and b.oldest == seqs[3]
    assert [b.get(s) for s in seqs] == [None] * 3 + [s.to_bytes(4, "big") for s in seqs[3:]]
    assert b.get((seqs[-1] + 1) & MASK32) is None  # not sent yet


def test_add_must_be_consecutive_and_clear_restarts() -> None:
    b = Backlog(3, 10)
    b.add(10, b"a")
    with pytest.raises(ValueError):
        b.add(12, b"c")
    b.clear(50)
    assert b.get(10) is None and b.oldest == 50
    b.add(50, b"x")
    assert b.get(50) == b"x"
    with pytest.raises(ValueError):
        Backlog(0)
