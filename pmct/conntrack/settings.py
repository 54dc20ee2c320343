"""Engine tunables: the kernel's per-namespace sysctls and default timeouts.

Rules:
1. Defaults are the kernel's (cited per value). Constants are immutable; every Engine owns its
   own Settings, so two engines in one process (a simulated pair) never share state.
2. Timeouts are seconds (float). The engine never reads a clock: it compares these against the
   ``now`` the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_TCP_TIMEOUTS",
    "Settings",
    "Timeouts",
]

_MIN: Final = 60.0
_HOUR: Final = 3600.0
_DAY: Final = 86400.0

# kernel: nf_conntrack_proto_tcp.c tcp_timeouts[], indexed by TcpState.
DEFAULT_TCP_TIMEOUTS: Final[tuple[float, ...]] = (
    0.0,  # NONE (never used as a timeout)
    2 * _MIN,  # SYN_SENT
    60.0,  # SYN_RECV
    5 * _DAY,  # ESTABLISHED
    2 * _MIN,  # FIN_WAIT
    60.0,  # CLOSE_WAIT
    30.0,  # LAST_ACK
    2 * _MIN,  # TIME_WAIT
    10.0,  # CLOSE
    2 * _MIN,  # SYN_SENT2
    0.0,  # MAX (placeholder, keeps indices aligned)
    0.0,  # IGNORE (placeholder)
    5 * _MIN,  # RETRANS: RFC 1122 R2 >= 100 s; Linux gives up after 15 retransmissions
    5 * _MIN,  # UNACK
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-protocol timeouts in seconds (kernel defaults; names follow the sysctls)."""

    tcp: tuple[float, ...] = DEFAULT_TCP_TIMEOUTS
    udp_unreplied: float = 30.0  # nf_conntrack_udp_timeout
    udp_replied: float = 120.0  # nf_conntrack_udp_timeout_stream
    udp_stream_after: float = 2.0  # nf_conntrack_proto_udp.c: stream_ts = 2 * HZ
    icmp: float = 30.0  # nf_conntrack_icmp_timeout
    icmpv6: float = 30.0  # nf_conntrack_icmpv6_timeout
    generic: float = 600.0  # nf_conntrack_generic_timeout
    gre_unreplied: float = 30.0  # nf_conntrack_proto_gre.c GRE_CT_UNREPLIED
    gre_replied: float = 180.0  # GRE_CT_REPLIED


@dataclass(frozen=True, slots=True)
class Settings:
    """The knobs the kernel exposes as net.netfilter.nf_conntrack_* sysctls."""

    tcp_loose: bool = True  # nf_conntrack_tcp_loose: pick up connections mid-stream
    tcp_be_liberal: bool = False  # nf_conntrack_tcp_be_liberal: only RSTs out of window are invalid
    tcp_ignore_invalid_rst: bool = False  # nf_conntrack_tcp_ignore_invalid_rst
    tcp_max_retrans: int = 3  # nf_conntrack_tcp_max_retrans
    checksum: bool = False  # nf_conntrack_checksum (kernel default 1; see docs: offloads)
    max_entries: int = 262144  # nf_conntrack_max
    timeouts: Timeouts = field(default_factory=Timeouts)
