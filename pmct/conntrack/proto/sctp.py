"""SCTP tracking (kernel net/netfilter/nf_conntrack_proto_sctp.c, current mainline).

The kernel tracks an SCTP association as a middlebox sees it: a state machine driven by the
control chunks (INIT, INIT_ACK, COOKIE_ECHO, COOKIE_ACK, SHUTDOWN..., ABORT, HEARTBEAT...) in
each direction, plus the two verification tags (vtags), which every later packet must carry
(RFC 4960 §8.5). DATA and SACK never change the state; they only have to carry the right vtag.

What this module transcribes, function by function:

- ``error()``      = sctp_error() (header present, CRC32c when the caller says so) followed by
  do_basic_checks() (the chunk walk: no zero-length chunk, COOKIE_ECHO / COOKIE_ACK only as the
  first chunk, INIT / INIT_ACK / SHUTDOWN_COMPLETE only as the only chunk, at least one chunk).
  The kernel runs these after the lookup, but they return before touching the entry, so doing
  them before the lookup gives the same verdicts and the same entries.
- ``packet()``     = nf_conntrack_sctp_packet(), including the chunk walk again (it needs the
  bitmap of chunk types), the out-of-the-blue rules and sctp_new() for an unconfirmed entry,
  the per-chunk vtag special cases of §8.5.1, the state table and the timeout refresh.
- ``can_early_drop()`` = sctp_can_early_drop().

Things worth knowing before reading the code:

- A fresh INIT leaves the entry in CLOSED, not COOKIE_WAIT (table row "init", column sNO);
  the INIT_ACK in the reply direction moves it to COOKIE_WAIT.
- An INIT retransmitted while still CLOSED on a confirmed entry is accepted but does *not*
  refresh the timeout ("port reuse by client or NAT middlebox cannot keep entry alive
  indefinitely"): that is the ``IGNORE`` outcome. A HEARTBEAT with a vtag the entry does not
  know is also accepted without refresh (it may belong to a restarted association; a matching
  HEARTBEAT_ACK from the other side then adopts the new vtag).
- ASSURED is set the first time the state *changes to* ESTABLISHED.
- The kernel's SCTP_CONNTRACK_HEARTBEAT_ACKED (9) is "no longer used" but keeps its number, so
  SCTP_CONNTRACK_MAX (= the table's sIV) is 10. Its table column is all sNO (the C initialiser
  leaves it zero) and its timeout is 0.

Per-connection data lives in ``conn.extra["sctp"]``: a 6-element list
``[vtag_orig, vtag_reply, init_orig, init_reply, flags, last_dir]`` (kernel struct ip_ct_sctp:
vtag[2], init[2], flags, last_dir). Index ``d`` is the vtag of direction ``d`` and
``_INIT + d`` its init flag. SCTP is rare, so a list per entry costs nothing that matters.

vtags are compared as plain host ints; the kernel compares the raw big-endian words, which is
the same thing for equality and zero tests (the only tests it makes).
"""

from __future__ import annotations

import struct
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.proto.base import IGNORE, Outcome
from pmct.conntrack.settings import Settings

__all__ = [
    "DEFAULT_SCTP_TIMEOUTS",
    "EXTRA_KEY",
    "SCTP_CONNTRACKS",
    "SCTP_CONNTRACK_CLOSED",
    "SCTP_CONNTRACK_COOKIE_ECHOED",
    "SCTP_CONNTRACK_COOKIE_WAIT",
    "SCTP_CONNTRACK_ESTABLISHED",
    "SCTP_CONNTRACK_HEARTBEAT_ACKED",
    "SCTP_CONNTRACK_HEARTBEAT_SENT",
    "SCTP_CONNTRACK_MAX",
    "SCTP_CONNTRACK_NONE",
    "SCTP_CONNTRACK_SHUTDOWN_ACK_SENT",
    "SCTP_CONNTRACK_SHUTDOWN_RECD",
    "SCTP_CONNTRACK_SHUTDOWN_SENT",
    "SCTP_STATE_NAMES",
    "can_early_drop",
    "crc32c",
    "error",
    "packet",
]

# --- states: kernel include/uapi/linux/netfilter/nf_conntrack_sctp.h enum sctp_conntrack -----
SCTP_CONNTRACK_NONE: Final = 0
SCTP_CONNTRACK_CLOSED: Final = 1
SCTP_CONNTRACK_COOKIE_WAIT: Final = 2
SCTP_CONNTRACK_COOKIE_ECHOED: Final = 3
SCTP_CONNTRACK_ESTABLISHED: Final = 4
SCTP_CONNTRACK_SHUTDOWN_SENT: Final = 5
SCTP_CONNTRACK_SHUTDOWN_RECD: Final = 6
SCTP_CONNTRACK_SHUTDOWN_ACK_SENT: Final = 7
SCTP_CONNTRACK_HEARTBEAT_SENT: Final = 8
SCTP_CONNTRACK_HEARTBEAT_ACKED: Final = 9  # "no longer used"; the number is kept
SCTP_CONNTRACK_MAX: Final = 10  # also the table's sIV (invalid transition)

# kernel sctp_conntrack_names[] (what conntrack -L prints); the kernel has no name for 9.
SCTP_STATE_NAMES: Final = (
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
    "HEARTBEAT_ACKED",
)

# kernel sctp_timeouts[] (seconds), with slot 0 set as nf_conntrack_sctp_init_net() does:
# "timeouts[0] is unused, init it so ->timeouts[0] contains 'new' timeout" (= CLOSED).
DEFAULT_SCTP_TIMEOUTS: Final[tuple[float, ...]] = (
    10.0,  # NONE (copy of CLOSED)
    10.0,  # CLOSED
    3.0,  # COOKIE_WAIT
    3.0,  # COOKIE_ECHOED
    210.0,  # ESTABLISHED
    3.0,  # SHUTDOWN_SENT
    3.0,  # SHUTDOWN_RECD
    3.0,  # SHUTDOWN_ACK_SENT
    30.0,  # HEARTBEAT_SENT
    0.0,  # HEARTBEAT_ACKED (not in the kernel's initialiser: 0; unreachable)
)

# --- chunk types: kernel include/linux/sctp.h enum sctp_cid ---------------------------------
_CID_DATA: Final = 0
_CID_INIT: Final = 1
_CID_INIT_ACK: Final = 2
_CID_HEARTBEAT: Final = 4
_CID_HEARTBEAT_ACK: Final = 5
_CID_ABORT: Final = 6
_CID_SHUTDOWN: Final = 7
_CID_SHUTDOWN_ACK: Final = 8
_CID_ERROR: Final = 9
_CID_COOKIE_ECHO: Final = 10
_CID_COOKIE_ACK: Final = 11
_CID_SHUTDOWN_COMPLETE: Final = 14
_CHUNK_FLAG_T: Final = 0x01  # SCTP_CHUNK_FLAG_T: "vtag is the peer's" (RFC 4960 §8.5.1 B, C)

# Bits of the chunk-type bitmap (kernel: the ``map`` filled by do_basic_checks()).
_B_DATA: Final = 1 << _CID_DATA
_B_INIT: Final = 1 << _CID_INIT
_B_HEARTBEAT: Final = 1 << _CID_HEARTBEAT
_B_HEARTBEAT_ACK: Final = 1 << _CID_HEARTBEAT_ACK
_B_ABORT: Final = 1 << _CID_ABORT
_B_SHUTDOWN_ACK: Final = 1 << _CID_SHUTDOWN_ACK
_B_COOKIE_ECHO: Final = 1 << _CID_COOKIE_ECHO
_B_COOKIE_ACK: Final = 1 << _CID_COOKIE_ACK
_B_SHUTDOWN_COMPLETE: Final = 1 << _CID_SHUTDOWN_COMPLETE
# nf_conntrack_sctp_packet(): out-of-the-blue chunks that may not create an entry (§8.4).
_B_OOTB: Final = _B_ABORT | _B_SHUTDOWN_COMPLETE | _B_COOKIE_ACK
# ... and chunks that exempt a packet from the plain vtag check (§8.5): they get their own.
_B_VTAG_EXEMPT: Final = (
    _B_INIT
    | _B_SHUTDOWN_COMPLETE
    | _B_COOKIE_ECHO
    | _B_ABORT
    | _B_SHUTDOWN_ACK
    | _B_HEARTBEAT
    | _B_HEARTBEAT_ACK
)

# kernel sctp_new_state(): chunk type -> row of the table, -1 = "does not change the state".
_ROW_OF_CHUNK: Final[tuple[int, ...]] = tuple(
    {
        _CID_INIT: 0,
        _CID_INIT_ACK: 1,
        _CID_ABORT: 2,
        _CID_SHUTDOWN: 3,
        _CID_SHUTDOWN_ACK: 4,
        _CID_ERROR: 5,
        _CID_COOKIE_ECHO: 6,
        _CID_COOKIE_ACK: 7,
        _CID_SHUTDOWN_COMPLETE: 8,
        _CID_HEARTBEAT: 9,
        _CID_HEARTBEAT_ACK: 10,
    }.get(t, -1)
    for t in range(256)
)

# --- the state table: kernel sctp_conntracks[dir][row][state], same axes, same order --------
sNO: Final = SCTP_CONNTRACK_NONE
sCL: Final = SCTP_CONNTRACK_CLOSED
sCW: Final = SCTP_CONNTRACK_COOKIE_WAIT
sCE: Final = SCTP_CONNTRACK_COOKIE_ECHOED
sES: Final = SCTP_CONNTRACK_ESTABLISHED
sSS: Final = SCTP_CONNTRACK_SHUTDOWN_SENT
sSR: Final = SCTP_CONNTRACK_SHUTDOWN_RECD
sSA: Final = SCTP_CONNTRACK_SHUTDOWN_ACK_SENT
sHS: Final = SCTP_CONNTRACK_HEARTBEAT_SENT
sIV: Final = SCTP_CONNTRACK_MAX

# The last column (HEARTBEAT_ACKED, unused) is the implicit zero of the C initialiser.
# fmt: off
SCTP_CONNTRACKS: Final[tuple[tuple[tuple[int, ...], ...], ...]] = (
    (
        # ORIGINAL
        #  sNO  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS  (sHA)
        (sCL, sCL, sCW, sCE, sES, sCL, sCL, sSA, sCW, sNO),  # init
        (sCL, sCL, sCW, sCE, sES, sSS, sSR, sSA, sCL, sNO),  # init_ack
        (sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sNO),  # abort
        (sCL, sCL, sCW, sCE, sSS, sSS, sSR, sSA, sCL, sNO),  # shutdown
        (sSA, sCL, sCW, sCE, sES, sSA, sSA, sSA, sSA, sNO),  # shutdown_ack
        (sCL, sCL, sCW, sCE, sES, sSS, sSR, sSA, sCL, sNO),  # error: no stale cookie here
        (sCL, sCL, sCE, sCE, sES, sSS, sSR, sSA, sCL, sNO),  # cookie_echo: 5.2.4 TODO
        (sCL, sCL, sCW, sES, sES, sSS, sSR, sSA, sCL, sNO),  # cookie_ack: not in orig dir
        (sCL, sCL, sCW, sCE, sES, sSS, sSR, sCL, sCL, sNO),  # shutdown_comp
        (sHS, sCL, sCW, sCE, sES, sSS, sSR, sSA, sHS, sNO),  # heartbeat
        (sCL, sCL, sCW, sCE, sES, sSS, sSR, sSA, sHS, sNO),  # heartbeat_ack
    ),
    (
        # REPLY
        #  sNO  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS  (sHA)
        (sIV, sCL, sCW, sCE, sES, sSS, sSR, sSA, sIV, sNO),  # init: INIT in sCL is a TODO
        (sIV, sCW, sCW, sCE, sES, sSS, sSR, sSA, sIV, sNO),  # init_ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sIV, sNO),  # abort
        (sIV, sCL, sCW, sCE, sSR, sSS, sSR, sSA, sIV, sNO),  # shutdown
        (sIV, sCL, sCW, sCE, sES, sSA, sSA, sSA, sIV, sNO),  # shutdown_ack
        (sIV, sCL, sCW, sCL, sES, sSS, sSR, sSA, sIV, sNO),  # error
        (sIV, sCL, sCE, sCE, sES, sSS, sSR, sSA, sIV, sNO),  # cookie_echo: not in reply dir
        (sIV, sCL, sCW, sES, sES, sSS, sSR, sSA, sIV, sNO),  # cookie_ack
        (sIV, sCL, sCW, sCE, sES, sSS, sSR, sCL, sIV, sNO),  # shutdown_comp
        (sIV, sCL, sCW, sCE, sES, sSS, sSR, sSA, sHS, sNO),  # heartbeat
        (sIV, sCL, sCW, sCE, sES, sSS, sSR, sSA, sES, sNO),  # heartbeat_ack
    ),
)
# fmt: on

# --- per-connection data in conn.extra[EXTRA_KEY] -------------------------------------------
EXTRA_KEY: Final = "sctp"
_INIT: Final = 2  # st[_INIT + d]: an INIT was seen from direction d (kernel init[d])
_FLAGS: Final = 4  # SCTP_FLAG_HEARTBEAT_VTAG_FAILED
_LAST_DIR: Final = 5
_HB_VTAG_FAILED: Final = 1

_CONFIRMED: Final = int(Status.CONFIRMED)
_ASSURED: Final = int(Status.ASSURED)

_U32: Final = struct.Struct("!I")
_HDR_LEN: Final = 12  # struct sctphdr: sport, dport, vtag, checksum
_INITHDR_END: Final = 4 + 16  # chunk header + struct sctp_inithdr, from the chunk start

# --- INVALID reasons (stable strings, counted by the core) ----------------------------------
R_SHORT: Final = "short packet"
R_CRC: Final = "bad CRC"
R_CHUNKS: Final = "bad chunk layout"  # do_basic_checks() failed
R_NO_CHUNKS: Final = "no chunks"  # do_basic_checks(): count == 0
R_OOTB: Final = "out of the blue ABORT/SHUTDOWN_COMPLETE/COOKIE_ACK"
R_NEW: Final = "chunk cannot start a connection"  # sctp_new() false
R_VTAG: Final = "verification tag check failed"
R_INIT_VTAG: Final = "INIT with non-zero vtag"  # §8.5.1 (A)
R_ABORT_VTAG: Final = "ABORT vtag mismatch"  # §8.5.1 (B)
R_SHUTCOMP_VTAG: Final = "SHUTDOWN_COMPLETE vtag mismatch"  # §8.5.1 (C)
R_ECHO_VTAG: Final = "COOKIE_ECHO vtag mismatch"  # §8.5.1 (D)
R_HB_VTAG: Final = "HEARTBEAT vtag mismatch"
R_HBACK_VTAG: Final = "HEARTBEAT_ACK vtag mismatch"
R_STATE: Final = "invalid state transition"  # the table said sIV
R_INIT_SHORT: Final = "truncated INIT/INIT_ACK"
R_INITACK_VTAG: Final = "INIT_ACK init tag mismatch"

REASONS: Final = (
    R_SHORT,
    R_CRC,
    R_CHUNKS,
    R_NO_CHUNKS,
    R_OOTB,
    R_NEW,
    R_VTAG,
    R_INIT_VTAG,
    R_ABORT_VTAG,
    R_SHUTCOMP_VTAG,
    R_ECHO_VTAG,
    R_HB_VTAG,
    R_HBACK_VTAG,
    R_STATE,
    R_INIT_SHORT,
    R_INITACK_VTAG,
)


# --- CRC32c (RFC 4960 appendix B; kernel sctp_compute_cksum()) -------------------------------
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(buf: bytes | memoryview, crc: int = 0) -> int:
    """CRC32c (Castagnoli) of ``buf``, continuing from ``crc`` (0 to start)."""
    t = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for b in buf:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_ok(data: bytes, l4off: int, end: int) -> bool:
    # The CRC covers the whole SCTP packet with the checksum field taken as zero; the kernel
    # compares the stored word with cpu_to_le32(crc), i.e. the bytes are little-endian.
    mv = memoryview(data)
    crc = crc32c(mv[l4off : l4off + 8])
    crc = crc32c(b"\0\0\0\0", crc)
    crc = crc32c(mv[l4off + 12 : end], crc)
    return int.from_bytes(data[l4off + 8 : l4off + 12], "little") == crc


# --- the chunk walk: kernel for_each_sctp_chunk() + do_basic_checks() ------------------------
def _chunk_map(data: bytes, l4off: int, end: int) -> int | str:
    """Bitmap of the chunk types present, or the reason the chunk layout is invalid.

    for_each_sctp_chunk() stops when the next 4-byte chunk header does not fit; a chunk whose
    length runs past the end is not an error (only its header is read).
    """
    off = l4off + _HDR_LEN
    count = 0
    flag = False
    cmap = 0
    while off + 4 <= end:
        ctype = data[off]
        clen = (data[off + 2] << 8) | data[off + 3]
        if ctype in (_CID_INIT, _CID_INIT_ACK, _CID_SHUTDOWN_COMPLETE):
            flag = True
        # COOKIE_ACK/ECHO not the first chunk, INIT/INIT_ACK/SHUTDOWN_COMPLETE not the only
        # chunk (flag stays set for every chunk after them), or a zero length.
        if ((ctype in (_CID_COOKIE_ACK, _CID_COOKIE_ECHO) or flag) and count) or not clen:
            return R_CHUNKS
        cmap |= 1 << ctype
        off += (clen + 3) & ~3
        count += 1
    if not count:
        return R_NO_CHUNKS
    return cmap


def _end(data: bytes, l4off: int, l4len: int) -> int:
    # kernel skb->len: the datagram as trimmed to its IP length; never past our buffer.
    end = l4off + l4len
    n = len(data)
    return end if end <= n else n


def error(data: bytes, l4off: int, l4len: int, checksum: bool) -> str | None:
    """kernel sctp_error() then do_basic_checks().

    Args:
        data: the IP datagram; l4off/l4len: where the SCTP packet is and its length by the IP
        header; checksum: verify CRC32c (the kernel does so only with nf_conntrack_checksum=1,
        in PRE_ROUTING, when the NIC has not verified it).
    Returns:
        None if the packet may proceed, else the INVALID reason.
    """
    end = _end(data, l4off, l4len)
    if end < l4off + _HDR_LEN:
        return R_SHORT
    if checksum and not _crc_ok(data, l4off, end):
        return R_CRC
    cmap = _chunk_map(data, l4off, end)
    if isinstance(cmap, str):
        return cmap
    return None


def _new(conn: Conn, data: bytes, l4off: int, end: int, vtag: int) -> str | None:
    """kernel sctp_new(): may this packet create an entry? Seeds the vtags if so."""
    st = [0, 0, 0, 0, 0, 0]  # kernel: memset(&ct->proto.sctp, 0, ...)
    row_of = _ROW_OF_CHUNK
    orig_rows = SCTP_CONNTRACKS[0]
    off = l4off + _HDR_LEN
    while off + 4 <= end:
        ctype = data[off]
        row = row_of[ctype]
        new_state = sNO if row < 0 else orig_rows[row][sNO]
        if new_state in (sNO, sIV):
            return R_NEW
        if ctype == _CID_INIT:
            if vtag:  # §8.5.1 (A)
                return R_NEW
            if off + _INITHDR_END > end:
                return R_NEW
            st[1] = _U32.unpack_from(data, off + 4)[0]  # reply vtag = INIT's initiate tag
        elif ctype == _CID_HEARTBEAT:
            st[0] = vtag  # "secondary conntrack": a path we never saw the INIT of
        elif ctype == _CID_SHUTDOWN_ACK:
            # OOTB SHUTDOWN_ACK: expect a SHUTDOWN_COMPLETE or ABORT back, §8.4 (5) and (8)
            st[1] = vtag
        off += ((data[off + 2] << 8 | data[off + 3]) + 3) & ~3
    extra = conn.extra
    if extra is None:
        conn.extra = {EXTRA_KEY: st}
    else:
        extra[EXTRA_KEY] = st
    conn.state = sNO
    return None


def packet(
    conn: Conn, d: int, data: bytes, l4off: int, l4len: int, now: float, s: Settings
) -> Outcome:
    """kernel nf_conntrack_sctp_packet() after sctp_error().

    Args:
        conn: the entry (unconfirmed for the first packet of a connection); d: the packet's
        direction (0 original, 1 reply); data/l4off/l4len: as for ``error()``; now: clock;
        s: engine settings (SCTP timeouts are the kernel defaults, DEFAULT_SCTP_TIMEOUTS).
    Returns:
        None (accepted, timeout refreshed), IGNORE (accepted, timeout not refreshed) or the
        INVALID reason. On INVALID the entry keeps whatever earlier chunks of the same packet
        changed, as in the kernel.
    """
    end = _end(data, l4off, l4len)
    if end < l4off + _HDR_LEN:
        return R_SHORT
    cmap = _chunk_map(data, l4off, end)
    if isinstance(cmap, str):
        return cmap
    vtag = _U32.unpack_from(data, l4off + 4)[0]
    confirmed = conn.status & _CONFIRMED

    if not confirmed:
        if cmap & _B_OOTB:
            return R_OOTB
        r = _new(conn, data, l4off, end, vtag)
        if r is not None:
            return r
        st = conn.extra[EXTRA_KEY]  # type: ignore[index]
    else:
        extra = conn.extra
        st = extra.get(EXTRA_KEY) if extra is not None else None
        if st is None:
            # An entry made elsewhere (e.g. injected): the kernel's proto.sctp starts zeroed.
            st = [0, 0, 0, 0, 0, 0]
            if extra is None:
                conn.extra = {EXTRA_KEY: st}
            else:
                extra[EXTRA_KEY] = st

    r_ = 1 - d  # the kernel's !dir
    # §8.5: packets without a chunk that has its own rule must carry the vtag of their dir.
    if not cmap & _B_VTAG_EXEMPT and vtag != st[d]:
        return R_VTAG

    table = SCTP_CONNTRACKS[d]
    row_of = _ROW_OF_CHUNK
    old_state = new_state = sNO
    ignore = False
    off = l4off + _HDR_LEN
    while off + 4 <= end:
        ctype = data[off]
        step = ((data[off + 2] << 8 | data[off + 3]) + 3) & ~3
        # Special cases of the verification tag check (§8.5.1).
        if ctype == _CID_INIT:
            if vtag:  # (A) vtag MUST be zero
                return R_INIT_VTAG
        elif ctype == _CID_ABORT:
            # (B) own vtag, or the peer's when the T bit is set
            if vtag != st[r_ if data[off + 1] & _CHUNK_FLAG_T else d]:
                return R_ABORT_VTAG
        elif ctype == _CID_SHUTDOWN_COMPLETE:
            # (C) same rule as ABORT
            if vtag != st[r_ if data[off + 1] & _CHUNK_FLAG_T else d]:
                return R_SHUTCOMP_VTAG
        elif ctype == _CID_COOKIE_ECHO:
            # (D) the tag the INIT_ACK announced
            if vtag != st[d]:
                return R_ECHO_VTAG
        elif ctype == _CID_COOKIE_ACK:
            st[_INIT] = 0
            st[_INIT + 1] = 0
        elif ctype == _CID_HEARTBEAT:
            if st[d] == 0:
                st[d] = vtag
            elif vtag != st[d]:
                if cmap & _B_DATA or ignore:
                    return R_HB_VTAG
                # Maybe a restarted association: let it through unrefreshed and remember
                # which side tried; a HEARTBEAT_ACK from the other side adopts the new tag.
                st[_FLAGS] |= _HB_VTAG_FAILED
                st[_LAST_DIR] = d
                ignore = True
                off += step  # C "continue" runs the for-loop increment
                continue
            elif st[_FLAGS] & _HB_VTAG_FAILED:
                st[_FLAGS] &= ~_HB_VTAG_FAILED
        elif ctype == _CID_HEARTBEAT_ACK:
            if st[d] == 0:
                st[d] = vtag
            elif vtag != st[d]:
                if cmap & _B_DATA or ignore:
                    return R_HBACK_VTAG
                if not st[_FLAGS] & _HB_VTAG_FAILED or st[_LAST_DIR] == d:
                    return R_HBACK_VTAG
                st[_FLAGS] &= ~_HB_VTAG_FAILED
                st[d] = vtag
                st[r_] = 0
            elif st[_FLAGS] & _HB_VTAG_FAILED:
                st[_FLAGS] &= ~_HB_VTAG_FAILED

        old_state = conn.state
        row = row_of[ctype]
        new_state = old_state if row < 0 else table[row][old_state]
        if new_state == sIV:
            return R_STATE

        if ctype == _CID_INIT:
            if off + _INITHDR_END > end:
                return R_INIT_SHORT
            if st[_INIT + d] and st[_INIT + r_]:
                st[_INIT + r_] = 0
            st[_INIT + d] = 1
            st[r_] = _U32.unpack_from(data, off + 4)[0]
            # Do not renew the timeout on an INIT retransmit, so port reuse by a client or a
            # NAT box cannot keep the entry alive forever.
            if new_state == sCL and old_state == sCL and confirmed:
                ignore = True
        elif ctype == _CID_INIT_ACK:
            if off + _INITHDR_END > end:
                return R_INIT_SHORT
            init_tag = _U32.unpack_from(data, off + 4)[0]
            peer = st[r_]
            if not st[_INIT + r_] and peer and peer != init_tag:
                return R_INITACK_VTAG
            if st[_INIT + d] and st[_INIT + r_] and peer != init_tag:  # INIT collision
                return R_INITACK_VTAG
            st[r_] = init_tag

        conn.state = new_state
        if old_state != new_state and new_state == sES:
            conn.status |= _ASSURED
        off += step

    if ignore:
        return IGNORE
    conn.expires = now + DEFAULT_SCTP_TIMEOUTS[new_state]
    return None


def can_early_drop(conn: Conn) -> bool:
    """kernel sctp_can_early_drop(): entries in a SHUTDOWN state may be evicted first."""
    st = conn.state
    return st in (sSS, sSR, sSA)
