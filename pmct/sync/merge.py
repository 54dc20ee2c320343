"""The merge rule: received state never moves a locally tracked entry backwards.

docs/protocol.md §10 is the specification. Which rule applies is the mode's choice
(modes.py): the replicate standby applies the master's log authoritatively and in order; a
concurrent node, which tracks the wire itself, merges with this rule.

"Newer" is a lexicographic order, following pfsync (pfsync_upd_tcp(): "The state should never
go backwards"; a peer's update whose state is behind, or whose sequence window slid backwards,
is stale):

1. progress rank of the protocol state (TCP: the order in which the kernel's transition table
   moves an entry; other protocols: 0);
2. status rank: ASSURED 2, SEEN_REPLY 1, else 0;
3. TCP, per direction where both sides know the window (td_maxwin != 0): td_end in serial
   order; a direction where the local side is ahead makes the local entry win;
4. the deadline: within the same state a later deadline means a later refresh.

Ties go to the local entry. Sticky status bits (SEEN_REPLY, ASSURED, CONFIRMED: the kernel only
sets them) are OR-ed into whichever entry survives.

Rules: pure functions over Conn/CtRecord and the SyncTable adapter; no clock beyond the ``now``
and ``base`` passed in.
"""

from __future__ import annotations

from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status, TcpState
from pmct.conntrack.keys import IPPROTO_TCP
from pmct.serial import after, before
from pmct.sync.codec import CtDelete, CtRecord
from pmct.sync.records import STICKY_STATUS, has_window, new_conn, write_conn
from pmct.sync.table import SyncTable

__all__ = [
    "TCP_PROGRESS",
    "apply_authoritative",
    "apply_delete_authoritative",
    "apply_merge",
    "remote_is_newer",
    "status_rank",
]

# fmt: off
# Progress rank per TcpState value (index), in the order the kernel's tcp_conntracks[] table
# moves an entry. SYN_SENT2 (simultaneous open) sits between SYN_SENT and SYN_RECV; a reopen
# (TIME_WAIT/CLOSE + SYN) is delete + create in the kernel (-NF_REPEAT), never a backward move.
TCP_PROGRESS: Final[tuple[int, ...]] = (
    0,  # NONE
    1,  # SYN_SENT
    3,  # SYN_RECV
    4,  # ESTABLISHED
    5,  # FIN_WAIT     (FIN seen one way)
    6,  # CLOSE_WAIT   (that FIN acknowledged)
    7,  # LAST_ACK     (FIN seen both ways)
    8,  # TIME_WAIT
    9,  # CLOSE        (RST)
    2,  # SYN_SENT2
)
# fmt: on
assert len(TCP_PROGRESS) == TcpState.MAX

_ASSURED: Final = int(Status.ASSURED)
_SEEN_REPLY: Final = int(Status.SEEN_REPLY)


def status_rank(status: int) -> int:
    return 2 if status & _ASSURED else 1 if status & _SEEN_REPLY else 0


def _progress(proto: int, state: int) -> int:
    if proto == IPPROTO_TCP and 0 <= state < len(TCP_PROGRESS):
        return TCP_PROGRESS[state]
    return 0


def remote_is_newer(rec: CtRecord, rec_expires: float, local: Conn) -> bool:
    """True if the record should replace the local entry's state (docs/protocol.md §10).

    Windows are compared only when both sides agree on which direction is the original one.
    """
    r = _progress(rec.proto, rec.state)
    lo = _progress(local.proto, local.state)
    if r != lo:
        return r > lo
    r = status_rank(rec.status)
    lo = status_rank(local.status)
    if r != lo:
        return r > lo
    w = rec.window
    if w is not None and local.proto == IPPROTO_TCP and local.key == rec.key:
        tw = local.tw
        remote_ahead = False
        for end, maxwin in ((0, 2), (3, 5)):
            if w[maxwin] and tw[maxwin]:
                if after(tw[end], w[end]):
                    return False  # local traffic is further along in this direction
                if before(tw[end], w[end]):
                    remote_ahead = True
        if remote_ahead:
            return True
    return rec_expires > local.expires


def _insert(table: SyncTable, rec: CtRecord, base: float, now: float) -> str:
    if rec.master is None and rec.helper is None:
        conn = new_conn(rec, base)
    else:
        conn = new_conn(
            rec,
            base,
            resolve_master=lambda k: table.get(k, now),
            resolve_helper=table.resolve_helper,
        )
    return "inserted" if table.insert(conn, now) else "table_full"


def _replace(
    table: SyncTable, local: Conn, rec: CtRecord, base: float, now: float, sticky: int, name: str
) -> str:
    """Drop the local entry for the master's: ``name`` when it went in, else why not. The
    ``sticky`` status bits the local entry had survive on the new one."""
    table.delete(local, now)
    outcome = _insert(table, rec, base, now)
    conn = table.get(rec.key, now)
    if conn is not None:
        conn.status |= sticky
    return name if outcome == "inserted" else outcome


def apply_merge(table: SyncTable, rec: CtRecord, base: float, now: float) -> str:
    """Concurrent mode: merge a received entry with local state; returns the outcome name
    (``inserted``, ``replaced``, ``stale``, ``nat_rebound`` or ``table_full``)."""
    local = table.get(rec.key, now)
    if local is None:
        local = table.get(rec.rkey, now)
        if local is None:
            return _insert(table, rec, base, now)
    rec_expires = base + rec.timeout_ms / 1000.0
    if (local.rkey != rec.rkey) if local.key == rec.key else local.key != rec.rkey:
        # A different NAT binding (only possible with NAT: without it both sides compute
        # the plain inverse): the same connection with another reply tuple, or another
        # connection holding the master's reply tuple. The master's binding is the one on
        # the wire, so it wins whatever the state order says (docs/nat.md §4).
        sticky = local.status & STICKY_STATUS if local.key == rec.key else 0
        return _replace(table, local, rec, base, now, sticky, "nat_rebound")
    if not remote_is_newer(rec, rec_expires, local):
        local.status |= rec.status & STICKY_STATUS
        return "stale"
    sticky = local.status & STICKY_STATUS
    if local.key != rec.key or local.rkey != rec.rkey:
        # Seen the other way round (picked up from a reply-direction segment) or a different
        # NAT binding: the tuples are the master's; windows are relearned.
        return _replace(table, local, rec, base, now, sticky, "replaced")
    old_expires = local.expires
    write_conn(
        local,
        rec,
        base,
        keep_window=rec.window is None and has_window(local),
        resolve_master=lambda k: table.get(k, now),
        resolve_helper=table.resolve_helper,
    )
    local.status |= sticky
    table.changed(local, old_expires, now)
    return "replaced"


def apply_authoritative(table: SyncTable, rec: CtRecord, base: float, now: float) -> str:
    """Replicate mode: the master's log, applied in order, is the truth."""
    local = table.get(rec.key, now)
    if local is not None and local.key == rec.key and local.rkey == rec.rkey:
        old_expires = local.expires
        write_conn(
            local,
            rec,
            base,
            resolve_master=lambda k: table.get(k, now),
            resolve_helper=table.resolve_helper,
        )
        table.changed(local, old_expires, now)
        return "replaced"
    if local is not None:
        table.delete(local, now)
    return _insert(table, rec, base, now)


def apply_delete_authoritative(table: SyncTable, rec: CtDelete, now: float) -> str:
    local = table.get(rec.key, now)
    if local is None or local.key != rec.key:
        return "delete_absent"
    table.delete(local, now)
    return "deleted"
