"""pmct.wire.l4: L4 fields, how much header the kernel needs, ICMP error quotes.

"kernel-verified" cases were replayed through Linux 6.18 with kernel_oracle.py --bridge.
"""

from __future__ import annotations

import struct

import dpkt
from unit.wire.wirebuild import a4, icmp, ip4, ip6, tcp, udp

from pmct.wire import l4, parse_ip

A = "192.0.2.1"
B = "198.51.100.2"
A6 = "2001:db8::1"
B6 = "2001:db8::2"


def test_tcp_fields_with_dpkt() -> None:
    t = dpkt.tcp.TCP(sport=1, dport=2, seq=2**32 - 1, ack=7, flags=0x1FF, win=512)
    t.opts = b"\x01\x01\x04\x02"  # NOP NOP SACK-permitted
    t.off = 6
    ip = dpkt.ip.IP(src=a4(A), dst=a4(B), p=6, data=t)
    ip.len = 20 + 24
    pkt = parse_ip(bytes(ip))
    assert (pkt.sport, pkt.dport, pkt.tcp_seq, pkt.tcp_ack) == (1, 2, 2**32 - 1, 7)
    assert pkt.tcp_flags == 0xFF  # the low 8 flag bits; NS (0x100) is not among them
    assert (pkt.tcp_win, pkt.tcp_doff, pkt.l4len, pkt.payload_len) == (512, 24, 24, 0)


def test_tcp_doff_beyond_the_segment_is_left_to_the_tracker() -> None:
    seg = bytearray(tcp(1, 2, 0x10))
    seg[12] = 0xF0  # data offset 60 bytes in a 20-byte segment
    pkt = parse_ip(ip4(A, B, 6, bytes(seg)))
    assert pkt.bad is None and pkt.tcp_doff == 60  # tcp_error(): "truncated packet"


def test_tcp_header_cut_short() -> None:
    """kernel-verified: 10 bytes (ports readable, no header) and 3 bytes: INVALID."""
    ten = parse_ip(ip4(A, B, 6, tcp(1000, 80, 0x02, seq=5)[:10]))
    assert ten.bad == l4.R_TCP_SHORT and (ten.sport, ten.dport, ten.tcp_seq) == (1000, 80, 5)
    three = parse_ip(ip4(A, B, 6, b"\x03\xe8\x00"))
    assert three.bad == l4.R_TCP_SHORT and three.sport == 0


def test_udp_and_udplite() -> None:
    pkt = parse_ip(ip6(A6, B6, 17, udp(5353, 53, b"q")))
    assert pkt.bad is None and (pkt.sport, pkt.dport, pkt.l4len) == (5353, 53, 9)
    short = parse_ip(ip4(A, B, 17, udp(1, 2)[:6]))  # kernel-verified: "short packet"
    assert short.bad == l4.R_SHORT and (short.sport, short.dport) == (1, 2)
    lite = parse_ip(ip4(A, B, 136, udp(7, 8)[:7]))
    assert lite.bad == l4.R_SHORT and lite.sport == 7
    # a length field larger than the datagram is the tracker's finding, not the parser's
    assert parse_ip(ip4(A, B, 17, udp(1, 2, length=100))).bad is None


def test_sctp_needs_only_its_ports_here() -> None:
    four = parse_ip(ip4(A, B, 132, struct.pack("!HH", 36412, 2905)))
    assert four.bad is None and (four.sport, four.dport) == (36412, 2905)
    assert parse_ip(ip4(A, B, 132, b"\x00\x01\x00")).bad == l4.R_SHORT


def test_dccp_is_generic_since_linux_6_16() -> None:
    """kernel-verified on 6.18: a DCCP packet with other ports in the reverse direction is
    ESTABLISHED on the first packet's entry, i.e. no ports in the tuple."""
    pkt = parse_ip(ip4(A, B, 33, struct.pack("!HH", 1, 2) + bytes(12)))
    assert pkt.bad is None and (pkt.sport, pkt.dport) == (0, 0)
    assert parse_ip(ip4(A, B, 33, b"\x01")).bad is None


def test_gre() -> None:
    """kernel-verified: v0 and short headers track like generic (keys 0); v1 with PPP has the
    call id as destination key; v1 with another payload type has no tuple (INVALID)."""
    v0 = parse_ip(ip4(A, B, 47, bytes([0x20, 0x00, 0x08, 0x00, 0, 0, 0, 42])))
    assert v0.bad is None and (v0.sport, v0.dport) == (0, 0)
    pptp = parse_ip(ip4(A, B, 47, bytes([0x30, 0x81, 0x88, 0x0B, 0, 4, 0x12, 0x34])))
    assert pptp.bad is None and (pptp.sport, pptp.dport) == (0, 0x1234)
    not_ppp = parse_ip(ip4(A, B, 47, bytes([0x30, 0x01, 0x08, 0x00, 0, 0, 0, 7])))
    assert not_ppp.bad == l4.R_GRE_PROTO
    six = parse_ip(ip4(A, B, 47, bytes([0x30, 0x01, 0x88, 0x0B, 0, 0])))
    assert six.bad is None and six.dport == 0
    two = parse_ip(ip4(A, B, 47, bytes([0, 1])))
    assert two.bad is None and two.dport == 0


def test_icmp_query_fields() -> None:
    pkt = parse_ip(ip4(A, B, 1, icmp(8, 0, b"\x12\x34\x00\x01", b"ping")))
    assert (pkt.icmp_type, pkt.icmp_code, pkt.icmp_id) == (8, 0, 0x1234)
    assert (pkt.sport, pkt.dport, pkt.inner) == (0x1234, 8 << 8, None)
    six = parse_ip(ip6(A6, B6, 58, icmp(129, 0, b"\x00\x07\x00\x01")))
    assert (six.icmp_type, six.icmp_id, six.inner) == (129, 7, None)


def test_icmp_short_packet() -> None:
    """kernel-verified: fewer than 8 bytes of ICMP: "short packet", INVALID."""
    assert parse_ip(ip4(A, B, 1, bytes([8, 0, 0, 0, 0, 1]))).bad == l4.R_SHORT
    assert parse_ip(ip6(A6, B6, 58, bytes([128, 0]))).bad == l4.R_SHORT


def test_icmp_error_types_quote_a_datagram() -> None:
    quoted = ip4(B, A, 17, udp(53, 4000, b"x"))
    for itype in sorted(l4.ICMP_ERROR_TYPES):
        pkt = parse_ip(ip4(A, B, 1, icmp(itype, 0, data=quoted)))
        assert pkt.inner is not None and pkt.inner.sport == 53, itype
    for itype in (0, 8, 13, 19, 40):
        assert parse_ip(ip4(A, B, 1, icmp(itype, 0, data=quoted))).inner is None


def test_icmp_error_quoting_four_and_three_bytes_of_udp() -> None:
    """kernel-verified: 4 quoted bytes of UDP give the ports (RELATED), 3 do not (INVALID)."""
    quoted = ip4(B, A, 17, udp(53, 4000, b"x"))
    four = parse_ip(ip4(A, B, 1, icmp(3, 3, data=quoted[:24]))).inner
    assert four is not None and four.drop is None and four.bad is None
    assert (four.sport, four.dport) == (53, 4000)
    three = parse_ip(ip4(A, B, 1, icmp(3, 3, data=quoted[:23]))).inner
    assert three is not None and three.bad == l4.R_SHORT


def test_icmp_error_quoting_icmp_echo() -> None:
    echo = ip4(B, A, 1, icmp(8, 0, b"\x00\x09\x00\x01", b"abcd"))
    inner = parse_ip(ip4(A, B, 1, icmp(11, 0, data=echo[:28]))).inner
    assert inner is not None and (inner.icmp_type, inner.icmp_id) == (8, 9)
    assert inner.inner is None  # a quote is never parsed for quotes of its own
    cut = parse_ip(ip4(A, B, 1, icmp(11, 0, data=echo[:27]))).inner
    assert cut is not None and cut.icmp_type == -1 and cut.bad == l4.R_SHORT


def test_icmp_family_mismatch_is_not_an_error_message() -> None:
    """kernel-verified: ICMP in IPv6 and ICMPv6 in IPv4 reach no error handler (both end
    INVALID in the trackers); the parser reads their fields and quotes nothing."""
    quoted = ip4(B, A, 17, udp(53, 4000))
    v4_in_v6 = parse_ip(ip6(A6, B6, 1, icmp(3, 3, data=quoted)))
    assert v4_in_v6.icmp_type == 3 and v4_in_v6.inner is None and v4_in_v6.bad is None
    v6_in_v4 = parse_ip(ip4(A, B, 58, icmp(1, 4, data=quoted)))
    assert v6_in_v4.icmp_type == 1 and v6_in_v4.inner is None


def _redirect(code: int, options: bytes) -> bytes:
    body = bytes(32) + options  # target + destination, then ND options
    return ip6("fe80::1", B6, 58, icmp(137, code, data=body), hlim=255)


def test_icmpv6_redirect_quotes_the_redirected_header_option() -> None:
    quoted = ip6(B6, A6, 6, tcp(80, 1000, 0x10))
    opt = bytes([4, (8 + len(quoted) + 7) // 8]) + bytes(6) + quoted
    pkt = parse_ip(_redirect(0, opt))
    assert pkt.bad is None and pkt.inner is not None
    assert (pkt.inner.proto, pkt.inner.sport, pkt.inner.dport) == (6, 80, 1000)


def test_icmpv6_redirect_without_usable_option() -> None:
    assert parse_ip(_redirect(0, b"")).inner is None  # no option: "redirect without options"
    assert parse_ip(_redirect(0, bytes([4, 0]) + bytes(6))).inner is None  # length 0
    assert parse_ip(_redirect(0, bytes([1, 1]) + bytes(6))).inner is None  # not type 4
    quoted = ip6(B6, A6, 6, tcp(80, 1000, 0x10))
    opt = bytes([4, 8]) + bytes(6) + quoted
    assert parse_ip(_redirect(1, opt)).inner is None  # code != 0: not handled as a redirect


def test_icmpv6_short_redirect() -> None:
    """kernel-verified: fewer than 40 bytes of redirect message: "short redirect"."""
    pkt = parse_ip(ip6("fe80::1", B6, 58, icmp(137, 0, data=bytes(20)), hlim=255))
    assert pkt.bad == l4.R_SHORT_REDIRECT
