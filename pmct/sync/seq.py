"""ct_sync receive-side sequence tracking: in-order delivery of a followed stream, and the
anti-replay window for everybody else.

Rules:
1. Everything that decides whether a received seq is in order, ahead (a hole before it),
   a duplicate, or too far ahead to buffer lives here (conntrackd nethdr_track_seq():
   SEQ_IN_SYNC / SEQ_AFTER / SEQ_BEFORE).
2. This module does not know what a hole costs: protocol.py decides between NACK and resync.
3. No time, no I/O. Sequence numbers are compared only with pmct.serial (wrap at 2**32).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Generic, TypeVar

from pmct.serial import MASK32, after, before

__all__ = ["ReplayWindow", "SeqClass", "StreamRx", "classify"]

T = TypeVar("T")


class SeqClass(IntEnum):
    IN_ORDER = 0  # the next expected seq: deliver
    AHEAD = 1  # after the next expected one: buffer, there is a hole before it
    DUPLICATE = 2  # before the next expected one, or already buffered: drop
    TOO_FAR = 3  # further ahead than the reorder buffer reaches


def classify(seq: int, expected: int, buffered: dict[int, object], limit: int) -> SeqClass:
    """Where ``seq`` falls relative to the next expected seq (serial arithmetic)."""
    if seq == expected:
        return SeqClass.IN_ORDER
    if before(seq, expected) or seq in buffered:
        return SeqClass.DUPLICATE
    if (seq - expected) & MASK32 >= limit:  # distance ahead
        return SeqClass.TOO_FAR
    return SeqClass.AHEAD


class StreamRx(Generic[T]):
    """In-order delivery of one master's stream (a log: nothing is applied out of order).

    ``expected`` is the next seq to deliver; ``highest`` the highest seq known to exist (from
    any packet, including announces read on arrival); items ahead of ``expected`` wait in
    ``pending`` (at most ``limit`` seqs ahead).
    """

    __slots__ = ("expected", "highest", "limit", "pending")

    def __init__(self, first: int, limit: int) -> None:
        self.expected = first & MASK32
        self.highest = (first - 1) & MASK32
        self.limit = limit
        self.pending: dict[int, T] = {}

    def classify(self, seq: int) -> SeqClass:
        return classify(seq, self.expected, self.pending, self.limit)  # type: ignore[arg-type]

    def note_highest(self, seq: int) -> None:
        """``seq`` exists (it was received or announced): a hole up to it is a hole."""
        if after(seq, self.highest) and not before(seq, self.expected):
            self.highest = seq & MASK32

    def accept(self, seq: int, item: T) -> list[T]:
        """Store ``item`` (classified IN_ORDER or AHEAD); return what is now deliverable."""
        self.note_highest(seq)
        if seq != self.expected:
            self.pending[seq] = item
            return []
        out = [item]
        nxt = (seq + 1) & MASK32
        pending = self.pending
        while pending:
            more = pending.pop(nxt, None)
            if more is None:
                break
            out.append(more)
            nxt = (nxt + 1) & MASK32
        self.expected = nxt
        return out

    @property
    def has_gap(self) -> bool:
        """Some seq between ``expected`` and ``highest`` has not arrived."""
        return not before(self.highest, self.expected)

    def missing(self, max_ranges: int) -> list[tuple[int, int]]:
        """The holes between ``expected`` and ``highest`` as inclusive (first, last) ranges,
        limited to the ``limit`` seqs that can be buffered."""
        if not self.has_gap:
            return []
        exp = self.expected
        # only what could be buffered: seqs further ahead are asked for in a later round
        span = min((self.highest - exp) & MASK32, self.limit - 1)
        offsets = sorted((s - exp) & MASK32 for s in self.pending)
        ranges: list[tuple[int, int]] = []
        start = 0
        for off in offsets:
            if off > span:
                break
            if off > start:
                ranges.append(((exp + start) & MASK32, (exp + off - 1) & MASK32))
                if len(ranges) == max_ranges:
                    return ranges
            start = off + 1
        if start <= span:
            ranges.append(((exp + start) & MASK32, (exp + span) & MASK32))
        return ranges[:max_ranges]

    def skip_to(self, seq: int) -> list[T]:
        """Give up on everything before ``seq`` (it is lost for good); return the deliverable
        items from ``seq`` on."""
        seq &= MASK32
        if before(seq, self.expected):
            return []  # seq is not ahead: nothing to skip
        for s in [s for s in self.pending if before(s, seq)]:
            del self.pending[s]
        self.expected = seq
        if before(self.highest, seq):
            self.highest = (seq - 1) & MASK32
        first = self.pending.pop(seq, None)
        if first is None:
            return []
        return self.accept(seq, first)


class ReplayWindow:
    """IPsec-style anti-replay window over one sender's seqs (RFC 4303 §3.4.3).

    A seq newer than the highest accepted one is accepted and slides the window; an older seq
    inside the window is accepted once; anything older is a replay.
    """

    __slots__ = ("bits", "highest", "size")

    def __init__(self, first: int, size: int = 64) -> None:
        self.size = size
        self.highest = first & MASK32
        self.bits = 1  # bit i: highest - i was seen

    def check(self, seq: int) -> bool:
        """True (and remember it) if ``seq`` is fresh; False for a replay."""
        if after(seq, self.highest):
            ahead = (seq - self.highest) & MASK32
            self.bits = ((self.bits << ahead) | 1) & ((1 << self.size) - 1)
            self.highest = seq & MASK32
            return True
        back = (self.highest - seq) & MASK32
        if back >= self.size:
            return False
        bit = 1 << back
        if self.bits & bit:
            return False
        self.bits |= bit
        return True
