"""Expectations: "a connection matching this tuple and mask is RELATED to that master"
(kernel net/netfilter/nf_conntrack_expect.c, the lookup in nf_conntrack_core.c init_conntrack()).

A helper that reads a control channel (FTP's PORT/PASV/EPRT/EPSV, TFTP's read/write request)
announces the data connection it expects; the first packet of a new entry that matches an
expectation makes that entry EXPECTED, with ``master`` set ("Welcome, Mr. Bond. We've been
expecting you..."), so its packets are RELATED until the first reply.

Rules (each one the kernel's):
1. An expectation is a tuple plus a mask (nf_ct_expect_init()): the destination address, the
   destination port, the protocol and the address family always match exactly; the source
   address and the source port match under the mask (FTP and TFTP expect "any source port").
2. Lookup (nf_ct_find_expectation()) happens when a new entry is created, before the L4
   tracker runs; the newest matching expectation wins; it is used up (unlinked) at once unless
   PERMANENT, even if the tracker then calls the packet INVALID. It is not used while its
   master is unconfirmed or dying.
3. Adding (nf_ct_expect_related() -> __nf_ct_expect_check()): an identical expectation of the
   same master replaces the old one (a retransmitted PORT refreshes it); one of another master
   that overlaps it (expect_clash(): equal under the intersection of the masks) refuses the new
   one; a master over its policy's ``max_expected`` loses its oldest expectation of that class
   (evict_oldest_expect()); the whole table holds at most ``max_entries``
   (nf_ct_expect_max = nf_ct_expect_hsize * 4, hsize = buckets / 256: 4096 by default).
4. Lifetime: the helper policy's timeout from creation (nf_ct_expect_insert()); an expectation
   dies with its master (nf_ct_remove_expectations() from nf_ct_delete()).
5. No clock and no timers here: an expectation whose deadline passed counts as gone wherever it
   is met (lookup, add, listing), and ``expire(now)`` sweeps the rest (the kernel's per-
   expectation timer, done lazily, as the connection table does).

Events (for ``conntrack -E expect`` and ct_sync's EXPECT resource): with ``events`` on, every
insert appends ``(EXP_NEW, exp)`` and every unlink ``(EXP_DESTROY, exp)`` (kernel IPEXP_NEW /
IPEXP_DESTROY), numbered like the engine's EventType NEW / DESTROY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pmct.conntrack.constants import Status
from pmct.conntrack.keys import IPPROTO_TCP, make_key

if TYPE_CHECKING:
    from pmct.conntrack.conn import Conn
    from pmct.conntrack.helpers.base import ExpectPolicy

__all__ = [
    "EXPECT_INACTIVE",
    "EXPECT_PERMANENT",
    "EXPECT_USERSPACE",
    "EXP_DESTROY",
    "EXP_NEW",
    "ExpectTable",
    "Expectation",
    "expect_from_keys",
    "expect_init",
    "expect_max_for",
    "expectfn_name",
    "get_expectfn",
    "register_expectfn",
    "split_key",
]

# kernel include/uapi/linux/netfilter/nf_conntrack_common.h: NF_CT_EXPECT_*
EXPECT_PERMANENT: Final = 0x1
EXPECT_INACTIVE: Final = 0x2
EXPECT_USERSPACE: Final = 0x4

EXP_NEW: Final = 1  # = EventType.NEW
EXP_DESTROY: Final = 3  # = EventType.DESTROY

_CONFIRMED: Final = int(Status.CONFIRMED)
_DYING: Final = int(Status.DYING)
_INF: Final = float("inf")


# kernel nf_ct_helper_expectfn_register(): expectation callbacks by name, so that ctnetlink (here
# ct_sync's EXP_NAT) can name one ("nat-follow-master") and the receiver find it again.
_EXPECTFNS: dict[str, Callable[[Conn, Expectation], None]] = {}


def register_expectfn(name: str, fn: Callable[[Conn, Expectation], None]) -> None:
    _EXPECTFNS[name] = fn


def get_expectfn(name: str) -> Callable[[Conn, Expectation], None] | None:
    """kernel nf_ct_helper_expectfn_find_by_name()."""
    return _EXPECTFNS.get(name)


def expectfn_name(fn: Callable[[Conn, Expectation], None]) -> str | None:
    """kernel nf_ct_helper_expectfn_find_by_symbol()."""
    for name, f in _EXPECTFNS.items():
        if f is fn:
            return name
    return None


def expect_max_for(buckets: int) -> int:
    """kernel nf_conntrack_expect_init(): nf_ct_expect_max = max(buckets / 256, 1) * 4."""
    return max(buckets // 256, 1) * 4


def split_key(key: bytes) -> tuple[int, bytes, bytes, int, int] | None:
    """(proto, src, dst, sport, dport) of a TCP or ported key (keys.py layouts), else None."""
    n = len(key)
    if n == 12 or n == 36:
        a = (n - 4) >> 1
        return (
            IPPROTO_TCP,
            key[:a],
            key[a : 2 * a],
            (key[2 * a] << 8) | key[2 * a + 1],
            (key[2 * a + 2] << 8) | key[2 * a + 3],
        )
    if n == 13 or n == 37:
        a = (n - 5) >> 1
        return (
            key[0],
            key[1 : 1 + a],
            key[1 + a : 1 + 2 * a],
            (key[1 + 2 * a] << 8) | key[2 + 2 * a],
            (key[3 + 2 * a] << 8) | key[4 + 2 * a],
        )
    return None


def _bucket(proto: int, dst: bytes, dport: int) -> bytes:
    """Index key: what nf_ct_expect_dst_hash() hashes (the parts that match exactly)."""
    return bytes((proto, dport >> 8, dport & 0xFF)) + dst


def _masked_eq(a: bytes, b: bytes, mask: bytes) -> bool:
    return all((x ^ y) & m == 0 for x, y, m in zip(a, b, mask, strict=True))


@dataclass(slots=True, eq=False)
class Expectation:
    """kernel struct nf_conntrack_expect: tuple + mask, master, class, flags, deadline.

    ``src``/``sport`` are the tuple's source half and ``src_mask``/``sport_mask`` its mask;
    ``helper`` is the helper the *expected* entry gets (kernel exp->helper; None for FTP and
    TFTP: the data connection has no helper of its own).
    ``expectfn``, ``saved_port`` and ``dir`` are the kernel's NAT fields (exp->expectfn,
    exp->saved_proto, exp->dir): a NAT helper (pmct/nat/ftp.py) sets them so that the expected
    entry's NAT binding follows its master; the engine calls ``expectfn(conn, exp)`` when the
    expectation is used (kernel init_conntrack()).
    """

    l3: int
    proto: int
    src: bytes
    src_mask: bytes
    sport: int
    sport_mask: int
    dst: bytes
    dport: int
    master: Conn
    klass: int = 0
    flags: int = 0
    helper: Any = None
    expires: float = 0.0
    id: int = 0
    expectfn: Callable[[Conn, Expectation], None] | None = None
    saved_port: int = 0
    dir: int = 0

    def matches(self, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """kernel nf_ct_tuple_mask_cmp(tuple, &exp->tuple, &exp->mask)."""
        if dport != self.dport or proto != self.proto or dst != self.dst:
            return False
        if (sport ^ self.sport) & self.sport_mask:
            return False
        m = self.src_mask
        if m[0] == 0xFF and m == b"\xff" * len(m):
            return src == self.src
        return len(src) == len(m) and _masked_eq(src, self.src, m)

    @property
    def master_helper(self) -> Any:
        """The master's helper (what ``conntrack -L expect`` names as ``helper=``)."""
        return self.master.helper

    @property
    def key(self) -> bytes:
        """The expected tuple as a packed key (keys.py layout), as ct_sync carries it."""
        return make_key(self.proto, self.src, self.dst, self.sport, self.dport)

    @property
    def mask_key(self) -> bytes:
        """The mask in the same layout: the source half from the mask, the destination half
        all ones (it always matches exactly; ctnetlink_exp_dump_mask() sends it that way)."""
        ones = b"\xff" * len(self.dst)
        return make_key(self.proto, self.src_mask, ones, self.sport_mask, 0xFFFF)


def expect_init(
    master: Conn,
    klass: int,
    l3: int,
    saddr: bytes | None,
    daddr: bytes,
    proto: int,
    sport: int | None,
    dport: int,
) -> Expectation:
    """kernel nf_ct_expect_init(): a NULL source address or port is a wildcard (mask 0)."""
    alen = 4 if l3 == 4 else 16
    if saddr is not None:
        src, src_mask = saddr[:alen], b"\xff" * alen
    else:
        src = src_mask = bytes(alen)
    if sport is not None:
        sp, sp_mask = sport, 0xFFFF
    else:
        sp = sp_mask = 0
    return Expectation(l3, proto, src, src_mask, sp, sp_mask, daddr[:alen], dport, master, klass)


def expect_from_keys(
    master: Conn, key: bytes, mask: bytes, *, klass: int = 0, flags: int = 0
) -> Expectation | None:
    """The expectation a ct_sync record describes (tuple and mask as keys; the inverse of
    ``Expectation.key`` / ``mask_key``), or None for keys that cannot be expected (no ports,
    or key and mask of different layouts)."""
    parts = split_key(key)
    mparts = split_key(mask) if len(mask) == len(key) else None
    if parts is None or mparts is None:
        return None
    proto, src, dst, sport, dport = parts
    _, src_mask, _, sport_mask, _ = mparts
    return Expectation(
        4 if len(src) == 4 else 6,
        proto,
        bytes(x & m for x, m in zip(src, src_mask, strict=True)),
        src_mask,
        sport & sport_mask,
        sport_mask,
        dst,
        dport,
        master,
        klass,
        flags,
    )


def _same(a: Expectation, b: Expectation) -> bool:
    """kernel expect_matches(): equal tuples and equal masks."""
    return (
        a.dport == b.dport
        and a.proto == b.proto
        and a.dst == b.dst
        and a.src == b.src
        and a.sport == b.sport
        and a.src_mask == b.src_mask
        and a.sport_mask == b.sport_mask
    )


def _clash(a: Expectation, b: Expectation) -> bool:
    """kernel expect_clash(): equal under the intersection of the two masks."""
    if a.dport != b.dport or a.proto != b.proto or a.dst != b.dst:
        return False
    if (a.sport ^ b.sport) & a.sport_mask & b.sport_mask:
        return False
    if len(a.src) != len(b.src):
        return False
    both = zip(a.src, b.src, a.src_mask, b.src_mask, strict=True)
    return all((x ^ y) & m1 & m2 == 0 for x, y, m1, m2 in both)


class ExpectTable:
    """All pending expectations of one engine, indexed by their exact part (destination).

    ``count`` is the number of entries held (expired ones not yet met included, like the
    kernel's expect_count between a deadline and its timer).
    """

    __slots__ = ("_by_master", "_due", "_index", "_next_id", "count", "events", "max_entries")

    def __init__(self, max_entries: int = 4096, *, events: bool = False) -> None:
        self._index: dict[bytes, list[Expectation]] = {}  # oldest first, like hlist reversed
        self._by_master: dict[Conn, list[Expectation]] = {}  # oldest first
        self._next_id = 1
        self._due = _INF  # no deadline can have passed before this
        self.count = 0
        self.max_entries = max_entries
        self.events: list[tuple[int, Expectation]] | None = [] if events else None

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Expectation]:
        """Every held expectation in creation order (expired ones not yet swept included)."""
        items = [e for lst in self._by_master.values() for e in lst]
        items.sort(key=lambda e: e.id)
        return iter(items)

    def live(self, now: float) -> list[Expectation]:
        """The expectations still waiting at ``now`` (theirs and their master's deadline not
        passed), in creation order."""
        return [e for e in self if e.expires > now and e.master.expires > now]

    def of_master(self, master: Conn) -> list[Expectation]:
        return list(self._by_master.get(master, ()))

    # ------------------------------------------------------------------ lookup

    def find(self, key: bytes, now: float) -> Expectation | None:
        """kernel nf_ct_find_expectation(unlink=true) for a new entry's original key."""
        if not self.count:
            return None
        parts = split_key(key)
        if parts is None:
            return None
        proto, src, dst, sport, dport = parts
        bucket = self._index.get(_bucket(proto, dst, dport))
        if not bucket:
            return None
        found = None
        for exp in reversed(bucket[:]):  # newest first (hlist_add_head)
            if exp.flags & EXPECT_INACTIVE or not exp.matches(proto, src, dst, sport, dport):
                continue
            if exp.expires <= now:  # its timer fired: it is not there any more
                self._unlink(exp)
                continue
            found = exp
            break
        if found is None:
            return None
        # "If master is not in hash table yet (ie. packet hasn't left this machine yet), how
        # can other end know about expected?"; a dying master's expectations are going too.
        master = found.master
        mstatus = master.status
        if not mstatus & _CONFIRMED or mstatus & _DYING:
            return None
        if master.expires <= now:
            # The master's deadline passed: the kernel's gc worker deletes it, and its
            # expectations with it, some time after; pmct's table removes expired entries
            # when it meets them, so the expectation goes now (rule 5).
            self._unlink(found)
            return None
        if not found.flags & EXPECT_PERMANENT:
            self._unlink(found)
        return found

    # ------------------------------------------------------------------ add / remove

    def related(self, exp: Expectation, policy: ExpectPolicy | None, now: float) -> str | None:
        """kernel nf_ct_expect_related(): insert ``exp`` or say why not (the helper then drops
        the packet). ``policy`` is the master's helper policy for ``exp.klass``."""
        bucket = self._index.get(_bucket(exp.proto, exp.dst, exp.dport))
        if bucket:
            for i in reversed(bucket[:]):
                if i.expires <= now:
                    self._unlink(i)
                    continue
                if i.master is exp.master and _same(i, exp):
                    if i.klass != exp.klass:
                        return "expectation already exists"
                    self._unlink(i)  # refreshed by the new one
                    break
                if _clash(i, exp):
                    return "expectation clashes with another"
        if policy is not None and policy.max_expected:
            mine = self._by_master.get(exp.master)
            if mine:
                for i in [i for i in mine if i.expires <= now]:
                    self._unlink(i)
                same = [i for i in mine if i.klass == exp.klass]
                if len(same) >= policy.max_expected:
                    self._unlink(same[0])  # evict_oldest_expect()
                    if len(same) - 1 >= policy.max_expected:
                        return "too many expectations"
        if self.count >= self.max_entries:
            self.expire(now, force=True)
            if self.count >= self.max_entries:
                return "expectation table full"
        exp.expires = now + (policy.timeout if policy is not None else 0.0)
        exp.id = self._next_id
        self._next_id += 1
        key = _bucket(exp.proto, exp.dst, exp.dport)
        lst = self._index.get(key)
        if lst is None:
            self._index[key] = [exp]
        else:
            lst.append(exp)
        lst = self._by_master.get(exp.master)
        if lst is None:
            self._by_master[exp.master] = [exp]
        else:
            lst.append(exp)
        self.count += 1
        if exp.expires < self._due:
            self._due = exp.expires
        if self.events is not None:
            self.events.append((EXP_NEW, exp))
        return None

    def find_same(self, exp: Expectation) -> Expectation | None:
        """The held expectation of the same master with the same tuple and mask, if any."""
        for i in self._by_master.get(exp.master, ()):
            if i.klass == exp.klass and _same(i, exp):
                return i
        return None

    def insert_synced(
        self,
        exp: Expectation,
        expires: float,
        policy: ExpectPolicy | None,
        now: float,
        *,
        authoritative: bool,
    ) -> bool:
        """Store an expectation received from the peer (ct_sync EXP_UPDATE; kernel: conntrackd
        -> ctnetlink_create_expect() -> nf_ct_expect_related()). The local copy of the same
        expectation is replaced when ``authoritative`` (the peer is the master), kept
        otherwise; a clashing expectation of another master goes the same way. False when
        nothing was stored."""
        same = self.find_same(exp)
        if same is not None:
            if not authoritative:
                return False
            self._unlink(same)
        bucket = self._index.get(_bucket(exp.proto, exp.dst, exp.dport))
        for i in list(bucket or ()):
            if i.master is not exp.master and _clash(i, exp):
                if not authoritative:
                    return False
                self._unlink(i)
        if self.related(exp, policy, now) is not None:
            return False
        # DEVIATION(kernel): nf_ct_expect_insert() restarts the helper policy's full timeout
        # for an injected expectation; the peer's remaining time is the better estimate.
        # pinned by tests/unit/conntrack/test_expect.py::test_synced_expectation_keeps_its_deadline
        exp.expires = expires
        if expires < self._due:
            self._due = expires
        return True

    def remove(self, exp: Expectation) -> bool:
        """kernel nf_ct_remove_expect() (ctnetlink delete, sync DELETE): False if not held."""
        lst = self._by_master.get(exp.master)
        if lst is None or not any(e is exp for e in lst):
            return False
        self._unlink(exp)
        return True

    def remove_master(self, master: Conn) -> int:
        """kernel nf_ct_remove_expectations(): the master is being deleted."""
        lst = self._by_master.get(master)
        if not lst:
            return 0
        n = len(lst)
        for exp in lst[:]:
            self._unlink(exp)
        return n

    def _unlink(self, exp: Expectation) -> None:
        """kernel nf_ct_unlink_expect_report()."""
        key = _bucket(exp.proto, exp.dst, exp.dport)
        lst = self._index.get(key)
        if lst is not None:
            for j, e in enumerate(lst):
                if e is exp:
                    del lst[j]
                    break
            if not lst:
                del self._index[key]
        lst = self._by_master.get(exp.master)
        if lst is not None:
            for j, e in enumerate(lst):
                if e is exp:
                    del lst[j]
                    break
            if not lst:
                del self._by_master[exp.master]
        self.count -= 1
        if self.events is not None:
            self.events.append((EXP_DESTROY, exp))

    def expire(self, now: float, *, force: bool = False) -> int:
        """Drop every expectation whose deadline passed (the timers, run lazily)."""
        if not self.count or (now < self._due and not force):
            return 0
        gone = [e for e in self if e.expires <= now]
        for exp in gone:
            self._unlink(exp)
        self._due = min((e.expires for e in self), default=_INF)
        return len(gone)

    def drain_events(self) -> list[tuple[int, Expectation]]:
        ev = self.events
        if ev is None:
            return []
        self.events = []
        return ev
