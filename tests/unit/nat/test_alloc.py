"""The allocator on its own: keep the port, deterministic walk, ranges, null binding."""

from __future__ import annotations

import socket

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.keys import make_key
from pmct.nat.alloc import Nat, default_port_range
from pmct.nat.rules import parse_nat

P = socket.inet_aton("198.18.1.1")
S = socket.inet_aton("203.0.113.9")


def lan(i: int) -> bytes:
    return socket.inet_aton(f"10.0.0.{i}")


def new(src: bytes, sport: int, dst: bytes = S, dport: int = 443, proto: int = 6) -> Conn:
    k = make_key(proto, src, dst, sport, dport)
    r = make_key(proto, dst, src, dport, sport)
    c = Conn(0, k, r, 4, proto)
    c.expires = 100.0
    return c


def nat(**kw: object) -> Nat:
    cfg = {"seed": "s", "snat": [{"src": "10.0.0.0/24", "to": "198.18.1.1", **kw}]}
    return Nat(parse_nat(cfg))


def bind(n: Nat, table: dict[bytes, Conn], c: Conn, now: float = 1.0) -> str | None:
    r = n.bind(c, table, now)
    if r is None:
        table[c.key] = c
        table[c.rkey] = c
    return r


def test_keeps_source_port() -> None:
    n, t = nat(), {}
    c = new(lan(5), 40000)
    assert bind(n, t, c) is None
    assert c.rkey == make_key(6, S, P, 443, 40000)
    assert c.status == Status.SRC_NAT
    assert n.stats["kept"] == 1


def test_walk_is_deterministic_and_in_class() -> None:
    for sport, (lo, hi) in ((40000, (1024, 65535)), (700, (600, 1023)), (22, (1, 511))):
        ports = []
        for _ in range(2):
            n, t = nat(), {}
            bind(n, t, new(lan(5), sport))
            c = new(lan(6), sport)
            assert bind(n, t, c) is None
            ports.append(c.reply.dport)
        assert ports[0] == ports[1] != sport
        assert lo <= ports[0] <= hi
        assert default_port_range(6, sport) == (lo, hi - lo + 1)


def test_seed_changes_the_walk_but_not_the_kept_port() -> None:
    chosen = set()
    for seed in ("a", "b", "c", "d"):
        n = Nat(parse_nat({"seed": seed, "snat": [{"src": "10.0.0.0/24", "to": "198.18.1.1"}]}))
        t: dict[bytes, Conn] = {}
        bind(n, t, new(lan(5), 40000))
        c = new(lan(6), 40000)
        bind(n, t, c)
        chosen.add(c.reply.dport)
    assert len(chosen) > 1


def test_range_exhaustion_fails_with_reason() -> None:
    n, t = nat(ports="2000-2003"), {}
    got = []
    for i in range(4):
        c = new(lan(10 + i), 40000)
        assert bind(n, t, c) is None
        got.append(c.reply.dport)
    assert sorted(got) == [2000, 2001, 2002, 2003]
    assert bind(n, t, new(lan(20), 40000)) == "nat: no free tuple"
    assert n.stats["failed"] == 1


def test_expired_entries_count_as_free() -> None:
    n, t = nat(ports="2000-2000"), {}
    c1 = new(lan(10), 40000)
    bind(n, t, c1)
    assert bind(n, {**t}, new(lan(11), 40000), now=50.0) == "nat: no free tuple"
    c1.expires = 40.0
    c2 = new(lan(11), 40000)
    assert bind(n, t, c2, now=50.0) is None and c2.reply.dport == 2000


def test_several_addresses_spread_by_hash() -> None:
    cfg = {"snat": [{"src": "10.0.0.0/24", "to": ["198.18.1.1", "198.18.1.2"]}]}
    used = set()
    for i in range(1, 40):
        c = new(lan(i), 40000)
        Nat(parse_nat(cfg)).bind(c, {}, 1.0)
        used.add(c.reply.dst)
    assert used == {socket.inet_aton("198.18.1.1"), socket.inet_aton("198.18.1.2")}


def test_null_binding_on_clash_without_rule() -> None:
    """The node itself talks from P:40000 while a NATed LAN client holds that reply tuple."""
    n, t = nat(), {}
    bind(n, t, new(lan(5), 40000))
    own = new(P, 40000)  # src P is not in 10.0.0.0/24: no rule
    assert bind(n, t, own) is None
    assert own.reply.dport != 40000 and own.status == Status.SRC_NAT
    assert n.stats["null"] == 1


def test_no_rule_no_clash_costs_nothing() -> None:
    n, t = nat(), {}
    c = new(socket.inet_aton("192.0.2.1"), 1234)
    r = c.rkey
    assert bind(n, t, c) is None and c.rkey == r and c.status == 0


def test_icmp_id_and_generic() -> None:
    n, t = nat(), {}
    e1 = new(lan(5), 7, dport=8 << 8, proto=1)
    e1.rkey = make_key(1, S, lan(5), 7, 0)  # echo reply type
    assert bind(n, t, e1) is None and e1.rkey == make_key(1, S, P, 7, 0)
    e2 = new(lan(6), 7, dport=8 << 8, proto=1)
    e2.rkey = make_key(1, S, lan(6), 7, 0)
    assert bind(n, t, e2) is None
    assert e2.reply.sport != 7 and e2.reply.dport == 0
    g1 = Conn(0, make_key(50, lan(5), S), make_key(50, S, lan(5)), 4, 50)
    g1.expires = 100.0
    assert bind(n, t, g1) is None and g1.rkey == make_key(50, S, P)
    g2 = Conn(0, make_key(50, lan(6), S), make_key(50, S, lan(6)), 4, 50)
    assert bind(n, t, g2) == "nat: no free tuple"  # no port to tell them apart


def test_dnat_range_maps_in_order_and_clash_remaps_source() -> None:
    x = socket.inet_aton("192.0.2.7")
    h = socket.inet_aton("10.0.0.10")
    cfg = {
        "dnat": [
            {
                "dst": "198.18.1.1",
                "proto": "tcp",
                "dport": "8000-8009",
                "to": "10.0.0.10",
                "to_port": 9000,
            }
        ]
    }
    n, t = Nat(parse_nat(cfg)), {}
    c = new(x, 5555, P, 8003)
    assert bind(n, t, c) is None
    assert c.rkey == make_key(6, h, x, 9003, 5555) and c.status == Status.DST_NAT
    direct = new(x, 5555, h, 9003)  # the same client also reaches the host directly
    direct.rkey = make_key(6, h, x, 9003, 5555)
    t2: dict[bytes, Conn] = {direct.key: direct, direct.rkey: direct}
    c2 = new(x, 5555, P, 8003)
    assert bind(n, t2, c2) is None
    assert c2.status == Status.DST_NAT | Status.SRC_NAT
    assert c2.reply.src == h and c2.reply.sport == 9003 and c2.reply.dport != 5555


def test_hairpin_gets_dnat_then_snat() -> None:
    cfg = {
        "snat": [{"src": "10.0.0.0/24", "to": "198.18.1.1"}],
        "dnat": [{"dst": "198.18.1.1", "proto": "tcp", "dport": 80, "to": "10.0.0.10"}],
    }
    c = new(lan(5), 40000, P, 80)
    assert Nat(parse_nat(cfg)).bind(c, {}, 1.0) is None
    assert c.status == Status.SRC_NAT | Status.DST_NAT
    assert c.rkey == make_key(6, lan(10), P, 80, 40000)
