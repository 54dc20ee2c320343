"""pmct.wire.ipv6: receive checks, the extension-header walk, fragments, router_drop().

Cases marked "kernel-verified" were replayed through Linux 6.18 with kernel_oracle.py
(--bridge, and without it for router_drop) and gave the verdict the test asserts.
"""

from __future__ import annotations

import struct

import dpkt
import pytest
from unit.wire.wirebuild import a6, frag6hdr, icmp, ip6, tcp, udp

from pmct.wire import ipv6 as v6
from pmct.wire import parse_ip

A = "2001:db8:1::1"
B = "2001:db8:2::2"
PADN4 = b"\x01\x04\x00\x00\x00\x00"  # PadN option filling an 8-byte header


def _dpkt_udp_with_ext_headers() -> bytes:
    """IPv6 hop-by-hop -> routing (type 0, segments left 0) -> destination options -> UDP."""
    u = dpkt.udp.UDP(sport=5353, dport=53, data=b"query")
    u.ulen = 13
    ip = dpkt.ip6.IP6(src=a6(A), dst=a6(B), nxt=0, hlim=33, data=u)
    ip.extension_hdrs = {
        0: dpkt.ip6.IP6HopOptsHeader(nxt=43, len=0, data=PADN4),
        43: dpkt.ip6.IP6RoutingHeader(nxt=60, len=0, type=0, segs_left=0, rsvd_sl_bits=0),
        60: dpkt.ip6.IP6DstOptsHeader(nxt=17, len=0, data=PADN4),
    }
    raw = bytes(ip)
    return raw[:4] + struct.pack("!H", len(raw) - 40) + raw[6:]


def test_extension_headers_are_walked_to_udp() -> None:
    data = _dpkt_udp_with_ext_headers()
    decoded = dpkt.ip6.IP6(data)
    assert decoded.p == 17  # dpkt agrees on the chain
    pkt = parse_ip(data)
    assert pkt.drop is None and pkt.bad is None and pkt.frag is None
    assert (pkt.l3, pkt.proto, pkt.ttl, pkt.l4off) == (6, 17, 33, 64)
    assert (pkt.src, pkt.dst, pkt.sport, pkt.dport) == (a6(A), a6(B), 5353, 53)
    assert pkt.l4len == 13


def test_auth_header_length_is_in_four_byte_units() -> None:
    ah = bytes([6, 4]) + bytes(22)  # (4 + 2) * 4 = 24 bytes
    pkt = parse_ip(ip6(A, B, 51, ah + tcp(1, 2, 0x02)))
    assert pkt.bad is None and pkt.proto == 6 and pkt.l4off == 64 and pkt.tcp_flags == 0x02


def test_esp_ends_the_walk() -> None:
    dst = bytes([50, 0]) + PADN4
    pkt = parse_ip(ip6(A, B, 60, dst + bytes(24)))
    assert pkt.bad is None and pkt.proto == 50 and pkt.l4off == 48 and pkt.l4len == 24


def test_no_next_header_has_no_l4() -> None:
    """kernel-verified: ipv6_skip_exthdr() fails on No Next Header: INVALID."""
    assert parse_ip(ip6(A, B, 59, b"")).bad == v6.R_NO_L4
    dst = bytes([59, 0]) + PADN4
    assert parse_ip(ip6(A, B, 60, dst + b"junk")).bad == v6.R_NO_L4


def test_extension_header_cut_short() -> None:
    """kernel-verified: the walk steps past the end; TCP then has no header: INVALID."""
    pkt = parse_ip(ip6(A, B, 60, bytes([6, 1]) + bytes(8)))  # says 16 bytes, has 10
    assert pkt.proto == 6 and pkt.l4off == 56 and pkt.l4len == 0
    assert pkt.bad == "truncated packet"
    # not even the 2-byte header is there: no L4 at all
    assert parse_ip(ip6(A, B, 60, b"\x06")).bad == v6.R_NO_L4


def test_padding_is_trimmed_and_truncation_dropped() -> None:
    data = ip6(A, B, 17, udp(1, 2, b"abc"))
    pkt = parse_ip(data + bytes(9))
    assert pkt.drop is None and pkt.data == data
    assert parse_ip(data[:-1]).drop == v6.R_TRUNCATED
    assert parse_ip(data[:39]).drop == v6.R_SHORT
    assert parse_ip(b"\x40" + data[1:], 6).drop == v6.R_VERSION


def test_payload_length_zero_without_hop_by_hop() -> None:
    """ip6_rcv_core() trims to the header: TCP then has no header."""
    pkt = parse_ip(ip6(A, B, 6, tcp(1, 2, 0x02), plen=0))
    assert pkt.drop is None and len(pkt.data) == 40 and pkt.bad == "truncated packet"


def test_malformed_hop_by_hop_is_dropped() -> None:
    """kernel-verified: nf_ip6_check_hbh_len() (bridge) drops an option running past the
    header; an unknown option is not its business."""
    bad = bytes([17, 0, 1, 9, 0, 0, 0, 0])  # PadN claiming 9 bytes in a 6-byte area
    assert parse_ip(ip6(A, B, 0, bad + udp(1, 2))).drop == v6.R_HBH
    assert parse_ip(ip6(A, B, 0, bytes([17, 5]) + bytes(6))).drop == v6.R_HBH  # 48 bytes said
    assert parse_ip(ip6(A, B, 0, bytes([17, 0]))).drop == v6.R_HBH  # header cut
    unknown = bytes([17, 0, 0x41, 4, 0, 0, 0, 0])
    pkt = parse_ip(ip6(A, B, 0, unknown + udp(1, 2)))
    assert pkt.drop is None and pkt.proto == 17 and pkt.sport == 1


def test_jumbogram() -> None:
    size = 70000
    hbh = bytes([17, 0, 0xC2, 4]) + struct.pack("!I", 8 + size)
    data = ip6(A, B, 0, hbh + udp(1, 2) + bytes(size - 8), plen=0)
    pkt = parse_ip(data)
    assert pkt.drop is None and pkt.proto == 17 and pkt.l4len == size
    # a jumbo option in a datagram with a payload length, or a short jumbo length: dropped
    with_len = ip6(A, B, 0, hbh + udp(1, 2) + bytes(size - 8), plen=100)
    assert parse_ip(with_len).drop == v6.R_HBH
    small = bytes([17, 0, 0xC2, 4]) + struct.pack("!I", 1000)
    assert parse_ip(ip6(A, B, 0, small + bytes(992), plen=0)).drop == v6.R_HBH


def test_fragments_are_found_behind_unfragmentable_headers() -> None:
    dst = bytes([44, 0]) + PADN4
    body = udp(1, 2, bytes(24))
    first = parse_ip(ip6(A, B, 60, dst + frag6hdr(17, 0, True, 0xDEADBEEF) + body[:16]))
    f = first.frag
    assert first.drop is None and f is not None
    assert (f.ident, f.offset, f.more, f.payload_off, f.next_header) == (
        0xDEADBEEF,
        0,
        True,
        56,
        17,
    )
    assert first.sport == 0  # fragments are not parsed further
    later = parse_ip(ip6(A, B, 44, frag6hdr(17, 16, False, 9) + body[16:]))
    assert later.frag is not None and (later.frag.offset, later.frag.more) == (16, False)
    assert later.l4len == len(body) - 16


def test_first_fragment_without_whole_l4_header_is_not_reassembled() -> None:
    """kernel-verified (RFC 8200 4.5, ipv6frag_thdr_truncated()): nf_ct_frag6_gather()
    lets it through and conntrack finds a TCP header cut short: INVALID."""
    pkt = parse_ip(ip6(A, B, 44, frag6hdr(6, 0, True, 1) + tcp(1, 2, 0x02)[:8]))
    assert pkt.frag is None and pkt.drop is None
    assert pkt.proto == 6 and pkt.l4off == 48 and pkt.bad == "truncated packet"
    # a non-first fragment is not subject to that rule
    later = parse_ip(ip6(A, B, 44, frag6hdr(6, 8, True, 1) + b"x"))
    assert later.frag is not None


def test_fragment_header_cut_short_is_dropped() -> None:
    pkt = parse_ip(ip6(A, B, 44, frag6hdr(17, 8, True, 1)[:6]))
    assert pkt.drop == v6.R_FRAGHDR


def test_helpers_mirror_the_kernel_walks() -> None:
    dst = bytes([44, 0]) + PADN4
    data = ip6(A, B, 60, dst + frag6hdr(17, 0, True, 5) + udp(1, 2))
    assert v6.find_prev_fhdr(data, len(data)) == (40, 48)
    assert v6.skip_exthdr(data, 40, 60, len(data)) == (56, 17, 1, 48)
    nonfirst = ip6(A, B, 44, frag6hdr(17, 24, False, 5) + bytes(8))
    assert v6.skip_exthdr(nonfirst, 40, 44, len(nonfirst)) == (40, 44, 24, 40)
    assert v6.find_prev_fhdr(ip6(A, B, 17, udp(1, 2)), 48) is None


def test_icmpv6_error_quoting_udp() -> None:
    """kernel-verified: 48 quoted bytes give a tuple (RELATED); 39 do not (INVALID)."""
    quoted = ip6(B, A, 17, udp(53, 4004, b"answer"))
    pkt = parse_ip(ip6(A, B, 58, icmp(1, 4, data=quoted[:48])))
    inner = pkt.inner
    assert inner is not None and inner.drop is None
    assert (inner.l3, inner.proto, inner.sport, inner.dport) == (6, 17, 53, 4004)
    assert (inner.src, inner.dst, inner.l4off) == (a6(B), a6(A), 40)
    short = parse_ip(ip6(A, B, 58, icmp(1, 4, data=quoted[:39]))).inner
    assert short is not None and short.drop == v6.R_INNER_SHORT


def test_icmpv6_error_quoting_fragments_and_bad_chains() -> None:
    later = ip6(B, A, 44, frag6hdr(17, 16, True, 3) + bytes(16))
    inner = parse_ip(ip6(A, B, 58, icmp(1, 4, data=later))).inner
    assert inner is not None and inner.drop == v6.R_INNER_FRAGMENT
    first = ip6(B, A, 44, frag6hdr(17, 0, True, 3) + udp(53, 4004, bytes(8)))
    inner = parse_ip(ip6(A, B, 58, icmp(2, 0, data=first))).inner
    assert inner is not None and inner.drop is None and inner.sport == 53
    assert inner.frag is not None and inner.frag.ident == 3
    none = parse_ip(ip6(A, B, 58, icmp(1, 4, data=ip6(B, A, 59, b"")))).inner
    assert none is not None and none.drop == v6.R_INNER_NO_L4


# ----------------------------------------------------------------------- router_drop()


def _hbh(opts: bytes, nh: int = 17) -> bytes:
    return bytes([nh, (len(opts) + 2) // 8 - 1]) + opts


@pytest.mark.parametrize(
    ("src", "dst", "nh", "body", "reason"),
    [
        ("::1", B, 17, udp(1, 2), v6.R_LOOPBACK),
        (A, "::1", 17, udp(1, 2), v6.R_LOOPBACK),
        ("ff02::1", B, 17, udp(1, 2), v6.R_MC_SRC),
        (A, "ff01::1", 17, udp(1, 2), v6.R_MC_IFLOCAL),
        (A, "ff00::1", 17, udp(1, 2), v6.R_MC_SCOPE0),
        (A, "ff02::1", 17, udp(1, 3), None),
        (A, B, 0, _hbh(bytes([0x41, 4, 0, 0, 0, 0])) + udp(1, 4), v6.R_HBH_OPTION),
        (A, B, 0, _hbh(bytes([0x81, 4, 0, 0, 0, 0])) + udp(1, 5), v6.R_HBH_OPTION),
        (A, B, 0, _hbh(bytes([0x01, 4, 0, 0, 1, 0])) + udp(1, 6), v6.R_HBH_OPTION),
        (A, B, 0, _hbh(bytes([0x21, 4, 0, 0, 0, 0])) + udp(1, 7), None),
        (A, B, 0, _hbh(bytes([5, 3, 0, 0, 0, 1]) + bytes(8)) + udp(1, 8), v6.R_HBH_OPTION),
        (A, B, 0, _hbh(bytes(6)) + udp(1, 9), None),
        (A, B, 0, _hbh(bytes([1, 12]) + bytes(12)) + udp(1, 10), v6.R_HBH_OPTION),
    ],
)
def test_router_drop(src: str, dst: str, nh: int, body: bytes, reason: str | None) -> None:
    """kernel-verified, every row: ip6_rcv_core() on a router drops exactly these; a bridge
    (br_validate_ipv6()) tracks all of them, and so does parse_ip()."""
    pkt = parse_ip(ip6(src, dst, nh, body))
    assert pkt.drop is None
    assert v6.router_drop(pkt) == reason


def test_router_drop_more_tlv_rules() -> None:
    ra = _hbh(bytes([5, 2, 0, 0, 1, 0]))
    assert v6.router_drop(parse_ip(ip6(A, B, 0, ra + udp(1, 2)))) is None
    nine = _hbh(bytes([0x3E, 0]) * 9 + bytes([1, 2, 0, 0]))  # 9 options > 8
    assert v6.router_drop(parse_ip(ip6(A, B, 0, nine + udp(1, 2)))) == v6.R_HBH_OPTION
    pad8 = _hbh(bytes(14))  # 14 Pad1 in a row: more than 7 bytes of padding
    assert v6.router_drop(parse_ip(ip6(A, B, 0, pad8 + udp(1, 2)))) == v6.R_HBH_OPTION
    assert v6.router_drop(parse_ip(ip6(A, B, 17, udp(1, 2)))) is None
    assert v6.router_drop(parse_ip(b"\x45" + bytes(19))) is None  # not IPv6


def test_router_drop_accepts_calipso_unchecked() -> None:
    """DEVIATION(kernel) pin: ipv6_hop_calipso() would validate the option's contents."""
    calipso = _hbh(bytes([0x07, 4, 0xFF, 0xFF, 0xFF, 0xFF]))
    assert v6.router_drop(parse_ip(ip6(A, B, 0, calipso + udp(1, 2)))) is None
