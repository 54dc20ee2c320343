"""Pure packet parsers: bytes in, a Packet out; never an exception for any input.

``parse_ip`` is an explicit dispatch on the IP version (ipv4.py, ipv6.py; L4 headers in
l4.py); ``link.ip_from_frame`` finds the datagram in a captured frame; ``defrag`` holds
fragments until a datagram is whole. What a Packet's ``drop`` / ``frag`` / ``bad`` mean is
documented in model.py. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from typing import Final

from pmct.wire import ipv4, ipv6
from pmct.wire.model import FragInfo, Packet

__all__ = ["R_EMPTY", "R_NOT_IP", "FragInfo", "Packet", "parse_ip"]

R_EMPTY: Final = "ip: empty datagram"
R_NOT_IP: Final = "ip: version is neither 4 nor 6"

_parse4 = ipv4.parse
_parse6 = ipv6.parse


def parse_ip(data: bytes, version: int = 0) -> Packet:
    """Parse one IP datagram (what NFQUEUE hands over, or ``ip_from_frame``'s result).

    Args:
        data: the datagram, from the IP header on; trailing link-layer padding is trimmed.
        version: 4 or 6 when the link layer says which (EtherType, NFQUEUE's hw_protocol):
            a datagram whose version nibble disagrees is dropped, as ip_rcv() / ipv6_rcv()
            drop it; 0 (default): the version nibble decides.
    Returns:
        A Packet; see pmct.wire.model for ``drop``, ``frag`` and ``bad``. Never raises.
    """
    if data:
        v = data[0] >> 4
        if v == 4 and version != 6:
            return _parse4(data)
        if v == 6 and version != 4:
            return _parse6(data)
    pkt = Packet()
    pkt.data = data
    if version == 4 or version == 6:
        pkt.l3 = version
        pkt.drop = ipv4.R_VERSION if version == 4 else ipv6.R_VERSION
        if not data:
            pkt.drop = ipv4.R_SHORT if version == 4 else ipv6.R_SHORT
        return pkt
    pkt.drop = R_EMPTY if not data else R_NOT_IP
    return pkt
