"""Init sync: pacing, progress, readiness, merging with local state, purge, restarts."""

from __future__ import annotations

import pytest

from pmct.conntrack.constants import Status, TcpState
from pmct.sync.events import InitSyncCompleted, InitSyncStarted, MasterChanged, ReadinessChanged
from pmct.sync.protocol import Role, SyncProtocol, SyncState
from pmct.sync.records import conn_to_record
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable


@pytest.mark.parametrize("rate", [1000.0, 4000.0, 25_000.0])
def test_throttled_walk_runs_at_the_configured_rate(make_pair, rate: float) -> None:  # type: ignore[no-untyped-def]
    n = 10_000
    p = make_pair(conns=[sample_conn(i) for i in range(n)], master_cfg={"initsync_rate": rate})
    quantum = p.master._quantum  # the walk waits for one packet's worth
    capacity = p.master._pacer.capacity  # one packet + the slack (pacer.py)
    samples = []
    start = None
    while not p.settled() and p.net.now < 60:
        p.net.run(p.net.now + 0.25, stop=p.settled)
        prog = p.master.progress(now=p.net.now)
        if prog.walk is not None:
            start = start if start is not None else p.master._walk.started  # type: ignore[union-attr]
            samples.append((p.net.now - start, prog.done))
    assert p.diff() == []
    for elapsed, done in samples:  # never ahead of the bucket, at most one packet behind it
        line = capacity + rate * elapsed
        assert line - quantum <= done <= line + 1e-6
    duration = p.net.now - start  # type: ignore[operator]
    assert duration == pytest.approx((n - capacity) / rate, abs=quantum / rate + 0.01)


def test_progress_and_readiness_events(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(2000)], master_cfg={"initsync_rate": 1000.0})
    assert not p.slave.ready and p.slave.progress(now=0.0).state == "UNSYNCED"
    p.net.run(1.0)
    mid = p.slave.progress(now=p.net.now)
    assert mid.state == "SYNCING" and not mid.ready and 40 < mid.percent < 60
    assert mid.rate == pytest.approx(1000.0, rel=0.1) and mid.total == 2000
    assert p.master.progress(now=p.net.now).percent == pytest.approx(mid.percent, abs=3)
    p.net.run(5.0, stop=p.settled)
    evs = [e for _, nid, e in p.net.events if nid == 2]
    assert evs == [
        MasterChanged(1, 1000, 1000),
        InitSyncStarted(1, 2000),
        InitSyncCompleted(1, 2000, 0),
        ReadinessChanged(True),
    ]
    assert p.slave.progress(now=p.net.now).percent == 100.0


def test_concurrent_merge_with_what_the_slave_tracked_itself(make_pair) -> None:  # type: ignore[no-untyped-def]
    master_conns = [sample_conn(i, state=TcpState.ESTABLISHED, expires=1000.0) for i in range(4)]
    st = DictTable()
    # 0: the slave saw the FIN after the master's record was made: local is newer, kept
    st.add(sample_conn(0, state=TcpState.FIN_WAIT, expires=120.0, status=8))
    # 1: picked up mid-stream, not yet assured: the master's view is newer
    picked = st.add(sample_conn(1, state=TcpState.ESTABLISHED, expires=10.0, status=8))
    picked.tflags0 = picked.tflags1 = 0x0A
    # 2: only on the slave (new since boot): kept, concurrent mode never purges
    st.add(sample_conn(50))
    # 3 is absent on the slave: inserted
    p = make_pair(conns=master_conns, slave_table=st)
    p.net.run(5.0, stop=p.settled)
    c0, c1, c3 = (st.get(sample_conn(i).key) for i in (0, 1, 3))
    assert c0 is not None and c0.state == TcpState.FIN_WAIT and c0.status & Status.ASSURED
    assert c1 is not None and c1.expires == pytest.approx(1000.0, abs=0.01)
    assert c1.status & Status.ASSURED and c1.tflags0 & 0x08  # still liberal: window relearned
    assert c3 is not None and c3.expires == pytest.approx(1000.0, abs=0.002)  # + one-way delay
    c3.expires = master_conns[3].expires
    assert conn_to_record(c3, 0.0) == conn_to_record(master_conns[3], 0.0)
    assert st.get(sample_conn(50).key) is not None
    s = p.slave.stats
    assert (s["apply_stale"], s["apply_replaced"], s["apply_inserted"]) == (1, 1, 2)


def test_replicate_walk_purges_what_the_master_does_not_have(make_pair) -> None:  # type: ignore[no-untyped-def]
    st = DictTable()
    for i in range(100, 150):  # left over from before: their DELETEs were never seen
        st.add(sample_conn(i))
    st.add(sample_conn(3, state=TcpState.TIME_WAIT))  # stale copy of a live entry
    p = make_pair(mode="replicate", conns=[sample_conn(i) for i in range(60)], slave_table=st)
    p.net.run(5.0, stop=p.settled)
    assert p.diff() == [] and p.slave.stats["purged"] == 50


def test_restarted_slave_resyncs_and_master_notices(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(500)])
    p.net.run(5.0, stop=p.settled)
    assert p.diff() == []
    # the slave reboots: empty table, new epoch, same node id
    p.st = DictTable()
    p.slave = SyncProtocol(p.slave.config, p.st, epoch=2001, now=p.net.now)
    p.net.nodes[2] = p.slave
    p.net.run(p.net.now + 5.0, stop=p.settled)
    assert p.diff() == [] and p.master.stats["peer_restarts"] == 1
    assert p.master.stats["walks_started"] == 2


def test_master_restart_concurrent_keeps_a_synced_slave_ready(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(100)])
    p.net.run(5.0, stop=p.settled)
    fresh = SyncProtocol(p.master.config, DictTable(), epoch=1001, now=p.net.now)
    p.net.nodes[1] = fresh  # the old master reboots as a slave: nobody is master now
    p.net.run(p.net.now + 3.0)
    assert p.slave.master is None and p.slave.ready  # its own table is still good
    assert not fresh.ready
    p.slave.promote(now=p.net.now)  # failover: the cluster manager promotes the survivor
    p.net.run(p.net.now + 3.0)
    assert fresh.ready and fresh.master == 2 and len(fresh.table) == 100  # type: ignore[arg-type]


def test_master_dies_during_a_walk(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(
        conns=[sample_conn(i) for i in range(2000)],
        master_cfg={"initsync_rate": 1000.0},
        slave_cfg={"walk_timeout": 5.0},
    )
    p.net.run(0.5)
    assert p.slave.sync_state == SyncState.SYNCING
    p.net.link(1, 2).up = p.net.link(2, 1).up = False
    p.net.run(p.net.now + 6.0)
    assert p.slave.sync_state in (SyncState.UNSYNCED, SyncState.REQUESTED)  # walk_stalled
    p.net.link(1, 2).up = p.net.link(2, 1).up = True
    p.net.run(p.net.now + 10.0, stop=p.settled)
    assert p.diff() == [] and p.master.role == Role.MASTER


def test_manual_resync(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(mode="replicate", conns=[sample_conn(i) for i in range(100)])
    p.net.run(5.0, stop=p.settled)
    p.slave.request_initsync(now=p.net.now)
    assert not p.slave.ready
    p.net.run(p.net.now + 5.0, stop=p.settled)
    assert p.slave.ready and p.master.stats["walks_started"] == 2 and p.diff() == []


def test_expectations_travel_in_the_walk_and_live(make_pair) -> None:  # type: ignore[no-untyped-def]
    from pmct.sync.codec import ExpDelete, ExpRecord

    master = sample_conn(1)
    p = make_pair(mode="replicate", conns=[master])
    exp = ExpRecord(6, sample_conn(2).key, b"\xff" * 12, master.key, 300_000, 0, 0, "ftp")
    p.mt.apply_expect(exp, 0.0, authoritative=True)
    p.net.run(5.0, stop=p.settled)
    assert [e.key for e in p.st.expectations(p.net.now)] == [exp.key]
    exp2 = ExpRecord(6, sample_conn(3).key, b"\xff" * 12, master.key, 300_000, 0, 0, "ftp")
    p.master.local_expect(exp2, now=p.net.now)
    p.master.local_expect(ExpDelete(6, exp.key, exp.mask, exp.master), now=p.net.now)
    p.net.run(p.net.now + 1.0, stop=p.settled)
    assert [e.key for e in p.st.expectations(p.net.now)] == [exp2.key]
