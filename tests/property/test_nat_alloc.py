"""The allocator on random connection streams: deterministic and collision-free.

Two allocators with the same rules and seed, each binding the same stream of new connections
against its own table, must give every connection the same reply key; no two live entries may
ever share a key (a reply key equal to another entry's key would steal its packets); an SNATed
connection's reply key must point at the public address, with the port kept when it was free.
"""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.keys import make_key
from pmct.nat.alloc import Nat
from pmct.nat.rules import parse_nat

P = socket.inet_aton("198.18.1.1")
SERVERS = [socket.inet_aton(f"203.0.113.{i}") for i in (1, 2)]
CFG = {
    "snat": [
        {"src": "10.0.0.0/24", "to": "198.18.1.1", "ports": "1024-1055", "proto": "udp"},
        {"src": "10.0.0.0/24", "to": "198.18.1.1"},
    ],
    "dnat": [
        {"dst": "198.18.1.1", "proto": "tcp", "dport": 80, "to": "10.0.0.10", "to_port": 8080}
    ],
}

conn_spec = st.tuples(
    st.sampled_from((6, 17, 1)),
    st.integers(1, 12),  # host: 1..11 LAN, 12 = the outside client of the forward
    st.sampled_from((1024, 1025, 40000, 40001, 80, 7)),
    st.integers(0, 1),
    st.floats(0.0, 5.0),  # lifetime
)


def make(spec: tuple[int, int, int, int, float], now: float) -> Conn:
    proto, host, sport, server, life = spec
    if host == 12:
        src, dst, dport = socket.inet_aton("192.0.2.99"), P, 80
    else:
        src, dst, dport = socket.inet_aton(f"10.0.0.{host}"), SERVERS[server], 443
    if proto == 1:
        k = make_key(1, src, dst, sport, 8 << 8)
        r = make_key(1, dst, src, sport, 0)
    else:
        k = make_key(proto, src, dst, sport, dport)
        r = make_key(proto, dst, src, dport, sport)
    c = Conn(0, k, r, 4, proto)
    c.expires = now + life
    return c


def run(specs: list[tuple[int, int, int, int, float]]) -> list[tuple[bytes, bytes, int] | None]:
    nat = Nat(parse_nat(CFG))
    table: dict[bytes, Conn] = {}
    out: list[tuple[bytes, bytes, int] | None] = []
    for i, spec in enumerate(specs):
        now = i * 0.25
        c = make(spec, now)
        old = table.get(c.key)
        if old is not None and old.expires > now:
            out.append(None)  # an existing entry: not new, no binding
            continue
        if nat.bind(c, table, now) is not None:
            out.append((c.key, b"", -1))
            continue
        # the engine's insert replaces whatever expired entries held these keys
        for k in (c.key, c.rkey):
            o = table.get(k)
            if o is not None:
                assert o.expires <= now, "allocated a reply key a live entry owns"
                table.pop(o.key, None)
                table.pop(o.rkey, None)
        table[c.key] = c
        table[c.rkey] = c
        out.append((c.key, c.rkey, c.status))
        live = [x for x in set(table.values()) if x.expires > now]
        keys = [x.key for x in live] + [x.rkey for x in live]
        assert len(keys) == len(set(keys))
        if c.status & Status.SRC_NAT and c.proto != 1:
            # the reply goes to the public address (the node's own null bindings aside)
            assert c.rkey[-8:-4] == P
    return out


@given(st.lists(conn_spec, max_size=80))
def test_deterministic_and_collision_free(specs: list[tuple[int, int, int, int, float]]) -> None:
    assert run(specs) == run(specs)


@given(st.lists(conn_spec, max_size=80))
def test_port_kept_when_free(specs: list[tuple[int, int, int, int, float]]) -> None:
    nat = Nat(parse_nat(CFG))
    for i, spec in enumerate(specs):
        c = make(spec, float(i))
        if spec[1] == 12:
            continue
        assert nat.bind(c, {}, float(i)) is None  # empty table: nothing is taken
        in_udp_range = spec[0] != 17 or 1024 <= spec[2] <= 1055
        if in_udp_range:
            assert c.rkey[-2:] == spec[2].to_bytes(2, "big") or spec[0] == 1
