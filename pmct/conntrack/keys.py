"""Connection tuples and their packed hash keys: the one place that defines the key layout.

Every connection is stored twice in one dict, once under the key of its original tuple and
once under the key of its reply tuple (kernel: "Connections have two entries in the hash
table: one for each way"), so one lookup finds the entry and tells the direction.

Keys are ``bytes``: they cost ~48 bytes each and hash as fast as tuples (measurements.md §5).
Layout, chosen so the hot path can build the common key with one slice of the IP datagram:

============================  ==========================================  ======
protocol                      layout                                      length
============================  ==========================================  ======
TCP over IPv4                 src(4) dst(4) sport(2) dport(2)             12
TCP over IPv6                 src(16) dst(16) sport(2) dport(2)           36
other L4 with ports / ICMP    proto(1) src dst sport(2) dport(2)          13 / 37
  (UDP, UDP-Lite, SCTP: ports; ICMP/ICMPv6: id(2) type(1) code(1))
GRE                           proto(1) src dst key_src(2) key_dst(2)      13 / 37
generic (by protocol number)  proto(1) src dst                            9 / 33
============================  ==========================================  ======

For IPv4 TCP without options, ``datagram[12:24]`` *is* the key (addresses then ports are
contiguous), which is what the fast path in core.py relies on; a test pins the equivalence.
No two layouts share a length, so keys of different protocols can never collide.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "IPPROTO_DCCP",
    "IPPROTO_GRE",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPPROTO_UDPLITE",
    "PORTED_PROTOS",
    "Tuple",
    "decode_key",
    "make_key",
]

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_DCCP: Final = 33
IPPROTO_GRE: Final = 47
IPPROTO_ICMPV6: Final = 58
IPPROTO_SCTP: Final = 132
IPPROTO_UDPLITE: Final = 136

# Protocols whose tuple carries two 16-bit fields after the addresses. DCCP is not one:
# current kernels (6.16+) have no DCCP tracker, so DCCP is generic (no ports).
PORTED_PROTOS: Final = frozenset(
    {
        IPPROTO_UDP,
        IPPROTO_UDPLITE,
        IPPROTO_SCTP,
        IPPROTO_ICMP,
        IPPROTO_ICMPV6,
        IPPROTO_GRE,
    }
)

_PORTS: Final = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Tuple:
    """A readable conntrack tuple (for dumps, tests and sync records; not the hot path).

    ``sport``/``dport`` are the ports; for ICMP ``sport`` is the id and ``dport`` is
    ``type << 8 | code``; for GRE they are the keys (call ids); 0 where there are none.
    """

    l3: int  # 4 or 6
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0

    @property
    def key(self) -> bytes:
        return make_key(self.proto, self.src, self.dst, self.sport, self.dport)

    def src_text(self) -> str:
        return socket.inet_ntop(socket.AF_INET if self.l3 == 4 else socket.AF_INET6, self.src)

    def dst_text(self) -> str:
        return socket.inet_ntop(socket.AF_INET if self.l3 == 4 else socket.AF_INET6, self.dst)


def make_key(proto: int, src: bytes, dst: bytes, sport: int = 0, dport: int = 0) -> bytes:
    """Packed key of a tuple; see the module docstring for the layout."""
    if proto == IPPROTO_TCP:
        return src + dst + _PORTS.pack(sport, dport)
    if proto in PORTED_PROTOS:
        return bytes((proto,)) + src + dst + _PORTS.pack(sport, dport)
    return bytes((proto,)) + src + dst


def decode_key(key: bytes) -> Tuple:
    """Inverse of make_key."""
    n = len(key)
    if n == 12 or n == 36:
        alen = (n - 4) // 2
        sport, dport = _PORTS.unpack_from(key, 2 * alen)
        return Tuple(
            4 if alen == 4 else 6, IPPROTO_TCP, key[:alen], key[alen : 2 * alen], sport, dport
        )
    proto = key[0]
    if n == 13 or n == 37:
        alen = (n - 5) // 2
        sport, dport = _PORTS.unpack_from(key, 1 + 2 * alen)
        return Tuple(
            4 if alen == 4 else 6,
            proto,
            key[1 : 1 + alen],
            key[1 + alen : 1 + 2 * alen],
            sport,
            dport,
        )
    if n == 9 or n == 33:
        alen = (n - 1) // 2
        return Tuple(4 if alen == 4 else 6, proto, key[1 : 1 + alen], key[1 + alen :])
    raise ValueError(f"not a conntrack key: {key.hex()}")
