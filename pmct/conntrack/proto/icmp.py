"""ICMP and ICMPv6 tracking (kernel nf_conntrack_proto_icmp.c / _icmpv6.c).

Queries (echo, timestamp, info, address mask; ICMPv6 echo and node information) create
entries; their replies are ESTABLISHED. Entries are not deleted after the reply (kernel:
"Do not immediately delete the connection after the first successful reply to avoid
excessive conntrackd traffic"), they just time out after 30 s.

Errors (the ``*_ERROR_TYPES`` below) never create entries: the core looks up the datagram
they quote and calls them RELATED (kernel nf_conntrack_inet_error()). ICMPv6 neighbour
discovery and MLD are UNTRACKED (kernel noct_valid_new[]).

DEVIATION(paper): the 2004 paper deleted ICMP entries after the reply; we follow today's
kernel. Pinned by tests/unit/conntrack/test_core.py::test_icmp_echo_entry_survives_reply.
"""

from __future__ import annotations

from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.settings import Settings

__all__ = [
    "ICMPV6_ERROR_MAX",
    "ICMPV6_INVERSE",
    "ICMPV6_REDIRECT",
    "ICMPV6_UNTRACKED_TYPES",
    "ICMPV6_VALID_NEW",
    "ICMP_ERROR_TYPES",
    "ICMP_INVERSE",
    "ICMP_VALID_NEW",
    "NR_ICMP_TYPES",
    "packet",
    "packet_v6",
]

NR_ICMP_TYPES: Final = 18  # kernel: types above are "a mystery" (RFC 1122 3.2.2)

# kernel icmp_is_err(): dest unreachable, source quench, redirect, time exceeded, param problem
ICMP_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})

# kernel invmap[] (stored there as value+1; here as a plain mapping)
ICMP_INVERSE: Final = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
ICMP_VALID_NEW: Final = frozenset({8, 13, 15, 17})

ICMPV6_ERROR_MAX: Final = 127  # types < 128 are errors
ICMPV6_REDIRECT: Final = 137
ICMPV6_INVERSE: Final = {128: 129, 129: 128, 139: 140, 140: 139}
ICMPV6_VALID_NEW: Final = frozenset({128, 139})
# kernel noct_valid_new[]: MLD query/report/done, RS, RA, NS, NA, MLDv2 report, MRD adv/sol
ICMPV6_UNTRACKED_TYPES: Final = frozenset({130, 131, 132, 133, 134, 135, 136, 143, 151, 152})


def packet(conn: Conn, icmp_type: int, now: float, s: Settings) -> str | None:
    """kernel nf_conntrack_icmp_packet(); ``icmp_type`` is the entry's original type."""
    if icmp_type not in ICMP_VALID_NEW:
        return "icmp: can't create new conn with this type"
    conn.expires = now + s.timeouts.icmp
    return None


def packet_v6(conn: Conn, icmp_type: int, now: float, s: Settings) -> str | None:
    """kernel nf_conntrack_icmpv6_packet(): the type check applies to new entries only."""
    if icmp_type not in ICMPV6_VALID_NEW and not conn.status & 8:  # 8 = CONFIRMED
        return "icmpv6: can't create new conn with this type"
    conn.expires = now + s.timeouts.icmpv6
    return None
