"""Conn <-> ct_sync records: which fields of a connection travel, and how they come back.

Rules:
1. This is the only module that reads or writes ``Conn`` slots for sync (conntrackd's
   build.c / parse.c split from network.c). codec.py knows bytes, merge.py knows the rule.
2. Deadlines travel as *remaining* milliseconds at the packet's stamp; the receiver passes the
   local time of that stamp as ``base`` (docs/protocol.md §2), so nothing here reads a clock.
3. Without a window section a TCP entry gets ``tw`` all zero, which the TCP tracker (like the
   kernel's tcp_in_window(), ``td_maxwin == 0`` branch) re-seeds from the next segment of each
   direction; this is what the kernel does for entries injected through ctnetlink
   (nlattr_to_tcp() imports state, flags and scales only). ``MAXACK_SET`` is cleared then,
   since the ``td_maxack`` words it vouches for did not travel.
4. ``pack_conn`` is the bulk fast path; it must produce exactly
   ``encode_ct_update(conn_to_record(...))`` (a property test checks).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from pmct.conntrack.conn import TW_FIELDS, Conn, TcpWindow, new_tcp_window, window_of
from pmct.conntrack.constants import Status
from pmct.conntrack.expect import Expectation, expectfn_name
from pmct.conntrack.keys import IPPROTO_TCP, IPPROTO_UDP
from pmct.conntrack.proto.tcp import SEQADJ_KEY
from pmct.sync.codec import (
    CT_TCP4_LEN,
    WINDOW_WORDS,
    CtDelete,
    CtRecord,
    ExpDelete,
    ExpRecord,
    MsgType,
    encode_ct_update,
)

__all__ = [
    "MAXACK_SET",
    "STICKY_STATUS",
    "SYNC_STATUS_MASK",
    "conn_to_record",
    "delete_record",
    "exp_delete_record",
    "exp_to_record",
    "has_window",
    "new_conn",
    "pack_conn",
    "synced_view",
    "write_conn",
]

# Status bits that travel: the kernel's 16 low IPS_* bits minus DYING (a dying entry is being
# deleted; its DELETE follows) -- a received DYING bit would make the local table treat the
# entry as already gone.
SYNC_STATUS_MASK: Final = 0xFFFF & ~int(Status.DYING)
# Bits the kernel only ever sets; a merge ORs them (docs/protocol.md §10).
STICKY_STATUS: Final = int(
    Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SEQ_ADJUST
)
MAXACK_SET: Final = 0x20  # IP_CT_TCP_FLAG_MAXACK_SET (kernel nf_conntrack_tcp.h)
_U32_MAX: Final = 0xFFFF_FFFF
_SCTP_KEY: Final = "sctp"  # conntrack/proto/sctp.py EXTRA_KEY
_HELPER_DATA_KEY: Final = "helper_data"

assert len(TW_FIELDS) == WINDOW_WORDS, "Conn.tw changed: the window section needs a new layout"

_CT_TCP4: Final = struct.Struct("!BBHB12sHBIBBB")  # codec's 27-byte IPv4 TCP record
_pack_tcp4 = _CT_TCP4.pack
_CT_UPDATE: Final = int(MsgType.CT_UPDATE)
assert _CT_TCP4.size == CT_TCP4_LEN


def _ms(seconds: float) -> int:
    # DEVIATION(kernel): ctnetlink's CTA_TIMEOUT is u32 seconds; ct_sync carries u32 ms and
    # saturates at ~49.7 days (kernel defaults top out at 5 days).
    # pinned by tests/unit/sync/test_codec.py::test_timeout_saturates
    if seconds <= 0.0:
        return 0
    ms = int(seconds * 1000.0 + 0.5)  # nearest ms
    return ms if ms < _U32_MAX else _U32_MAX


def _helper_name(helper: Any) -> str | None:
    """The helper's name, if it can travel (1..16 printable ASCII bytes, docs §4.6)."""
    if helper is None:
        return None
    name = helper if isinstance(helper, str) else getattr(helper, "name", None)
    if isinstance(name, str) and 1 <= len(name) <= 16 and all("!" <= ch <= "~" for ch in name):
        return name
    return None


def has_window(conn: Conn) -> bool:
    """A TCP entry that knows either direction's window (td_maxwin != 0)."""
    tw = getattr(conn, "tw", None)
    return tw is not None and bool(tw[2] or tw[5])


def conn_to_record(conn: Conn, now: float, *, window: bool = False) -> CtRecord:
    """The CT_UPDATE record of ``conn`` at time ``now`` (remaining timeout from ``now``)."""
    rec = CtRecord(
        conn.proto,
        conn.key,
        conn.rkey,
        conn.status & SYNC_STATUS_MASK,
        conn.state,
        _ms(conn.expires - now),
        conn.mark,
    )
    if conn.proto == IPPROTO_TCP:
        # The kernel imports scales only when both directions negotiated scaling
        # (nlattr_to_tcp()); the TCP tracker keeps both at 0 otherwise (tcp_init_sender(),
        # RFC 7323), so sending them always imports the same values.
        rec.scale0 = conn.td_scale0
        rec.scale1 = conn.td_scale1
        if window:
            rec.tflags0 = conn.tflags0
            rec.tflags1 = conn.tflags1
            rec.window = (
                *conn.tw,
                conn.last_dir,
                conn.last_index,
                conn.last_wscale,
                conn.last_flags,
                min(conn.retrans, 255),
            )
        else:
            # DEVIATION(kernel): nlattr_to_tcp() imports the flags under the sender's mask as
            # they are; without the window section the td_maxack words do not travel, so the
            # flag that vouches for them must not either.
            # pinned by tests/unit/sync/test_records.py::test_tcp_without_window_relearns
            rec.tflags0 = conn.tflags0 & ~MAXACK_SET
            rec.tflags1 = conn.tflags1 & ~MAXACK_SET
    elif conn.proto == IPPROTO_UDP and conn.stream_ts > now:
        rec.stream_ms = _ms(conn.stream_ts - now)
    rec.helper = _helper_name(conn.helper)
    master = conn.master
    if master is not None:
        rec.master = master.key
    extra = conn.extra
    if extra:
        hd = extra.get(_HELPER_DATA_KEY)
        if isinstance(hd, bytes | bytearray) and len(hd) <= 255:
            rec.helper_data = bytes(hd)
        st = extra.get(_SCTP_KEY)
        if st is not None:
            rec.sctp = (st[0], st[1], int(bool(st[2])), int(bool(st[3])), st[4], st[5])
        sa = extra.get(SEQADJ_KEY)
        if sa is not None and len(sa) == 6:
            rec.seqadj = tuple(int(v) for v in sa)
    return rec


def pack_conn(conn: Conn, now: float, *, window: bool = False) -> bytes:
    """Encoded CT_UPDATE of ``conn``; one struct call for the common IPv4 TCP entry."""
    key = conn.key
    if (
        not window
        and len(key) == 12
        and not conn.mark
        and conn.helper is None
        and conn.master is None
        and not conn.extra
        and conn.rkey == key[4:8] + key[:4] + key[10:12] + key[8:10]
    ):
        t = conn.expires - now
        ms = 0 if t <= 0.0 else int(t * 1000.0 + 0.5)
        return _pack_tcp4(
            _CT_UPDATE,
            0,
            CT_TCP4_LEN,
            6,
            key,
            conn.status & SYNC_STATUS_MASK,
            conn.state,
            ms if ms < _U32_MAX else _U32_MAX,
            conn.tflags0 & ~MAXACK_SET,
            conn.tflags1 & ~MAXACK_SET,
            conn.td_scale0 << 4 | conn.td_scale1,
        )
    return encode_ct_update(conn_to_record(conn, now, window=window))


def delete_record(key: bytes) -> CtDelete:
    """CT_DELETE for a connection's orig key (the protocol follows from the key layout)."""
    return CtDelete(IPPROTO_TCP if len(key) in (12, 36) else key[0], key)


Resolver = Callable[[bytes], Conn | None]


def new_conn(
    rec: CtRecord,
    base: float,
    *,
    cid: int = 0,
    resolve_master: Resolver | None = None,
    resolve_helper: Callable[[str], Any] | None = None,
) -> Conn:
    """A fresh Conn holding everything the record carries (``base``: local time of stamp)."""
    key = rec.key
    conn = Conn(cid, key, rec.rkey, 6 if len(key) in (36, 37, 33) else 4, rec.proto)
    if (
        rec.proto == IPPROTO_TCP
        and rec.window is None
        and rec.helper is None
        and rec.master is None
        and rec.helper_data is None
    ):
        # The bulk case (init sync of plain TCP entries): write_conn() without the branches.
        conn.status = rec.status
        conn.state = rec.state
        if rec.mark:
            conn.mark = rec.mark
        conn.expires = base + rec.timeout_ms / 1000.0
        conn.tw = TcpWindow()
        conn.last_dir = 0
        conn.last_index = 5  # TCP_NONE_SET
        conn.last_wscale = 0
        conn.last_flags = 0
        conn.retrans = 0
        conn.td_scale0 = rec.scale0
        conn.td_scale1 = rec.scale1
        conn.tflags0 = rec.tflags0 & ~MAXACK_SET
        conn.tflags1 = rec.tflags1 & ~MAXACK_SET
        return conn
    write_conn(conn, rec, base, resolve_master=resolve_master, resolve_helper=resolve_helper)
    return conn


def write_conn(
    conn: Conn,
    rec: CtRecord,
    base: float,
    *,
    keep_window: bool = False,
    resolve_master: Resolver | None = None,
    resolve_helper: Callable[[str], Any] | None = None,
) -> None:
    """Overwrite every synced field of ``conn`` with the record's (the authoritative apply).

    ``keep_window``: a record without a window section leaves the local window group (``tw``,
    scales, ``last_*``, ``retrans``) and a local BE_LIBERAL flag alone (the merge rule, when
    the local entry has window data of its own); otherwise a record without a window resets
    it to "relearn" (all zero).
    """
    conn.status = rec.status
    conn.state = rec.state
    if conn.mark != rec.mark:  # mark, helper, master live in Conn.extra: write only changes
        conn.mark = rec.mark
    conn.expires = base + rec.timeout_ms / 1000.0
    if rec.proto == IPPROTO_TCP:
        w = rec.window
        if w is not None:
            conn.tw = window_of(w[:WINDOW_WORDS])
            conn.last_dir, conn.last_index, conn.last_wscale, conn.last_flags, conn.retrans = w[
                WINDOW_WORDS:
            ]
            conn.td_scale0 = rec.scale0
            conn.td_scale1 = rec.scale1
            conn.tflags0 = rec.tflags0
            conn.tflags1 = rec.tflags1
        elif keep_window:
            liberal = 0x08  # IP_CT_TCP_FLAG_BE_LIBERAL
            conn.tflags0 = (rec.tflags0 & ~MAXACK_SET) | (conn.tflags0 & (liberal | MAXACK_SET))
            conn.tflags1 = (rec.tflags1 & ~MAXACK_SET) | (conn.tflags1 & (liberal | MAXACK_SET))
        else:
            conn.tw = new_tcp_window()
            conn.last_dir = 0
            conn.last_index = 5  # TCP_NONE_SET: no segment seen yet (tcp_table.py)
            conn.last_wscale = 0
            conn.last_flags = 0
            conn.retrans = 0
            conn.td_scale0 = rec.scale0
            conn.td_scale1 = rec.scale1
            conn.tflags0 = rec.tflags0 & ~MAXACK_SET
            conn.tflags1 = rec.tflags1 & ~MAXACK_SET
    elif rec.proto == IPPROTO_UDP:
        conn.stream_ts = base + rec.stream_ms / 1000.0 if rec.stream_ms is not None else 0.0
    name = rec.helper
    helper = None
    if name is not None:
        helper = resolve_helper(name) if resolve_helper is not None else name
    if conn.helper is not helper:
        conn.helper = helper
    master = None
    if rec.master is not None and resolve_master is not None:
        master = resolve_master(rec.master)
    if conn.master is not master:
        conn.master = master
    extra = conn.extra
    if rec.helper_data is not None:
        if extra is None:
            extra = conn.extra = {}
        extra[_HELPER_DATA_KEY] = rec.helper_data
    elif extra is not None:
        extra.pop(_HELPER_DATA_KEY, None)
    if rec.sctp is not None:
        if extra is None:
            extra = conn.extra = {}
        extra[_SCTP_KEY] = list(rec.sctp)
    elif extra is not None:
        extra.pop(_SCTP_KEY, None)
    if rec.seqadj is not None:
        # NAT sequence offsets (pmct/nat/seqadj.py); a record without them leaves local ones
        # (a node that saw the rewrite itself keeps what it computed)
        if extra is None:
            extra = conn.extra = {}
        extra[SEQADJ_KEY] = list(rec.seqadj)
    if extra is not None and not any(v is not None and v != 0 for v in extra.values()):
        conn.extra = None  # only defaults left (Conn keeps mark/helper/master in extra)


def synced_view(conn: Conn, now: float, *, window: bool = False) -> CtRecord:
    """What a peer would learn about ``conn`` (tests compare tables through this)."""
    return conn_to_record(conn, now, window=window)


def exp_to_record(exp: Expectation, now: float) -> ExpRecord:
    """EXP_UPDATE for a pending expectation (docs/protocol.md §4.5): tuple and mask as keys,
    the master's orig key, the time left from ``now``; ``helper`` is the master's helper, as
    ctnetlink's dump names it (CTA_EXPECT_HELP_NAME)."""
    return ExpRecord(
        exp.proto,
        exp.key,
        exp.mask_key,
        exp.master.key,
        _ms(exp.expires - now),
        exp.flags & 0xFFFF,
        exp.klass & 0xFF,
        _helper_name(exp.master.helper) or "",
        _exp_nat(exp),
    )


def _exp_nat(exp: Expectation) -> tuple[int, int, str] | None:
    """(dir, saved port, expectfn name) of an expectation a NAT helper made, else None."""
    fn = exp.expectfn
    if fn is None:
        return None
    name = expectfn_name(fn)
    return None if name is None else (exp.dir, exp.saved_port & 0xFFFF, name)


def exp_delete_record(exp: Expectation) -> ExpDelete:
    """EXP_DELETE for an expectation that was used, timed out or died with its master."""
    return ExpDelete(exp.proto, exp.key, exp.mask_key, exp.master.key)
