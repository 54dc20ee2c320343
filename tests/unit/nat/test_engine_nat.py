"""NAT through the engine: bindings made at NEW, replies found by the reply key, packets rewritten.

Topology of the scenarios: LAN 10.0.0.0/24 behind the public address P = 198.18.1.1; servers
on the internet at 203.0.113.0/24; a port forward P:80 -> 10.0.0.10:8080.
"""

from __future__ import annotations

import socket
import struct

import dpkt

from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine
from pmct.nat.alloc import Nat
from pmct.nat.rewrite import nat_packet
from pmct.nat.rules import parse_nat
from pmct.sync.records import conn_to_record, new_conn

SYN, ACK, SYNACK, PSHACK = 0x02, 0x10, 0x12, 0x18
NEW, EST, REL = int(CtState.NEW), int(CtState.ESTABLISHED), int(CtState.RELATED)

P = "198.18.1.1"
LAN_HOST = "10.0.0.10"

CONFIG = {
    "seed": "lab",
    "snat": [{"src": ["10.0.0.0/24"], "not_dst": ["10.0.0.0/8"], "to": P}],
    "dnat": [{"dst": P, "proto": "tcp", "dport": 80, "to": LAN_HOST, "to_port": 8080}],
}


def a(text: str) -> bytes:
    return socket.inet_aton(text)


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    data: bytes = b"",
) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=8192, data=data)
    ip = dpkt.ip.IP(src=a(src), dst=a(dst), p=6, ttl=64, data=t)
    ip.len = 20 + len(bytes(t))
    return bytes(ip)


def udp(src: str, dst: str, sport: int, dport: int, data: bytes = b"x") -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    ip = dpkt.ip.IP(src=a(src), dst=a(dst), p=17, ttl=64, data=u)
    ip.len = 20 + len(bytes(u))
    return bytes(ip)


def echo(src: str, dst: str, ident: int, reply: bool = False) -> bytes:
    i = dpkt.icmp.ICMP(type=0 if reply else 8, data=dpkt.icmp.ICMP.Echo(id=ident, seq=1))
    ip = dpkt.ip.IP(src=a(src), dst=a(dst), p=1, ttl=64, data=i)
    ip.len = 20 + len(bytes(i))
    return bytes(ip)


def unreach(src: str, dst: str, quoted: bytes) -> bytes:
    i = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=quoted[:28]))
    ip = dpkt.ip.IP(src=a(src), dst=a(dst), p=1, ttl=64, data=i)
    ip.len = 20 + len(bytes(i))
    return bytes(ip)


def checksums_ok(data: bytes) -> bool:
    """Every checksum verifies (dpkt parses; recompute with the sum field zeroed)."""
    ip = dpkt.ip.IP(data)
    if dpkt.in_cksum(data[:10] + b"\0\0" + data[12:20]) != ip.sum:
        return False
    seg = data[20 : ip.len]
    if ip.p in (6, 17):
        off = 16 if ip.p == 6 else 6
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, ip.p, len(seg))
        stored = struct.unpack_from("!H", seg, off)[0]
        return dpkt.in_cksum(pseudo + seg[:off] + b"\0\0" + seg[off + 2 :]) == stored
    if ip.p == 1:
        stored = struct.unpack_from("!H", seg, 2)[0]
        return dpkt.in_cksum(seg[:2] + b"\0\0" + seg[4:]) == stored
    return True


def hdr(data: bytes) -> tuple[str, str, int, int]:
    ip = dpkt.ip.IP(data)
    l4 = ip.data
    if ip.p == 1:
        return (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), l4.data.id, -1)
    return (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), l4.sport, l4.dport)


def engine() -> Engine:
    e = Engine()
    e.nat_bind = Nat(parse_nat(CONFIG)).bind
    return e


def run(e: Engine, data: bytes, now: float = 1.0) -> tuple[int, int, bytes]:
    st, d, conn = e.process_ip(data, now)
    return st, d, nat_packet(data, st, d, conn)


# ------------------------------------------------------------------ SNAT


def test_snat_tcp_handshake_and_data() -> None:
    e = engine()
    c, s = "10.0.0.5", "203.0.113.9"
    st, d, out = run(e, tcp(c, s, 40000, 443, SYN, seq=100))
    assert (st, d) == (NEW, 0)
    assert hdr(out) == (P, s, 40000, 443)  # the source port is kept when free
    assert checksums_ok(out)
    (conn,) = e.conns()
    assert conn.status & Status.SRC_NAT and not conn.status & Status.DST_NAT
    assert conn.reply.dst == a(P) and conn.reply.dport == 40000

    # the server answers the public address; the engine finds the entry by its reply key
    st, d, out = run(e, tcp(s, P, 443, 40000, SYNACK, seq=900, ack=101), 1.1)
    assert (st, d) == (EST, 1)
    assert hdr(out) == (s, c, 443, 40000)
    assert checksums_ok(out)

    st, d, out = run(e, tcp(c, s, 40000, 443, ACK, seq=101, ack=901), 1.2)
    assert (st, d) == (EST, 0) and hdr(out)[0] == P
    st, d, out = run(e, tcp(c, s, 40000, 443, PSHACK, seq=101, ack=901, data=b"GET /"), 1.3)
    assert (st, d) == (EST, 0) and checksums_ok(out)
    st, d, out = run(e, tcp(s, P, 443, 40000, PSHACK, seq=901, ack=106, data=b"200 OK"), 1.4)
    assert (st, d) == (EST, 1) and hdr(out)[:2] == (s, c) and checksums_ok(out)
    assert e.invalid_reasons == {}


def test_unmapped_public_port_is_not_a_reply() -> None:
    e = engine()
    run(e, tcp("10.0.0.5", "203.0.113.9", 40000, 443, SYN))
    st, _d, conn = e.process_ip(tcp("203.0.113.9", P, 443, 40001, SYNACK), 1.1)
    # no entry owns P:40001: a lone SYN/ACK is INVALID (kernel tcp_conntracks: sNO -> sIV)
    assert (st, conn) == (int(CtState.INVALID), None)


def test_port_clash_takes_another_port() -> None:
    e = engine()
    s = "203.0.113.9"
    run(e, tcp("10.0.0.5", s, 40000, 443, SYN))
    st, d, out = run(e, tcp("10.0.0.6", s, 40000, 443, SYN))
    assert (st, d) == (NEW, 0)
    src, dst, sport, dport = hdr(out)
    assert (src, dst, dport) == (P, s, 443)
    assert sport != 40000 and 1024 <= sport <= 65535
    assert checksums_ok(out)
    # the reply to the new port reaches the second client
    st, d, out = run(e, tcp(s, P, 443, sport, SYNACK, ack=1), 1.1)
    assert (st, d) == (EST, 1) and hdr(out) == (s, "10.0.0.6", 443, 40000)


def test_snat_udp_and_icmp_echo() -> None:
    e = engine()
    s = "203.0.113.53"
    st, d, out = run(e, udp("10.0.0.5", s, 5353, 53))
    assert (st, hdr(out)) == (NEW, (P, s, 5353, 53)) and checksums_ok(out)
    st, d, out = run(e, udp(s, P, 53, 5353))
    assert (st, d, hdr(out)) == (EST, 1, (s, "10.0.0.5", 53, 5353)) and checksums_ok(out)

    run(e, echo("10.0.0.5", s, 77))
    st, d, out = run(e, echo("10.0.0.6", s, 77))  # same id from another host: remapped
    assert st == NEW and hdr(out)[0] == P and hdr(out)[2] != 77 and checksums_ok(out)
    new_id = hdr(out)[2]
    st, d, out = run(e, echo(s, P, new_id, reply=True))
    assert (st, d) == (EST, 1) and hdr(out) == (s, "10.0.0.6", 77, -1) and checksums_ok(out)


def test_lan_to_lan_is_not_natted() -> None:
    e = engine()
    data = tcp("10.0.0.5", "10.0.0.7", 40000, 22, SYN)
    st, d, conn = e.process_ip(data, 1.0)
    assert st == NEW and conn is not None and not conn.status & (Status.SRC_NAT | Status.DST_NAT)
    assert nat_packet(data, st, d, conn) is data


def test_icmp_error_for_a_natted_connection() -> None:
    """A router on the WAN side answers the public address, quoting what it saw (P:port ->
    server): the client must get it with itself in the quote (kernel
    nf_nat_icmp_reply_translation())."""
    e = engine()
    c, s, router = "10.0.0.5", "203.0.113.9", "203.0.113.1"
    run(e, udp(c, s, 5000, 9999))
    on_wan = udp(P, s, 5000, 9999)  # what actually left the WAN side
    err = unreach(router, P, on_wan)
    st, d, out = run(e, err)
    assert (st, d) == (REL, 1)
    ip = dpkt.ip.IP(out)
    assert (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)) == (router, c)
    quoted = bytes(ip.data.data.data)
    assert quoted[12:16] == a(c) and quoted[16:20] == a(s)
    assert struct.unpack_from("!HH", quoted, 20) == (5000, 9999)
    assert checksums_ok(out)
    # the quoted IPv4 header checksum was updated too
    assert dpkt.in_cksum(quoted[:10] + b"\0\0" + quoted[12:20]) == quoted[10] << 8 | quoted[11]


# ------------------------------------------------------------------ DNAT


def test_port_forward_inbound() -> None:
    e = engine()
    x = "192.0.2.7"
    st, d, out = run(e, tcp(x, P, 5555, 80, SYN, seq=10))
    assert (st, d) == (NEW, 0)
    assert hdr(out) == (x, LAN_HOST, 5555, 8080) and checksums_ok(out)
    (conn,) = e.conns()
    assert conn.status & Status.DST_NAT and not conn.status & Status.SRC_NAT
    # the inside host answers from its own address; the client must see P:80
    st, d, out = run(e, tcp(LAN_HOST, x, 8080, 5555, SYNACK, seq=50, ack=11), 1.1)
    assert (st, d) == (EST, 1)
    assert hdr(out) == (P, x, 80, 5555) and checksums_ok(out)
    st, d, out = run(e, tcp(x, P, 5555, 80, ACK, seq=11, ack=51), 1.2)
    assert (st, d) == (EST, 0) and hdr(out) == (x, LAN_HOST, 5555, 8080)


def test_port_forward_not_for_other_ports() -> None:
    e = engine()
    data = tcp("192.0.2.7", P, 5555, 81, SYN)
    st, d, conn = e.process_ip(data, 1.0)
    assert conn is not None and not conn.status & Status.DST_NAT
    assert nat_packet(data, st, d, conn) is data


def test_lan_client_using_the_forward_gets_dnat_only() -> None:
    """A LAN host using the public forward: DNAT to the server; the SNAT rule is matched
    against the tuple after DNAT (kernel POSTROUTING), and its not_dst excludes the LAN, so
    there is no SNAT (a real hairpin needs an SNAT rule for it; tested in test_alloc.py)."""
    e = engine()
    _st, _d, out = run(e, tcp("10.0.0.5", P, 40000, 80, SYN))
    assert hdr(out) == ("10.0.0.5", LAN_HOST, 40000, 8080)
    (conn,) = e.conns()
    assert conn.status & (Status.SRC_NAT | Status.DST_NAT) == Status.DST_NAT


# ------------------------------------------------------------------ two nodes, failover


def _stream(n: int) -> list[bytes]:
    """Many LAN clients with colliding source ports to two servers, plus a forward."""
    pkts = []
    for i in range(n):
        host = f"10.0.0.{5 + i % 7}"
        pkts.append(tcp(host, "203.0.113.9", 40000 + i % 3, 443, SYN, seq=i))
        pkts.append(udp(host, "203.0.113.53", 5353, 53))
        pkts.append(echo(host, "203.0.113.9", 1 + i % 2))
        pkts.append(tcp(f"192.0.2.{1 + i}", P, 5555, 80, SYN))
    return pkts


def test_two_engines_choose_the_same_mappings() -> None:
    e1, e2 = engine(), engine()
    for i, p in enumerate(_stream(30)):
        v1 = e1.process_ip(p, 1.0 + i * 0.001)
        v2 = e2.process_ip(p, 1.0 + i * 0.001 + 0.0004)  # the other node's clock differs a bit
        assert v1[0] == v2[0]
        assert nat_packet(p, *v1) == nat_packet(p, *v2)
    m1 = sorted((c.key, c.rkey, c.status) for c in e1.conns())
    m2 = sorted((c.key, c.rkey, c.status) for c in e2.conns())
    assert m1 == m2
    assert sum(1 for k, r, s in m1 if s & Status.SRC_NAT) > 40  # clashes were resolved
    assert len({r for k, r, s in m1}) == len(m1)  # no two entries share a reply tuple


def test_synced_binding_survives_failover() -> None:
    """The passive node that missed the SYN gets the entry from ct_sync (reply key and
    status bits travel) and rewrites the stream exactly as the active node did."""
    active = engine()
    c, s = "10.0.0.5", "203.0.113.9"
    run(active, tcp("10.0.0.6", s, 40000, 443, SYN))  # takes port 40000
    run(active, tcp(c, s, 40000, 443, SYN, seq=100))  # remapped
    run(active, tcp(s, P, 443, 40000, SYNACK, seq=5, ack=1), 1.05)
    conn = next(x for x in active.conns() if x.key[:4] == a(c))
    public_port = conn.reply.dport
    assert public_port != 40000
    st, d, _ = run(active, tcp(s, P, 443, public_port, SYNACK, seq=900, ack=101), 1.1)
    assert (st, d) == (EST, 1)

    passive = engine()
    for x in active.conns():
        rec = conn_to_record(x, 1.2, window=True)
        passive.table.insert(new_conn(rec, 1.2, cid=x.id))
    st, d, out = run(passive, tcp(c, s, 40000, 443, ACK, seq=101, ack=901), 1.3)
    assert (st, d) == (EST, 0) and hdr(out) == (P, s, public_port, 443) and checksums_ok(out)
    st, d, out = run(passive, tcp(s, P, 443, public_port, PSHACK, seq=901, ack=101, data=b"hi"))
    assert (st, d) == (EST, 1) and hdr(out) == (s, c, 443, 40000) and checksums_ok(out)


def test_no_nat_engine_unchanged() -> None:
    e = Engine()
    data = tcp("10.0.0.5", "203.0.113.9", 40000, 443, SYN)
    st, d, conn = e.process_ip(data, 1.0)
    assert (
        conn is not None
        and conn.rkey == conn.key[4:8] + conn.key[:4] + conn.key[10:12] + conn.key[8:10]
    )
    assert nat_packet(data, st, d, conn) is data
