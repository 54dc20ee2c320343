"""The connection table: a two-way index, lazy expiry and the size limit with early drop.

Rules:
1. Every confirmed Conn sits in ``index`` twice, under its original and its reply key (kernel
   nf_conntrack_hash: one entry per direction). Nothing else maps keys to Conns.
2. Expiry is lazy, as in the kernel: a lookup that finds an expired entry treats it as gone
   (kernel ____nf_conntrack_find(): nf_ct_is_expired() -> nf_ct_gc_expired()), and a periodic
   sweep (kernel gc_worker) removes the rest. The sweep uses a timing wheel of one-second
   buckets filled at insert time; refreshing an entry costs nothing on the hot path: when a
   bucket comes due, entries that were refreshed meanwhile are simply filed again.
3. Deleting marks the Conn DYING, so stale wheel references are skipped.
4. No clock here: callers pass ``now``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status

__all__ = ["EARLY_DROP_SCAN", "ConnTable"]

_DYING: Final = int(Status.DYING)
_ASSURED: Final = int(Status.ASSURED)

# How many candidates early drop looks at before giving up (kernel: NF_CT_EVICTION_RANGE
# buckets of the hash, i.e. a handful of entries; we scan the soonest-to-expire ones).
EARLY_DROP_SCAN: Final = 64


class ConnTable:
    """Two-way index plus expiry wheel. Iterating yields each live connection once."""

    __slots__ = ("_buckets", "_heap", "count", "index", "max_entries", "on_delete")

    def __init__(self, max_entries: int) -> None:
        self.index: dict[bytes, Conn] = {}
        self.count = 0
        self.max_entries = max_entries
        self._buckets: dict[int, list[Conn]] = {}
        self._heap: list[int] = []
        # called with (conn, reason) after a delete; the engine uses it for events/expectations
        self.on_delete: Callable[[Conn, str], None] | None = None

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Conn]:
        for key, conn in list(self.index.items()):
            if conn.key == key:
                yield conn

    def get(self, key: bytes, now: float) -> Conn | None:
        """Lookup that treats an expired entry as absent (and removes it)."""
        conn = self.index.get(key)
        if conn is not None and conn.expires <= now:
            self.delete(conn, "expired")
            return None
        return conn

    def insert(self, conn: Conn) -> None:
        index = self.index
        old = index.get(conn.key)
        if old is not None and old is not conn:
            self.delete(old, "replaced")
        old = index.get(conn.rkey)
        if old is not None and old is not conn:
            self.delete(old, "replaced")
        index[conn.key] = conn
        index[conn.rkey] = conn
        self.count += 1
        self._file(conn)

    def _file(self, conn: Conn) -> None:
        second = int(conn.expires)
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = [conn]
            heapq.heappush(self._heap, second)
        else:
            bucket.append(conn)

    def delete(self, conn: Conn, reason: str) -> bool:
        if conn.status & _DYING:
            return False
        conn.status |= _DYING
        index = self.index
        if index.get(conn.key) is conn:
            del index[conn.key]
        if index.get(conn.rkey) is conn:
            del index[conn.rkey]
        self.count -= 1
        if self.on_delete is not None:
            self.on_delete(conn, reason)
        return True

    def expire(self, now: float) -> int:
        """Remove every entry whose deadline passed; returns how many were removed."""
        removed = 0
        heap = self._heap
        buckets = self._buckets
        # A bucket holds deadlines in [second, second + 1): it is due once second + 1 <= now.
        while heap and heap[0] + 1 <= now:
            second = heapq.heappop(heap)
            for conn in buckets.pop(second, ()):
                if conn.status & _DYING:
                    continue
                if conn.expires <= now:
                    self.delete(conn, "expired")
                    removed += 1
                else:
                    self._file(conn)
        return removed

    def next_deadline(self) -> float | None:
        """When the next sweep can remove something (for the shell's timer)."""
        return float(self._heap[0] + 1) if self._heap else None

    def early_drop(self, now: float) -> bool:
        """Make room for one entry (kernel early_drop()): kill an expired or non-assured entry.

        The kernel looks at a few hash buckets around the new tuple's hash (random entries);
        we look at the entries that expire soonest, which is at least as good a victim.
        """
        return self._evict(now, None)

    def reclaim(self, now: float, can_early_drop: Callable[[Conn], bool]) -> bool:
        """The gc worker's second chance when the table stays full (kernel gc_worker() with
        early_drop set): an ASSURED entry may go if its tracker says it is closing."""
        return self._evict(now, can_early_drop)

    def _evict(self, now: float, can_early_drop: Callable[[Conn], bool] | None) -> bool:
        seen = 0
        for second in heapq.nsmallest(8, self._heap):
            for conn in self._buckets.get(second, ()):
                if conn.status & _DYING:
                    continue
                seen += 1
                if (
                    conn.expires <= now
                    or not conn.status & _ASSURED
                    or (can_early_drop is not None and can_early_drop(conn))
                ):
                    self.delete(conn, "early_drop")
                    return True
                if seen >= EARLY_DROP_SCAN:
                    return False
        return False
