"""The master's retransmission backlog: the last N datagrams it sent, byte for byte.

Semantics (docs/protocol.md §8): a NACKed seq is re-sent as the *original bytes* with the
original seq, stamp and HMAC -- the ct_sync paper's choice, not conntrackd FTFW's (which
rebuilds NACKed entries from current state under new seqs, sync-ftfw.c rs_queue_to_tx()).
Why: followers apply the stream in order, like a log, so a hole is filled with exactly what was
there and every later packet (with newer state) is applied after it -- an old retransmission
never overwrites newer state; the sender needs no per-entry state (memory O(backlog), not
O(table)); identical bytes keep HMAC/replay checks valid and make duplicates exact. The price
is head-of-line blocking for one NACK round trip and resending superseded data.

Rules: pre-allocated ring indexed by ``seq % size`` (no allocation per packet besides the
datagram itself); stream seqs are added consecutively; no time, no I/O.
"""

from __future__ import annotations

from pmct.serial import MASK32

__all__ = ["Backlog"]


class Backlog:
    __slots__ = ("_data", "_seqs", "count", "newest", "size")

    def __init__(self, size: int, next_seq: int = 0) -> None:
        if size < 1:
            raise ValueError("backlog size must be >= 1")
        self.size = size
        self._data: list[bytes | None] = [None] * size
        self._seqs: list[int] = [0] * size
        self.count = 0
        self.newest = (next_seq - 1) & MASK32

    def clear(self, next_seq: int) -> None:
        """Forget everything; the next added seq will be ``next_seq``."""
        for i in range(self.size):
            self._data[i] = None
        self.count = 0
        self.newest = (next_seq - 1) & MASK32

    def add(self, seq: int, data: bytes) -> None:
        if seq != (self.newest + 1) & MASK32:
            raise ValueError(f"backlog: seq {seq} does not follow {self.newest}")
        slot = seq % self.size
        self._data[slot] = data
        self._seqs[slot] = seq
        self.newest = seq
        if self.count < self.size:
            self.count += 1

    @property
    def oldest(self) -> int:
        """Oldest seq still held (== newest + 1 when empty: nothing before it can be served)."""
        return (self.newest - self.count + 1) & MASK32

    def get(self, seq: int) -> bytes | None:
        """The datagram sent with ``seq``, or None if it is not (or no longer) held."""
        if self.count == 0 or (self.newest - seq) & MASK32 >= self.count:
            return None
        slot = seq % self.size
        if self._seqs[slot] != seq:
            return None
        return self._data[slot]
