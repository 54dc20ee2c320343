"""pmct.wire.ipv4: ip_rcv_core()'s drops, trimming, fragments, and the ICMP-quoted header."""

from __future__ import annotations

import dpkt
import pytest
from unit.wire.wirebuild import a4, icmp, ip4, tcp, udp

from pmct.wire import ipv4 as v4
from pmct.wire import parse_ip

A = "192.0.2.1"
B = "198.51.100.2"


def _dpkt_tcp_with_options() -> bytes:
    """IPv4 with 8 bytes of IP options (NOP x3 + EOL, record-route-less) carrying a SYN."""
    t = dpkt.tcp.TCP(sport=40000, dport=443, seq=0x01020304, ack=0, flags=0x02, win=29200)
    t.opts = b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # MSS 1460, NOP, wscale 7
    t.off = (20 + len(t.opts)) // 4
    ip = dpkt.ip.IP(src=a4(A), dst=a4(B), p=6, ttl=57, opts=b"\x01\x01\x01\x00" * 2, data=t)
    ip.hl = (20 + 8) // 4
    ip.len = 28 + len(bytes(t))
    return bytes(ip)


def test_tcp_over_ipv4_with_ip_options() -> None:
    data = _dpkt_tcp_with_options()
    pkt = parse_ip(data)
    assert pkt.drop is None and pkt.bad is None and pkt.frag is None
    assert (pkt.l3, pkt.proto, pkt.ttl) == (4, 6, 57)
    assert (pkt.src, pkt.dst) == (a4(A), a4(B))
    assert pkt.l4off == 28 and pkt.l4len == len(data) - 28
    assert (pkt.sport, pkt.dport, pkt.tcp_seq, pkt.tcp_ack) == (40000, 443, 0x01020304, 0)
    assert (pkt.tcp_flags, pkt.tcp_win, pkt.tcp_doff) == (0x02, 29200, 28)
    assert pkt.data is data  # nothing to trim: no copy


def test_padding_beyond_total_length_is_trimmed() -> None:
    data = ip4(A, B, 17, udp(1, 2, b"abc"))
    pkt = parse_ip(data + b"\xee" * 7)
    assert pkt.drop is None and pkt.data == data and pkt.l4len == 11


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x45" + bytes(18), v4.R_SHORT),  # 19 bytes
        (b"\x55" + ip4(A, B, 17, udp(1, 2))[1:], v4.R_VERSION),
        (b"\x44" + ip4(A, B, 17, udp(1, 2))[1:], v4.R_IHL),
        (b"\x4f" + ip4(A, B, 17, udp(1, 2))[1:], v4.R_SHORT),  # IHL 60 > 28 bytes
        (ip4(A, B, 17, udp(1, 2), tot=29), v4.R_TRUNCATED),
        (ip4(A, B, 17, udp(1, 2), tot=19), v4.R_TOTLEN),
        (ip4(A, B, 17, udp(1, 2), opts=bytes(4), tot=22), v4.R_TOTLEN),
    ],
)
def test_ip_rcv_core_drops(data: bytes, reason: str) -> None:
    pkt = parse_ip(data, 4)  # the link layer said IPv4 (EtherType 0x0800)
    assert pkt.drop == reason and pkt.l3 == 4


def test_bad_header_checksum_is_not_dropped() -> None:
    """DEVIATION(kernel) pin: ip_rcv_core() drops it; NFQUEUE never delivers such a datagram
    and kernel_oracle.py recomputes the checksum, so pmct does not look at it."""
    data = bytearray(ip4(A, B, 17, udp(1, 2)))
    data[10] ^= 0xFF
    assert v4.header_checksum(bytes(data[:20])) != 0
    pkt = parse_ip(bytes(data))
    assert pkt.drop is None and pkt.sport == 1


def test_header_checksum_helper() -> None:
    assert v4.header_checksum(ip4(A, B, 6, b"")[:20]) == 0
    assert v4.header_checksum(ip4(A, B, 6, b"", opts=b"\x01\x01\x01\x00")[:24]) == 0


def test_first_fragment_is_a_fragment_without_l4_fields() -> None:
    data = ip4(A, B, 17, udp(5000, 53, bytes(32))[:24], ident=0xBEEF, frag=0x2000)
    pkt = parse_ip(data)
    assert pkt.drop is None and pkt.frag is not None
    f = pkt.frag
    assert (f.ident, f.offset, f.more, f.payload_off, f.next_header) == (0xBEEF, 0, True, 20, 17)
    assert pkt.sport == 0 and pkt.dport == 0 and pkt.bad is None
    assert pkt.l4len == 24


def test_later_fragments_and_df() -> None:
    last = parse_ip(ip4(A, B, 17, bytes(16), ident=7, frag=3))  # offset 24, no MF
    assert last.frag is not None and (last.frag.offset, last.frag.more) == (24, False)
    df_only = parse_ip(ip4(A, B, 17, udp(1, 2), frag=0x4000))
    assert df_only.frag is None and df_only.sport == 1


def test_icmp_error_quoting_tcp_with_eight_bytes() -> None:
    quoted = ip4(B, A, 6, tcp(443, 40000, 0x10, seq=0xA0B0C0D0, data=b"payload"))
    data = ip4(A, B, 1, icmp(3, 4, b"\x00\x00\x05\xdc", quoted[:28]))  # frag needed, MTU 1500
    pkt = parse_ip(data)
    assert pkt.bad is None and (pkt.icmp_type, pkt.icmp_code) == (3, 4)
    inner = pkt.inner
    assert inner is not None and inner.drop is None
    assert (inner.l3, inner.proto, inner.src, inner.dst) == (4, 6, a4(B), a4(A))
    assert (inner.sport, inner.dport, inner.tcp_seq) == (443, 40000, 0xA0B0C0D0)
    assert inner.data == quoted[:28] and inner.l4off == 20
    assert inner.l4len == len(quoted) - 20  # by the quoted header's total length
    assert inner.inner is None


def test_icmp_error_quote_truncated_below_the_ip_header() -> None:
    quoted = ip4(B, A, 17, udp(53, 1000))
    pkt = parse_ip(ip4(A, B, 1, icmp(11, 0, data=quoted[:19])))
    assert pkt.inner is not None and pkt.inner.drop == v4.R_INNER_SHORT


def test_icmp_error_quoting_a_header_longer_than_the_quote() -> None:
    """kernel-verified (Linux 6.18 via kernel_oracle.py): IHL 15 with 28 bytes quoted is
    "bogus IPv4 packet", no tuple, the error is INVALID."""
    quoted = bytearray(ip4(B, A, 17, udp(53, 1000))[:28])
    quoted[0] = 0x4F
    pkt = parse_ip(ip4(A, B, 1, icmp(3, 3, data=bytes(quoted))))
    assert pkt.inner is not None and pkt.inner.drop == v4.R_INNER_SHORT


def test_quoted_header_is_read_without_ip_rcv_checks() -> None:
    """ipv4_get_l4proto() checks neither version nor IHL >= 5: ports are read where IHL says."""
    quoted = bytearray(ip4(B, A, 17, udp(53, 1000)))
    quoted[0] = 0x74  # version 7, IHL 4 (16 bytes)
    pkt = parse_ip(ip4(A, B, 1, icmp(3, 3, data=bytes(quoted))))
    inner = pkt.inner
    assert inner is not None and inner.drop is None and inner.l4off == 16
    # "ports" are the last 4 bytes of the real header (the destination address)
    assert (inner.sport, inner.dport) == (0xC000, 0x0201)


def test_quoted_fragments() -> None:
    first = ip4(B, A, 17, udp(53, 1000, bytes(40)), frag=0x2000)
    pkt = parse_ip(ip4(A, B, 1, icmp(3, 3, data=first[:28])))
    inner = pkt.inner
    assert inner is not None and inner.drop is None and inner.sport == 53
    assert inner.frag is not None and inner.frag.more
    later = ip4(B, A, 17, bytes(16), frag=0x2002)
    inner2 = parse_ip(ip4(A, B, 1, icmp(3, 3, data=later))).inner
    assert inner2 is not None and inner2.drop == v4.R_INNER_FRAGMENT


def test_icmp_error_inner_reads_up_to_the_outer_end_not_beyond() -> None:
    quoted = ip4(B, A, 17, udp(53, 1000, b"x" * 20))
    outer = ip4(A, B, 1, icmp(3, 3, data=quoted))
    pkt = parse_ip(outer + b"\0" * 10)  # Ethernet padding after the outer datagram
    assert pkt.inner is not None and pkt.inner.data == quoted
