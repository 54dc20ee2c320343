"""Hypothesis: a SyncProtocol fed random or mutated datagrams never raises and never changes
its table (the h11 fuzz invariant, applied to the ct_sync endpoint)."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from pmct.errors import MalformedMessage
from pmct.sync.codec import HEADER, Announce, decode_body, encode_announce, encode_datagram
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.records import conn_to_record
from pmct.sync.sim import SimNet, sample_conn
from pmct.sync.table import DictTable

KEY = b"fuzz-key-0123456789abcdef0123456"


@cache
def capture(mode: str) -> tuple[bytes, ...]:
    """Every datagram of a complete sync session (master and slave), authenticated."""
    net = SimNet(seed=5)
    mt = DictTable()
    for i in range(150):
        mt.add(sample_conn(i, proto=(6, 17, 1)[i % 3], v6=i % 4 == 0))
    got: list[bytes] = []
    cfg = {"mode": mode, "hmac_key": KEY}
    m = net.add(
        SyncProtocol(
            SyncConfig(1, frozenset({2}), **cfg),
            mt,
            epoch=77,
            now=0.0,  # type: ignore[arg-type]
            role=Role.MASTER,
        )
    )
    net.add(SyncProtocol(SyncConfig(2, frozenset({1}), **cfg), DictTable(), epoch=88, now=0.0))  # type: ignore[arg-type]
    for ln in net.links.values():
        ln.drop = lambda d: got.append(d) or False  # type: ignore[func-returns-value]
    net.run(3.0)
    c = sample_conn(999)
    mt.add(c)
    m.local_update(c, now=net.now)
    net.run(4.0)
    return tuple(got)


def synced_slave(mode: str, key: bytes | None) -> tuple[SyncProtocol, DictTable]:
    t = DictTable()
    s = SyncProtocol(SyncConfig(2, frozenset({1}), mode=mode, hmac_key=key), t, epoch=88, now=0.0)
    if key is not None:
        for d in capture(mode):
            s.receive_datagram(d, now=1.0)
    return s, t


def snapshot(t: DictTable) -> list[str]:
    return sorted(repr(conn_to_record(c, 0.0, window=True)) for c in t.conns())


def total_seen(s: SyncProtocol) -> int:
    return sum(s.drops.values())


@st.composite
def mutations(draw: st.DrawFn, mode: str) -> bytes:
    data = bytearray(draw(st.sampled_from(capture(mode))))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "swap"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0, 1, 2, 3, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 6))]
        elif op == "truncate":
            del data[i:]
        elif op == "swap":
            other = draw(st.sampled_from(capture(mode)))
            data[HEADER.size :] = other[HEADER.size :]
    return bytes(data)


@settings(deadline=None)
@given(st.sampled_from(["concurrent", "replicate"]), st.data())
def test_mutated_authenticated_datagrams_change_nothing(mode: str, data: st.DataObject) -> None:
    s, t = synced_slave(mode, KEY)
    before = snapshot(t)
    assert len(before) == (151 if mode == "replicate" else 150)  # live changes: replicate only
    for _ in range(5):
        d = data.draw(mutations(mode))
        n = total_seen(s)
        s.receive_datagram(d, now=2.0)  # must not raise
        assert total_seen(s) == n + 1  # dropped, and the reason counted
        for _ in s.datagrams_to_send(now=2.0):
            pass
        s.handle_timer(now=2.0)
    assert snapshot(t) == before


@settings(deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5), st.sampled_from([None, KEY]))
def test_random_datagrams_never_raise_and_change_nothing(
    blobs: list[bytes], key: bytes | None
) -> None:
    s, t = synced_slave("concurrent", key)
    before = snapshot(t)
    for b in blobs:
        n = total_seen(s)
        s.receive_datagram(b, now=2.0)
        assert total_seen(s) == n + 1
    assert snapshot(t) == before


@settings(deadline=None)
@given(st.integers(1, 6), st.sampled_from([0, 2]), st.binary(max_size=120), st.booleans())
def test_structured_headers_with_random_bodies_never_raise(
    ptype: int, flags: int, body: bytes, master: bool
) -> None:
    # Right node, right epoch, right seq, no HMAC: the body decoder is the only line of
    # defence, so it must refuse or accept cleanly, never raise, never half-apply.
    t = DictTable()
    role = Role.MASTER if master else Role.SLAVE
    p = SyncProtocol(SyncConfig(2, frozenset({1})), t, epoch=1, now=0.0, role=role)
    if not master:
        p.receive_datagram(
            encode_datagram(
                1, encode_announce(Announce(5, 0, 0)), node=1, epoch=9, seq=10, stamp=0
            ),
            now=0.0,
        )
    flags = flags if ptype == 3 else 0
    d = encode_datagram(ptype, body, node=1, epoch=9, seq=11, stamp=0, flags=flags)
    try:
        decode_body(ptype, body)
        valid = True
    except MalformedMessage:
        valid = False
    drops = p.drops["malformed"]
    p.receive_datagram(d, now=0.1)
    p.handle_timer(now=0.1)
    p.datagrams_to_send(now=0.1)
    assert p.drops["malformed"] == drops + (not valid)
    if master or not valid:
        assert len(t) == 0  # a master applies nothing; a malformed packet changes nothing
