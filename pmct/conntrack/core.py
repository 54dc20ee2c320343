"""The engine: one IP datagram and a timestamp in, a verdict out (kernel nf_conntrack_in()).

Order of work per datagram, as in the kernel:

1. IP layer: a datagram ip_rcv() would discard is DROPPED; fragments go to the defragmenter
   (nf_defrag) and only the completed datagram is tracked (the rest are HELD).
2. ICMP/ICMPv6 first (nf_conntrack_handle_icmp()): errors are RELATED to the connection they
   quote or INVALID; ICMPv6 neighbour discovery/MLD is UNTRACKED.
3. Resolve (resolve_normal_ct()): one dict lookup finds the entry and the direction; a miss
   creates an unconfirmed entry (init_conntrack(), after the table limit / early drop check).
4. The protocol tracker judges the packet (nf_conntrack_handle_packet()); an INVALID verdict
   detaches the packet (an unconfirmed entry is forgotten), TCP may ask to REPEAT (reopen).
5. SEEN_REPLY is set after the tracker ran, for a reply-direction packet.
6. Confirm: a new entry that was accepted is inserted (the kernel does it at POSTROUTING; a
   tracker sees every packet, so pmct confirms at once; see docs/fidelity.md for routed mode).

A verdict is a plain tuple ``(ctstate, direction, conn)``: ctstate is a CtState value,
direction 0/1 (-1 when there is no entry), conn the entry or None. Tuples are used instead of
objects because the engine's budget is ~2.5 µs per packet.

The core never reads a clock and does no I/O; ``now`` is seconds (monotonic or capture time).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.expect import Expectation, ExpectTable, expect_max_for
from pmct.conntrack.helpers import Helper, assignments, get_helper
from pmct.conntrack.keys import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    PORTED_PROTOS,
    decode_key,
    make_key,
)
from pmct.conntrack.proto import generic, icmp, sctp, tcp, udp
from pmct.conntrack.proto.base import IGNORE, KILL, REPEAT
from pmct.conntrack.proto.tcp import packet as _tcp_packet
from pmct.conntrack.proto.tcp_table import VALID_BY_FLAG_BYTE as _TCP_VALID_FLAGS
from pmct.conntrack.settings import Settings
from pmct.conntrack.table import ConnTable
from pmct.wire import parse_ip
from pmct.wire.defrag import Defragmenter
from pmct.wire.link import ip_from_frame
from pmct.wire.model import Packet

__all__ = ["Engine", "EventType", "Verdict"]

Verdict = tuple[int, int, Conn | None]

INVALID: Final = int(CtState.INVALID)
NEW: Final = int(CtState.NEW)
ESTABLISHED: Final = int(CtState.ESTABLISHED)
RELATED: Final = int(CtState.RELATED)
UNTRACKED: Final = int(CtState.UNTRACKED)
HELD: Final = int(CtState.HELD)
DROPPED: Final = int(CtState.DROPPED)

_CONFIRMED: Final = int(Status.CONFIRMED)
_SEEN_REPLY: Final = int(Status.SEEN_REPLY)
_EXPECTED: Final = int(Status.EXPECTED)
_HELPER: Final = int(Status.HELPER)

_V_INVALID: Final[Verdict] = (INVALID, -1, None)
_V_HELD: Final[Verdict] = (HELD, -1, None)
_V_DROPPED: Final[Verdict] = (DROPPED, -1, None)
_V_UNTRACKED: Final[Verdict] = (UNTRACKED, -1, None)
# The trackers' outcome sentinels as Final names (C statics when compiled, not a globals
# lookup per test); the same objects, so the identity tests hold (proto/base.py).
_OUT_IGNORE: Final = IGNORE
_OUT_KILL: Final = KILL
_OUT_REPEAT: Final = REPEAT

_PORTS: Final = struct.Struct("!HH")

GC_INTERVAL: Final = 1.0  # seconds of packet time between expiry sweeps


class EventType(IntEnum):
    """Table change events (kernel ctnetlink NEW / UPDATE / DESTROY)."""

    NEW = 1
    UPDATE = 2
    DESTROY = 3


class Engine:
    """A conntrack table and the per-packet logic around it.

    Args:
        settings: tunables (kernel sysctls); defaults are the kernel's.
        events: record table changes in ``self.events`` as ``(EventType, Conn)`` for the sync
            layer and ``conntrack -E``; off by default because it costs time per packet.
            Expectation changes are recorded separately, once a consumer that drains them
            sets ``self.expect.events = []`` (expect.py; ct_sync's EXPECT stream).
        helpers: helper name -> ports, e.g. ``{"ftp": [21], "tftp": [69]}``: new entries to
            those destination ports get the helper (an nft ``ct helper set`` rule; see
            pmct/conntrack/helpers/). ``ftp_helper=True`` is short for FTP on TCP 21.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        events: bool = False,
        ftp_helper: bool = False,
        helpers: Mapping[str, Iterable[int]] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.table = ConnTable(self.settings.max_entries)
        self.table.on_delete = self._on_delete
        self.defrag = Defragmenter()
        self.events: list[tuple[int, Conn]] | None = [] if events else None
        self.ftp_helper = ftp_helper
        # helpers (issue 7): (l4proto, dport) -> helper for new entries, and the expectations
        # the helpers create; both cost nothing per packet while empty
        self.helper_ports: dict[tuple[int, int], Helper] = assignments(
            helpers, ftp_helper=ftp_helper
        )
        self.expect = ExpectTable(expect_max_for(self.settings.max_entries))
        # NAT (issue 8): pmct.nat.alloc.Nat(...).bind gives each new entry its reply key
        # before confirmation; None (the default) costs one test per new entry
        self.nat_bind: Callable[[Conn, dict[bytes, Conn], float], str | None] | None = None
        self.last_reason: str | None = None
        self.invalid_reasons: dict[str, int] = {}
        self.verdicts = [0] * 7  # packets per CtState value
        self.stats = {
            "new": 0,
            "delete": 0,
            "expired": 0,
            "early_drop": 0,
            "drop": 0,
            "repeat": 0,
            "ignore": 0,
        }
        self._next_id = 1
        self._gc_due = 0.0
        self._get = self.table.index.get
        # the fast path skips tcp.error()'s checksum step, so it only runs when that is off;
        # with helpers configured it also skips entries that have one (status bit HELPER):
        # their packets go through _tcp, which runs the helper
        self._plain = not self.settings.checksum and not self.helper_ports
        self._plain_nohelp = not self.settings.checksum

    # ------------------------------------------------------------------ entry points

    def process_frame(self, frame: bytes, now: float, linktype: int = 1) -> Verdict | None:
        """Track one link-layer frame; None for a frame that carries no IP datagram."""
        data = ip_from_frame(frame, linktype)
        if data is None:
            return None
        return self.process_ip(data, now)

    def process_ip(self, data: bytes, now: float) -> Verdict:
        """Track one IP datagram (what NFQUEUE hands over) seen at time ``now``."""
        if now >= self._gc_due:
            self.expire(now)
        self.last_reason = None
        # Fast path: IPv4 without options, unfragmented TCP with a whole fixed header. It
        # extracts the same fields the slow path gets from wire.parse_ip and calls the same
        # tracker code, so both paths give the same verdicts (tests/unit/conntrack/test_core.py
        # checks the equivalence on every trace).
        # The fields are read byte by byte, not with struct: compiled, each is a typed int
        # in a register, where unpack_from() would give a tuple of objects of unknown type
        # and every test and shift after it a generic (boxed) operation.
        if len(data) >= 40 and data[0] == 0x45:
            tot = (data[2] << 8) | data[3]
            frag = ((data[6] << 8) | data[7]) & 0x3FFF  # MF and the offset
            if data[9] == 6 and not frag and 40 <= tot <= len(data):
                seq = (data[24] << 24) | (data[25] << 16) | (data[26] << 8) | data[27]
                ack = (data[28] << 24) | (data[29] << 16) | (data[30] << 8) | data[31]
                flags = data[33]
                doff = (data[32] >> 4) << 2
                win = (data[34] << 8) | data[35]
                key = data[12:24]
                conn = self._get(key)
                # The hot case, inlined: a live entry and an accepted packet. Anything else
                # (new entry, INVALID, IGNORE, KILL, REPEAT, events on, checksums on) takes
                # _tcp/_finish. The header checks are tcp.error()'s, written out.
                if (
                    conn is not None
                    and conn.expires > now
                    and 20 <= doff <= tot - 20
                    and _TCP_VALID_FLAGS[flags]
                    and (self._plain or (self._plain_nohelp and not conn.status & _HELPER))
                    and self.events is None
                ):
                    d = 0 if key == conn.key else 1
                    r = _tcp_packet(
                        conn,
                        d,
                        data,
                        20,
                        tot - 20,
                        seq,
                        ack,
                        flags,
                        win,
                        doff,
                        now,
                        self.settings,
                    )
                    if r is None:
                        status = conn.status
                        if d:
                            if not status & _SEEN_REPLY:
                                conn.status = status | _SEEN_REPLY
                            v: Verdict = (ESTABLISHED, 1, conn)
                        elif status & _SEEN_REPLY:
                            v = (ESTABLISHED, 0, conn)
                        elif status & _EXPECTED:
                            v = (RELATED, 0, conn)
                        else:
                            v = (NEW, 0, conn)
                    elif r is _OUT_REPEAT:
                        self.stats["repeat"] += 1
                        self.table.delete(conn, "reopened")
                        v = self._tcp(key, 4, data, 20, tot - 20, seq, ack, flags, win, doff, now)
                    else:
                        v = self._finish(conn, d, r, False, -1, -1)
                else:
                    v = self._tcp(key, 4, data, 20, tot - 20, seq, ack, flags, win, doff, now)
                self.verdicts[v[0]] += 1
                return v
        v = self._slow(data, now)
        self.verdicts[v[0]] += 1
        return v

    def expire(self, now: float) -> int:
        """Remove expired entries and fragment queues (the kernel's gc worker)."""
        self._gc_due = now + GC_INTERVAL
        self.defrag.expire(now)
        if self.expect.count:
            self.expect.expire(now)
        return self.table.expire(now)

    def drain_events(self) -> list[tuple[int, Conn]]:
        ev = self.events
        if ev is None:
            return []
        self.events = []
        return ev

    def conns(self) -> list[Conn]:
        return list(self.table)

    # ------------------------------------------------------------------ slow path

    def _slow(self, data: bytes, now: float) -> Verdict:
        pkt = parse_ip(data)
        if pkt.drop is not None:
            self.last_reason = pkt.drop
            self.stats["drop"] += 1
            return _V_DROPPED
        if pkt.frag is not None:
            whole = self.defrag.push(pkt, now)
            if whole is None:
                return _V_HELD
            pkt = parse_ip(whole)
            if pkt.drop is not None or pkt.frag is not None:
                return self._invalid(pkt.drop or "reassembled datagram is still a fragment")
        return self.track(pkt, now)

    def track(self, pkt: Packet, now: float) -> Verdict:
        """Track a parsed, unfragmented datagram (kernel nf_conntrack_in() after defrag)."""
        proto = pkt.proto
        l3 = pkt.l3
        if pkt.bad is not None:
            # truncated L4 header, or IPv6 with no upper-layer header at all: the kernel finds
            # no tuple (nf_ct_get_tuple()/ipv6_get_l4proto() fail) and the packet is INVALID
            return self._invalid(pkt.bad)
        if proto == IPPROTO_TCP:
            key = pkt.src + pkt.dst + _PORTS.pack(pkt.sport, pkt.dport)
            return self._tcp(
                key,
                l3,
                pkt.data,
                pkt.l4off,
                pkt.l4len,
                pkt.tcp_seq,
                pkt.tcp_ack,
                pkt.tcp_flags,
                pkt.tcp_win,
                pkt.tcp_doff,
                now,
            )
        if proto == IPPROTO_ICMP:
            if l3 != 4:  # kernel nf_conntrack_icmp_packet(): state->pf != NFPROTO_IPV4
                return self._invalid("icmp: not in IPv4")
            return self._icmp(pkt, now)
        if proto == IPPROTO_ICMPV6:
            if l3 != 6:
                return self._invalid("icmpv6: not in IPv6")
            return self._icmpv6(pkt, now)
        if proto == IPPROTO_UDP:
            bad = udp.error(pkt.data, pkt.l4off, pkt.l4len)
            if bad is not None:
                return self._invalid(bad)
            return self._simple(pkt, now, udp.packet)
        if proto == IPPROTO_UDPLITE:
            bad = udp.error_lite(pkt.data, pkt.l4off, pkt.l4len)
            if bad is not None:
                return self._invalid(bad)
            return self._simple(pkt, now, udp.packet_lite)
        if proto == IPPROTO_SCTP:
            return self._sctp(pkt, now)
        if proto == IPPROTO_GRE:
            return self._simple(pkt, now, generic.gre_packet)
        return self._simple(pkt, now, generic.packet)

    # ------------------------------------------------------------------ lookup / create

    def _alloc(self, key: bytes, rkey: bytes, l3: int, proto: int, now: float) -> Conn | None:
        """kernel init_conntrack(): a new unconfirmed entry, or None when the table is full."""
        table = self.table
        if table.count >= table.max_entries and not table.early_drop(now):
            table.reclaim(now, _can_early_drop)
            self.stats["drop"] += 1
            self.last_reason = "table full"
            return None
        conn = Conn(self._next_id, key, rkey, l3, proto)
        self._next_id += 1
        if self.helper_ports or self.expect.count:
            self._new_helped(conn, now)
        nat_bind = self.nat_bind
        if nat_bind is not None:
            reason = nat_bind(conn, table.index, now)
            if reason is not None:  # no free tuple: the kernel drops at confirmation
                self.stats["drop"] += 1
                self.last_reason = reason
                return None
        return conn

    def _resolve(
        self, key: bytes, rkey: bytes, l3: int, proto: int, now: float
    ) -> tuple[Conn | None, int, bool]:
        """kernel resolve_normal_ct(): (entry, direction, is_new); entry None = table full."""
        conn = self.table.get(key, now)
        if conn is not None:
            return conn, (0 if key == conn.key else 1), False
        return self._alloc(key, rkey, l3, proto, now), 0, True

    def _finish(
        self, conn: Conn, d: int, r: str | None, is_new: bool, old_state: int, old_status: int
    ) -> Verdict:
        """Everything after the tracker ran: confirm, SEEN_REPLY, ctstate, events."""
        if r is None or r is _OUT_IGNORE or r is _OUT_KILL:
            if r is _OUT_IGNORE:
                self.stats["ignore"] += 1
            if is_new:
                conn.status |= _CONFIRMED
                self.table.insert(conn)
                self.stats["new"] += 1
            status = conn.status
            if d:
                state = ESTABLISHED
                if not status & _SEEN_REPLY:
                    conn.status = status | _SEEN_REPLY
            elif status & _SEEN_REPLY:
                state = ESTABLISHED
            elif status & _EXPECTED:
                state = RELATED
            else:
                state = NEW
            events = self.events
            if events is not None:
                if is_new:
                    events.append((EventType.NEW, conn))
                elif conn.state != old_state or conn.status != old_status:
                    events.append((EventType.UPDATE, conn))
            if r is _OUT_KILL:
                self.table.delete(conn, "killed")
            return (state, d, conn)
        return self._invalid(r)

    def _invalid(self, reason: str) -> Verdict:
        self.last_reason = reason
        reasons = self.invalid_reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        return _V_INVALID

    def _on_delete(self, conn: Conn, reason: str) -> None:
        if reason == "expired":
            self.stats["expired"] += 1
        elif reason == "early_drop":
            self.stats["early_drop"] += 1
        self.stats["delete"] += 1
        if self.expect.count:  # kernel nf_ct_remove_expectations(): they die with their master
            self.expect.remove_master(conn)
        if self.events is not None:
            self.events.append((EventType.DESTROY, conn))

    # ------------------------------------------------------------------ helpers (issue 7)

    def _new_helped(self, conn: Conn, now: float) -> None:
        """kernel init_conntrack(), expectation part, then the nft ``ct helper set`` rule."""
        expect = self.expect
        if expect.count:
            exp = expect.find(conn.key, now)
            if exp is not None:
                # "Welcome, Mr. Bond.  We've been expecting you..."
                master = exp.master
                conn.status |= _EXPECTED
                conn.master = master
                mark = master.mark
                if mark:
                    conn.mark = mark
                if exp.helper is not None:
                    # DEVIATION(kernel): the kernel does not set IPS_HELPER here; pmct uses the
                    # bit as "has a helper" to keep such entries off the fast path.
                    conn.helper = exp.helper
                    conn.status |= _HELPER
                    exp.helper.attach(conn)
                fn = exp.expectfn
                if fn is not None:  # a NAT helper's nf_nat_follow_master (pmct/nat/ftp.py)
                    fn(conn, exp)
        ports = self.helper_ports
        if ports and not conn.status & _HELPER:
            key = conn.key
            helper = ports.get((conn.proto, (key[-2] << 8) | key[-1]))
            if helper is not None:  # nft_ct_helper_obj_eval(): unconfirmed entries only
                conn.helper = helper
                conn.status |= _HELPER
                helper.attach(conn)

    def _help(
        self, conn: Conn, d: int, data: bytes, start: int, end: int, seq: int, now: float
    ) -> str | None:
        """kernel nf_confirm(): the entry's helper sees an accepted packet (payload
        ``data[start:end]``); returns a drop reason, or None."""
        helper = conn.helper
        if not isinstance(helper, Helper):
            if not isinstance(helper, str):
                return None
            found = self.resolve_helper(helper)  # injected by name (ct_sync)
            if found is None:
                return None
            conn.helper = helper = found
        status = conn.status
        if d or status & _SEEN_REPLY:  # ctinfo as resolve_normal_ct() set it
            state = ESTABLISHED
        elif status & _EXPECTED:
            state = RELATED
        else:
            state = NEW
        return helper.help(conn, d, state, data, start, end, seq, self.expect, now)

    def resolve_helper(self, name: str) -> Helper | None:
        """The helper called ``name`` (for ct_sync's ``resolve_helper``). Entries with a helper
        may now appear in the table whatever the port configuration, so from here on the fast
        path leaves them to _tcp (one status test per packet)."""
        helper = get_helper(name)
        if helper is not None:
            self._plain = False
        return helper

    def expectations(self, now: float) -> list[Expectation]:
        """The pending expectations (``conntrack -L expect``; replay.format_expect_line)."""
        return self.expect.live(now)

    # ------------------------------------------------------------------ TCP

    def _tcp(
        self,
        key: bytes,
        l3: int,
        data: bytes,
        l4off: int,
        l4len: int,
        seq: int,
        ack: int,
        flags: int,
        win: int,
        doff: int,
        now: float,
    ) -> Verdict:
        s = self.settings
        bad = tcp.error(data, l4off, l4len, flags, doff, s.checksum)
        if bad is not None:
            return self._invalid(bad)
        for _ in range(2):  # a REPEAT (reopen) runs the packet a second time, as the kernel
            conn = self._get(key)
            if conn is not None and conn.expires <= now:
                self.table.delete(conn, "expired")
                conn = None
            if conn is None:
                alen = 4 if l3 == 4 else 16
                rkey = key[alen : 2 * alen] + key[:alen] + key[-2:] + key[-4:-2]
                conn = self._alloc(key, rkey, l3, IPPROTO_TCP, now)
                if conn is None:
                    return _V_DROPPED
                is_new = True
                d = 0
            else:
                is_new = False
                d = 0 if key == conn.key else 1
            old_state = conn.state
            old_status = conn.status
            r = tcp.packet(conn, d, data, l4off, l4len, seq, ack, flags, win, doff, now, s)
            if r is _OUT_REPEAT:
                self.stats["repeat"] += 1
                if not is_new:
                    self.table.delete(conn, "reopened")
                continue
            if conn.status & _HELPER and (r is None or r is _OUT_IGNORE or r is _OUT_KILL):
                r = self._help(conn, d, data, l4off + doff, l4off + l4len, seq, now) or r
            return self._finish(conn, d, r, is_new, old_state, old_status)
        return self._invalid("tcp: repeated reopen")

    # ------------------------------------------------------------------ UDP, GRE, generic

    def _simple(
        self, pkt: Packet, now: float, tracker: Callable[[Conn, float, Settings], str | None]
    ) -> Verdict:
        proto = pkt.proto
        if proto in PORTED_PROTOS:
            key = make_key(proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
            rkey = make_key(proto, pkt.dst, pkt.src, pkt.dport, pkt.sport)
        else:
            key = make_key(proto, pkt.src, pkt.dst)
            rkey = make_key(proto, pkt.dst, pkt.src)
        conn, d, is_new = self._resolve(key, rkey, pkt.l3, proto, now)
        if conn is None:
            return _V_DROPPED
        old_state = conn.state
        old_status = conn.status
        r = tracker(conn, now, self.settings)
        if r is None and conn.status & _HELPER:  # UDP helpers (TFTP): payload after 8 bytes
            r = self._help(conn, d, pkt.data, pkt.l4off + 8, pkt.l4off + pkt.l4len, 0, now)
        return self._finish(conn, d, r, is_new, old_state, old_status)

    def _sctp(self, pkt: Packet, now: float) -> Verdict:
        s = self.settings
        bad = sctp.error(pkt.data, pkt.l4off, pkt.l4len, s.checksum)
        if bad is not None:
            return self._invalid(bad)
        key = make_key(IPPROTO_SCTP, pkt.src, pkt.dst, pkt.sport, pkt.dport)
        rkey = make_key(IPPROTO_SCTP, pkt.dst, pkt.src, pkt.dport, pkt.sport)
        conn, d, is_new = self._resolve(key, rkey, pkt.l3, IPPROTO_SCTP, now)
        if conn is None:
            return _V_DROPPED
        old_state = conn.state
        old_status = conn.status
        r = sctp.packet(conn, d, pkt.data, pkt.l4off, pkt.l4len, now, s)
        return self._finish(conn, d, r, is_new, old_state, old_status)

    # ------------------------------------------------------------------ ICMP

    def _icmp(self, pkt: Packet, now: float) -> Verdict:
        """kernel nf_conntrack_icmpv4_error() then the ICMP tracker."""
        itype = pkt.icmp_type
        if itype > icmp.NR_ICMP_TYPES:
            return self._invalid("invalid icmp type")
        if itype in icmp.ICMP_ERROR_TYPES:
            return self._related(pkt, now)
        return self._icmp_query(pkt, now, icmp.ICMP_INVERSE, icmp.packet)

    def _icmpv6(self, pkt: Packet, now: float) -> Verdict:
        """kernel nf_conntrack_icmpv6_error() then the ICMPv6 tracker."""
        itype = pkt.icmp_type
        if itype in icmp.ICMPV6_UNTRACKED_TYPES:
            return _V_UNTRACKED
        if itype == icmp.ICMPV6_REDIRECT and pkt.icmp_code == 0:
            return self._icmpv6_redirect(pkt, now)
        if itype <= icmp.ICMPV6_ERROR_MAX:
            return self._related(pkt, now)
        return self._icmp_query(pkt, now, icmp.ICMPV6_INVERSE, icmp.packet_v6)

    def _icmpv6_redirect(self, pkt: Packet, now: float) -> Verdict:
        """kernel nf_conntrack_icmpv6_redirect(): only a link-local router may redirect."""
        if pkt.ttl != 255 or pkt.src[:2] != b"\xfe\x80":
            return self._invalid("invalid saddr or hoplimit for redirect")
        if pkt.inner is None:
            return self._invalid("redirect without options")
        return self._related(pkt, now)

    def _icmp_query(
        self,
        pkt: Packet,
        now: float,
        inverse: dict[int, int],
        tracker: Callable[[Conn, int, float, Settings], str | None],
    ) -> Verdict:
        itype = pkt.icmp_type
        code = pkt.icmp_code
        key = make_key(pkt.proto, pkt.src, pkt.dst, pkt.icmp_id, (itype << 8) | code)
        conn = self.table.get(key, now)
        if conn is None:
            rtype = inverse.get(itype)
            if rtype is None:
                # kernel init_conntrack(): nf_ct_invert_tuple() fails, no entry, no ct
                return self._invalid("icmp: type has no reply type, not a query")
            rkey = make_key(pkt.proto, pkt.dst, pkt.src, pkt.icmp_id, (rtype << 8) | code)
            conn = self._alloc(key, rkey, pkt.l3, pkt.proto, now)
            if conn is None:
                return _V_DROPPED
            is_new = True
            d = 0
            orig_type = itype
        else:
            is_new = False
            d = 0 if key == conn.key else 1
            orig_type = conn.key[-2]
        old_state = conn.state
        old_status = conn.status
        r = tracker(conn, orig_type, now, self.settings)
        return self._finish(conn, d, r, is_new, old_state, old_status)

    def _related(self, pkt: Packet, now: float) -> Verdict:
        """kernel nf_conntrack_inet_error(): is the quoted datagram one of our connections?"""
        inner = pkt.inner
        if (
            inner is None
            or inner.drop is not None
            or (inner.frag is not None and inner.frag.offset != 0)
        ):
            return self._invalid("icmp error: quoted datagram unusable")
        iproto = inner.proto
        avail = len(inner.data) - inner.l4off
        if iproto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            if avail < 8:
                return self._invalid("icmp error: quoted header truncated")
            inverse = icmp.ICMP_INVERSE if iproto == IPPROTO_ICMP else icmp.ICMPV6_INVERSE
            rtype = inverse.get(inner.icmp_type)
            if rtype is None:
                return self._invalid("icmp error: quoted icmp cannot be inverted")
            ikey = make_key(
                iproto, inner.dst, inner.src, inner.icmp_id, (rtype << 8) | inner.icmp_code
            )
        elif iproto in PORTED_PROTOS or iproto == IPPROTO_TCP:
            if avail < 4:
                return self._invalid("icmp error: quoted header truncated")
            ikey = make_key(iproto, inner.dst, inner.src, inner.dport, inner.sport)
        else:
            ikey = make_key(iproto, inner.dst, inner.src)
        conn = self.table.get(ikey, now)
        if conn is None:
            return self._invalid("icmp error: no matching connection")
        d = 0 if ikey == conn.key else 1
        ct_daddr = decode_key(conn.key if d == 0 else conn.rkey).dst
        if pkt.dst != ct_daddr:
            return self._invalid("icmp error: outer daddr != inner")
        return (RELATED, d, conn)


def _can_early_drop(conn: Conn) -> bool:
    if conn.proto == IPPROTO_TCP:
        return tcp.can_early_drop(conn)
    if conn.proto == IPPROTO_SCTP:
        return sctp.can_early_drop(conn)
    return False
