"""pmct.wire.link: which frames carry an IP datagram, and where it starts.

The reference is kernel_oracle.py's extract_ip() (the oracle decides which frames get a row);
tests/property/test_wire_link.py compares the two on random frames.
"""

from __future__ import annotations

import struct

import dpkt
import pytest
from unit.wire.wirebuild import eth, ip4, ip6, tcp, udp

from pmct.wire import parse_ip
from pmct.wire.ipv4 import R_VERSION as R4_VERSION
from pmct.wire.link import (
    LINKTYPE_ETHERNET,
    ip_from_ethertype,
    ip_from_frame,
    repair_captured,
    split_frame,
)

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"
IP4 = ip4("192.0.2.1", "198.51.100.2", 17, udp(1000, 53, b"query"))
IP6 = ip6("2001:db8::1", "2001:db8::2", 6, tcp(1000, 80, 0x02))


def _dpkt_ip4() -> bytes:
    u = dpkt.udp.UDP(sport=1000, dport=53, data=b"query")
    u.ulen = 13
    ip = dpkt.ip.IP(src=b"\xc0\x00\x02\x01", dst=b"\xc6\x33\x64\x02", p=17, data=u)
    ip.len = 20 + 13
    return bytes(ip)


def test_ethernet_ipv4_and_ipv6() -> None:
    ip = _dpkt_ip4()
    frame = bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, data=ip))
    assert ip_from_frame(frame, LINKTYPE_ETHERNET) == ip
    assert ip_from_frame(eth(IP6), 1) == IP6
    assert split_frame(eth(IP6), 1) == (6, IP6)


def test_ethernet_padding_is_kept_and_trimmed_by_parse_ip() -> None:
    frame = eth(IP4) + bytes(60 - 14 - len(IP4))  # minimum frame size padding
    ip = ip_from_frame(frame, 1)
    assert ip is not None and len(ip) == 46 and ip.startswith(IP4)
    pkt = parse_ip(ip)
    assert pkt.drop is None and pkt.data == IP4 and pkt.l4len == len(IP4) - 20


def test_non_ip_ethertypes_are_not_ip() -> None:
    arp = bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0806, data=bytes(28)))
    assert ip_from_frame(arp, 1) is None
    assert ip_from_frame(eth(bytes(46), 0x88CC), 1) is None  # LLDP
    assert ip_from_frame(b"\x00" * 13, 1) is None


def test_vlan_tag_is_stripped() -> None:
    ip = _dpkt_ip4()
    tag = dpkt.ethernet.VLANtag8021Q(id=5)
    frame = bytes(
        dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, vlan_tags=[tag], data=ip)
    )
    assert frame[12:14] == b"\x81\x00"
    assert ip_from_frame(frame, 1) == ip


def test_qinq_tags_are_stripped() -> None:
    ip = _dpkt_ip4()
    tags = [dpkt.ethernet.VLANtag8021Q(id=5), dpkt.ethernet.VLANtag8021Q(id=7)]
    frame = bytes(
        dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, vlan_tags=tags, data=ip)
    )
    assert frame[12:14] == b"\x88\xa8" and frame[16:18] == b"\x81\x00"
    assert ip_from_frame(frame, 1) == ip
    # the pre-standard 0x9100 outer tag too, and three tags deep
    three = MAC_B + MAC_A + b"\x91\x00\x00\x01\x88\xa8\x00\x02\x81\x00\x00\x03\x86\xdd" + IP6
    assert ip_from_frame(three, 1) == IP6


def test_cut_vlan_tag_is_not_ip() -> None:
    assert ip_from_frame(MAC_B + MAC_A + b"\x81\x00\x00\x05\x08", 1) is None
    # a tag that is whole but followed by nothing: IPv4 with an empty datagram, which the
    # oracle injects and the kernel drops as too short
    assert ip_from_frame(MAC_B + MAC_A + b"\x81\x00\x00\x05\x08\x00", 1) == b""
    assert parse_ip(b"").drop is not None


def _pppoe(proto: int, payload: bytes) -> bytes:
    """A PPPoE session header (RFC 2516) and an uncompressed 2-byte PPP protocol field."""
    return struct.pack("!BBHHH", 0x11, 0, 0x1234, 2 + len(payload), proto) + payload


def test_pppoe_session_is_stripped() -> None:
    ip = _dpkt_ip4()
    assert ip_from_frame(eth(_pppoe(0x0021, ip), 0x8864), 1) == ip
    assert ip_from_frame(eth(_pppoe(0x0057, IP6), 0x8864), 1) == IP6
    assert ip_from_frame(eth(_pppoe(0xC021, b"\x01"), 0x8864), 1) is None  # LCP
    # dpkt's PPP compresses the protocol field to one byte; the oracle (and so pmct) reads
    # two bytes there, so such a frame is not IP
    sess = dpkt.pppoe.PPPoE(code=0, session=1, data=dpkt.pppoe.PPP(p=0x21, data=ip))
    assert ip_from_frame(eth(bytes(sess), 0x8864), 1) is None
    # PPPoE inside a VLAN
    tagged = MAC_B + MAC_A + b"\x81\x00\x00\x09\x88\x64" + _pppoe(0x0021, ip)
    assert ip_from_frame(tagged, 1) == ip


def test_linux_cooked_v1_and_v2() -> None:
    ip = _dpkt_ip4()
    sll = bytes(dpkt.sll.SLL(type=0, hrd=1, hlen=6, hdr=MAC_A + b"\0\0", ethtype=0x0800, data=ip))
    assert ip_from_frame(sll, 113) == ip
    sll2 = bytes(dpkt.sll2.SLL2(ethtype=0x86DD, data=IP6))
    assert ip_from_frame(sll2, 276) == IP6
    assert ip_from_frame(sll2[:19], 276) is None
    arp = bytes(dpkt.sll.SLL(ethtype=0x0806, data=bytes(28)))
    assert ip_from_frame(arp, 113) is None


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_decides_by_version_nibble(linktype: int) -> None:
    assert ip_from_frame(IP4, linktype) == IP4
    assert ip_from_frame(IP6, linktype) == IP6
    assert ip_from_frame(b"\x50" + IP4[1:], linktype) is None
    assert ip_from_frame(b"", linktype) is None


def test_raw_ipv4_and_ipv6_linktypes_take_their_version_only() -> None:
    assert ip_from_frame(IP4, 228) == IP4
    assert ip_from_frame(IP6, 228) is None
    assert ip_from_frame(IP6, 229) == IP6
    assert ip_from_frame(IP4, 229) is None


@pytest.mark.parametrize(
    ("linktype", "family", "ip"),
    [
        (0, struct.pack("<I", 2), IP4),
        (108, struct.pack(">I", 2), IP4),
        (0, struct.pack("<I", 24), IP6),
        (0, struct.pack("<I", 28), IP6),
        (0, struct.pack("<I", 30), IP6),
        (108, struct.pack(">I", 10), IP6),
    ],
)
def test_bsd_loopback_families(linktype: int, family: bytes, ip: bytes) -> None:
    assert ip_from_frame(family + ip, linktype) == ip


def test_bsd_loopback_rejects_other_families_and_wrong_versions() -> None:
    assert ip_from_frame(struct.pack("<I", 7) + IP4, 0) is None
    assert ip_from_frame(struct.pack("<I", 2) + IP6, 0) is None  # family says IPv4
    assert ip_from_frame(b"\x02\x00\x00", 0) is None
    lo = bytes(dpkt.loopback.Loopback(family=2, data=_dpkt_ip4()))
    assert ip_from_frame(lo, 0) == _dpkt_ip4()


def test_unknown_linktype_is_not_ip() -> None:
    assert ip_from_frame(eth(IP4), 105) is None  # 802.11
    assert split_frame(IP4, 9999) is None


def test_ethertype_and_version_nibble_disagreeing_is_dropped() -> None:
    # Ethernet says IPv4, the datagram is IPv6: ip_rcv() drops it (version != 4)
    frame = eth(IP6, 0x0800)
    found = split_frame(frame, 1)
    assert found == (4, IP6)
    pkt = parse_ip(found[1], found[0])
    assert pkt.drop == R4_VERSION and pkt.l3 == 4
    assert parse_ip(IP6).drop is None  # without the link layer's word: by nibble


def test_ip_from_ethertype_direct() -> None:
    assert ip_from_ethertype(0x0800, IP4) == (4, IP4)
    assert ip_from_ethertype(0x8100, b"\x00\x01\x86\xdd" + IP6) == (6, IP6)
    assert ip_from_ethertype(0x8864, b"\x11\x00\x00\x01\x00\x10") is None  # cut PPPoE


def test_repair_captured_pads_snapped_datagrams() -> None:
    snapped = IP4[:25]
    fixed = repair_captured(snapped)
    assert len(fixed) == len(IP4) and fixed[:25] == snapped and fixed[25:] == bytes(8)
    assert parse_ip(snapped).drop is not None
    assert parse_ip(fixed).drop is None
    six = repair_captured(IP6[:50])
    assert len(six) == len(IP6) and parse_ip(six).drop is None


def test_repair_captured_fixes_tso_length_zero() -> None:
    zero = IP4[:2] + b"\x00\x00" + IP4[4:]
    fixed = repair_captured(zero)
    assert fixed[2:4] == len(IP4).to_bytes(2, "big") and fixed[4:] == IP4[4:]
    six = IP6[:4] + b"\x00\x00" + IP6[6:]
    assert repair_captured(six) == IP6
    # payload length 0 with a hop-by-hop header may be a jumbogram: left alone
    hbh = ip6("2001:db8::1", "2001:db8::2", 0, bytes([17, 0, 1, 4, 0, 0, 0, 0]), plen=0)
    assert repair_captured(hbh) == hbh


def test_repair_captured_leaves_whole_and_broken_datagrams_alone() -> None:
    assert repair_captured(IP4) is IP4
    assert repair_captured(IP6) is IP6
    assert repair_captured(b"\x45\x00") == b"\x45\x00"
    bad_ihl = b"\x44" + IP4[1:]
    assert repair_captured(bad_ihl) == bad_ihl
