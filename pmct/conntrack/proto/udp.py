"""UDP and UDP-Lite tracking (kernel nf_conntrack_proto_udp.c).

UDP has no state: an entry is "unreplied" (30 s) until a reply is seen, then, once the flow
has lived past ``stream_ts`` (2 s after creation), it is a stream: 120 s and ASSURED.
UDP-Lite skips the 2-second rule (kernel nf_conntrack_udplite_packet()).

Subtlety kept from the kernel: SEEN_REPLY is set by the core *after* this function returns,
so the first reply packet still refreshes with the unreplied timeout.
"""

from __future__ import annotations

import struct
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.settings import Settings

__all__ = ["error", "error_lite", "packet", "packet_lite"]

_UDPHDR: Final = struct.Struct("!4xHH")  # len, check
_CONFIRMED: Final = int(Status.CONFIRMED)
_SEEN_REPLY: Final = int(Status.SEEN_REPLY)
_ASSURED: Final = int(Status.ASSURED)


def error(data: bytes, l4off: int, l4len: int) -> str | None:
    """kernel udp_error(): header present and its length field consistent."""
    if l4len < 8 or len(data) < l4off + 8:
        return "short packet"
    ulen, _check = _UDPHDR.unpack_from(data, l4off)
    if ulen > l4len or ulen < 8:
        return "truncated/malformed packet"
    return None


def error_lite(data: bytes, l4off: int, l4len: int) -> str | None:
    """kernel udplite_error(): checksum coverage in range and checksum present."""
    if l4len < 8 or len(data) < l4off + 8:
        return "short packet"
    cscov, check = _UDPHDR.unpack_from(data, l4off)
    if cscov != 0 and (cscov < 8 or cscov > l4len):
        return "invalid checksum coverage"
    if check == 0:
        return "checksum missing"
    return None


def packet(conn: Conn, now: float, s: Settings) -> str | None:
    """kernel nf_conntrack_udp_packet() after udp_error()."""
    status = conn.status
    t = s.timeouts
    if not status & _CONFIRMED:
        conn.stream_ts = now + t.udp_stream_after
    if status & _SEEN_REPLY:
        if now > conn.stream_ts:
            conn.expires = now + t.udp_replied
            if not status & _ASSURED:
                conn.status = status | _ASSURED
        else:
            conn.expires = now + t.udp_unreplied
    else:
        conn.expires = now + t.udp_unreplied
    return None


def packet_lite(conn: Conn, now: float, s: Settings) -> str | None:
    """kernel nf_conntrack_udplite_packet(): replied flows are streams at once."""
    t = s.timeouts
    if conn.status & _SEEN_REPLY:
        conn.expires = now + t.udp_replied
        conn.status |= _ASSURED
    else:
        conn.expires = now + t.udp_unreplied
    return None
