"""Fragment reassembly as conntrack's defragmenters do it (nf_defrag_ipv4 / nf_defrag_ipv6).

conntrack never sees a fragment: nf_defrag_ipv4 hands IPv4 fragments to ip_defrag()
(kernel net/ipv4/ip_fragment.c, queue logic shared in net/ipv4/inet_fragment.c) and
nf_defrag_ipv6 hands IPv6 fragments to nf_ct_frag6_gather()
(net/ipv6/netfilter/nf_conntrack_reasm.c). Only the fragment that completes a datagram
continues, carrying the whole datagram; every other fragment is held (or dropped) and gets no
verdict. This module is that machinery without the sk_buffs: fragments in, a whole datagram
out, the clock passed in.

Rules, with the kernel's reasons:

- Queues are keyed as the kernel keys them: IPv4 (src, dst, id, protocol), IPv6 (src, dst,
  id). The kernel adds the defrag "user" (zone) and, for IPv6 link-local or multicast
  destinations, the input interface; pmct has one zone and one interface.
- A queue lives ipfrag_time (IPv4, 30 s) or nf_conntrack_frag6_timeout (IPv6, 60 s) from its
  first fragment; later fragments do not extend it ("RFC791 is wrong proposing to prolongate
  timer each fragment arrival by TTL"). An expired queue is dropped, its fragments with it.
- Memory: every queue costs ``qsize`` and every queued fragment its ``truesize``; while the
  total exceeds high_thresh (4 MiB per family) no fragment is accepted at all, not even for
  existing queues (inet_frag_find()). low_thresh has had no effect since Linux 4.17.
- Placement (ip_frag_queue() / nf_ct_frag6_queue()): the last fragment (no MF) fixes the
  length; data beyond it, a second different last fragment, or an empty fragment is
  corruption: IPv4 discards the whole queue, IPv6 only drops that fragment. A non-last
  IPv4 fragment is trimmed to a multiple of 8; an IPv6 one that is not a multiple of 8 kills
  its queue and passes on unreassembled (-EPROTO).
- Overlaps (inet_frag_queue_insert()): RFC 5722 for IPv6 and modern Linux for IPv4 discard
  the whole datagram when fragments overlap; a fragment lying wholly inside a run of
  fragments already queued back to back is a duplicate and is ignored, the queue kept.
  "Runs" matter: fragments appended in order at the tail form one run; a fragment placed
  elsewhere starts a run of its own, so a retransmission spanning two such runs counts as
  an overlap.
- IPv4 only: ipfrag_max_dist (64): when more than 64 fragments from the same source arrived
  since this queue's previous one, the queue is restarted (ip_frag_too_far()).
- Reassembly: the datagram gets the headers of the offset-0 fragment. IPv4: total length
  set, MF/offset cleared, DF set if the largest fragment had DF, ECN merged (RFC 3168 5.3;
  an impossible mix drops the datagram), header checksum recomputed; longer than 65535 is
  dropped. IPv6: the fragment header is removed and the header before it takes over its
  next header, payload length set, ECN merged.

Each of these rules is pinned by a test in tests/unit/wire/test_defrag.py that was replayed
through the kernel with kernel_oracle.py and gave the same outcome.

Memory is charged as the kernel charges it: ``truesize(len)`` per fragment and ``QSIZE4`` /
``QSIZE6`` per queue, the values of the oracle's kernel (Linux 6.18, frames injected with
AF_PACKET on a veth), measured with kernel_oracle.py by finding the number of queued
fragments at which a completing fragment is refused: 832 bytes per fragment for frames up to
240 bytes, 1280 up to 688, 2304 up to 1712, 4352 above (a 576-byte small-head cache, then
power-of-two kmalloc buckets, plus the sk_buff), 200 bytes per IPv4 queue (struct ipq), 184
per IPv6 queue (struct frag_queue).
DEVIATION(kernel): on a real NIC the driver's buffer sizes decide truesize; pmct always uses
the veth/AF_PACKET values above. Pinned by
tests/unit/wire/test_defrag.py::test_memory_threshold_refuses_fragments

``push`` returns the whole datagram when the last missing piece arrives, else None. One
exception mirrors the kernel's -EPROTO path: an IPv6 fragment whose length is not a multiple
of 8 kills its queue and is handed to conntrack as it is; ``push`` then returns it for
tracking, without its fragment header if it is a first fragment (conntrack reads the L4
header behind that header), unchanged otherwise (parsing it again yields a fragment, which the
engine calls INVALID as conntrack does).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Final

from pmct.wire.ipv4 import IP_DF, header_checksum
from pmct.wire.ipv6 import find_prev_fhdr
from pmct.wire.model import FragInfo, Packet

__all__ = ["COUNTERS", "QSIZE4", "QSIZE6", "Defragmenter", "truesize"]

IPFRAG_TIME: Final = 30.0  # net.ipv4.ipfrag_time
IP6FRAG_TIME: Final = 60.0  # net.netfilter.nf_conntrack_frag6_timeout
HIGH_THRESH: Final = 4 * 1024 * 1024  # ipfrag_high_thresh, nf_conntrack_frag6_high_thresh
IPFRAG_MAX_DIST: Final = 64  # net.ipv4.ipfrag_max_dist
QSIZE4: Final = 200  # sizeof(struct ipq), measured
QSIZE6: Final = 184  # sizeof(struct frag_queue), measured
MAX_DATAGRAM: Final = 65535

# Counter names (stable: they are part of the API and of the metrics).
COUNTERS: Final = (
    "reassembled",  # a datagram completed
    "timeout",  # a queue expired before completion
    "overlap",  # overlapping fragments: queue discarded
    "duplicate",  # fragment inside data already queued: ignored
    "bad_end",  # inconsistent last fragment / data beyond it
    "empty",  # fragment without payload
    "too_big",  # datagram or fragment end beyond 65535
    "bad_ecn",  # ECN codepoints that cannot be merged (RFC 3168 5.3)
    "no_memory",  # over high_thresh: fragment refused
    "too_far",  # IPv4 ipfrag_max_dist exceeded: queue restarted
    "unaligned",  # IPv6 non-last fragment not a multiple of 8: passed on unreassembled
    "not_fragment",  # push() called with a packet that is not a fragment
)

_OK: Final = 0
_DUP: Final = 1
_OVERLAP: Final = 2

# RFC 3168 5.3 (kernel ip_frag_ecn_table[]): bit (1 << ecn codepoint) of every fragment ORed.
_NOT_ECT: Final = 1
_ECT_1: Final = 2
_ECT_0: Final = 4
_CE: Final = 8


def truesize(ip_len: int) -> int:
    """skb->truesize of an IP datagram received the way the oracle injects it.

    The Ethernet frame (14 bytes more) sits in a head of SKB_DATA_ALIGN(frame + 16 bytes
    of reserved link-layer space) plus 320 bytes of skb_shared_info; heads up to 576 bytes
    come from the small-head cache, larger ones from the next power-of-two kmalloc bucket;
    256 bytes of struct sk_buff come on top.
    """
    head = ((ip_len + 14 + 16 + 63) & ~63) + 320
    buf = 576 if head <= 576 else 1 << (head - 1).bit_length()
    return buf + 256


def _ecn_merge(bits: int) -> int:
    """ECN value to OR into the reassembled header, or -1 to drop the datagram."""
    if bits & _NOT_ECT and bits & (_ECT_1 | _ECT_0 | _CE):
        return -1
    if bits & _CE and bits & (_ECT_1 | _ECT_0):
        return 3
    return 0


class _Queue:
    """One datagram being reassembled (kernel struct ipq / frag_queue)."""

    __slots__ = (
        "deadline",
        "ecn",
        "first_in",
        "frags",
        "head",
        "last_in",
        "length",
        "max_df_size",
        "max_size",
        "mem",
        "meat",
        "nexthdr",
        "nhoff",
        "qsize",
        "rid",
        "run_ends",
        "run_starts",
        "src",
    )

    def __init__(self, src: bytes, deadline: float, qsize: int) -> None:
        self.src = src
        self.deadline = deadline
        self.qsize = qsize
        self.rid = 0
        self.max_size = 0
        self.max_df_size = 0
        self.reset()

    def reset(self) -> None:
        self.first_in = False
        self.last_in = False
        self.length = 0  # kernel q.len: end of the datagram as known so far
        self.meat = 0  # bytes queued
        self.ecn = 0
        self.mem = self.qsize
        self.frags: list[tuple[int, bytes]] = []
        self.run_starts: list[int] = []  # runs of adjacent fragments, sorted, disjoint
        self.run_ends: list[int] = []
        self.head = b""  # headers of the offset-0 fragment
        self.nhoff = 0  # IPv6: offset of the next-header byte to rewrite
        self.nexthdr = 0  # IPv6: the fragment header's next header (first fragment)

    def insert(self, offset: int, end: int) -> int:
        """kernel inet_frag_queue_insert(): _OK (queued), _DUP or _OVERLAP."""
        starts = self.run_starts
        ends = self.run_ends
        if not starts:
            starts.append(offset)
            ends.append(end)
            return _OK
        tail_end = ends[-1]  # end of the tail fragment = end of the last run
        if tail_end < end:
            if offset < tail_end:
                return _OVERLAP
            if offset == tail_end:
                ends[-1] = end  # appended to the last run
            else:
                starts.append(offset)
                ends.append(end)
            return _OK
        # the kernel's binary search over runs: find one that intersects [offset, end)
        i = bisect_right(starts, offset)
        if i and ends[i - 1] > offset:
            return _DUP if end <= ends[i - 1] else _OVERLAP
        if i < len(starts) and starts[i] < end:
            return _OVERLAP
        starts.insert(i, offset)
        ends.insert(i, end)
        return _OK

    def payload(self) -> bytes:
        self.frags.sort(key=_first)
        return b"".join([p for _, p in self.frags])


def _first(item: tuple[int, bytes]) -> int:
    return item[0]


class Defragmenter:
    """IPv4 and IPv6 fragment queues (pure: the caller passes ``now`` in seconds).

    Args:
        timeout4 / timeout6: queue lifetime (ipfrag_time 30 s; nf_conntrack_frag6_timeout
            60 s).
        high_thresh4 / high_thresh6: memory above which fragments are refused (4 MiB).
        max_dist: ipfrag_max_dist (64; 0 disables the check).

    ``counters`` counts what happened, by the names in ``COUNTERS``.
    """

    def __init__(
        self,
        *,
        timeout4: float = IPFRAG_TIME,
        timeout6: float = IP6FRAG_TIME,
        high_thresh4: int = HIGH_THRESH,
        high_thresh6: int = HIGH_THRESH,
        max_dist: int = IPFRAG_MAX_DIST,
    ) -> None:
        self.timeout4 = timeout4
        self.timeout6 = timeout6
        self.high_thresh4 = high_thresh4
        self.high_thresh6 = high_thresh6
        self.max_dist = max_dist
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.mem4 = 0
        self.mem6 = 0
        self._q4: dict[bytes, _Queue] = {}
        self._q6: dict[bytes, _Queue] = {}
        self._peers: dict[bytes, list[int]] = {}  # IPv4 source -> [rid, queues]
        self._next_deadline = float("inf")

    def __len__(self) -> int:
        return len(self._q4) + len(self._q6)

    # ------------------------------------------------------------------ API

    def push(self, pkt: Packet, now: float) -> bytes | None:
        """Queue one fragment (a Packet from ``parse_ip`` with ``frag`` set).

        Returns:
            The reassembled datagram when this fragment completes it; None while it is
            held or when it (or its queue) was dropped, see ``counters``. IPv6 -EPROTO
            case: the fragment itself for tracking (see the module docstring).
        """
        fi = pkt.frag
        if fi is None or pkt.drop is not None:
            self.counters["not_fragment"] += 1
            return pkt.data if pkt.drop is None else None
        if pkt.l3 == 4:
            return self._push4(pkt, fi, now)
        if pkt.l3 == 6:
            return self._push6(pkt, fi, now)
        self.counters["not_fragment"] += 1
        return None

    def expire(self, now: float) -> int:
        """Drop the queues whose time is up (the kernel's ip_expire() timers); how many."""
        if now < self._next_deadline:
            return 0
        gone = 0
        nxt = float("inf")
        for table, v6 in ((self._q4, False), (self._q6, True)):
            for key in [k for k, q in table.items() if q.deadline <= now]:
                self._kill(table, key, v6)
                gone += 1
            for q in table.values():
                nxt = min(nxt, q.deadline)
        self._next_deadline = nxt
        self.counters["timeout"] += gone
        return gone

    # ------------------------------------------------------------------ queues

    def _find(
        self, table: dict[bytes, _Queue], key: bytes, src: bytes, v6: bool, now: float
    ) -> _Queue | None:
        """kernel inet_frag_find(): the queue for ``key``, created if need be."""
        if (self.mem6 > self.high_thresh6) if v6 else (self.mem4 > self.high_thresh4):
            self.counters["no_memory"] += 1
            return None
        q = table.get(key)
        if q is not None and q.deadline <= now:  # its timer has fired
            self._kill(table, key, v6)
            self.counters["timeout"] += 1
            q = None
        if q is None:
            deadline = now + (self.timeout6 if v6 else self.timeout4)
            q = _Queue(src, deadline, QSIZE6 if v6 else QSIZE4)
            table[key] = q
            if v6:
                self.mem6 += QSIZE6
            else:
                self.mem4 += QSIZE4
                peer = self._peers.get(src)
                if peer is None:
                    self._peers[src] = [0, 1]
                else:
                    peer[1] += 1
            if deadline < self._next_deadline:
                self._next_deadline = deadline
        return q

    def _kill(self, table: dict[bytes, _Queue], key: bytes, v6: bool) -> None:
        """kernel inet_frag_kill() + inet_frag_destroy(): forget the queue, free its memory."""
        q = table.pop(key)
        if v6:
            self.mem6 -= q.mem
        else:
            self.mem4 -= q.mem
            peer = self._peers.get(q.src)
            if peer is not None:
                peer[1] -= 1
                if peer[1] <= 0:
                    del self._peers[q.src]

    # ------------------------------------------------------------------ IPv4

    def _push4(self, pkt: Packet, fi: FragInfo, now: float) -> bytes | None:
        data = pkt.data
        ihl = fi.payload_off
        n = len(data)
        key = pkt.src + pkt.dst + (fi.ident & 0xFFFF).to_bytes(2, "big") + bytes((pkt.proto,))
        table = self._q4
        q = self._find(table, key, pkt.src, False, now)
        if q is None:
            return None
        c = self.counters
        if self.max_dist:  # ip_frag_too_far()
            peer = self._peers[pkt.src]
            start = q.rid
            peer[0] += 1
            q.rid = peer[0]
            if q.frags and q.rid - start > self.max_dist:
                c["too_far"] += 1
                self.mem4 -= q.mem - QSIZE4
                q.reset()  # ip_frag_reinit(): the timer is re-armed too
                q.deadline = now + self.timeout4
        offset = fi.offset
        end = offset + n - ihl
        if not fi.more:
            if end < q.length or (q.last_in and end != q.length):
                c["bad_end"] += 1
                self._kill(table, key, False)
                return None
            q.last_in = True
            q.length = end
        else:
            end &= ~7
            if end > q.length:
                if q.last_in:
                    c["bad_end"] += 1
                    self._kill(table, key, False)
                    return None
                q.length = end
        if end == offset:
            c["empty"] += 1
            self._kill(table, key, False)
            return None
        r = q.insert(offset, end)
        if r != _OK:
            if r == _DUP:
                c["duplicate"] += 1
            else:
                c["overlap"] += 1
                self._kill(table, key, False)
            return None
        size = end - offset
        q.frags.append((offset, data[ihl : ihl + size]))
        q.meat += size
        q.ecn |= 1 << (data[1] & 3)
        charge = truesize(n)
        q.mem += charge
        self.mem4 += charge
        if offset == 0:
            q.first_in = True
            q.head = data[:ihl]
        fragsize = size + ihl
        if fragsize > q.max_size:
            q.max_size = fragsize
        if (data[6] << 8) & IP_DF and fragsize > q.max_df_size:
            q.max_df_size = fragsize
        if q.first_in and q.last_in and q.meat == q.length:
            return self._reasm4(q, key)
        return None

    def _reasm4(self, q: _Queue, key: bytes) -> bytes | None:
        """kernel ip_frag_reasm()."""
        self._kill(self._q4, key, False)
        c = self.counters
        ecn = _ecn_merge(q.ecn)
        if ecn < 0:
            c["bad_ecn"] += 1
            return None
        head = q.head
        ihl = len(head)
        total = ihl + q.length
        if total > MAX_DATAGRAM:
            c["too_big"] += 1
            return None
        hdr = bytearray(head)
        hdr[1] |= ecn
        hdr[2] = total >> 8
        hdr[3] = total & 0xFF
        df = IP_DF if q.max_df_size == q.max_size else 0
        hdr[6] = df >> 8
        hdr[7] = 0
        hdr[10] = hdr[11] = 0
        csum = header_checksum(bytes(hdr))
        hdr[10] = csum >> 8
        hdr[11] = csum & 0xFF
        c["reassembled"] += 1
        return bytes(hdr) + q.payload()

    # ------------------------------------------------------------------ IPv6

    def _push6(self, pkt: Packet, fi: FragInfo, now: float) -> bytes | None:
        data = pkt.data
        n = len(data)
        fhoff = fi.payload_off - 8
        key = pkt.src + pkt.dst + (fi.ident & 0xFFFFFFFF).to_bytes(4, "big")
        table = self._q6
        q = self._find(table, key, pkt.src, True, now)
        if q is None:
            return None
        c = self.counters
        offset = fi.offset
        end = offset + n - fhoff - 8
        if end > MAX_DATAGRAM:  # "offset is too large": fragment dropped, queue kept
            c["too_big"] += 1
            return None
        if not fi.more:
            if end < q.length or (q.last_in and end != q.length):
                c["bad_end"] += 1  # "already received last fragment": queue kept
                return None
            q.last_in = True
            q.length = end
        else:
            if end & 7:
                # "end of fragment not rounded to 8 bytes": queue killed, -EPROTO, and
                # nf_ct_frag6_gather() lets the packet through unreassembled
                c["unaligned"] += 1
                self._kill(table, key, True)
                return _without_fraghdr(data, fhoff) if offset == 0 else data
            if end > q.length:
                if q.last_in:
                    c["bad_end"] += 1  # "last packet already reached": queue kept
                    return None
                q.length = end
        if end == offset:
            c["empty"] += 1
            return None
        r = q.insert(offset, end)
        if r != _OK:
            if r == _DUP:
                c["duplicate"] += 1
            else:
                c["overlap"] += 1
                self._kill(table, key, True)
            return None
        q.frags.append((offset, data[fhoff + 8 : fhoff + 8 + end - offset]))
        q.meat += end - offset
        q.ecn |= 1 << ((data[1] >> 4) & 3)
        charge = truesize(n)
        q.mem += charge
        self.mem6 += charge
        if offset == 0:
            q.first_in = True
            q.head = data[:fhoff]
            found = find_prev_fhdr(data, n)
            q.nhoff = found[0] if found is not None else 6
            q.nexthdr = data[fhoff]
        if q.first_in and q.last_in and q.meat == q.length:
            return self._reasm6(q, key)
        return None

    def _reasm6(self, q: _Queue, key: bytes) -> bytes | None:
        """kernel nf_ct_frag6_reasm()."""
        self._kill(self._q6, key, True)
        c = self.counters
        ecn = _ecn_merge(q.ecn)
        if ecn < 0:
            c["bad_ecn"] += 1
            return None
        hdr = bytearray(q.head)
        payload_len = len(hdr) - 40 + q.length
        if payload_len > MAX_DATAGRAM:
            c["too_big"] += 1
            return None
        hdr[q.nhoff] = q.nexthdr
        hdr[4] = payload_len >> 8
        hdr[5] = payload_len & 0xFF
        hdr[1] |= ecn << 4  # traffic class straddles bytes 0-1; ECN is its low 2 bits
        c["reassembled"] += 1
        return bytes(hdr) + q.payload()


def _without_fraghdr(data: bytes, fhoff: int) -> bytes:
    """The datagram with its (first-)fragment header cut out and the chain relinked."""
    found = find_prev_fhdr(data, len(data))
    nhoff = found[0] if found is not None else 6
    out = bytearray(data[:fhoff])
    out[nhoff] = data[fhoff]
    plen = ((data[4] << 8) | data[5]) - 8
    out[4] = (plen >> 8) & 0xFF
    out[5] = plen & 0xFF
    return bytes(out) + data[fhoff + 8 :]
