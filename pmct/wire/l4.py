"""L4 headers: the fields conntrack's tuple and trackers read (TCP, UDP, UDP-Lite, SCTP,
GRE, ICMP, ICMPv6), and the datagram quoted by an ICMP/ICMPv6 error.

What is read, and how much of the header must be present, follows the kernel:

- Ports (TCP, UDP, UDP-Lite, SCTP): the first 4 bytes (nf_ct_get_tuple_ports(), "Actually
  only need first 4 bytes to get ports"). DCCP is not among them: Linux 6.16 removed DCCP
  and its conntrack tracker, so nf_ct_get_tuple() treats it like any unknown protocol
  (kernel_oracle on 6.18: a DCCP reply with other ports is ESTABLISHED on the same entry).
- TCP: the 20-byte fixed header must be present, else nf_conntrack_tcp_packet() gives up
  (``bad = "truncated packet"``, tcp_error()'s wording for the neighbouring case); a data
  offset that does not fit is left to the TCP tracker's tcp_error() (it needs ``tcp_doff``).
- UDP / UDP-Lite: the 8-byte header (udp_error(): "short packet"); the length field is
  the tracker's business.
- GRE (gre_pkt_to_tuple()): version 0 or a header shorter than 4 bytes: keys 0, like the
  generic tracker; version 1 (PPTP) with a whole 8-byte header: ``dport`` = call id,
  ``sport`` = 0 (the kernel's source key comes from the PPTP helper's keymap, empty without
  the helper); version 1 not carrying PPP (0x880B): no tuple, INVALID.
- ICMP / ICMPv6: 8 bytes ("short packet"); type, code, and the identifier field read for
  every type (icmp_pkt_to_tuple() does so too); ``sport`` = id, ``dport`` = type << 8 | code
  (the key layout of pmct.conntrack.keys). Error types carry the quoted datagram in
  ``inner``: ICMP types 3, 4, 5, 11, 12 (icmp_is_err()); ICMPv6 types < 128; an ICMPv6
  redirect (137, code 0) quotes it in a Redirected Header option that must come first
  (nf_conntrack_icmpv6_redirect(); fewer than 40 bytes: "short redirect").

For the quoted datagram (``inner=True``) only what nf_ct_get_tuple() needs must be present
(ports: 4 bytes, ICMP: 8, GRE as above); it is never an error in itself.
"""

from __future__ import annotations

import struct
from typing import Final

from pmct.wire.model import Packet

__all__ = [
    "ICMP_ERROR_TYPES",
    "PORTED",
    "R_GRE_PROTO",
    "R_SHORT",
    "R_SHORT_REDIRECT",
    "R_TCP_SHORT",
    "TCP_HDR",
    "parse_l4",
]

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_GRE: Final = 47
IPPROTO_ICMPV6: Final = 58
IPPROTO_SCTP: Final = 132
IPPROTO_UDPLITE: Final = 136

R_SHORT: Final = "short packet"  # udp_error(), nf_conntrack_icmp[v6]_error()
R_TCP_SHORT: Final = "truncated packet"  # tcp_error() wording
R_SHORT_REDIRECT: Final = "short redirect"  # nf_conntrack_icmpv6_redirect()
R_GRE_PROTO: Final = "gre: version 1 without PPP payload"  # gre_pkt_to_tuple() fails

# Protocols whose tuple carries 16-bit ports read from the first 4 bytes (besides TCP).
PORTED: Final = frozenset({IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP})
ICMP_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})
_ICMPV6_REDIRECT: Final = 137
_ND_OPT_REDIRECT_HDR: Final = 4
_GRE_PROTO_PPP: Final = 0x880B

# sport, dport, seq, ack, data offset + flags, window
TCP_HDR: Final = struct.Struct("!HHIIHH")
_PORTS: Final = struct.Struct("!HH")
# type, code, checksum (skipped), identifier
_ICMP: Final = struct.Struct("!BB2xH")


def parse_l4(
    pkt: Packet, data: bytes, off: int, end: int, proto: int, l3: int, inner: bool
) -> None:
    """Fill ``pkt``'s L4 fields from ``data[off:end]``; never raises.

    Args:
        pkt: the packet being built (l3, addresses, proto already set).
        data: the buffer; off: where the L4 header starts; end: where the readable bytes end
            (the datagram's end; for a quoted datagram the end of the outer one).
        proto: L4 protocol number; l3: 4 or 6 (ICMP errors are only parsed per family).
        inner: True for a datagram quoted in an ICMP error (laxer, see the module doc).
    """
    avail = end - off
    if proto == IPPROTO_TCP:
        if avail >= 20:
            sport, dport, seq, ack, offfl, win = TCP_HDR.unpack_from(data, off)
            pkt.sport = sport
            pkt.dport = dport
            pkt.tcp_seq = seq
            pkt.tcp_ack = ack
            pkt.tcp_flags = offfl & 0xFF
            pkt.tcp_win = win
            pkt.tcp_doff = (offfl >> 12) << 2
            return
        if avail >= 4:
            pkt.sport, pkt.dport = _PORTS.unpack_from(data, off)
            if avail >= 8:
                pkt.tcp_seq = int.from_bytes(data[off + 4 : off + 8], "big")
            if inner:
                return
        pkt.bad = R_TCP_SHORT
        return
    if proto in PORTED:
        if avail >= 4:
            pkt.sport, pkt.dport = _PORTS.unpack_from(data, off)
            if inner or avail >= 8 or (proto != IPPROTO_UDP and proto != IPPROTO_UDPLITE):
                return
        pkt.bad = R_SHORT
        return
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if avail < 8:
            pkt.bad = R_SHORT
            return
        itype, code, ident = _ICMP.unpack_from(data, off)
        pkt.icmp_type = itype
        pkt.icmp_code = code
        pkt.icmp_id = ident
        pkt.sport = ident
        pkt.dport = (itype << 8) | code
        if inner:
            return
        if proto == IPPROTO_ICMP:
            if l3 == 4 and itype in ICMP_ERROR_TYPES:
                from pmct.wire.ipv4 import parse_inner as inner4  # late: import cycle

                pkt.inner = inner4(data, off + 8, end)
            return
        if l3 != 6:
            return
        if itype < 128:
            from pmct.wire.ipv6 import parse_inner as inner6  # late: import cycle

            pkt.inner = inner6(data, off + 8, end)
        elif itype == _ICMPV6_REDIRECT:
            # rd_msg: ICMPv6 header (8) + target (16) + destination (16), then ND options
            if avail < 40:
                pkt.bad = R_SHORT_REDIRECT
            elif (
                code == 0
                and avail >= 42
                and data[off + 40] == _ND_OPT_REDIRECT_HDR
                and data[off + 41] != 0
            ):
                from pmct.wire.ipv6 import parse_inner as inner6  # late: import cycle

                # option type, length, 6 reserved bytes, then the quoted datagram
                pkt.inner = inner6(data, off + 48, end)
        return
    if proto == IPPROTO_GRE:
        # gre_pkt_to_tuple(): only version 1 (PPTP) with PPP payload has keys
        if avail >= 8 and data[off + 1] & 0x07 == 1:
            if (data[off + 2] << 8) | data[off + 3] != _GRE_PROTO_PPP:
                pkt.bad = R_GRE_PROTO
                return
            pkt.dport = (data[off + 6] << 8) | data[off + 7]
        return
