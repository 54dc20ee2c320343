"""Generic tracking by protocol number, and GRE (kernel nf_conntrack_core.c generic_packet(),
nf_conntrack_proto_gre.c).

Any L4 protocol without its own tracker gets an entry keyed by addresses and protocol number
with the generic timeout (600 s). GRE is tracked like UDP: unreplied 30 s, replied 180 s and
ASSURED. DCCP has no tracker in current kernels (removed upstream), so it is generic here too.
"""

from __future__ import annotations

from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.settings import Settings

__all__ = ["gre_packet", "packet"]

_SEEN_REPLY: Final = int(Status.SEEN_REPLY)
_ASSURED: Final = int(Status.ASSURED)


def packet(conn: Conn, now: float, s: Settings) -> str | None:
    conn.expires = now + s.timeouts.generic
    return None


def gre_packet(conn: Conn, now: float, s: Settings) -> str | None:
    """kernel nf_conntrack_gre_packet()."""
    t = s.timeouts
    if conn.status & _SEEN_REPLY:
        conn.expires = now + t.gre_replied
        conn.status |= _ASSURED
    else:
        conn.expires = now + t.gre_unreplied
    return None
