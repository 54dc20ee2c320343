"""Token bucket for the init-sync walk, counted in records and driven only by ``now``
(aioquic quic/recovery.py QuicPacketPacer: next_send_time(now) / update_after_send(now)).

Exactness: the allowance is computed from the start of the current busy period as
``burst + floor((now - t0) * rate) - used`` -- one rounding, no accumulated float error -- so
over any interval [t0, t] of a busy period at most ``burst + rate * (t - t0)`` records go out,
and a walk driven by ``next_time`` loses at most one packet's worth against that line. When the
bucket is full again (idle) the busy period restarts. ``rate == 0`` means unthrottled.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["Pacer"]

_EPS: Final = 1e-6  # records: absorbs float error when woken exactly at next_time()
UNLIMITED: Final = 1 << 62


class Pacer:
    __slots__ = ("_n", "_t0", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float = 0.0) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._t0 = now
        self._n = 0

    def _refill(self, now: float) -> float:
        earned = (now - self._t0) * self.rate
        if earned >= self._n:  # bucket full: a new busy period starts now
            self._t0 = now
            self._n = 0
            return 0.0
        return earned

    def available(self, now: float) -> int:
        """How many records may go out at ``now``."""
        if not self.rate:
            return UNLIMITED
        earned = self._refill(now)
        return max(0, self.burst + math.floor(earned + _EPS) - self._n)

    def consume(self, n: int, now: float) -> None:
        if self.rate:
            self._refill(now)
            self._n += n

    def next_time(self, n: int) -> float:
        """Earliest time at which ``n`` (<= burst) records are available."""
        if not self.rate:
            return -math.inf
        need = self._n + n - self.burst
        return self._t0 + need / self.rate if need > 0 else self._t0
