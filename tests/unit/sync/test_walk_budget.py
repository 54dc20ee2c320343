"""The walk's per-iteration budget: a master serving a big walk gives its loop back.

The master's walk runs in the node's packet loop (daemon.py); without a cap one service() call
encoded up to ``walk_burst_packets`` packets after every datagram it received, tens of
milliseconds during which no packet was forwarded (pmct/node/bench_sync_fwd.py measured RTTs
of 0.9-2.4 s through an active node serving a 100k walk). ``walk_budget`` caps the records
sent while ``now`` keeps one value -- the shell passes one ``now`` per loop iteration -- and
the timer asks for the next iteration at once, so an idle node still walks at full speed.
"""

from __future__ import annotations

import pytest

from pmct.errors import ConfigError
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable


def _pair(n: int, **cfg: object) -> tuple[SyncProtocol, SyncProtocol]:
    mt = DictTable()
    for i in range(n):
        mt.add(sample_conn(i))
    master = SyncProtocol(
        SyncConfig(1, frozenset({2}), **cfg),  # type: ignore[arg-type]
        mt,
        epoch=1,
        now=0.0,
        role=Role.MASTER,
    )
    slave = SyncProtocol(SyncConfig(2, frozenset({1})), DictTable(), epoch=2, now=0.0)
    return master, slave


def _exchange(master: SyncProtocol, slave: SyncProtocol, now: float) -> int:
    """One loop iteration of both nodes at ``now``; the walk records the master sent."""
    before = master.stats["tx_records"]
    for d in slave.datagrams_to_send(now=now):
        master.receive_datagram(d, now=now)
    t = master.get_timer()
    if t is not None and t <= now:
        master.handle_timer(now=now)
    out: list[bytes] = []
    for _ in range(5):  # the shell calls it after every received datagram, same ``now``
        out += master.datagrams_to_send(now=now)
    for d in out:
        slave.receive_datagram(d, now=now)
    t = slave.get_timer()
    if t is not None and t <= now:
        slave.handle_timer(now=now)
    return master.stats["tx_records"] - before


@pytest.mark.parametrize("budget", [100, 512, 2000])
def test_records_per_iteration_stay_within_the_budget(budget: int) -> None:
    n = 20_000
    master, slave = _pair(n, walk_budget=budget)
    quantum = master._quantum
    now, per_iteration = 0.0, []
    while not slave.ready:
        now += 0.001
        per_iteration.append(_exchange(master, slave, now))
        t = master.get_timer()
        if master._walk is not None and master._budget_used >= budget:
            assert t is not None and now < t < now + 1e-9  # the very next iteration
        assert now < 100
    assert slave.stats["apply_inserted"] == n
    # at most one packet beyond the budget (the last packet started below it)
    assert max(per_iteration) <= budget + quantum
    assert max(per_iteration) >= budget  # and it is used: the walk is not slower than that
    assert len(per_iteration) <= n // budget + 5


def test_no_budget_sends_bursts_per_call() -> None:
    master, slave = _pair(20_000, walk_budget=0)
    sent = [_exchange(master, slave, 0.001 * i) for i in range(1, 4)]
    # five calls at one ``now``, each up to walk_burst_packets: what the budget prevents
    assert max(sent) > 5 * 512


def test_a_fake_clock_does_not_spin() -> None:
    # the timer after an exhausted budget is strictly later than ``now``: a driver that
    # always jumps to get_timer() makes progress
    master, slave = _pair(3000, walk_budget=200)
    now = 0.0
    for _ in range(200):
        _exchange(master, slave, now)
        if slave.ready:
            break
        t = master.get_timer()
        assert t is not None and t > now
        now = t
    assert slave.ready


def test_bad_budget() -> None:
    with pytest.raises(ConfigError):
        SyncConfig(1, frozenset({2}), walk_budget=-1)
