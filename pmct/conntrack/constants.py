"""Numbers shared by the whole engine, pinned to the kernel's values where the kernel has them.

Rules:
1. Values that the kernel defines (status bits, TCP state numbers, ctinfo) keep the kernel's
   numbers, so a dump, a sync record or a test can be compared with the kernel's headers.
2. The hot path compares plain ints; the IntEnums exist for names, printing and typing.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final

__all__ = [
    "CTSTATE_NAMES",
    "DIR_NAMES",
    "TCP_STATE_NAMES",
    "CtState",
    "Dir",
    "Status",
    "TcpState",
]


class CtState(IntEnum):
    """What nft's ``ct state`` says of a packet, plus HELD for a fragment still in reassembly."""

    INVALID = 0
    NEW = 1
    ESTABLISHED = 2
    RELATED = 3
    UNTRACKED = 4
    HELD = 5  # a fragment kept by the defragmenter; no verdict yet (oracle: "frag")
    DROPPED = 6  # discarded before conntrack, as ip_rcv()/ipv6_rcv() would (oracle: "dropped")


CTSTATE_NAMES: Final = ("invalid", "new", "established", "related", "untracked", "frag", "dropped")


class Dir(IntEnum):
    """Direction of a packet relative to its connection (kernel ip_conntrack_dir)."""

    ORIGINAL = 0
    REPLY = 1


DIR_NAMES: Final = ("original", "reply")


class Status(IntFlag):
    """Connection status bits, same numbers as the kernel's enum ip_conntrack_status."""

    EXPECTED = 1 << 0
    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5
    SEQ_ADJUST = 1 << 6
    SRC_NAT_DONE = 1 << 7
    DST_NAT_DONE = 1 << 8
    DYING = 1 << 9
    FIXED_TIMEOUT = 1 << 10
    TEMPLATE = 1 << 11
    UNTRACKED = 1 << 12
    HELPER = 1 << 13
    OFFLOAD = 1 << 14


class TcpState(IntEnum):
    """TCP conntrack states, kernel enum tcp_conntrack (same numbers, same order)."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9
    MAX = 10  # also "sIV": invalid transition
    IGNORE = 11  # "sIG"
    RETRANS = 12  # timeout slots only
    UNACK = 13
    TIMEOUT_MAX = 14


TCP_STATE_NAMES: Final = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)
