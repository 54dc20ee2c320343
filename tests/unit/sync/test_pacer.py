"""Init-sync token bucket: exact allowance, driven only by ``now``."""

from __future__ import annotations

import math

import pytest

from pmct.sync.pacer import UNLIMITED, Pacer


def test_unthrottled() -> None:
    p = Pacer(0, 10)
    assert p.available(0.0) == UNLIMITED and p.next_time(5) == -math.inf


def test_burst_then_rate() -> None:
    p = Pacer(1000.0, 50, now=0.0)
    assert p.available(0.0) == 50
    p.consume(50, 0.0)
    assert p.available(0.0) == 0
    assert p.next_time(50) == pytest.approx(0.05)
    assert p.available(0.049) == 49
    assert p.available(0.05) == 50


@pytest.mark.parametrize(
    ("rate", "burst", "per_packet"), [(1000.0, 53, 53), (4000.0, 52, 52), (333.3, 10, 7)]
)
def test_driven_by_next_time_the_rate_is_exact(rate: float, burst: int, per_packet: int) -> None:
    # A sender that wakes at next_time() and sends whole packets: after T seconds it has sent
    # between burst + rate*T - per_packet and burst + rate*T records, at every wake-up.
    p = Pacer(rate, burst, now=0.0)
    now, sent = 0.0, 0
    for _ in range(5000):
        n = min(per_packet, p.available(now))
        assert n == per_packet  # woken exactly when a whole packet is allowed
        p.consume(n, now)
        sent += n
        assert burst + rate * now - per_packet <= sent <= burst + rate * now + 1e-6
        now = p.next_time(per_packet)
    assert sent / now == pytest.approx(rate, rel=0.01)


def test_idle_refills_only_to_burst() -> None:
    p = Pacer(100.0, 10, now=0.0)
    p.consume(10, 0.0)
    assert p.available(1000.0) == 10  # not 100000


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Pacer(-1, 1)
    with pytest.raises(ValueError):
        Pacer(1, 0)
