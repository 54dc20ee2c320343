"""Fault models: which packets the standby misses, which sync datagrams are lost.

Why two loss models: a standby that tracks from the wire (poor man's concurrent tracking)
does not lose packets independently. Its NFQUEUE overflows in bursts when the CPU is busy,
and a link flap loses a run of packets. A burst hurts less often but harder than the same
rate spread evenly: one lost packet in a TCP session is usually healed by the next one, a
lost run may contain a whole handshake or a close. So the study sweeps both:

- ``random``: every packet is lost independently with probability p (Bernoulli).
- ``bursty``: the two-state Gilbert-Elliott chain (Gilbert 1960, Elliott 1963) with loss only
  in the Bad state. From Good the chain enters Bad with probability a, from Bad it leaves
  with b = 1 / burst_length, so bursts last burst_length packets on average, and the
  stationary loss rate a / (a + b) equals p when a = p * b / (1 - p).

Every model is a seeded ``random.Random``: the same seed gives the same losses, whichever
strategy consumes them, so strategies are compared on identical fault patterns.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

from pmct.errors import ConfigError

__all__ = ["LossModel", "derive_seed", "make_loss"]


def derive_seed(seed: int, *parts: object) -> int:
    """A stable sub-seed for one fault pattern (crc32 of the parts: no hash randomisation)."""
    text = "|".join(str(p) for p in parts).encode()
    return (seed * 0x1_0000_0001 + zlib.crc32(text)) & 0xFFFF_FFFF_FFFF


class LossModel:
    """``lost()`` answers, per packet or datagram in order, whether it is lost."""

    __slots__ = ("_a", "_b", "_bad", "_p", "_rng", "bursty", "losses", "trials")

    def __init__(self, p: float, *, bursty: bool, burst_length: float, seed: int) -> None:
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"loss rate {p} is out of range [0, 1)")
        if burst_length < 1.0:
            raise ConfigError(f"burst_length {burst_length} must be >= 1 packet")
        self._rng = random.Random(seed)
        self._p = p
        self.bursty = bursty
        self._b = 1.0 / burst_length
        self._a = p * self._b / (1.0 - p) if p else 0.0
        self._bad = False
        self.losses = 0
        self.trials = 0

    def lost(self) -> bool:
        self.trials += 1
        if not self._p:
            return False
        r = self._rng.random()
        if self.bursty:
            # Transition first, then lose in Bad: the first packet of a burst is lost too.
            self._bad = r >= self._b if self._bad else r < self._a
            hit = self._bad
        else:
            hit = r < self._p
        if hit:
            self.losses += 1
        return hit

    def predicate(self) -> Callable[[bytes], bool]:
        """For pmct.sync.sim.Link.drop: called once per datagram."""
        return lambda _data: self.lost()


def make_loss(model: str, p: float, *, burst_length: float, seed: int) -> LossModel:
    if model not in ("random", "bursty"):
        raise ConfigError(f"unknown loss model {model!r} (expected random or bursty)")
    return LossModel(p, bursty=model == "bursty", burst_length=burst_length, seed=seed)
