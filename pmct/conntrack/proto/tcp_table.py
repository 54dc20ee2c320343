"""The TCP state machine as data: the kernel's transition table, flag classes and valid flags.

Source: Linux net/netfilter/nf_conntrack_proto_tcp.c, ``tcp_conntracks[2][6][TCP_CONNTRACK_MAX]``,
``get_conntrack_index()`` and ``tcp_valid_flags[]``.

Rules:
1. ``TCP_CONNTRACKS[dir][flag_index][old_state]`` has the kernel's axes and the kernel's
   column order (sNO sSS sSR sES sFW sCW sLA sTW sCL sS2), so it can be diffed against the C
   table line by line. Cells are plain ints (TcpState values); sIV (= TcpState.MAX) means the
   packet is invalid in that state, sIG (= TcpState.IGNORE) that it may be valid for the two
   endpoints while our entry is out of sync, so it is let through without changing anything.
2. Everything that is not a table lookup (reopen, resync after an ignored SYN, RST checks,
   window tracking) lives in tcp.py, next to the kernel function it follows.
3. No I/O, no state: this module is constants only.

The model behind the table (the kernel's own explanation, in short): the firewall is a man in
the middle. It sees every segment, but a segment may still be lost after it. The table guesses
the state of the *sender* of each segment; whether the segment is in window is a separate
question answered by tcp.py. The states mean:

- NONE: nothing seen yet;  SYN_SENT: a SYN (without ACK) seen;
- SYN_SENT2: a SYN seen from the reply side too (simultaneous open);
- SYN_RECV: a SYN/ACK seen;  ESTABLISHED: the ACK of the handshake seen;
- FIN_WAIT: a FIN seen;  CLOSE_WAIT: the ACK of that FIN;  LAST_ACK: a FIN from both sides;
- TIME_WAIT: the last ACK seen;  CLOSE: a RST seen.
"""

from __future__ import annotations

from typing import Final

from pmct.conntrack.constants import TcpState

__all__ = [
    "FLAG_INDEX_NAMES",
    "TCP_ACK_SET",
    "TCP_CONNTRACKS",
    "TCP_FIN_SET",
    "TCP_NONE_SET",
    "TCP_RST_SET",
    "TCP_SYNACK_SET",
    "TCP_SYN_SET",
    "TCP_VALID_FLAGS",
    "get_conntrack_index",
    "valid_flags",
]

# TCP header flag bits (byte 13 of the header; kernel TCPHDR_*).
TH_FIN: Final = 0x01
TH_SYN: Final = 0x02
TH_RST: Final = 0x04
TH_PSH: Final = 0x08
TH_ACK: Final = 0x10
TH_URG: Final = 0x20
TH_ECE: Final = 0x40
TH_CWR: Final = 0x80

# Flag classes, the middle axis of the table (kernel enum tcp_bit_set, same numbers).
TCP_SYN_SET: Final = 0
TCP_SYNACK_SET: Final = 1
TCP_FIN_SET: Final = 2
TCP_ACK_SET: Final = 3
TCP_RST_SET: Final = 4
TCP_NONE_SET: Final = 5

FLAG_INDEX_NAMES: Final = ("SYN", "SYNACK", "FIN", "ACK", "RST", "NONE")

# Short names for the cells, as in the kernel source.
sNO: Final = int(TcpState.NONE)
sSS: Final = int(TcpState.SYN_SENT)
sSR: Final = int(TcpState.SYN_RECV)
sES: Final = int(TcpState.ESTABLISHED)
sFW: Final = int(TcpState.FIN_WAIT)
sCW: Final = int(TcpState.CLOSE_WAIT)
sLA: Final = int(TcpState.LAST_ACK)
sTW: Final = int(TcpState.TIME_WAIT)
sCL: Final = int(TcpState.CLOSE)
sS2: Final = int(TcpState.SYN_SENT2)
sIV: Final = int(TcpState.MAX)
sIG: Final = int(TcpState.IGNORE)


def _classify(flags: int) -> int:
    """kernel get_conntrack_index(): RST wins, then SYN (with or without ACK), FIN, ACK."""
    if flags & TH_RST:
        return TCP_RST_SET
    if flags & TH_SYN:
        return TCP_SYNACK_SET if flags & TH_ACK else TCP_SYN_SET
    if flags & TH_FIN:
        return TCP_FIN_SET
    if flags & TH_ACK:
        return TCP_ACK_SET
    return TCP_NONE_SET


# The class of every combination of the 8 flag bits, so the hot path does one subscript.
FLAG_INDEX: Final[tuple[int, ...]] = tuple(_classify(f) for f in range(256))


def get_conntrack_index(flags: int) -> int:
    """The flag class (TCP_*_SET) of a segment with TCP flag byte ``flags``."""
    return FLAG_INDEX[flags & 0xFF]


# fmt: off
TCP_CONNTRACKS: Final[tuple[tuple[tuple[int, ...], ...], ...]] = (
    (
        # ORIGINAL
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # syn
        (        sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),
        # sNO->sSS  a SYN starts a new connection
        # sSS->sSS  the client sent its SYN again
        # sS2->sS2  a SYN retransmitted late, during a simultaneous open
        # sSR, sES, sFW, sCW, sLA -> sIG  a SYN inside a live connection is an error the
        #           receiver answers with a RST, unless our entry is stale and the two ends
        #           really started over; let it pass and watch for the answer
        # sTW->sSS  RFC 1122 allows reopening straight out of TIME_WAIT
        # sCL->sSS  likewise after a reset
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # synack
        (        sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),
        # sNO->sIV  too late to learn anything from it
        # sSS->sIV  the side that sent the SYN cannot also send the SYN/ACK
        # sS2->sSR  the original side answers the reply side's SYN (simultaneous open)
        # sSR->sSR  that SYN/ACK again, retransmitted late
        # sES, sFW, sCW, sLA, sTW, sCL -> sIV  a client has no business sending SYN/ACKs
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # fin
        (        sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
        # sNO->sIV  too late to learn anything from it
        # sSS->sIV  no FIN before the SYN/ACK came back; we insist on the answer first
        # sS2->sIV  same, in a simultaneous open
        # sSR->sFW  this side starts closing
        # sES->sFW  likewise
        # sFW->sLA  FINs have now gone both ways, only the last ACK is missing (or it is the
        #           first FIN sent again)
        # sCW->sLA  the second FIN
        # sLA->sLA  a FIN retransmitted: stay
        # sTW->sTW  stay
        # sCL->sCL  stay
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # ack
        (        sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),
        # sNO->sES  a bare ACK of an unknown connection: assume it is established (pickup)
        # sSS->sIV  the client cannot ACK before any SYN/ACK was seen
        # sS2->sIV  same, in a simultaneous open
        # sSR->sES  the third packet of the handshake
        # sES->sES  the normal case
        # sFW->sCW  the FIN got its ACK
        # sCW->sCW  stay
        # sLA->sTW  the last ACK (unless it is an RFC 5961 challenge ACK, see tcp.py)
        # sTW->sTW  the last ACK again: stay
        # sCL->sCL  stay
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # rst
        (        sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        # sNO->sIV  a RST cannot start anything; every other state is closed by a RST
        # none
        (        sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),
        # a segment with none of SYN/FIN/ACK/RST is never valid
    ),
    (
        # REPLY
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # syn
        (        sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),
        # sNO->sIV  cannot happen: a reply direction exists only after an original packet
        # sSS->sS2  both ends sent a SYN: simultaneous open
        # sS2->sS2  that SYN again
        # sSR, sES, sFW, sCW, sLA -> sIV  the server may not send a bare SYN any more
        # sTW->sSS  a reopen from TIME_WAIT in which the server now plays the client
        # sCL->sIV  not after a reset
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # synack
        (        sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),
        # sNO->sIV  cannot happen
        # sSS->sSR  the normal answer to the SYN
        # sS2->sSR  answer in a simultaneous open
        # sSR->sIG  the SYN/ACK sent again: let it through, learn nothing
        # sES->sIG  perhaps a very late retransmission
        # sFW, sCW, sLA, sTW, sCL -> sIG  perhaps the answer to a SYN we ignored; tcp.py
        #           resynchronises when its ACK matches that SYN
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # fin
        (        sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
        # sNO->sIV  cannot happen
        # sSS->sIV  the server cannot close before it answered the SYN
        # sS2->sIV  same, in a simultaneous open
        # sSR->sFW  the server starts closing
        # sES->sFW  likewise
        # sFW->sLA  FINs have now gone both ways
        # sCW->sLA  the second FIN
        # sLA->sLA  a FIN retransmitted
        # sTW->sTW  stay
        # sCL->sCL  stay
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # ack
        (        sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),
        # sNO->sIV  cannot happen
        # sSS->sIG  an ACK answering a SYN: maybe a half-open connection on the server, or
        #           a challenge ACK; let it through and watch for the client's RST
        # sS2->sIG  same, in a simultaneous open
        # sSR->sSR  maybe the answer to a SYN sent again late: stay
        # sES->sES  the normal case
        # sFW->sCW  the FIN got its ACK
        # sCW->sCW  stay
        # sLA->sTW  the last ACK (unless it is an RFC 5961 challenge ACK, see tcp.py)
        # sTW->sTW  the last ACK again: stay
        # sCL->sCL  stay
        #        sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        # rst
        (        sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        # sNO->sIV  cannot happen; every other state is closed by a RST
        # none
        (        sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),
        # a segment with none of SYN/FIN/ACK/RST is never valid
    ),
)
# fmt: on


# Valid combinations of FIN, SYN, RST, ACK and URG (kernel tcp_valid_flags[]). PSH, ECE and
# CWR are always allowed: they are masked off before the lookup (VALID_FLAGS_MASK).
VALID_FLAGS_MASK: Final = TH_FIN | TH_SYN | TH_RST | TH_ACK | TH_URG

# fmt: off
TCP_VALID_FLAGS: Final[frozenset[int]] = frozenset({
    TH_SYN,
    TH_SYN | TH_URG,
    TH_SYN | TH_ACK,
    TH_RST,
    TH_RST | TH_ACK,
    TH_FIN | TH_ACK,
    TH_FIN | TH_ACK | TH_URG,
    TH_ACK,
    TH_ACK | TH_URG,
})
# fmt: on

# Per flag byte: is the combination valid? One subscript on the hot path.
VALID_BY_FLAG_BYTE: Final[tuple[bool, ...]] = tuple(
    (f & VALID_FLAGS_MASK) in TCP_VALID_FLAGS for f in range(256)
)


def valid_flags(flags: int) -> bool:
    """True when the TCP flag byte ``flags`` is a combination the kernel accepts."""
    return VALID_BY_FLAG_BYTE[flags & 0xFF]
