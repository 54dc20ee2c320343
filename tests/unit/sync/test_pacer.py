"""Init-sync token bucket: exact long-run rate with late wake-ups, bounded bursts."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pmct.sync.pacer import SLACK_TIME, UNLIMITED, Pacer, default_slack


def test_unthrottled() -> None:
    p = Pacer(0, 10)
    assert p.available(0.0) == UNLIMITED and p.next_time(5) == -math.inf


def test_starts_full_then_refills_at_the_rate() -> None:
    p = Pacer(1000.0, 50, now=0.0)
    assert p.available(0.0) == 50
    p.consume(50, 0.0)
    assert p.available(0.0) == 0
    assert p.next_time(50) == pytest.approx(0.05)
    assert p.available(0.049) == 49
    assert p.available(0.05) == 50


def test_idle_refills_only_to_capacity() -> None:
    p = Pacer(100.0, 10, now=0.0)
    p.consume(10, 0.0)
    assert p.available(1000.0) == 10  # not 100000


def test_default_slack() -> None:
    assert default_slack(4000.0, 53) == 53  # 10 ms of 4,000/s = 40 < one packet
    assert default_slack(25_000.0, 53) == math.ceil(25_000 * SLACK_TIME)  # 250
    assert default_slack(0.0, 53) == 53


def _drive(
    rate: float, quantum: int, slack: int, lateness: list[float]
) -> tuple[list[tuple[float, int]], Pacer]:
    """A walk that asks next_time(quantum), is woken ``lateness[i]`` after it, and then sends
    whole packets while a quantum is allowed (as protocol._walk_step does). Returns every send
    as (time, records) and the pacer."""
    p = Pacer(rate, quantum + slack, now=0.0)
    now = 0.0
    sends: list[tuple[float, int]] = []
    for late in lateness:
        while p.available(now) >= quantum:
            p.consume(quantum, now)
            sends.append((now, quantum))
        now = max(now, p.next_time(quantum)) + late
    return sends, p


def _max_burst_excess(sends: list[tuple[float, int]], rate: float) -> float:
    """max over s <= t of  records sent in [s, t] - rate * (t - s)  (the bucket bound: it
    must not exceed the capacity). O(n): sent(t) - rate*t minus the minimum, over earlier
    sends s, of sent_before(s) - rate*s."""
    worst = -math.inf
    lowest = math.inf
    total = 0
    for t, n in sends:
        lowest = min(lowest, total - rate * t)  # an interval starting at this send
        total += n
        worst = max(worst, total - rate * t - lowest)
    return worst


@pytest.mark.parametrize(
    ("rate", "quantum"), [(1000.0, 53), (4000.0, 53), (4000.0, 52), (25_000.0, 53), (333.3, 7)]
)
@pytest.mark.parametrize("max_late", [0.0, 0.5, 1.0])  # lateness, in units of the slack's time
def test_jittered_wakeups_keep_the_long_run_rate_exact(
    rate: float, quantum: int, max_late: float
) -> None:
    # The regression: with capacity == quantum every wake-up found the bucket full and lost
    # its lateness (1-7 % slow over a veth pair). With one slack of room, lateness up to
    # slack / rate is carried as credit.
    slack = default_slack(rate, quantum)
    rng = random.Random(f"{rate}/{quantum}/{max_late}")
    late = [rng.uniform(0.0, max_late * slack / rate) for _ in range(4000)]
    sends, _ = _drive(rate, quantum, slack, late)
    t_end, sent = sends[-1][0], sum(n for _, n in sends)
    capacity = quantum + slack
    # long run: (sent - capacity) records were earned in t_end seconds
    assert (sent - capacity) / t_end == pytest.approx(rate, rel=0.005)
    # never ahead of the bucket, at every send
    assert _max_burst_excess(sends, rate) <= capacity + 1e-6
    total = 0
    for t, n in sends:
        total += n
        assert total <= capacity + rate * t + 1e-6
        # and never behind by more than one quantum plus the lateness the slack covers
        assert total >= capacity + rate * t - quantum - slack - 1e-6


def test_the_old_rule_loses_the_lateness() -> None:
    # capacity == quantum (the old pacer): the same jitter makes the rate measurably short,
    # which is what the veth measurement showed; the test above is the fix.
    rate, quantum = 25_000.0, 53
    rng = random.Random(7)
    late = [rng.uniform(0.0, 0.4e-3) for _ in range(4000)]  # mean 0.2 ms per 2.1 ms packet
    p = Pacer(rate, quantum, now=0.0)
    now, sent = 0.0, 0
    for lt in late:
        while p.available(now) >= quantum:
            p.consume(quantum, now)
            sent += quantum
        now = p.next_time(quantum) + lt
    assert sent / now < 0.95 * rate
    sends, _ = _drive(rate, quantum, default_slack(rate, quantum), late)
    assert sum(n for _, n in sends) / sends[-1][0] == pytest.approx(rate, rel=0.01)


def test_a_stall_longer_than_the_slack_is_not_made_up_in_one_burst() -> None:
    rate, quantum = 4000.0, 53
    slack = default_slack(rate, quantum)
    late = [0.0] * 100 + [1.0] + [0.0] * 100  # one whole second asleep
    sends, _ = _drive(rate, quantum, slack, late)
    assert _max_burst_excess(sends, rate) <= quantum + slack + 1e-6
    gap, after = max((b[0] - a[0], b[0]) for a, b in itertools.pairwise(sends))
    assert gap >= 1.0
    woken = sum(n for t, n in sends if t == after)
    assert woken == quantum + slack  # the bucket's capacity, not the 4,000 records of the stall


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Pacer(-1, 1)
    with pytest.raises(ValueError):
        Pacer(1, 0)
