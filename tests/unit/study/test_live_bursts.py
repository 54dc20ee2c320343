"""The live bursty miss model's pure parts: the burst schedule, the nft table, the counters.

The schedule must give the configured long-run miss share p and bursts of the configured
mean length, the same ones for the same seed (every strategy and every rerun of a study
sees the same bursts) and other ones for another seed.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from pmct.study.live_bursts import BURST_SET, burst_schedule, bursty_miss_table, read_counters


@pytest.mark.parametrize(("p", "mean_s"), [(0.01, 0.03), (0.05, 0.03), (0.2, 0.05)])
def test_schedule_share_and_burst_length(p: float, mean_s: float) -> None:
    duration = 20_000 * mean_s / p  # ~20,000 bursts: the statistics settle
    sched = burst_schedule(p, mean_s, duration, seed=7)
    lengths = [e - s for s, e in sched]
    share = sum(lengths) / duration
    assert share == pytest.approx(p, rel=0.05)
    assert statistics.fmean(lengths) == pytest.approx(mean_s, rel=0.05)
    # exponential lengths: the median is ln 2 of the mean, and some bursts are 3x the mean
    assert statistics.median(lengths) == pytest.approx(0.693 * mean_s, rel=0.08)
    assert max(lengths) > 3 * mean_s
    # bursts are ordered, do not overlap and stay inside the run
    assert all(0 < s < e <= duration for s, e in sched)
    assert all(e0 < s1 for (_, e0), (s1, _) in itertools.pairwise(sched))
    # Poisson starts: the gaps are exponential, their spread equals their mean
    gaps = [s1 - e0 for (_, e0), (s1, _) in itertools.pairwise(sched)]
    assert statistics.fmean(gaps) == pytest.approx(mean_s * (1 - p) / p, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(statistics.fmean(gaps), rel=0.1)


def test_schedule_is_seeded() -> None:
    a = burst_schedule(0.05, 0.03, 60.0, seed=1)
    assert a == burst_schedule(0.05, 0.03, 60.0, seed=1)
    assert a != burst_schedule(0.05, 0.03, 60.0, seed=2)
    assert a  # 60 s at 5 % of 30 ms bursts: ~100 bursts
    assert burst_schedule(0.0, 0.03, 60.0, seed=1) == []


def test_schedule_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="out of range"):
        burst_schedule(1.0, 0.03, 1.0, seed=1)
    with pytest.raises(ValueError, match="mean burst"):
        burst_schedule(0.1, 0.0, 1.0, seed=1)


def test_table_and_counters() -> None:
    t = bursty_miss_table("pmctstudy_miss")
    assert f"set {BURST_SET} {{ type ifname; }}" in t
    for d in ("lan0", "wan0"):  # both data links, before NFQUEUE (raw is -300)
        assert f'hook ingress device "{d}" priority -500' in t
    assert t.count(f'iifname @{BURST_SET} counter name "missed" drop') == 2
    out = (
        '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "netdev", '
        '"name": "seen", "table": "t", "handle": 3, "packets": 1200, "bytes": 9}}, '
        '{"counter": {"family": "netdev", "name": "missed", "table": "t", "handle": 4, '
        '"packets": 60, "bytes": 7}}]}'
    )
    assert read_counters(out) == {"seen": 1200, "missed": 60}
