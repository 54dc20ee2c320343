"""Expectations (pmct/conntrack/expect.py) against nf_conntrack_expect.c's rules: tuple and mask,
newest first, used once unless PERMANENT, unusable while the master is unconfirmed or dying,
refresh / clash / max_expected eviction on insert, the table limit, lazy expiry, removal with
the master, events, and the conntrack -L expect line."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.expect import (
    EXP_DESTROY,
    EXP_NEW,
    EXPECT_INACTIVE,
    EXPECT_PERMANENT,
    Expectation,
    ExpectTable,
    expect_from_keys,
    expect_init,
    expect_max_for,
    split_key,
)
from pmct.conntrack.helpers.base import ExpectPolicy
from pmct.conntrack.helpers.ftp import FTP
from pmct.conntrack.keys import make_key
from pmct.replay import format_expect_line

A = socket.inet_aton("192.0.2.1")
B = socket.inet_aton("198.51.100.2")
X = socket.inet_aton("203.0.113.9")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
B6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
ONE = ExpectPolicy(max_expected=1, timeout=300.0)
MANY = ExpectPolicy(max_expected=0, timeout=60.0)
CONFIRMED = int(Status.CONFIRMED)


def _master(cport: int = 40000, src: bytes = A, dst: bytes = B, expires: float = 1e9) -> Conn:
    c = Conn(cport, make_key(6, src, dst, cport, 21), make_key(6, dst, src, 21, cport), 4, 6)
    c.status = CONFIRMED | int(Status.SEEN_REPLY | Status.HELPER)
    c.expires = expires
    c.helper = FTP
    return c


def _exp(master: Conn, dport: int, src: bytes | None = B, sport: int | None = None) -> Expectation:
    """An FTP-style expectation: from ``src`` (any port unless given) to A:dport."""
    return expect_init(master, 0, master.l3, src, A if master.l3 == 4 else A6, 6, sport, dport)


def _key(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    return make_key(6, src, dst, sport, dport)


# ---------------------------------------------------------------------------------- tuple+mask


def test_expect_init_masks_what_is_null() -> None:
    m = _master()
    e = expect_init(m, 0, 4, B, A, 6, None, 5000)
    assert (e.src, e.src_mask, e.sport, e.sport_mask) == (B, b"\xff" * 4, 0, 0)
    e = expect_init(m, 0, 4, None, A, 17, 20, 5000)
    assert (e.src, e.src_mask, e.sport, e.sport_mask) == (bytes(4), bytes(4), 20, 0xFFFF)
    e6 = expect_init(m, 0, 6, B6, A6, 6, None, 5000)
    assert e6.src_mask == b"\xff" * 16 and e6.dst == A6


def test_matches_exact_destination_masked_source() -> None:
    e = _exp(_master(), 5000)
    assert e.matches(6, B, A, 1234, 5000) and e.matches(6, B, A, 20, 5000)
    assert not e.matches(6, X, A, 20, 5000)  # source address under a full mask
    assert not e.matches(6, B, X, 20, 5000)  # destination is exact
    assert not e.matches(6, B, A, 20, 5001)
    assert not e.matches(17, B, A, 20, 5000)  # protocol is exact
    e = _exp(_master(), 5000, src=None, sport=20)
    assert e.matches(6, X, A, 20, 5000) and not e.matches(6, X, A, 21, 5000)
    e.src, e.src_mask = bytes((198, 51, 0, 0)), bytes((255, 255, 0, 0))  # a /16 (ctnetlink)
    assert e.matches(6, B, A, 20, 5000) and not e.matches(6, X, A, 20, 5000)


def test_split_key_layouts() -> None:
    assert split_key(make_key(6, A, B, 1, 2)) == (6, A, B, 1, 2)
    assert split_key(make_key(17, A6, B6, 3, 4)) == (17, A6, B6, 3, 4)
    assert split_key(make_key(50, A, B)) is None  # ESP: no ports


def test_expect_max_follows_the_hash_size() -> None:
    assert expect_max_for(262144) == 4096  # the kernel's sysctl on a default 6.18 box
    assert expect_max_for(65536) == 1024
    assert expect_max_for(100) == 4


# ---------------------------------------------------------------------------------- find


def test_find_uses_the_expectation_once() -> None:
    t = ExpectTable()
    m = _master()
    assert t.related(_exp(m, 5000), ONE, 0.0) is None
    assert t.find(_key(B, 20, A, 5000), 1.0) is not None
    assert t.find(_key(B, 20, A, 5000), 1.0) is None
    assert len(t) == 0


def test_find_newest_first_and_permanent_stays() -> None:
    t = ExpectTable()
    m1, m2 = _master(40001), _master(40002)
    wide = _exp(m1, 5000, src=None)
    assert t.related(wide, ONE, 0.0) is None
    narrow = _exp(m2, 5000, src=B, sport=20)
    # a wildcard source and an exact one overlap under the intersection of the masks
    assert t.related(narrow, ONE, 0.0) == "expectation clashes with another"
    narrow.sport = 21
    assert t.related(narrow, ONE, 0.0) == "expectation clashes with another"  # port masked off
    t2 = ExpectTable()
    e1, e2 = _exp(m1, 5000, src=B), _exp(m2, 5000, src=X)
    assert t2.related(e1, ONE, 0.0) is None and t2.related(e2, ONE, 0.0) is None
    e2.flags = EXPECT_PERMANENT
    assert t2.find(_key(X, 1, A, 5000), 1.0) is e2
    assert t2.find(_key(X, 2, A, 5000), 1.0) is e2  # still there
    assert t2.find(_key(B, 1, A, 5000), 1.0) is e1
    assert len(t2) == 1


def test_inactive_is_skipped() -> None:
    t = ExpectTable()
    e = _exp(_master(), 5000)
    assert t.related(e, ONE, 0.0) is None
    e.flags = EXPECT_INACTIVE
    assert t.find(_key(B, 20, A, 5000), 1.0) is None and len(t) == 1


def test_master_must_be_confirmed_and_alive() -> None:
    t = ExpectTable()
    m = _master()
    assert t.related(_exp(m, 5000), ONE, 0.0) is None
    m.status &= ~CONFIRMED  # "how can other end know about expected?"
    assert t.find(_key(B, 20, A, 5000), 1.0) is None and len(t) == 1
    m.status |= CONFIRMED | int(Status.DYING)
    assert t.find(_key(B, 20, A, 5000), 1.0) is None and len(t) == 1
    m.status &= ~int(Status.DYING)
    m.expires = 1.0  # the master's own deadline passed
    assert t.find(_key(B, 20, A, 5000), 1.0) is None and len(t) == 0


def test_expired_expectation_is_gone() -> None:
    t = ExpectTable()
    assert t.related(_exp(_master(), 5000), ONE, 0.0) is None
    assert t.live(299.9) and not t.live(300.0)
    assert t.find(_key(B, 20, A, 5000), 300.0) is None and len(t) == 0


# ---------------------------------------------------------------------------------- add


def test_same_master_same_tuple_refreshes() -> None:
    t = ExpectTable(events=True)
    m = _master()
    e1, e2 = _exp(m, 5000), _exp(m, 5000)
    assert t.related(e1, ONE, 0.0) is None
    assert t.related(e2, ONE, 100.0) is None
    assert list(t) == [e2] and e2.expires == 400.0
    assert [(k, e) for k, e in t.drain_events()] == [
        (EXP_NEW, e1),
        (EXP_DESTROY, e1),
        (EXP_NEW, e2),
    ]


def test_same_tuple_other_class_is_refused() -> None:
    t = ExpectTable()
    m = _master()
    assert t.related(_exp(m, 5000), MANY, 0.0) is None
    other = _exp(m, 5000)
    other.klass = 1
    assert t.related(other, MANY, 0.0) == "expectation already exists"


def test_other_master_same_tuple_clashes() -> None:
    t = ExpectTable()
    assert t.related(_exp(_master(40001), 5000), ONE, 0.0) is None
    assert t.related(_exp(_master(40002), 5000), ONE, 0.0) == "expectation clashes with another"
    # a different source address does not clash (full masks on both)
    assert t.related(_exp(_master(40003), 5000, src=X), ONE, 0.0) is None


def test_max_expected_evicts_the_oldest_of_the_class() -> None:
    t = ExpectTable()
    m = _master()
    two = ExpectPolicy(max_expected=2, timeout=300.0)
    es = [_exp(m, 5000 + i) for i in range(3)]
    for i, e in enumerate(es):
        assert t.related(e, two, float(i)) is None
    assert list(t) == es[1:]
    other_class = _exp(m, 6000)
    other_class.klass = 1
    assert t.related(other_class, two, 3.0) is None
    assert list(t) == [*es[1:], other_class]  # classes are counted apart


def test_max_expected_counts_only_live_ones() -> None:
    t = ExpectTable()
    m = _master()
    assert t.related(_exp(m, 5000), ONE, 0.0) is None
    assert t.related(_exp(m, 5001), ONE, 400.0) is None  # the first timed out meanwhile
    assert [e.dport for e in t] == [5001]


def test_no_limit_without_max_expected() -> None:
    t = ExpectTable()
    m = _master()
    for i in range(10):
        assert t.related(_exp(m, 5000 + i), MANY, 0.0) is None
    assert len(t) == 10


def test_table_limit_then_room_after_expiry() -> None:
    t = ExpectTable(max_entries=2)
    assert t.related(_exp(_master(1), 5000), MANY, 0.0) is None
    assert t.related(_exp(_master(2), 5001), MANY, 10.0) is None
    assert t.related(_exp(_master(3), 5002), MANY, 20.0) == "expectation table full"
    assert t.related(_exp(_master(3), 5002), MANY, 60.0) is None  # the first expired at 60
    assert [e.dport for e in t] == [5001, 5002]


# ---------------------------------------------------------------------------------- removal


def test_remove_master_and_remove() -> None:
    t = ExpectTable(events=True)
    m1, m2 = _master(1), _master(2)
    for i in range(3):
        assert t.related(_exp(m1, 5000 + i), MANY, 0.0) is None
    e = _exp(m2, 6000)
    assert t.related(e, MANY, 0.0) is None
    t.drain_events()
    assert t.remove_master(m1) == 3 and list(t) == [e]
    assert [k for k, _ in t.drain_events()] == [EXP_DESTROY] * 3
    assert t.remove(e) and not t.remove(e) and len(t) == 0
    assert t.remove_master(m1) == 0


def test_expire_sweeps_only_when_due() -> None:
    t = ExpectTable()
    assert t.related(_exp(_master(1), 5000), MANY, 0.0) is None  # until 60
    assert t.related(_exp(_master(2), 5001), ONE, 0.0) is None  # until 300
    assert t.expire(59.0) == 0 and len(t) == 2
    assert t.expire(60.0) == 1 and len(t) == 1
    assert t.expire(100.0) == 0
    assert t.expire(300.0) == 1 and len(t) == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "find", "kill", "expire"]),
        st.integers(0, 3),  # master
        st.integers(0, 3),  # port
        st.integers(0, 2),  # source
    ),
    max_size=60,
)


@given(ops)
def test_random_operations_keep_the_indexes_consistent(
    script: list[tuple[str, int, int, int]],
) -> None:
    t = ExpectTable(max_entries=6)
    masters = [_master(40000 + i) for i in range(4)]
    srcs = [B, X, None]
    now = 0.0
    for op, mi, port, si in script:
        now += 7.0
        if op == "add":
            pol = ONE if mi % 2 else ExpectPolicy(max_expected=2, timeout=30.0)
            res = t.related(_exp(masters[mi], 5000 + port, src=srcs[si]), pol, now)
            assert res is None or isinstance(res, str)
        elif op == "find":
            e = t.find(_key(srcs[si] or B, 20, A, 5000 + port), now)
            assert e is None or e.matches(6, srcs[si] or B, A, 20, 5000 + port)
        elif op == "kill":
            t.remove_master(masters[mi])
        else:
            t.expire(now)
        held = list(t)
        assert len(held) == t.count <= 6
        assert sum(len(v) for v in t._index.values()) == t.count
        assert all(t._by_master[e.master].count(e) == 1 for e in held)
        per_master: dict[int, int] = {}
        for e in held:
            if e.expires > now:
                per_master[id(e.master)] = per_master.get(id(e.master), 0) + 1
        for mi2, m in enumerate(masters):
            assert per_master.get(id(m), 0) <= (1 if mi2 % 2 else 2)


# ---------------------------------------------------------------------------------- listing


def test_format_expect_line_v4_v6_and_flags() -> None:
    t = ExpectTable()
    m = _master(40027)
    e = _exp(m, 50027)
    assert t.related(e, ONE, 0.0) is None
    assert format_expect_line(e, 0.5) == (
        "299 proto=6 src=198.51.100.2 dst=192.0.2.1 sport=0 dport=50027 "
        "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
        "master-src=192.0.2.1 master-dst=198.51.100.2 sport=40027 dport=21 class=0 helper=ftp"
    )
    e.flags = EXPECT_PERMANENT | EXPECT_INACTIVE
    assert " dport=21 PERMANENT,INACTIVE class=0 helper=ftp" in format_expect_line(e, 0.0)
    assert format_expect_line(e, 1000.0).startswith("0 proto=6 ")
    m6 = Conn(9, make_key(6, A6, B6, 40036, 21), make_key(6, B6, A6, 21, 40036), 6, 6)
    e6 = expect_init(m6, 0, 6, B6, A6, 6, None, 50036)
    e6.expires = 300.0
    assert format_expect_line(e6, 0.0) == (
        "300 proto=6 src=2001:db8:1::2 dst=2001:db8::1 sport=0 dport=50036 "
        "mask-src=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "mask-dst=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff sport=0 dport=65535 "
        "master-src=2001:db8::1 master-dst=2001:db8:1::2 sport=40036 dport=21 class=0"
    )  # no helper on that master: no helper= field


@pytest.mark.parametrize("n", [0, 1, 5])
def test_live_lists_in_creation_order(n: int) -> None:
    t = ExpectTable()
    es = [_exp(_master(40000 + i), 5000 + i) for i in range(n)]
    for e in reversed(es):
        assert t.related(e, ONE, 0.0) is None
    assert t.live(1.0) == list(reversed(es))


# ---------------------------------------------------------------------------------- ct_sync


@pytest.mark.parametrize("v6", [False, True])
def test_key_and_mask_key_round_trip(v6: bool) -> None:
    m = _master()
    src, dst = (B6, A6) if v6 else (B, A)
    for sport in (None, 20):
        for saddr in (src, None):
            e = expect_init(m, 0, 6 if v6 else 4, saddr, dst, 17, sport, 5000)
            back = expect_from_keys(m, e.key, e.mask_key)
            assert back is not None
            assert (back.l3, back.proto, back.src, back.src_mask, back.sport, back.sport_mask) == (
                e.l3,
                e.proto,
                e.src,
                e.src_mask,
                e.sport,
                e.sport_mask,
            )
            assert (back.dst, back.dport) == (e.dst, e.dport)
    assert expect_from_keys(m, make_key(50, A, B), make_key(50, A, B)) is None
    assert expect_from_keys(m, make_key(6, A, B, 1, 2), make_key(6, A6, B6, 1, 2)) is None


def test_synced_expectation_keeps_its_deadline() -> None:
    """DEVIATION(kernel): the peer's remaining time, not a fresh policy timeout."""
    t = ExpectTable(events=True)
    m = _master()
    e = _exp(m, 5000)
    assert t.insert_synced(e, 123.0, ONE, 100.0, authoritative=True)
    assert list(t) == [e] and e.expires == 123.0
    assert t.live(122.9) == [e] and t.live(123.0) == []
    assert t.expire(123.0) == 1


def test_synced_expectation_against_a_local_one() -> None:
    t = ExpectTable()
    m1, m2 = _master(1), _master(2)
    local = _exp(m1, 5000)
    assert t.related(local, ONE, 0.0) is None
    same = _exp(m1, 5000)
    assert not t.insert_synced(same, 50.0, ONE, 0.0, authoritative=False)
    assert list(t) == [local]
    assert t.insert_synced(same, 50.0, ONE, 0.0, authoritative=True)
    assert list(t) == [same]
    clash = _exp(m2, 5000)  # another master, same tuple
    assert not t.insert_synced(clash, 60.0, ONE, 0.0, authoritative=False)
    assert t.insert_synced(clash, 60.0, ONE, 0.0, authoritative=True)
    assert list(t) == [clash]
