"""Loss recovery: NACK within the backlog, init sync beyond it (docs/protocol.md §8, §9)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pmct.sync.codec import FLAG_WALK, PacketType
from pmct.sync.events import StreamReset
from pmct.sync.sim import peek_header, sample_conn


def drop_walk_packets(indexes: set[int], *, once: bool = True) -> Callable[[bytes], bool]:
    """Drop the n-th walk packets of node 1 (first transmission only, unless ``once=False``)."""
    seen: dict[int, int] = {}  # seq -> walk index
    dropped: set[int] = set()

    def pred(data: bytes) -> bool:
        h = peek_header(data)
        if h is None or h.node != 1 or not h.flags & FLAG_WALK:
            return False
        idx = seen.setdefault(h.seq, len(seen))
        if idx in indexes and (not once or h.seq not in dropped):
            dropped.add(h.seq)
            return True
        return False

    return pred


def drop_type(ptype: int, node: int, count: int = 1_000_000) -> Callable[[bytes], bool]:
    left = [count]

    def pred(data: bytes) -> bool:
        h = peek_header(data)
        if h is not None and h.type == ptype and h.node == node and left[0] > 0:
            left[0] -= 1
            return True
        return False

    return pred


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
def test_nack_recovers_loss_within_the_backlog(make_pair, mode: str) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(mode=mode, conns=[sample_conn(i) for i in range(2000)])
    p.net.link(1, 2).drop = drop_walk_packets({2, 3, 17})
    p.net.run(10.0, stop=p.settled)
    c, m = p.slave.counters(), p.master.counters()
    assert p.diff() == []
    assert c["nack_sent"] >= 1 and m["retransmitted"] >= 3
    assert c["gap_fallbacks"] == 0 and m["walks_started"] == 1
    assert p.net.now < 0.1  # repaired within a few NACK round trips, not by a later walk


def test_lost_tail_is_found_at_the_next_announce(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(mode="replicate", conns=[sample_conn(i) for i in range(10)])
    p.net.run(0.5, stop=p.settled)
    c = p.mt.add(sample_conn(99))
    p.net.link(1, 2).drop = drop_type(PacketType.SYNC, 1, count=1)
    t0 = p.net.now
    p.master.local_update(c, now=t0)
    p.net.run(10.0, stop=lambda: p.st.get(c.key) is not None)
    assert p.diff() == []
    # nothing follows the lost packet until the periodic announce reveals the hole
    announce_at = p.master._announce_due - p.master.config.announce_interval  # type: ignore[operator]
    assert t0 < announce_at <= p.net.now < announce_at + 0.05
    assert p.slave.stats["nack_sent"] == 1 and p.master.stats["retransmitted"] == 1


def test_gap_older_than_the_backlog_falls_back_to_init_sync(make_pair) -> None:  # type: ignore[no-untyped-def]
    # Live changes are not flow-controlled: while the link is down the master streams more
    # packets than its backlog holds, so the hole cannot be repaired any more.
    p = make_pair(
        mode="replicate", conns=[sample_conn(i) for i in range(200)], master_cfg={"backlog": 8}
    )
    p.net.run(2.0, stop=p.settled)
    p.net.link(1, 2).up = False
    for i in range(20):
        c = p.mt.add(sample_conn(1000 + i))
        p.master.local_update(c, now=p.net.now)
        p.net.run(p.net.now + 0.01)
    p.net.link(1, 2).up = True
    p.net.run(p.net.now + 10.0, stop=p.settled)
    assert p.diff() == []
    assert p.slave.stats["gap_fallbacks"] >= 1 and p.master.stats["walks_started"] == 2
    assert any(e == StreamReset("gap_older_than_backlog") for _, _, e in p.net.events)


def test_unanswered_nacks_fall_back_to_init_sync(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(500)])
    p.net.link(1, 2).drop = drop_walk_packets({1})
    p.net.link(2, 1).drop = drop_type(PacketType.NACK, 2)  # every NACK is lost
    p.net.run(30.0, stop=p.settled)
    assert p.diff() == []
    assert p.slave.stats["nack_sent"] == p.slave.config.nack_retries
    assert any(e == StreamReset("nack_unanswered") for _, _, e in p.net.events)
    assert p.master.stats["walks_started"] == 2


def test_gap_beyond_the_reorder_buffer(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(2000)], slave_cfg={"reorder_limit": 4})
    p.net.link(1, 2).drop = drop_walk_packets({1})
    p.net.run(20.0, stop=p.settled)
    assert p.diff() == []
    # packets beyond the buffer are dropped and asked for again: NACKs, not a second walk
    assert p.slave.stats["gap_overflow"] >= 1 and p.master.stats["walks_started"] == 1
    assert p.slave.stats["gap_fallbacks"] == 0


def test_nack_lists_every_hole(make_pair) -> None:  # type: ignore[no-untyped-def]
    p = make_pair(conns=[sample_conn(i) for i in range(2000)])
    p.net.link(1, 2).drop = drop_walk_packets({2, 4, 5, 9})
    nacks: list[bytes] = []

    def spy(data: bytes) -> bool:
        h = peek_header(data)
        if h is not None and h.type == PacketType.NACK:
            nacks.append(data)
        return False

    p.net.link(2, 1).drop = spy
    p.net.run(10.0, stop=p.settled)
    from pmct.sync.codec import Nack, decode_body, decode_datagram

    body = decode_body(PacketType.NACK, decode_datagram(nacks[0], p.slave.config.hmac_key)[1])
    assert isinstance(body, Nack) and len(body.ranges) == 3  # {2}, {4, 5}, {9}
    assert [last - first for first, last in body.ranges] == [0, 1, 0]
    assert p.diff() == []
