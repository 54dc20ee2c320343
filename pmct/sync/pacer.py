"""Token bucket for the init-sync walk, counted in records and driven only by ``now``
(aioquic quic/recovery.py QuicPacketPacer: next_send_time(now) / update_after_send(now)).

Two numbers, deliberately different (docs/protocol.md §12, "the pacer rule"):

* ``quantum``: what the sender waits for -- one packet's worth of records (or the rest of the
  walk). It asks ``next_time(quantum)`` and sends when woken.
* ``capacity``: what the bucket may hold -- ``quantum + slack`` (slack: one packet, or more at
  high rates). A real sender wakes *late* (select() granularity, the packet path, another
  process on the CPU). If the capacity were one quantum, the bucket would be full at the very
  moment the sender is allowed to send, every wake-up would find it full, and the tokens earned
  during the lateness would spill over: each packet would cost ``1/rate + lateness`` and the
  long-run rate would be short by lateness/interval (measured over a veth pair: 1-7 % slow at
  4,000-25,000/s). With ``capacity - quantum`` of room, lateness up to ``slack / rate`` is kept
  as credit and spent on the next wake-up, so the long-run rate is exact; only a stall longer
  than that (the sender was really idle) loses tokens, as a token bucket must.

Bounds (a token bucket of ``capacity``, starting full): over any interval [s, t], at most
``capacity + rate * (t - s)`` records go out; a sender driven by ``next_time`` and late by at
most ``slack / rate`` has sent at least ``capacity - quantum + rate * (t - t0)`` minus its
current lateness's worth at every wake-up (tests/unit/sync/test_pacer.py).

Exactness: the allowance is computed from the start of the current busy period as
``base + floor((now - t0) * rate) - used`` -- one rounding, no accumulated float error. When
the bucket is full again (idle longer than the slack) the busy period restarts at ``now``.
``rate == 0`` means unthrottled.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["SLACK_TIME", "UNLIMITED", "Pacer", "default_slack"]

_EPS: Final = 1e-6  # records: absorbs float error when woken exactly at next_time()
UNLIMITED: Final = 1 << 62
SLACK_TIME: Final = 0.010  # seconds of lateness the default slack absorbs at high rates


def default_slack(rate: float, quantum: int) -> int:
    """One quantum, or ``SLACK_TIME`` worth of ``rate``, whichever is more (records)."""
    return max(quantum, math.ceil(rate * SLACK_TIME))


class Pacer:
    """Token bucket: ``capacity`` records, refilled at ``rate`` records/s, starts full.

    Args:
        rate: records per second; 0 = unthrottled.
        capacity: the bucket's size (records), >= 1; for a sender that waits for ``quantum``
            records, ``quantum + slack`` (module docstring).
        now: the clock at start.
    """

    __slots__ = ("_base", "_n", "_t0", "capacity", "rate")

    def __init__(self, rate: float, capacity: int, now: float = 0.0) -> None:
        if rate < 0 or capacity < 1:
            raise ValueError("rate must be >= 0 and capacity >= 1")
        self.rate = float(rate)
        self.capacity = int(capacity)
        self._t0 = now
        self._base = self.capacity  # tokens at t0
        self._n = 0  # consumed since t0

    def _earned(self, now: float) -> float:
        earned = (now - self._t0) * self.rate
        if self._base + earned - self._n >= self.capacity:  # full: a new busy period
            self._t0 = now
            self._base = self.capacity
            self._n = 0
            return 0.0
        return earned

    def available(self, now: float) -> int:
        """How many records may go out at ``now``."""
        if not self.rate:
            return UNLIMITED
        earned = self._earned(now)
        return max(0, self._base + math.floor(earned + _EPS) - self._n)

    def consume(self, n: int, now: float) -> None:
        if self.rate:
            self._earned(now)
            self._n += n

    def next_time(self, n: int) -> float:
        """Earliest time at which ``n`` (<= capacity) records are available."""
        if not self.rate:
            return -math.inf
        need = self._n + n - self._base
        return self._t0 + need / self.rate if need > 0 else self._t0
