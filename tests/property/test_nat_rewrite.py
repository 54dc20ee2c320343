"""NAT rewriting against a reference: incremental checksums equal full recomputation.

Packets are built with dpkt (which computes every checksum itself), rewritten with
pmct.nat.rewrite, then (1) every checksum is recomputed from scratch by the reference below and
must equal what the incremental update wrote, (2) dpkt parses the result and sees the new
fields, (3) the inverse rewrite gives back the original bytes.
"""

from __future__ import annotations

import struct

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.keys import make_key
from pmct.conntrack.proto.sctp import crc32c
from pmct.nat.rewrite import nat_packet, nat_targets, rewrite, rewrite_icmp_error

# ------------------------------------------------------------------ reference checksums


def csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _zero(data: bytes, off: int, n: int = 2) -> bytes:
    return data[:off] + bytes(n) + data[off + n :]


def expected_checksums(data: bytes) -> dict[str, int]:
    """Every checksum of an (unfragmented, extension-free) datagram, recomputed in full."""
    out: dict[str, int] = {}
    if data[0] >> 4 == 4:
        ihl = (data[0] & 15) * 4
        out["ip"] = csum(_zero(data[:ihl], 10))
        proto, src, dst, l4 = data[9], data[12:16], data[16:20], ihl
        end = struct.unpack_from("!H", data, 2)[0]
    else:
        proto, src, dst, l4 = data[6], data[8:24], data[24:40], 40
        end = 40 + struct.unpack_from("!H", data, 4)[0]
    seg = data[l4:end]
    if proto in (6, 17, 58, 136):
        if len(src) == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
        else:
            pseudo = src + dst + struct.pack("!IxxxB", len(seg), proto)
        off = {6: 16, 17: 6, 58: 2, 136: 6}[proto]
        c = csum(pseudo + _zero(seg, off))
        if proto in (17, 136) and c == 0:
            c = 0xFFFF
        out["l4"] = c
    elif proto == 1:
        out["l4"] = csum(_zero(seg, 2))
    elif proto == 132:
        out["l4"] = crc32c(seg[:8] + b"\0\0\0\0" + seg[12:])
    return out


def stored_checksums(data: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    if data[0] >> 4 == 4:
        out["ip"] = struct.unpack_from("!H", data, 10)[0]
        proto, l4 = data[9], (data[0] & 15) * 4
    else:
        proto, l4 = data[6], 40
    if proto in (6, 17, 58, 136, 1):
        off = {6: 16, 17: 6, 58: 2, 136: 6, 1: 2}[proto]
        out["l4"] = struct.unpack_from("!H", data, l4 + off)[0]
    elif proto == 132:
        out["l4"] = int.from_bytes(data[l4 + 8 : l4 + 12], "little")
    return out


# ------------------------------------------------------------------ dpkt builders


def build(
    l3: int,
    proto: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    icmp_type: int = 8,
) -> bytes:
    if proto == 6:
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, ack=2, flags=0x18, data=payload)
    elif proto == 17:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        l4.ulen = 8 + len(payload)
    elif proto == 132:
        raw = struct.pack("!HHI4x", sport, dport, 7) + payload
        raw = raw[:8] + crc32c(raw).to_bytes(4, "little") + raw[12:]
        l4 = raw
    elif proto == 1:
        l4 = dpkt.icmp.ICMP(type=icmp_type, data=dpkt.icmp.ICMP.Echo(id=sport, seq=3, data=payload))
    else:  # 58
        l4 = dpkt.icmp6.ICMP6(
            type=128 if icmp_type == 8 else 129,
            data=dpkt.icmp6.ICMP6.Echo(id=sport, seq=3, data=payload),
        )
    if l3 == 4:
        ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64, id=9, data=l4)
        ip.len = 20 + len(bytes(l4))
        return bytes(ip)
    ip6 = dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=64, data=l4)
    ip6.plen = len(bytes(l4))
    ip6.extension_hdrs = {}
    if proto == 132:
        return bytes(ip6.pack_hdr()) + bytes(l4)
    return bytes(ip6)


PROTOS_V4 = (6, 17, 132, 1)
PROTOS_V6 = (6, 17, 132, 58)

addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
port = st.integers(0, 65535)
payload = st.binary(max_size=64)


@st.composite
def packets(draw: st.DrawFn) -> tuple[bytes, int, int, bytes, bytes, int, int]:
    l3 = draw(st.sampled_from((4, 6)))
    a = addr4 if l3 == 4 else addr6
    proto = draw(st.sampled_from(PROTOS_V4 if l3 == 4 else PROTOS_V6))
    src, dst = draw(a), draw(a)
    sport, dport = draw(port), draw(port)
    data = build(l3, proto, src, dst, sport, dport, draw(payload))
    nsrc, ndst = draw(a), draw(a)
    return data, l3, proto, nsrc, ndst, draw(port), draw(port)


def _fields(data: bytes) -> tuple[bytes, bytes, int, int]:
    """(src, dst, sport, dport); for ICMP echo (src, dst, id, seq)."""
    if data[0] >> 4 == 4:
        src, dst, l4, proto = data[12:16], data[16:20], (data[0] & 15) * 4, data[9]
    else:
        src, dst, l4, proto = data[8:24], data[24:40], 40, data[6]
    if proto in (1, 58):
        l4 += 4
    a, b = struct.unpack_from("!HH", data, l4)
    return src, dst, a, b


@given(packets())
def test_incremental_equals_full(case: tuple[bytes, int, int, bytes, bytes, int, int]) -> None:
    data, _l3, proto, nsrc, ndst, nsport, ndport = case
    assert stored_checksums(data) == expected_checksums(data)  # dpkt built it right
    out = rewrite(data, nsrc, ndst, nsport, ndport)
    assert len(out) == len(data)
    assert stored_checksums(out) == expected_checksums(out)
    src, dst, a, b = _fields(out)
    assert (src, dst) == (nsrc, ndst)
    if proto in (1, 58):
        assert a == nsport  # the echo id
    else:
        assert (a, b) == (nsport, ndport)


@given(packets())
def test_inverse_rewrite_is_identity(case: tuple[bytes, int, int, bytes, bytes, int, int]) -> None:
    data, _l3, proto, nsrc, ndst, nsport, ndport = case
    src, dst, a, b = _fields(data)
    out = rewrite(data, nsrc, ndst, nsport, ndport)
    if proto in (1, 58):
        back = rewrite(out, src, dst, a)
    else:
        back = rewrite(out, src, dst, a, b)
    assert back == data


@given(packets())
def test_rewritten_packets_parse_with_dpkt(
    case: tuple[bytes, int, int, bytes, bytes, int, int],
) -> None:
    data, l3, proto, nsrc, ndst, nsport, ndport = case
    out = rewrite(data, nsrc, ndst, nsport, ndport)
    if l3 == 4:
        ip = dpkt.ip.IP(out)
        assert (ip.src, ip.dst) == (nsrc, ndst)
        # dpkt's own checksum routine agrees with the header checksum written
        assert dpkt.in_cksum(out[:10] + b"\0\0" + out[12:20]) == ip.sum
    else:
        ip6 = dpkt.ip6.IP6(out)
        assert (ip6.src, ip6.dst) == (nsrc, ndst)
    l4 = ip.data if l3 == 4 else ip6.data
    if proto in (6, 17):
        assert (l4.sport, l4.dport) == (nsport, ndport)
    elif proto == 1 or proto == 58:
        assert l4.data.id == nsport


@given(st.binary(max_size=120), addr4, addr4, port, port)
def test_rewrite_is_total(junk: bytes, a: bytes, b: bytes, p: int, q: int) -> None:
    out = rewrite(junk, a, b, p, q)
    assert len(out) == len(junk)
    rewrite_icmp_error(junk, a, b, a, b, p, q)


def test_udp_zero_checksum_stays_zero() -> None:
    data = bytearray(build(4, 17, b"\x0a\0\0\1", b"\x0a\0\0\2", 1000, 53, b"q"))
    data[26:28] = b"\0\0"
    out = rewrite(bytes(data), b"\xc6\x12\1\1", None, 4000, -1)
    assert out[26:28] == b"\0\0"
    assert out[12:16] == b"\xc6\x12\1\1"
    assert stored_checksums(out)["ip"] == expected_checksums(out)["ip"]


# ------------------------------------------------------------------ ICMP errors


def icmp_error(l3: int, outer_src: bytes, outer_dst: bytes, quoted: bytes, qlen: int) -> bytes:
    quote = quoted[:qlen]
    if l3 == 4:
        icmp = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=quote))
        ip = dpkt.ip.IP(src=outer_src, dst=outer_dst, p=1, ttl=64, data=icmp)
        ip.len = 20 + len(bytes(icmp))
        return bytes(ip)
    icmp6 = dpkt.icmp6.ICMP6(type=1, code=4, data=dpkt.icmp6.ICMP6.Unreach(data=quote))
    ip6 = dpkt.ip6.IP6(src=outer_src, dst=outer_dst, nxt=58, hlim=64, data=icmp6)
    ip6.plen = len(bytes(icmp6))
    ip6.extension_hdrs = {}
    return bytes(ip6)


@given(packets(), st.integers(28, 200), st.booleans(), st.booleans())
def test_icmp_error_incremental_equals_full(
    case: tuple[bytes, int, int, bytes, bytes, int, int], qlen: int, osrc: bool, odst: bool
) -> None:
    inner, l3, proto, nsrc, ndst, nsport, ndport = case
    a = addr4 if l3 == 4 else addr6
    outer_src = inner[16:20] if l3 == 4 else inner[24:40]
    outer_dst = inner[12:16] if l3 == 4 else inner[8:24]
    qlen = min(qlen if l3 == 4 else qlen + 20, len(inner))
    err = icmp_error(l3, outer_src, outer_dst, inner, qlen)
    assert stored_checksums(err) == expected_checksums(err)
    new_os = ndst if osrc else None
    new_od = nsrc if odst else None
    out = rewrite_icmp_error(err, new_os, new_od, nsrc, ndst, nsport, ndport)
    assert stored_checksums(out) == expected_checksums(out)
    # the quote is exactly the rewritten inner datagram, cut at the same length
    hl = 28 if l3 == 4 else 48
    assert out[hl:] == rewrite(inner, nsrc, ndst, nsport, ndport)[:qlen] or proto in (6, 132)
    if proto == 6 or proto == 132:
        # a TCP quote shorter than the header keeps its checksum (kernel tcp_manip_pkt());
        # SCTP's CRC covers the whole packet, which the quote lacks: same rule
        q = out[hl:]
        full = rewrite(inner, nsrc, ndst, nsport, ndport)[:qlen]
        pfx = (20 if l3 == 4 else 40) + (16 if proto == 6 else 8)
        assert q[:pfx] == full[:pfx]
    # and back (for an echo the id is the only port-like field)
    s, d, p, q = _fields(inner)
    back = rewrite_icmp_error(
        out, outer_src if osrc else None, outer_dst if odst else None, s, d, p, q
    )
    if proto != 132:  # a CRC over a cut quote is recomputed, not restored
        assert back == err
    del a


@given(packets(), st.integers(0, 1))
def test_nat_packet_fast_path_equals_generic(
    case: tuple[bytes, int, int, bytes, bytes, int, int], d: int
) -> None:
    """nat_packet()'s IPv4 TCP/UDP shortcut writes the same bytes as rewrite()."""
    data, l3, proto, nsrc, ndst, nsport, ndport = case
    src, dst, sport, dport = _fields(data)
    key = make_key(proto, src, dst, sport, dport)
    rkey = make_key(proto, ndst, nsrc, ndport, nsport)  # the packet's NATed inverse
    conn = Conn(1, key, rkey, l3, proto)
    conn.status = int(Status.SRC_NAT | Status.DST_NAT)
    if d == 1:  # the packet travels as the reply: its tuple is the reply key
        conn.key, conn.rkey = rkey, key
    out = nat_packet(data, 2, d, conn)
    assert out == rewrite(data, *nat_targets(conn, d))
    assert stored_checksums(out) == expected_checksums(out)
