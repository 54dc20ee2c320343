"""MASTER_ANNOUNCE split-brain rule: the larger (term, node) claim wins, whatever the timing."""

from __future__ import annotations

import pytest

from pmct.sync.events import RoleChanged
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import SimNet, sample_conn
from pmct.sync.table import DictTable


def trio(seed: int, mode: str = "concurrent") -> tuple[SimNet, list[SyncProtocol]]:
    net = SimNet(seed=seed)
    nodes = []
    for nid in (1, 2, 3):
        cfg = SyncConfig(nid, frozenset({1, 2, 3} - {nid}), mode=mode, initsync_on_start=False)
        t = DictTable()
        for i in range(nid * 10, nid * 10 + 5):
            t.add(sample_conn(i))
        nodes.append(net.add(SyncProtocol(cfg, t, epoch=100 * nid, now=0.0)))
    return net, nodes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("terms", "winner"),
    [((7, 7), 2), ((8, 7), 1), ((7, 9), 2), ((5, 5), 2)],
)
def test_the_larger_claim_wins_whatever_the_timing(
    seed: int, terms: tuple[int, int], winner: int
) -> None:
    net, (a, b, c) = trio(seed)
    import random

    rng = random.Random(seed)
    for ln in net.links.values():
        ln.delay = rng.uniform(0.0001, 0.05)  # asymmetric, random
        ln.jitter = 0.01
    a.promote(now=0.0, term=terms[0])
    net.run(rng.uniform(0.0, 0.1))
    b.promote(now=net.now, term=terms[1])
    net.run(net.now + 5.0)
    masters = [p.node_id for p in (a, b, c) if p.role == Role.MASTER]
    assert masters == [winner]
    assert all(p.master == winner for p in (a, b, c))
    loser = a if winner == 2 else b
    assert any(
        isinstance(e, RoleChanged) and nid == loser.node_id and e.reason.startswith("split_brain")
        for _, nid, e in net.events
    )


def test_a_later_promotion_wins_without_explicit_terms() -> None:
    net, (a, b, c) = trio(0)
    a.promote(now=0.0)
    net.run(2.0)
    b.promote(now=net.now)  # the cluster manager moved the VIP: b outranks what it has seen
    net.run(4.0)
    assert (a.role, b.role) == (Role.SLAVE, Role.MASTER) and b.term > a.term
    assert c.master == 2 and a.master == 2


def test_partition_heal_in_replicate_mode_resyncs_the_loser() -> None:
    net, (a, b, c) = trio(1, mode="replicate")
    for ln in net.links.values():
        ln.up = False
    a.promote(now=0.0, term=10)
    b.promote(now=0.0, term=11)
    net.run(3.0)
    for ln in net.links.values():
        ln.up = True
    net.run(10.0)
    assert [p.role for p in (a, b, c)] == [Role.SLAVE, Role.MASTER, Role.SLAVE]
    assert a.ready and c.ready  # both resynced from b
    keys = {x.key for x in b.table.conns()}
    assert {x.key for x in a.table.conns()} == keys == {x.key for x in c.table.conns()}
