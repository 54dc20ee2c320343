"""SyncProtocol driven by hand: drop reasons, NACK service, roles, readiness, local changes."""

from __future__ import annotations

import pytest

from pmct.errors import ConfigError
from pmct.sync import codec
from pmct.sync.codec import (
    Announce,
    InitSyncRequest,
    Nack,
    PacketType,
    decode_body,
    decode_datagram,
    encode_datagram,
)
from pmct.sync.events import InitSyncCompleted, MasterChanged, ReadinessChanged, RoleChanged
from pmct.sync.protocol import (
    DROP_REASONS,
    SYNC_TRANSITIONS,
    Role,
    SyncConfig,
    SyncEvent,
    SyncProtocol,
    SyncState,
    next_sync_state,
)
from pmct.sync.records import conn_to_record
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable

KEY = b"s" * 32


def cfg(node: int, peers: set[int], **kw: object) -> SyncConfig:
    return SyncConfig(node, frozenset(peers), **kw)  # type: ignore[arg-type]


def drain(p: SyncProtocol) -> list[object]:
    out = []
    while (ev := p.next_event()) is not None:
        out.append(ev)
    return out


def types(datagrams: list[bytes], key: bytes | None = None) -> list[str]:
    return [PacketType(decode_datagram(d, key)[0].type).name for d in datagrams]


@pytest.mark.parametrize(
    "kw",
    [
        {"node_id": 0},
        {"node_id": 70000},
        {"peers": frozenset({1})},  # itself
        {"peers": frozenset({0})},
        {"mode": "mirror"},
        {"hmac_key": b"short"},
        {"max_datagram": 100},
        {"backlog": 1},
        {"walk_window": 5000},
        {"initsync_rate": -1.0},
        {"announce_interval": 0.0},
    ],
)
def test_config_validation(kw: dict[str, object]) -> None:
    base: dict[str, object] = {"node_id": 1, "peers": frozenset({2})}
    base.update(kw)
    with pytest.raises(ConfigError):
        SyncConfig(**base)  # type: ignore[arg-type]


def test_sync_state_table() -> None:
    for s in SyncState:
        assert next_sync_state(s, SyncEvent.NEED_RESYNC) == SyncState.UNSYNCED
    assert next_sync_state(SyncState.SYNCING, SyncEvent.WALK_DONE) == SyncState.SYNCED
    assert next_sync_state(SyncState.REQUESTED, SyncEvent.WALK_DONE) == SyncState.REQUESTED
    assert next_sync_state(SyncState.SYNCED, SyncEvent.WALK_BEGIN) == SyncState.SYNCED
    assert next_sync_state(SyncState.SYNCING, SyncEvent.REQUEST_SENT) is None
    assert len(SYNC_TRANSITIONS) == 14


def test_every_drop_reason_is_counted() -> None:
    t = DictTable()
    s = SyncProtocol(cfg(2, {1, 3}, hmac_key=KEY), t, epoch=5, now=0.0)
    m = SyncProtocol(
        cfg(1, {2}, hmac_key=KEY), DictTable(), epoch=9, now=0.0, role=Role.MASTER, initial_seq=2000
    )
    ann = m.datagrams_to_send(now=0.0)[0]

    def pkt(ptype: int, body: bytes, **kw: int) -> bytes:
        f = {"node": 1, "epoch": 9, "seq": 1000, "stamp": 0}
        f.update(kw)
        return encode_datagram(ptype, body, key=KEY, **f)

    sync_body = codec.encode_ct_update(conn_to_record(sample_conn(1), 0.0))
    s.receive_datagram(b"\x01\x02", now=0.0)  # malformed
    s.receive_datagram(pkt(3, b"\x00\x00\x00\x00"), now=0.0)  # malformed body
    s.receive_datagram(b"\x07" + ann[1:], now=0.0)  # bad_version
    s.receive_datagram(ann[:-1] + bytes([ann[-1] ^ 1]), now=0.0)  # unauthenticated
    s.receive_datagram(
        encode_datagram(3, sync_body, node=1, epoch=9, seq=1, stamp=0), now=0.0
    )  # unauthenticated (no trailer)
    s.receive_datagram(pkt(3, sync_body, node=2), now=0.0)  # own_node
    s.receive_datagram(pkt(3, sync_body, node=4), now=0.0)  # unknown_node
    s.receive_datagram(pkt(3, sync_body), now=0.0)  # not_master: nobody followed yet
    s.receive_datagram(pkt(3, sync_body), now=0.0)  # replay (same seq again)
    s.receive_datagram(pkt(3, sync_body, epoch=8), now=0.0)  # stale_epoch
    s.receive_datagram(pkt(4, codec.encode_nack(Nack(2, 5, 0, ((1, 1),))), seq=1001), now=0.0)
    s.receive_datagram(ann, now=0.0)  # follow node 1 from its announce
    s.receive_datagram(ann, now=0.0)  # duplicate
    nokey = SyncProtocol(cfg(2, {1}), DictTable(), epoch=5, now=0.0)
    nokey.receive_datagram(ann, now=0.0)  # hmac_unexpected
    drops = {k: s.drops[k] + nokey.drops[k] for k in DROP_REASONS}
    assert all(drops.values()), drops
    assert len(t) == 0
    assert s.counters()["drop_replay"] == 1


def test_malformed_detail_is_kept() -> None:
    s = SyncProtocol(cfg(2, {1}), DictTable(), epoch=5, now=0.0)
    s.receive_datagram(b"\x01" + bytes(5), now=0.0)
    assert s.malformed_detail == {"truncated header": 1}


def test_walk_flow_control_and_nack_service() -> None:
    t = DictTable()
    for i in range(400):
        t.add(sample_conn(i))
    m = SyncProtocol(
        cfg(1, {2}, backlog=4, announce_interval=100.0), t, epoch=7, now=0.0, role=Role.MASTER
    )

    def from_slave(ptype: int, body: bytes, seq: int) -> None:
        m.receive_datagram(encode_datagram(ptype, body, node=2, epoch=3, seq=seq, stamp=0), now=1.0)

    from_slave(2, codec.encode_initsync(InitSyncRequest(0, 1)), 0)
    sent = m.datagrams_to_send(now=0.0)
    # the requester may leave backlog // 2 = 2 walk packets unacknowledged
    assert types(sent) == ["MASTER_ANNOUNCE", "INITSYNC_BEGIN", "SYNC"]
    assert m.datagrams_to_send(now=0.0) == [] and m.get_timer() == 31.0  # blocked: ACK timeout
    seq = 1
    while types(sent)[-1] != "INITSYNC_DONE":
        ack = decode_datagram(sent[-1])[0].seq + 1
        from_slave(4, codec.encode_nack(Nack(1, 7, ack, ())), seq)  # a pure ACK
        seq += 1
        more = m.datagrams_to_send(now=1.0)
        assert 1 <= len(more) <= 2
        sent += more
    assert m.stats["acks_received"] == seq - 1 and m.stats["nack_received"] == 0
    seqs = [decode_datagram(d)[0].seq for d in sent]
    assert seqs == list(range(len(sent)))
    last = len(sent) - 1
    nack = Nack(1, 7, 0, ((last - 1, last), (0, 0)))
    from_slave(4, codec.encode_nack(nack), seq)
    again = m.datagrams_to_send(now=1.0)
    # seq 0 left the 4-packet backlog: an announce says what is still held, then the resends
    assert types(again) == ["MASTER_ANNOUNCE", "SYNC", "INITSYNC_DONE"]
    assert again[1:] == sent[last - 1 :]
    a = decode_body(PacketType.MASTER_ANNOUNCE, decode_datagram(again[0])[1])
    assert isinstance(a, Announce) and a.oldest == last + 1 - 3 and a.term == 7
    assert m.stats["retransmitted"] == 2 and m.stats["retransmit_unavailable"] == 1
    # a NACK for another epoch of ours is not ours to answer
    from_slave(4, codec.encode_nack(Nack(1, 6, 0, ((0, 0),))), seq + 1)
    assert m.drops["not_for_me"] == 1 and m.datagrams_to_send(now=1.0) == []


def test_a_silent_requester_stops_holding_the_walk_back() -> None:
    t = DictTable()
    for i in range(400):
        t.add(sample_conn(i))
    m = SyncProtocol(
        cfg(1, {2}, walk_timeout=5.0, announce_interval=100.0),
        t,
        epoch=7,
        now=0.0,
        role=Role.MASTER,
        initial_seq=0xFFFFFFFE,
    )
    m.receive_datagram(
        encode_datagram(
            2, codec.encode_initsync(InitSyncRequest(0, 1)), node=2, epoch=3, seq=0, stamp=0
        ),
        now=0.0,
    )
    m._walk_window = 3
    assert len(m.datagrams_to_send(now=0.0)) == 4  # announce, BEGIN, 2 walk packets
    assert m.get_timer() == 5.0
    m.handle_timer(now=5.1)
    assert types(m.datagrams_to_send(now=5.1))[-1] == "INITSYNC_DONE"


def test_slave_readiness_gate_and_request_retry() -> None:
    s = SyncProtocol(cfg(2, {1}, initsync_retry=0.5), DictTable(), epoch=1, now=10.0)
    assert not s.ready and s.get_timer() == 10.0
    s.handle_timer(now=10.0)
    (req,) = s.datagrams_to_send(now=10.0)
    body = decode_body(PacketType.SLAVE_INITSYNC, decode_datagram(req)[1])
    assert body == InitSyncRequest(0, 1)  # nobody known yet: whoever is master
    assert s.sync_state == SyncState.REQUESTED and s.get_timer() == 10.5
    s.handle_timer(now=10.5)
    (req2,) = s.datagrams_to_send(now=10.5)
    # a retry carries a new value: the master serves it even if an earlier walk answered
    assert decode_body(PacketType.SLAVE_INITSYNC, decode_datagram(req2)[1]) == InitSyncRequest(0, 2)
    dup = SyncProtocol(cfg(1, {2}), DictTable(), epoch=3, now=10.5, role=Role.MASTER)
    dup.receive_datagram(req2, now=10.5)
    dup.receive_datagram(req2, now=10.5)  # a duplicated datagram (same seq): a replay
    assert dup.stats["walks_started"] == 1 and dup.drops["replay"] == 1
    t = DictTable()
    t.add(sample_conn(1))
    m = SyncProtocol(cfg(1, {2}), t, epoch=3, now=10.5, role=Role.MASTER)
    m.receive_datagram(req2, now=10.5)
    for d in m.datagrams_to_send(now=10.5):
        s.receive_datagram(d, now=10.6)
    evs = drain(s)
    assert MasterChanged(1, 3, 3) in evs and ReadinessChanged(True) in evs
    assert any(isinstance(e, InitSyncCompleted) and e.records == 1 for e in evs)
    assert s.ready and s.progress(now=11.0).percent == 100.0


def test_no_initsync_on_start_means_ready() -> None:
    s = SyncProtocol(cfg(2, {1}, initsync_on_start=False), DictTable(), epoch=1, now=0.0)
    assert s.ready and s.get_timer() is None


def test_promote_term_and_split_brain() -> None:
    a = SyncProtocol(cfg(1, {2}), DictTable(), epoch=50, now=0.0)
    b = SyncProtocol(cfg(2, {1}), DictTable(), epoch=40, now=0.0)
    a.promote(now=0.0)
    b.promote(now=0.0, term=50)
    assert (a.term, b.term) == (50, 50)
    drain(a)
    drain(b)
    (aa,) = a.datagrams_to_send(now=0.0)
    (ba,) = b.datagrams_to_send(now=0.0)
    a.receive_datagram(ba, now=0.0)  # (50, 2) > (50, 1): a demotes and follows b
    b.receive_datagram(aa, now=0.0)  # (50, 1) < (50, 2): b stays and re-announces
    assert a.role == Role.SLAVE and b.role == Role.MASTER
    assert drain(a)[0] == RoleChanged("slave", "split_brain: node 2 term 50", 50)
    assert types(b.datagrams_to_send(now=0.0)) == ["MASTER_ANNOUNCE"]
    assert a.master == 2 and b.stats["split_brain_wins"] == 1
    a.promote(now=1.0)  # a newer promotion outranks: term = highest seen + 1
    assert a.term == 51


def test_local_changes_stream_only_from_a_replicate_master() -> None:
    t = DictTable()
    c1, c2 = t.add(sample_conn(1)), t.add(sample_conn(2))
    conc = SyncProtocol(cfg(1, {2}), t, epoch=1, now=0.0, role=Role.MASTER)
    conc.datagrams_to_send(now=0.0)
    conc.local_update(c1, now=0.0)
    assert conc.datagrams_to_send(now=0.0) == []
    rep = SyncProtocol(cfg(1, {2}, mode="replicate"), t, epoch=1, now=0.0, role=Role.MASTER)
    rep.datagrams_to_send(now=0.0)
    rep.local_update(c1, now=0.0)
    rep.local_update(c2, now=0.0)
    rep.local_update(c1, now=0.0)  # coalesced: one record per entry
    rep.local_delete(c2, now=0.0)
    (d,) = rep.datagrams_to_send(now=0.0)
    recs = decode_body(PacketType.SYNC, decode_datagram(d)[1])
    assert [type(r).__name__ for r in recs] == ["CtRecord", "CtDelete"]  # type: ignore[union-attr]
    slave = SyncProtocol(cfg(2, {1}, mode="replicate"), t, epoch=1, now=0.0)
    slave.local_update(c1, now=0.0)
    assert slave.datagrams_to_send(now=0.0) == []


def test_flush_delay_aggregates_live_changes() -> None:
    t = DictTable()
    rep = SyncProtocol(
        cfg(1, {2}, mode="replicate", flush_delay=0.01), t, epoch=1, now=0.0, role=Role.MASTER
    )
    rep.datagrams_to_send(now=0.0)
    rep.local_update(t.add(sample_conn(1)), now=0.0)
    assert rep.get_timer() == 0.01
    assert rep.datagrams_to_send(now=0.005) == []
    rep.local_update(t.add(sample_conn(2)), now=0.005)
    (d,) = rep.datagrams_to_send(now=0.01)
    assert len(decode_body(PacketType.SYNC, decode_datagram(d)[1])) == 2  # type: ignore[arg-type]


def test_master_announces_periodically() -> None:
    m = SyncProtocol(
        cfg(1, {2}, announce_interval=2.0), DictTable(), epoch=1, now=0.0, role=Role.MASTER
    )
    assert types(m.datagrams_to_send(now=0.0)) == ["MASTER_ANNOUNCE"]
    assert m.get_timer() == 2.0
    m.handle_timer(now=2.0)
    assert types(m.datagrams_to_send(now=2.0)) == ["MASTER_ANNOUNCE"]
    assert m.get_timer() == 4.0
    m.demote(now=3.0)
    assert m.get_timer() is None and m.ready  # concurrent: its own table is still good


def test_large_records_are_packed_one_per_packet_and_odd_helpers_stay_home() -> None:
    t = DictTable()
    for i in range(3):
        c = t.add(sample_conn(i, v6=True))
        c.rkey = sample_conn(100 + i, v6=True).key  # NAT: the reply key travels too
        c.helper = "ftp"
        c.extra = {**(c.extra or {}), "helper_data": bytes(255)}
    odd = t.add(sample_conn(9))
    odd.helper = "has space"  # cannot travel: not a valid wire name
    odd.extra = {**(odd.extra or {}), "helper_data": bytes(300)}
    m = SyncProtocol(
        cfg(1, {2}, max_datagram=576, send_window=True, hmac_key=KEY),
        t,
        epoch=1,
        now=0.0,
        role=Role.MASTER,
    )
    m.receive_datagram(
        encode_datagram(
            2,
            codec.encode_initsync(InitSyncRequest(0, 1)),
            node=2,
            epoch=3,
            seq=0,
            stamp=0,
            key=KEY,
        ),
        now=0.0,
    )
    out = m.datagrams_to_send(now=0.0)
    syncs = [d for d in out if decode_datagram(d, KEY)[0].type == PacketType.SYNC]
    assert all(len(d) <= 576 for d in out)
    recs = [r for d in syncs for r in decode_body(3, decode_datagram(d, KEY)[1])]  # type: ignore[union-attr]
    assert len(recs) == 4 and len(syncs) == 3  # the small one shares a packet
    by_key = {r.key: r for r in recs}
    assert by_key[odd.key].helper is None and by_key[odd.key].helper_data is None
    assert by_key[sample_conn(0, v6=True).key].helper_data == bytes(255)
