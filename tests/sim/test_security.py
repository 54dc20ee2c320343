"""Spoofed, replayed and stale packets change nothing (docs/protocol.md §5, §7)."""

from __future__ import annotations

from pmct.sync import codec
from pmct.sync.codec import Announce, CtDelete, InitSyncRequest, encode_datagram
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.records import conn_to_record
from pmct.sync.sim import peek_header, sample_conn, table_diff

WRONG = b"W" * 32


def snapshot(p) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(repr(conn_to_record(c, 0.0, window=True)) for c in p.st.conns())


def test_spoofed_packets_with_a_wrong_key_change_nothing(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(mode="replicate", conns=[sample_conn(i) for i in range(100)])
    p.net.run(2.0, stop=p.settled)
    before = snapshot(p)
    hdr = peek_header(p.master.datagrams_to_send(now=p.net.now) or [b""]) or None
    seq = p.master._seq  # the next seq the real master will use: the most tempting to forge
    forged = [
        # new entries, and deletes of every existing one, as the real master would send them
        (3, codec.encode_ct_update(conn_to_record(sample_conn(5000), p.net.now))),
        (3, b"".join(codec.encode_ct_delete(CtDelete(6, c.key)) for c in list(p.mt.conns())[:50])),
        # an announce that would make any master or slave switch to the forger
        (1, codec.encode_announce(Announce(0xFFFFFFFF, seq, 1))),
        (5, codec.encode_walk_begin(codec.WalkBegin(77, 0))),
        (6, codec.encode_walk_done(codec.WalkDone(77, 0))),
        (2, codec.encode_initsync(InitSyncRequest(0, 12345))),
    ]
    n = 0
    for i, (ptype, body) in enumerate(forged):
        for node, epoch in ((1, 1000), (1, 1001), (3, 5)):
            d = encode_datagram(
                ptype, body, node=node, epoch=epoch, seq=seq + i, stamp=0, key=WRONG
            )
            p.net.inject.append((2, d))
            p.net.inject.append((1, d))
            n += 1
    p.net.run(p.net.now + 3.0)
    assert hdr is None or hdr.node == 1
    assert snapshot(p) == before
    assert p.slave.drops["unauthenticated"] == n and p.master.drops["unauthenticated"] == n
    assert p.master.role == Role.MASTER and p.slave.master == 1
    assert p.master.stats["walks_started"] == 1  # the forged request started nothing


def test_replayed_capture_changes_nothing(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(mode="replicate", conns=[sample_conn(i) for i in range(300)])
    capture: list[bytes] = []

    def tap(data: bytes) -> bool:
        capture.append(data)
        return False

    p.net.link(1, 2).drop = tap
    p.net.link(2, 1).drop = tap
    p.net.run(2.0, stop=p.settled)
    # the master moves on: deletes a third of its entries and streams the deletes
    for c in list(p.mt.conns())[::3]:
        p.mt.delete(c)
        p.master.local_delete(c, now=p.net.now)
    p.net.run(p.net.now + 2.0, stop=p.settled)
    assert p.diff() == []
    before = snapshot(p)
    for d in capture:  # an attacker on the wire replays everything it saw, to both nodes
        p.net.inject.append((2, d))
        p.net.inject.append((1, d))
    p.net.run(p.net.now + 3.0)
    assert snapshot(p) == before and p.diff() == []
    assert p.slave.drops["duplicate"] + p.slave.drops["replay"] >= len(capture) // 2
    assert p.master.stats["walks_started"] == 1  # replayed requests are recognised


def test_packets_of_an_old_incarnation_are_stale(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(50)])
    capture: list[bytes] = []
    p.net.link(1, 2).drop = lambda d: capture.append(d) or False  # type: ignore[func-returns-value]
    p.net.run(1.0, stop=p.settled)
    p.net.link(1, 2).drop = None
    # the master restarts (a new epoch) with an empty table and is promoted again
    key = p.master.config.hmac_key
    fresh = SyncProtocol(
        SyncConfig(1, frozenset({2}), hmac_key=key),
        type(p.mt)(),
        epoch=1001,
        now=p.net.now,
        role=Role.MASTER,
    )
    p.net.nodes[1] = fresh
    p.net.run(p.net.now + 2.0)
    assert p.slave.master == 1 and p.slave.stats["peer_restarts"] == 1
    before = snapshot(p)
    for d in capture:
        p.net.inject.append((2, d))
    p.net.run(p.net.now + 1.0)
    assert p.slave.drops["stale_epoch"] == len(capture)
    assert snapshot(p) == before


def test_unauthenticated_and_unkeyed_peers_do_not_talk(make_pair) -> None:  # type: ignore[no-untyped-def]
    # One side without a key: nothing gets through in either direction, nothing changes.
    p = make_pair(conns=[sample_conn(i) for i in range(20)])
    p.net.nodes[2] = slave = SyncProtocol(SyncConfig(2, frozenset({1})), p.st, epoch=7, now=0.0)
    p.net.run(3.0)
    assert len(p.st) == 0 and not slave.ready
    assert slave.drops["hmac_unexpected"] > 0 and p.master.drops["unauthenticated"] > 0
    assert table_diff(p.st, type(p.st)(), now=3.0) == []
