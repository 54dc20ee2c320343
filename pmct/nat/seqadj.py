"""TCP sequence number adjustment after a NAT helper changed a payload's length
(kernel net/netfilter/nf_conntrack_seqadj.c, nf_nat_helper.c mangle_contents()).

Why: when the FTP NAT helper rewrites "PORT 10,0,0,2,195,80" into "PORT 198,51,100,1,195,80",
the segment grows by 6 bytes. The receiver then counts 6 more bytes than the sender sent, so
every later sequence number of that direction must be shifted up by 6 on the way through, and
every acknowledgement coming back shifted down by 6 -- for the rest of the connection.

The state is the kernel's ``struct nf_ct_seqadj``, per direction: ``correction_pos`` (the
sequence number of the segment that changed length last), ``offset_before`` (the shift for
bytes up to and including that segment) and ``offset_after`` (the shift for bytes after it).
Two offsets are needed because a retransmission of the mangled segment itself, or of an
earlier one, must keep the old shift (``nf_ct_seq_adjust()``: ``after(seq, correction_pos)``).
Only the last change is remembered: a retransmission from before the second-to-last change
gets the wrong offset, in the kernel as here.

Storage: ``conn.extra["seqadj"]``, a list of six ints ``[pos0, before0, after0, pos1, before1,
after1]`` (index 0 = original direction), plus the kernel's ``SEQ_ADJUST`` status bit. The list
exists only on entries a NAT helper changed (FTP control connections through NAT), so it costs
nothing elsewhere; the tracker (pmct/conntrack/proto/tcp.py, ``seq_offset``) tests the status
bit once per packet in its window check, like the kernel's nf_ct_seq_offset() call in
tcp_in_window().

Where each piece runs, as in the kernel:

* ``seqadj_set()`` -- kernel nf_ct_seqadj_set(), called by the NAT helper (pmct/nat/ftp.py)
  when it decides a mangle. It runs in the engine on every node (active and passive alike), so
  both nodes hold the same offsets.
* ``seq_offset()`` -- kernel nf_ct_seq_offset(); the tracker subtracts the receiver's offset
  from ack and SACK (tcp_in_window: ``receiver_offset = nf_ct_seq_offset(ct, !dir, ack - 1)``).
* ``seq_adjust()`` -- kernel nf_ct_seq_adjust() with nf_ct_sack_adjust(): rewrites seq, ack and
  the SACK blocks of a datagram with RFC 1624 incremental checksum updates. Only the active node
  rewrites (it runs on the packet the node forwards).

Pure: no I/O, no clock; nothing raises on bad input (a datagram that is not TCP is returned
unchanged; malformed TCP options make ``seq_adjust()`` return None, the kernel's NF_DROP).
"""

from __future__ import annotations

import struct
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.proto.tcp import SEQADJ_KEY, seq_offset
from pmct.nat.rewrite import _adjust, _locate
from pmct.serial import MASK32, after, before

__all__ = [
    "SEQADJ_KEY",
    "get_seqadj",
    "seq_adjust",
    "seq_adjust_tcp",
    "seq_offset",
    "seqadj_set",
]

_SEQ_ADJUST: Final = int(Status.SEQ_ADJUST)
_M: Final = 0xFFFF
_SEQ_ACK: Final = struct.Struct("!II")
TCPOPT_EOL: Final = 0
TCPOPT_NOP: Final = 1
TCPOPT_SACK: Final = 5
TCPOLEN_SACK_PERBLOCK: Final = 8


def get_seqadj(conn: Conn) -> list[int] | None:
    """The entry's ``[pos0, before0, after0, pos1, before1, after1]``, or None."""
    extra = conn.extra
    if extra is None:
        return None
    adj: list[int] | None = extra.get(SEQADJ_KEY)
    return adj


def _s32(v: int) -> int:
    """The kernel's offsets are s32: wrap like it does (never reached in practice)."""
    v &= MASK32
    return v - (1 << 32) if v & 0x80000000 else v


def seqadj_set(conn: Conn, d: int, seq: int, off: int) -> None:
    """kernel nf_ct_seqadj_set(): the segment of direction ``d`` starting at ``seq`` changed
    length by ``off`` bytes. A repeated call for the same segment (a retransmission mangled
    again) changes nothing: the position only moves forward."""
    if off == 0:
        return
    conn.status |= _SEQ_ADJUST
    adj = get_seqadj(conn)
    if adj is None:
        adj = [0, 0, 0, 0, 0, 0]
        extra = conn.extra
        if extra is None:
            conn.extra = {SEQADJ_KEY: adj}
        else:
            extra[SEQADJ_KEY] = adj
    i = 3 * d
    if adj[i + 1] == adj[i + 2] or before(adj[i], seq):
        adj[i] = seq & MASK32
        adj[i + 1] = adj[i + 2]
        adj[i + 2] = _s32(adj[i + 2] + off)


def _sack_blocks(
    buf: bytearray, start: int, end: int, pos: int, off_before: int, off_after: int
) -> int:
    """kernel nf_ct_sack_block_adjust(): rewrite the blocks in ``buf[start:end]``; returns the
    checksum delta (mod 0xFFFF)."""
    delta = 0
    while start < end:
        for p in (start, start + 4):
            old = int.from_bytes(buf[p : p + 4], "big")
            if after(old - off_before, pos):
                new = (old - off_after) & MASK32
            else:
                new = (old - off_before) & MASK32
            buf[p : p + 4] = new.to_bytes(4, "big")
            delta += new - old
        start += TCPOLEN_SACK_PERBLOCK
    return delta % _M


def _sack_adjust(buf: bytearray, l4: int, doff: int, other: list[int]) -> tuple[bool, int]:
    """kernel nf_ct_sack_adjust(): (ok, checksum delta). ``ok`` False: a partial option."""
    optoff = l4 + 20
    optend = l4 + doff
    delta = 0
    while optoff < optend:
        kind = buf[optoff]
        if kind == TCPOPT_EOL:
            return True, delta
        if kind == TCPOPT_NOP:
            optoff += 1
            continue
        # "no partial options"
        if optoff + 1 == optend or optoff + buf[optoff + 1] > optend or buf[optoff + 1] < 2:
            return False, delta
        olen = buf[optoff + 1]
        if (
            kind == TCPOPT_SACK
            and olen >= 2 + TCPOLEN_SACK_PERBLOCK
            and (olen - 2) % TCPOLEN_SACK_PERBLOCK == 0
        ):
            delta += _sack_blocks(buf, optoff + 2, optoff + olen, other[0], other[1], other[2])
        optoff += olen
    return True, delta % _M


def seq_adjust_tcp(buf: bytearray, l4: int, end: int, d: int, adj: list[int]) -> bool:
    """kernel nf_ct_seq_adjust() on the TCP header at ``buf[l4:]`` (in place, checksum
    included). False: the options are malformed (the kernel drops the packet)."""
    if end - l4 < 20:
        return False
    doff = (buf[l4 + 12] >> 4) << 2
    if doff < 20 or l4 + doff > end:
        return False
    i = 3 * d
    j = 3 - i
    seq, ack = _SEQ_ACK.unpack_from(buf, l4 + 4)
    # after(seq, this_way->correction_pos) ? offset_after : offset_before
    seqoff = adj[i + 2] if ((adj[i] - seq) & MASK32) >= 0x80000000 else adj[i + 1]
    # after(ack - other_way->offset_before, other_way->correction_pos)
    if ((adj[j] - ack + adj[j + 1]) & MASK32) >= 0x80000000:
        ackoff = adj[j + 2]
    else:
        ackoff = adj[j + 1]
    newseq = (seq + seqoff) & MASK32
    newack = (ack - ackoff) & MASK32
    _SEQ_ACK.pack_into(buf, l4 + 4, newseq, newack)
    delta = (newseq - seq + newack - ack) % _M
    ok = True
    if doff > 20:
        ok, sdelta = _sack_adjust(buf, l4, doff, adj[j : j + 3])
        delta = (delta + sdelta) % _M
    if delta:
        c = _adjust((buf[l4 + 16] << 8) | buf[l4 + 17], delta)
        buf[l4 + 16] = c >> 8
        buf[l4 + 17] = c & 0xFF
    return ok


def seq_adjust(data: bytes, d: int, conn: Conn) -> bytes | None:
    """The datagram ``data`` (a TCP segment of ``conn`` in direction ``d``) with seq, ack and
    SACK blocks shifted by the entry's offsets (kernel nf_ct_seq_adjust(), run by nf_confirm()
    for entries with IPS_SEQ_ADJUST). ``data`` itself when there is nothing to do; None when the
    kernel would drop the packet (malformed TCP options)."""
    if not conn.status & _SEQ_ADJUST:
        return data
    adj = get_seqadj(conn)
    if adj is None:  # the bit came from the peer without the offsets: nothing known to shift
        return data
    buf = bytearray(data)
    l3, proto, l4, end = _locate(buf)
    if l3 == 0 or proto != 6 or l4 < 0:
        return data
    if not seq_adjust_tcp(buf, l4, end, d, adj):
        return None
    return bytes(buf)


# re-exported for readers of this module: the tracker's receiver offset (kernel
# nf_ct_seq_offset()) lives in the compiled tracker, which must not import pmct.nat
_ = seq_offset
