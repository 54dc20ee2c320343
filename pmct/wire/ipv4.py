"""IPv4 header: what ip_rcv_core() drops, what nf_defrag_ipv4 holds, where L4 starts.

Rules mirrored (kernel net/ipv4/ip_input.c ip_rcv_core(); br_validate_ipv4() in bridge
mode does the same checks):

1. Fewer than 20 bytes, version != 4, IHL < 5, or fewer bytes than IHL: header error, drop.
2. Total length > bytes received: truncated, drop (SKB_DROP_REASON_PKT_TOO_SMALL);
   total length < IHL: header error, drop.
3. Otherwise the datagram is trimmed to its total length (Ethernet padding goes).
4. MF set or fragment offset != 0: a fragment (kernel ip_is_fragment()); conntrack never
   sees it, nf_defrag_ipv4 queues it; L4 fields are not parsed.

DEVIATION(kernel): the header checksum is not verified. Datagrams from NFQUEUE already
passed ip_rcv_core()'s check, and kernel_oracle.py recomputes the checksum of every captured
datagram before injecting it (captures often carry offloaded checksums), so checking it here
could only create differences. Pinned by
tests/unit/wire/test_ipv4.py::test_bad_header_checksum_is_not_dropped

For the datagram quoted in an ICMP error, ``parse_inner`` follows the much laxer
ipv4_get_l4proto() + nf_ct_get_tuple() instead: no version, IHL or length checks, only
"20 bytes present, not a non-first fragment, L4 offset inside the packet".
"""

from __future__ import annotations

import struct
from typing import Final

from pmct.wire.l4 import parse_l4
from pmct.wire.model import FragInfo, Packet

__all__ = [
    "R_IHL",
    "R_INNER_FRAGMENT",
    "R_INNER_SHORT",
    "R_SHORT",
    "R_TOTLEN",
    "R_TRUNCATED",
    "R_VERSION",
    "header_checksum",
    "parse",
    "parse_inner",
]

R_SHORT: Final = "ipv4: header truncated"
R_VERSION: Final = "ipv4: bad version"
R_IHL: Final = "ipv4: ihl < 5"
R_TOTLEN: Final = "ipv4: total length < header length"
R_TRUNCATED: Final = "ipv4: datagram shorter than its total length"
R_INNER_SHORT: Final = "ipv4: quoted header truncated"
R_INNER_FRAGMENT: Final = "ipv4: quoted datagram is a non-first fragment"

# version/ihl, total length, id, flags+fragment offset, ttl, protocol
_HDR: Final = struct.Struct("!BxHHHBB")

IP_MF: Final = 0x2000
IP_DF: Final = 0x4000
IP_OFFSET: Final = 0x1FFF


def parse(data: bytes) -> Packet:
    """Parse an IPv4 datagram (kernel ip_rcv_core() + conntrack's L4 lookup); never raises."""
    pkt = Packet()
    pkt.l3 = 4
    pkt.data = data
    n = len(data)
    if n < 20:
        pkt.drop = R_SHORT
        return pkt
    vihl, tot, ident, frag, ttl, proto = _HDR.unpack_from(data)
    if vihl >> 4 != 4:
        pkt.drop = R_VERSION
        return pkt
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        pkt.drop = R_IHL
        return pkt
    if n < ihl:
        pkt.drop = R_SHORT
        return pkt
    pkt.src = data[12:16]
    pkt.dst = data[16:20]
    pkt.proto = proto
    pkt.ttl = ttl
    if tot > n:
        pkt.drop = R_TRUNCATED
        return pkt
    if tot < ihl:
        pkt.drop = R_TOTLEN
        return pkt
    if tot < n:
        data = data[:tot]  # kernel pskb_trim_rcsum(): link-layer padding goes
        pkt.data = data
    pkt.l4off = ihl
    pkt.l4len = tot - ihl
    if frag & 0x3FFF:  # MF or offset: ip_is_fragment()
        pkt.frag = FragInfo(ident, (frag & IP_OFFSET) << 3, bool(frag & IP_MF), ihl, proto)
        return pkt
    parse_l4(pkt, data, ihl, tot, proto, 4, False)
    return pkt


def parse_inner(data: bytes, off: int, end: int) -> Packet:
    """The datagram an ICMP error quotes, as nf_conntrack_inet_error() reads it.

    Args:
        data: the outer datagram; off: where the quoted IPv4 header starts; end: the end of
            the outer datagram (the kernel reads the quote up to the outer skb's end).
    Returns:
        A Packet whose ``data`` is the quote; ``drop`` is set when the kernel cannot get a
        tuple from it (ipv4_get_l4proto() fails), L4 fields are filled as far as present.
    """
    pkt = Packet()
    pkt.l3 = 4
    buf = data[off:end]
    pkt.data = buf
    n = len(buf)
    if n < 20:
        pkt.drop = R_INNER_SHORT
        return pkt
    vihl, tot, ident, frag, ttl, proto = _HDR.unpack_from(buf)
    ihl = (vihl & 0x0F) << 2  # kernel: no IHL >= 5 or version check here
    pkt.src = buf[12:16]
    pkt.dst = buf[16:20]
    pkt.proto = proto
    pkt.ttl = ttl
    pkt.l4off = ihl
    pkt.l4len = tot - ihl if tot > ihl else 0
    if frag & 0x3FFF:
        pkt.frag = FragInfo(ident, (frag & IP_OFFSET) << 3, bool(frag & IP_MF), ihl, proto)
        if frag & IP_OFFSET:
            pkt.drop = R_INNER_FRAGMENT
            return pkt
    if ihl > n:  # kernel: "bogus IPv4 packet", dataoff > skb->len
        pkt.drop = R_INNER_SHORT
        return pkt
    parse_l4(pkt, buf, ihl, n, proto, 4, True)
    return pkt


def header_checksum(hdr: bytes) -> int:
    """RFC 1071 checksum of an IPv4 header (0 when a header with its checksum is intact)."""
    if len(hdr) & 1:
        hdr += b"\0"
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
