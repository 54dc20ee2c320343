"""Two cores over a lossy, duplicating, reordering link converge to the same table."""

from __future__ import annotations

import pytest

from pmct.conntrack.constants import TcpState
from pmct.serial import MASK32
from pmct.sync.sim import sample_conn

LINKS = {
    "clean": {},
    "loss5": {"loss": 0.05},
    "loss20_dup_reorder": {"loss": 0.2, "dup": 0.05, "jitter": 0.004},
    "dup_reorder": {"dup": 0.3, "jitter": 0.01},
}


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
@pytest.mark.parametrize("link", list(LINKS))
@pytest.mark.parametrize("seed", [1, 2])
def test_init_sync_converges_exactly(make_pair, conns, mode: str, link: str, seed: int) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(mode=mode, conns=conns(2000), seed=seed)
    for a, b in ((1, 2), (2, 1)):
        for k, v in LINKS[link].items():
            setattr(p.net.link(a, b), k, v)
    p.net.run(60.0, stop=p.settled)
    assert p.settled(), p.slave.counters()
    assert p.diff(tolerance=0.003 + LINKS[link].get("jitter", 0.0)) == []
    assert len(p.st) == 2000
    c = p.slave.counters()
    assert c["walks_received"] >= 1 and c["drop_unauthenticated"] == 0
    if LINKS[link].get("loss"):
        assert c["nack_sent"] >= 1  # the loss was repaired by NACKs ...
        assert c["gap_fallbacks"] == 0  # ... within the backlog, no second walk


def test_sequence_numbers_wrap_during_sync(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(3000)], seed=MASK32 - 20)
    p.net.link(1, 2).loss = 0.1
    p.net.run(60.0, stop=p.settled)
    assert p.master._seq < 1000  # it wrapped
    assert p.diff() == []


@pytest.mark.parametrize("window", [False, True])
def test_replicate_streams_every_change(make_pair, conns, window: bool) -> None:  # type: ignore[no-untyped-def]
    cfg = {"send_window": window}
    p = make_pair(mode="replicate", conns=conns(500), seed=3, master_cfg=cfg)
    for a, b in ((1, 2), (2, 1)):
        p.net.link(a, b).loss = 0.1
        p.net.link(a, b).dup = 0.05
        p.net.link(a, b).jitter = 0.003
    net, m, mt = p.net, p.master, p.mt
    # Changes while the walk runs and after it: new entries, state changes, deletes, and a
    # reopen (delete + new entry under the same key).
    times = [0.001 * i for i in range(1, 40)] + [1.0 + 0.05 * i for i in range(40)]
    for step, t in enumerate(times, 1):
        net.run(t)
        c = sample_conn(10_000 + step, state=TcpState.SYN_SENT, status=8)
        mt.add(c)
        m.local_update(c, now=net.now)
        victim = mt.get(sample_conn(step * 7).key)
        if victim is not None:
            if step % 3 == 0:
                mt.delete(victim)
                m.local_delete(victim, now=net.now)
                if step % 2 == 0:  # reopen
                    again = sample_conn(step * 7, state=TcpState.SYN_SENT, status=8)
                    mt.add(again)
                    m.local_update(again, now=net.now)
            else:
                victim.state = TcpState.FIN_WAIT
                victim.tw[0] += 100
                victim.expires = net.now + 120
                m.local_update(victim, now=net.now)
    net.run(net.now + 30.0, stop=p.settled)
    assert p.settled()
    assert p.diff(tolerance=0.01, window=window) == []


def test_replicate_refreshes_keep_the_standby_copy_alive(make_pair) -> None:  # type: ignore[no-untyped-def]
    # A UDP flow whose deadline the master keeps pushing without a state change: the engine
    # reports no event, the rolling refresh scan re-sends it before the standby copy expires.
    c = sample_conn(1, proto=17, expires=30.0)
    p = make_pair(mode="replicate", conns=[c], master_cfg={"refresh_interval": 1.0})
    p.net.run(1.0, stop=p.settled)
    for t in range(2, 120):
        p.net.run(float(t))
        c.expires = p.net.now + 30.0  # traffic refreshes it on the master
        copy = p.st.get(c.key)
        assert copy is not None and copy.expires > p.net.now + 10.0
    assert p.master.stats["tx_records"] < 20  # a refresh per ~15 s, not per second
