"""Deterministic NAT binding: which reply tuple a NEW connection gets (kernel nf_nat_core.c).

Why deterministic: both nodes of a pair track every packet. If each chose a NATed source port
at random (the kernel: get_random_u16() in nf_nat_l4proto_unique_tuple()), the passive node's
table would hold different mappings from the active one's, and after a failover the replies to
the public port would match nothing. Here the choice is a function of the original tuple, the
rule set, a shared seed and the set of reply tuples in use -- which is the same on both nodes
as long as their tables agree. Where they can disagree (a node restarted, missed a packet, or
saw an entry expire a few milliseconds apart), ct_sync carries the binding (the reply key and
the SRC_NAT/DST_NAT bits) and the receiver's entry replaces its own (docs/nat.md §4).

The steps follow the kernel's get_unique_tuple() / nf_nat_setup_info():

1. DNAT (NF_INET_PRE_ROUTING): the first DNAT rule matching the original tuple sets the
   destination (address, and port for a forward that maps ports).
2. SNAT (NF_INET_POST_ROUTING): the first SNAT rule matching the tuple after DNAT sets the
   source address (several addresses: chosen by a hash of the source and destination, kernel
   find_best_ips_proto()). The source port (ICMP: the echo id) is kept if it is in the range
   and the resulting reply tuple is free; otherwise a deterministic walk through the range
   starting at a keyed hash of the original key finds the first free one (kernel
   nf_nat_l4proto_unique_tuple(), attempts capped at 128 and halved per round).
3. Null binding: a connection whose reply tuple is already taken by another entry (only
   possible once NAT is on, e.g. the node itself talking from a mapped address:port) gets its
   source port remapped the same way (kernel __nf_nat_alloc_null_binding()).

"In use" means: the candidate reply key is in the engine's table under a live entry (an
expired entry counts as free, kernel nf_conntrack_tuple_taken()).

DEVIATION(kernel): no find_appropriate_src() (reusing the mapping of another connection from
the same source address and port when the port cannot be kept): keeping the port gives the
same mapping in the common case; pinned by tests/unit/nat/test_alloc.py::test_keeps_source_port.
DEVIATION(kernel): no nf_nat_used_tuple_harder() (reusing the tuple of a closing TCP entry):
a TIME_WAIT entry keeps its tuple until it expires.
DEVIATION(kernel): a protocol without ports (GRE outside PPTP, generic) whose reply tuple is
taken fails with a drop reason instead of clashing at confirmation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.keys import IPPROTO_ICMP, IPPROTO_ICMPV6, PORTED_PROTOS, make_key
from pmct.nat.rules import NatConfig, SnatRule

__all__ = ["MAX_ATTEMPTS", "Nat", "default_port_range"]

MAX_ATTEMPTS: Final = 128  # kernel NF_NAT_MAX_ATTEMPTS
_SRC_NAT: Final = int(Status.SRC_NAT)
_DST_NAT: Final = int(Status.DST_NAT)
_NAT_DONE: Final = int(Status.SRC_NAT_DONE | Status.DST_NAT_DONE)
_ICMPS: Final = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})
# Protocols whose source "port" NAT may change: real ports, and the ICMP id. GRE keys are
# changed only for PPTP (kernel: "If there is no master conntrack we are not PPTP").
_WALKABLE: Final = frozenset({6, 17, 132, 136, 1, 58})


def default_port_range(proto: int, sport: int) -> tuple[int, int]:
    """(first, size) of the range a port may be remapped into when no range is given: the
    kernel keeps the port's class (below 512 / below 1024 / the rest); ICMP ids use all."""
    if proto in _ICMPS:
        return (0, 65536)
    if sport < 512:
        return (1, 511)
    if sport < 1024:
        return (600, 424)
    return (1024, 64512)


def _split(key: bytes) -> tuple[bytes, bytes, int, int]:
    n = len(key)
    if n == 12 or n == 36:
        a = (n - 4) >> 1
        p = 2 * a
        return (key[:a], key[a:p], int.from_bytes(key[p : p + 2]), int.from_bytes(key[p + 2 :]))
    if n == 13 or n == 37:
        a = (n - 5) >> 1
        p = 1 + 2 * a
        return (
            key[1 : 1 + a],
            key[1 + a : p],
            int.from_bytes(key[p : p + 2]),
            int.from_bytes(key[p + 2 :]),
        )
    a = (n - 1) >> 1
    return (key[1 : 1 + a], key[1 + a :], -1, -1)


class Nat:
    """The allocator the engine calls for every new connection (``bind``).

    Stateless apart from its counters: everything it needs about connections in use comes
    from the table it is given, so two instances with the same rules and seed fed the same
    table give the same answer.
    """

    __slots__ = ("config", "stats", "_dnat", "_hkey", "_snat")

    def __init__(self, config: NatConfig) -> None:
        self.config = config
        self._snat = config.snat
        self._dnat = config.dnat
        self._hkey = hashlib.blake2s(b"pmct-nat:" + config.seed).digest()
        self.stats = {
            "snat": 0,
            "dnat": 0,
            "kept": 0,
            "walked": 0,
            "null": 0,
            "failed": 0,
            "followed": 0,
        }

    def _hash(self, data: bytes) -> int:
        return int.from_bytes(hashlib.blake2s(data, digest_size=8, key=self._hkey).digest(), "big")

    def bind(self, conn: Conn, index: Mapping[bytes, Conn], now: float) -> str | None:
        """Give ``conn`` (new, unconfirmed, ``rkey`` the plain inverse) its NAT binding.

        Sets ``conn.rkey`` and the SRC_NAT / DST_NAT bits when something changes; returns
        None, or the reason the packet must be dropped (no free tuple).
        """
        if conn.status & _NAT_DONE:
            # bound already: an expected entry that follows its master (pmct/nat/ftp.py)
            return self._followed(conn, index, now)
        key = conn.key
        proto = conn.proto
        src, dst, sport, dport = _split(key)
        icmp = proto in _ICMPS
        # the reply key's fixed part: the ICMP reply type/code (the id is the mapped field)
        rfixed = _split(conn.rkey)[3] if icmp else 0
        nsrc, ndst, nsport, ndport = src, dst, sport, dport

        for d in self._dnat:
            if d.matches(proto, src, dst, -1 if icmp else dport):
                ndst = d.to
                if not icmp:
                    ndport = d.target_port(dport)
                self.stats["dnat"] += 1
                break

        rule: SnatRule | None = None
        for s in self._snat:
            if s.matches(proto, src, ndst):
                rule = s
                break

        def rkey_of(a: bytes, p: int) -> bytes:
            if icmp:
                return make_key(proto, ndst, a, p, rfixed)
            if proto in PORTED_PROTOS or proto == 6:
                return make_key(proto, ndst, a, ndport, p)
            return make_key(proto, ndst, a)

        def free(k: bytes) -> bool:
            c = index.get(k)
            return c is None or c is conn or c.expires <= now

        if rule is not None:
            self.stats["snat"] += 1
            cands = [a for a in rule.to if len(a) == len(src)]
            nsrc = cands[0] if len(cands) == 1 else cands[self._hash(src + ndst) % len(cands)]
            lo, hi = rule.ports
            if rule.ports != (0, 0):
                first, size = lo, hi - lo + 1
            else:
                first, size = default_port_range(proto, sport)
            if proto not in _WALKABLE:
                if not free(rkey_of(nsrc, sport)):
                    return self._fail()
            elif first <= sport < first + size and free(rkey_of(nsrc, sport)):
                self.stats["kept"] += 1
            else:
                p = self._walk(key, first, size, nsrc, rkey_of, free)
                if p < 0:
                    return self._fail()
                nsport = p
        elif nsrc == src and ndst == dst and ndport == dport:
            # no rule: only a clash with a NATed entry needs a null binding
            if free(conn.rkey):
                return None
            if proto not in _WALKABLE:
                return self._fail()
            first, size = default_port_range(proto, sport)
            self.stats["null"] += 1
            p = self._walk(key, first, size, nsrc, rkey_of, free)
            if p < 0:
                return self._fail()
            nsport = p
        elif not free(rkey_of(nsrc, sport)):
            # DNAT target taken (that client already talks to the inside host directly):
            # the kernel's POSTROUTING null binding remaps the source port
            if proto not in _WALKABLE:
                return self._fail()
            first, size = default_port_range(proto, sport)
            self.stats["null"] += 1
            p = self._walk(key, first, size, nsrc, rkey_of, free)
            if p < 0:
                return self._fail()
            nsport = p

        conn.rkey = rkey_of(nsrc, nsport)
        status = conn.status
        if nsrc != src or nsport != sport:
            status |= _SRC_NAT
        if ndst != dst or ndport != dport:
            status |= _DST_NAT
        conn.status = status
        return None

    def _followed(self, conn: Conn, index: Mapping[bytes, Conn], now: float) -> str | None:
        """An entry bound by nf_nat_follow_master() (pmct/nat/ftp.py ``follow_master``): keep
        its reply key if free; else, when its source was changed, walk the source port as
        get_unique_tuple() does for the SRC manip (range without ports: the default range).

        DEVIATION(kernel): the kernel checks uniqueness after the SRC manip only, on the tuple
        whose destination is not yet rewritten, and lets a DST clash drop at confirmation; pmct
        checks the final reply key once and drops at once with the usual reason.
        pinned by tests/unit/nat/test_nat_ftp.py::test_follow_master_walks_taken_port
        """
        self.stats["followed"] += 1

        def free(k: bytes) -> bool:
            c = index.get(k)
            return c is None or c is conn or c.expires <= now

        if free(conn.rkey):
            return None
        if not conn.status & _SRC_NAT:
            return self._fail()
        proto = conn.proto
        rsrc, rdst, rsport, _ = _split(conn.rkey)
        sport = _split(conn.key)[2]

        def rkey_of(a: bytes, p: int) -> bytes:
            return make_key(proto, rsrc, a, rsport, p)

        first, size = default_port_range(proto, sport)
        p = self._walk(conn.key, first, size, rdst, rkey_of, free)
        if p < 0:
            return self._fail()
        conn.rkey = rkey_of(rdst, p)
        return None

    def _walk(
        self,
        key: bytes,
        first: int,
        size: int,
        nsrc: bytes,
        rkey_of: Callable[[bytes, int], bytes],
        free: Callable[[bytes], bool],
    ) -> int:
        """First free port from a keyed hash of the original key (kernel
        nf_nat_l4proto_unique_tuple(), with the hash in place of get_random_u16())."""
        self.stats["walked"] += 1
        off = self._hash(key)
        attempts = min(size, MAX_ATTEMPTS)
        rnd = 0
        while True:
            for i in range(attempts):
                p = first + (off + i) % size
                if free(rkey_of(nsrc, p)):
                    return p
            if attempts >= size or attempts < 16:
                return -1
            attempts //= 2
            rnd += 1
            off = self._hash(key + rnd.to_bytes(2, "big"))

    def _fail(self) -> str:
        self.stats["failed"] += 1
        return "nat: no free tuple"
