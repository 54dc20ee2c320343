"""IPv6 header and extension headers: what is dropped before conntrack, what nf_defrag_ipv6
holds, and where conntrack finds the L4 header.

Three kernel stages, in the order a datagram meets them:

1. Receive checks. ``parse`` does what both receive paths do, the bridge's
   br_validate_ipv6() (kernel net/bridge/br_netfilter_ipv6.c) and a router's
   ip6_rcv_core() (net/ipv6/ip6_input.c): fewer than 40 bytes or version != 6: drop; a
   hop-by-hop header must be whole and its options must parse (nf_ip6_check_hbh_len(),
   net/netfilter/utils.c; it also reads a jumbo payload length); payload length beyond the
   buffer: drop (INTRUNCATEDPKTS); then trim to 40 + payload length.
   A router drops more before conntrack runs: loopback or multicast source addresses,
   multicast destinations of scope 0 or 1, and hop-by-hop options ip6_parse_tlv()
   rejects. That is ``router_drop()``, for callers that model a router.
2. Defragmentation (net/ipv6/netfilter/nf_conntrack_reasm.c nf_ct_frag6_gather()): a
   fragment header found by find_prev_fhdr() (walking hop-by-hop, routing, destination
   and AH headers only) makes the datagram a fragment, unless the payload length is 0
   (jumbo), or the first fragment does not hold the whole upper-layer header (RFC 8200
   4.5, ipv6frag_thdr_truncated()): then the kernel lets it through unreassembled and
   conntrack sees it as it is. A fragment header cut short is dropped (-ENOMEM -> NF_DROP).
3. conntrack's L4 lookup (net/netfilter/nf_conntrack_core.c ipv6_get_l4proto(), which
   uses ipv6_skip_exthdr() from net/ipv6/exthdrs_core.c): skips hop-by-hop, routing,
   destination options, AH (length in 4-byte units) and a first-fragment header; stops at
   anything else, which is the L4 protocol (ESP included). No Next Header, a header that
   cannot be read, or a non-first fragment header: no L4 protocol, the packet is INVALID
   (``bad = R_NO_L4``). The L4 offset may lie beyond the end of a datagram whose last
   extension header is cut short; the kernel tracks such a packet anyway when its protocol
   needs no header (generic).
"""

from __future__ import annotations

import struct
from typing import Final

from pmct.wire.l4 import parse_l4
from pmct.wire.model import FragInfo, Packet

__all__ = [
    "EXT_HDRS",
    "NEXTHDR_FRAGMENT",
    "R_FRAGHDR",
    "R_HBH",
    "R_INNER_FRAGMENT",
    "R_INNER_NO_L4",
    "R_INNER_SHORT",
    "R_NO_L4",
    "R_SHORT",
    "R_TRUNCATED",
    "R_VERSION",
    "find_prev_fhdr",
    "parse",
    "parse_inner",
    "router_drop",
    "skip_exthdr",
]

NEXTHDR_HOP: Final = 0
NEXTHDR_TCP: Final = 6
NEXTHDR_UDP: Final = 17
NEXTHDR_ROUTING: Final = 43
NEXTHDR_FRAGMENT: Final = 44
NEXTHDR_AUTH: Final = 51
NEXTHDR_ICMP: Final = 58
NEXTHDR_NONE: Final = 59
NEXTHDR_DEST: Final = 60
# kernel ipv6_ext_hdr()
EXT_HDRS: Final = frozenset(
    {NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_NONE, NEXTHDR_DEST}
)
IPV6_MAXPLEN: Final = 65535
_TLV_PAD1: Final = 0
_TLV_PADN: Final = 1
_TLV_ROUTERALERT: Final = 5
_TLV_JUMBO: Final = 0xC2
_TLV_KNOWN_UNCHECKED: Final = frozenset({0x07, 0x31})  # CALIPSO, IOAM
_MAX_HBH_OPTS: Final = 8  # net.ipv6.max_hbh_opts_number default

R_SHORT: Final = "ipv6: header truncated"
R_VERSION: Final = "ipv6: bad version"
R_HBH: Final = "ipv6: malformed hop-by-hop header"
R_TRUNCATED: Final = "ipv6: datagram shorter than its payload length"
R_FRAGHDR: Final = "ipv6: fragment header truncated"
R_NO_L4: Final = "ipv6: no upper-layer header"  # ipv6_get_l4proto() < 0: INVALID
R_INNER_SHORT: Final = "ipv6: quoted header truncated"
R_INNER_NO_L4: Final = "ipv6: quoted datagram has no upper-layer header"
R_INNER_FRAGMENT: Final = "ipv6: quoted datagram is a non-first fragment"
# router_drop() reasons (ip6_rcv_core())
R_LOOPBACK: Final = "ipv6: loopback address"
R_MC_IFLOCAL: Final = "ipv6: interface-local multicast destination"
R_MC_SCOPE0: Final = "ipv6: multicast destination with reserved scope 0"
R_MC_SRC: Final = "ipv6: multicast source"
R_HBH_OPTION: Final = "ipv6: hop-by-hop option rejected"

# payload length, next header, hop limit
_HDR: Final = struct.Struct("!4xHBB")
_FRAG: Final = struct.Struct("!HI")  # fragment header after next header + reserved
_H: Final = struct.Struct("!H")
_I: Final = struct.Struct("!I")
_LOOPBACK: Final = bytes(15) + b"\x01"
_L4_MIN: Final = {NEXTHDR_TCP: 20, NEXTHDR_UDP: 8, NEXTHDR_ICMP: 8}


def skip_exthdr(data: bytes, start: int, nh: int, n: int) -> tuple[int, int, int, int]:
    """kernel ipv6_skip_exthdr() over ``data[:n]``.

    Returns:
        (offset of the first non-extension header or -1, its protocol number, the last
        fragment header's frag_off field (0 if none), that header's offset (-1 if none)).
        A non-first fragment header ends the walk at itself (protocol 44).
    """
    frag_off = 0
    fhoff = -1
    while nh in EXT_HDRS:
        if nh == NEXTHDR_NONE or start + 2 > n:
            return -1, nh, frag_off, fhoff
        if nh == NEXTHDR_FRAGMENT:
            if start + 4 > n:
                return -1, nh, frag_off, fhoff
            frag_off = (data[start + 2] << 8) | data[start + 3]
            fhoff = start
            if frag_off & 0xFFF8:
                break
            hdrlen = 8
        elif nh == NEXTHDR_AUTH:
            hdrlen = (data[start + 1] + 2) << 2
        else:
            hdrlen = (data[start + 1] + 1) << 3
        nh = data[start]
        start += hdrlen
    return start, nh, frag_off, fhoff


def find_prev_fhdr(data: bytes, n: int) -> tuple[int, int] | None:
    """kernel find_prev_fhdr(): (offset of the next-header byte that says "fragment",
    offset of the fragment header), or None when no fragment header can be reached."""
    nh = data[6]
    prev = 6
    start = 40
    left = n - 40
    while nh != NEXTHDR_FRAGMENT:
        if nh not in EXT_HDRS or nh == NEXTHDR_NONE or left < 2:
            return None
        if nh == NEXTHDR_AUTH:
            hdrlen = (data[start + 1] + 2) << 2
        else:
            hdrlen = (data[start + 1] + 1) << 3
        prev = start
        nh = data[start]
        left -= hdrlen
        start += hdrlen
    if left < 0:
        return None
    return prev, start


def _thdr_truncated(data: bytes, fhoff: int, n: int) -> bool:
    """kernel ipv6frag_thdr_truncated(): a first fragment without its whole L4 header."""
    off, nh, frag_off, _ = skip_exthdr(data, fhoff, NEXTHDR_FRAGMENT, n)
    if off < 0 or frag_off & 0xFFF8:
        return False
    return off + _L4_MIN.get(nh, 1) > n


def _check_hbh_len(data: bytes, n: int, plen: int) -> int:
    """kernel nf_ip6_check_hbh_len(): the payload length to use, or -1 to drop."""
    if n < 48:
        return -1
    left = (data[41] + 1) << 3
    if n < 40 + left:
        return -1
    off = 42
    left -= 2
    while left > 0:
        t = data[off]
        if t == _TLV_PAD1:
            off += 1
            left -= 1
            continue
        if left < 2:
            return -1
        optlen = data[off + 1] + 2
        if optlen > left:
            return -1
        if t == _TLV_JUMBO:
            if data[off + 1] != 4 or (off & 3) != 2:
                return -1
            jumbo = _I.unpack_from(data, off + 2)[0]
            if jumbo <= IPV6_MAXPLEN or plen or jumbo > n - 40:
                return -1
            plen = jumbo
        off += optlen
        left -= optlen
    return plen if left == 0 else -1


def parse(data: bytes) -> Packet:
    """Parse an IPv6 datagram (receive checks, fragment detection, L4 lookup); never raises."""
    pkt = Packet()
    pkt.l3 = 6
    pkt.data = data
    n = len(data)
    if n < 40:
        pkt.drop = R_SHORT
        return pkt
    if data[0] >> 4 != 6:
        pkt.drop = R_VERSION
        return pkt
    plen, nh, hlim = _HDR.unpack_from(data)
    pkt.src = data[8:24]
    pkt.dst = data[24:40]
    pkt.ttl = hlim
    pkt.proto = nh
    if nh == NEXTHDR_HOP:
        plen = _check_hbh_len(data, n, plen)
        if plen < 0:
            pkt.drop = R_HBH
            return pkt
    end = 40 + plen
    if end > n:
        pkt.drop = R_TRUNCATED
        return pkt
    if end < n:
        data = data[:end]  # kernel pskb_trim_rcsum()
        pkt.data = data
        n = end
    if nh not in EXT_HDRS:  # the common case: no extension headers
        pkt.l4off = 40
        pkt.l4len = plen
        parse_l4(pkt, data, 40, n, nh, 6, False)
        return pkt
    # nf_ct_frag6_gather(): is it a fragment the defragmenter takes?
    if plen:
        found = find_prev_fhdr(data, n)
        if found is not None and not _thdr_truncated(data, found[1], n):
            fhoff = found[1]
            if fhoff + 8 > n:
                pkt.drop = R_FRAGHDR
                return pkt
            frag_off, ident = _FRAG.unpack_from(data, fhoff + 2)
            nxt = data[fhoff]
            pkt.proto = nxt
            pkt.l4off = fhoff + 8
            pkt.l4len = n - fhoff - 8
            pkt.frag = FragInfo(ident, frag_off & 0xFFF8, bool(frag_off & 1), fhoff + 8, nxt)
            return pkt
    # ipv6_get_l4proto()
    off, nh, frag_off, _ = skip_exthdr(data, 40, nh, n)
    pkt.proto = nh
    if off < 0 or frag_off & 0xFFF8:
        pkt.bad = R_NO_L4
        return pkt
    pkt.l4off = off
    pkt.l4len = n - off if n > off else 0
    parse_l4(pkt, data, off, n, nh, 6, False)
    return pkt


def parse_inner(data: bytes, off: int, end: int) -> Packet:
    """The IPv6 datagram an ICMPv6 error quotes, as nf_conntrack_inet_error() reads it.

    Only ipv6_get_l4proto() + nf_ct_get_tuple() apply: the next-header walk and 40 bytes
    for the addresses; no version or length checks. ``drop`` is set when no tuple can be
    had. ``data`` is the quote (up to the outer datagram's end).
    """
    pkt = Packet()
    pkt.l3 = 6
    buf = data[off:end]
    pkt.data = buf
    n = len(buf)
    if n < 40:
        pkt.drop = R_INNER_SHORT
        return pkt
    plen, nh, hlim = _HDR.unpack_from(buf)
    pkt.src = buf[8:24]
    pkt.dst = buf[24:40]
    pkt.ttl = hlim
    o, nh, frag_off, fhoff = skip_exthdr(buf, 40, nh, n)
    pkt.proto = nh
    if fhoff >= 0 and fhoff + 8 <= n:
        ident = _I.unpack_from(buf, fhoff + 4)[0]
        pkt.frag = FragInfo(ident, frag_off & 0xFFF8, bool(frag_off & 1), fhoff + 8, buf[fhoff])
    if o < 0:
        pkt.drop = R_INNER_NO_L4
        return pkt
    if frag_off & 0xFFF8:
        pkt.drop = R_INNER_FRAGMENT
        return pkt
    pkt.l4off = o
    pkt.l4len = 40 + plen - o if 40 + plen > o else 0
    parse_l4(pkt, buf, o, n, nh, 6, True)
    return pkt


def router_drop(pkt: Packet) -> str | None:
    """Why a router's ip6_rcv_core() drops this datagram before conntrack, or None.

    The checks ``parse`` leaves out because a bridge (br_validate_ipv6()) does not make
    them: RFC 4291 2.5.3 loopback addresses, multicast destinations of scope 1 (errata
    3480) or 0 (2.7), multicast sources (2.7), and hop-by-hop options as ip6_parse_tlv()
    judges them (padding at most 7 bytes and zero-filled, at most 8 options, router alert of
    length 2, a consistent jumbo option, unknown options whose two high bits ask for a
    discard).

    DEVIATION(kernel): CALIPSO and IOAM options are accepted without their own checks
    (ipv6_hop_calipso(), ipv6_hop_ioam()). Pinned by
    tests/unit/wire/test_ipv6.py::test_router_drop_accepts_calipso_unchecked
    """
    if pkt.l3 != 6 or pkt.drop is not None or len(pkt.src) != 16 or len(pkt.dst) != 16:
        return None
    src = pkt.src
    dst = pkt.dst
    if src == _LOOPBACK or dst == _LOOPBACK:
        return R_LOOPBACK
    if dst[0] == 0xFF and dst[1] & 0x0F == 1:
        return R_MC_IFLOCAL
    if dst[0] == 0xFF and dst[1] & 0x0F == 0:
        return R_MC_SCOPE0
    if src[0] == 0xFF:
        return R_MC_SRC
    data = pkt.data
    if len(data) > 6 and data[6] == NEXTHDR_HOP and not _hopopts_ok(data):
        return R_HBH_OPTION
    return None


def _hopopts_ok(data: bytes) -> bool:
    """kernel ipv6_parse_hopopts() + ip6_parse_tlv(hopbyhop=true)."""
    n = len(data)
    if n < 48:
        return False
    left = (data[41] + 1) << 3
    if n < 40 + left:
        return False
    off = 42
    left -= 2
    padlen = 0
    count = 0
    while left > 0:
        t = data[off]
        if t == _TLV_PAD1:
            padlen += 1
            if padlen > 7:
                return False
            off += 1
            left -= 1
            continue
        if left < 2:
            return False
        optlen = data[off + 1] + 2
        if optlen > left:
            return False
        if t == _TLV_PADN:
            padlen += optlen
            if padlen > 7 or any(data[off + 2 : off + optlen]):
                return False
        else:
            count += 1
            if count > _MAX_HBH_OPTS:
                return False
            if t == _TLV_ROUTERALERT:
                if data[off + 1] != 2:
                    return False
            elif t == _TLV_JUMBO:
                if data[off + 1] != 4 or (off & 3) != 2:
                    return False
                jumbo = _I.unpack_from(data, off + 2)[0]
                if jumbo <= IPV6_MAXPLEN or _H.unpack_from(data, 4)[0] or jumbo > n - 40:
                    return False
            elif t not in _TLV_KNOWN_UNCHECKED and t >> 6:
                return False  # ip6_tlvopt_unknown(): action 01, 10, 11 all discard
            padlen = 0
        off += optlen
        left -= optlen
    return left == 0
