"""Pure NAT packet rewriting: addresses, ports and ICMP ids, with incremental checksums.

Why incremental (RFC 1624): the active node rewrites every packet of a NATed connection in the
NFQUEUE verdict. Recomputing a TCP checksum means summing the whole payload (a 1500-byte segment
is ~750 words); updating it from the difference of the changed words costs a few integer
operations whatever the payload size, and a wrong checksum stays wrong instead of being
silently "repaired" (the kernel does the same: inet_proto_csum_replace4() in
nf_nat_proto.c, called from nf_nat_ipv4_manip_pkt() / tcp_manip_pkt() / udp_manip_pkt()).

The arithmetic: the ones' complement sum of 16-bit words is the value of the byte string taken
as one big integer, modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF). So when an aligned field
changes from ``old`` to ``new`` (an address of 4 or 16 bytes, a port, even a whole quoted
datagram), the sum moves by ``(int(new) - int(old)) % 0xFFFF`` -- one subtraction, no word loop.
``_adjust`` applies such a delta to a stored checksum (RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'));
because real data never sums to +0, a result of 0 is written as 0xFFFF in the sum, exactly what
a full recomputation gives. Every field NAT touches sits at an even offset from the start of
its checksummed area (IP headers are multiples of 4 bytes, so also inside ICMP errors).

What is rewritten (kernel nf_nat_proto.c, per protocol):

* IPv4: addresses + header checksum. IPv6: addresses (no header checksum).
* TCP, UDP, UDP-Lite, DCCP: ports + the checksum (pseudo header covers the addresses). UDP over
  IPv4 with checksum 0 ("none") keeps 0; a UDP result of 0 is sent as 0xFFFF (RFC 768,
  kernel CSUM_MANGLED_0).
* SCTP: ports, then the CRC32c is recomputed (a CRC cannot be updated incrementally; kernel
  sctp_manip_pkt() recomputes too).
* ICMP/ICMPv6 queries: the echo id (the id is the "port" of an ICMP tuple); ICMPv6's checksum
  also covers the pseudo header.
* ICMP/ICMPv6 errors: the outer addresses, the quoted datagram (its addresses, its IPv4 header
  checksum, its ports/id and -- when the quote is long enough -- its transport checksum), and the
  outer ICMP checksum by the delta of everything changed (kernel nf_nat_icmp_reply_translation()).
  DEVIATION(kernel): the kernel recomputes the outer ICMP checksum over the whole message;
  pmct updates it incrementally, which gives the same bytes on every packet with a correct
  checksum and keeps a wrong one wrong.
  pinned by tests/property/test_nat_rewrite.py::test_icmp_error_incremental_equals_full
* Fragments: the first fragment gets ports and the transport checksum (the checksum of the
  whole datagram moves by the same delta), later fragments only their addresses.

Everything here is total: a datagram too short for a field leaves that field alone; nothing
raises on bad input (the engine has already judged the packet).
"""

from __future__ import annotations

from typing import Final

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.proto.sctp import crc32c

__all__ = [
    "ICMPV6_ERROR_TYPES",
    "ICMP_ERROR_TYPES",
    "NAT_MASK",
    "nat_packet",
    "nat_targets",
    "rewrite",
    "rewrite_icmp_error",
]

NAT_MASK: Final = int(Status.SRC_NAT | Status.DST_NAT)
_RELATED: Final = int(CtState.RELATED)

# ICMP types whose body quotes a datagram (kernel icmp_is_err()); ICMPv6: types < 128 plus
# redirect (137), which the engine also tracks as RELATED.
ICMP_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})
ICMPV6_ERROR_TYPES: Final = frozenset({1, 2, 3, 4, 137})
# ICMP queries that carry an identifier at offset 4 (the tuple's "port"; kernel
# icmp_pkt_to_tuple(): echo, timestamp, info, address mask).
_ICMP_ID_TYPES: Final = frozenset({0, 8, 13, 14, 15, 16, 17, 18})
_ICMPV6_ID_TYPES: Final = frozenset({128, 129, 130, 131, 132, 139, 140})

# IPv6 extension headers walked to find the transport header (RFC 8200 §4).
_V6_EXT: Final = frozenset({0, 43, 60})
_V6_FRAG: Final = 44
_V6_AH: Final = 51

_M: Final = 0xFFFF
_from = int.from_bytes


def _adjust(check: int, delta: int) -> int:
    """Apply a ones' complement delta (already mod 0xFFFF) to a stored checksum."""
    s = (_M - check + delta) % _M
    return _M - (s or _M)


def _delta(old: bytes | bytearray, new: bytes | bytearray) -> int:
    return (_from(new, "big") - _from(old, "big")) % _M


def _locate(buf: bytearray) -> tuple[int, int, int, int]:
    """(l3, protocol, transport offset, end) of a datagram; offset -1 when there is no
    transport header here (a later fragment), l3 0 when it is not IP at all. ``end`` is where
    the datagram's data stops (the IP length, clipped to what is there)."""
    n = len(buf)
    if n >= 20 and buf[0] >> 4 == 4:
        ihl = (buf[0] & 15) << 2
        end = min(n, (buf[2] << 8) | buf[3])
        if ihl < 20 or end < ihl:
            return (4, buf[9], -1, n)
        if (buf[6] & 0x1F) or buf[7]:
            return (4, buf[9], -1, end)
        return (4, buf[9], ihl, end)
    if n >= 40 and buf[0] >> 4 == 6:
        end = min(n, 40 + ((buf[4] << 8) | buf[5]))
        nxt = buf[6]
        off = 40
        while True:
            if nxt in _V6_EXT:
                if off + 8 > end:
                    return (6, nxt, -1, end)
                nxt, off = buf[off], off + ((buf[off + 1] + 1) << 3)
            elif nxt == _V6_FRAG:
                if off + 8 > end:
                    return (6, nxt, -1, end)
                if (buf[off + 2] << 8 | buf[off + 3]) & 0xFFF8:
                    return (6, buf[off], -1, end)  # not the first fragment
                nxt, off = buf[off], off + 8
            elif nxt == _V6_AH:
                if off + 8 > end:
                    return (6, nxt, -1, end)
                nxt, off = buf[off], off + ((buf[off + 1] + 2) << 2)
            else:
                return (6, nxt, off if off <= end else -1, end)
    return (0, 0, -1, n)


def _set_addrs(buf: bytearray, l3: int, src: bytes | None, dst: bytes | None) -> int:
    """Write the addresses; returns the pseudo-header delta. Updates the IPv4 checksum."""
    if l3 == 4:
        s0, d0, alen = 12, 16, 4
    else:
        s0, d0, alen = 8, 24, 16
    delta = 0
    if src is not None and len(src) == alen:
        delta += _delta(buf[s0 : s0 + alen], src)
        buf[s0 : s0 + alen] = src
    if dst is not None and len(dst) == alen:
        delta += _delta(buf[d0 : d0 + alen], dst)
        buf[d0 : d0 + alen] = dst
    delta %= _M
    if l3 == 4 and delta:
        buf[10:12] = _adjust(_from(buf[10:12], "big"), delta).to_bytes(2, "big")
    return delta


def _set16(buf: bytearray, off: int, value: int) -> int:
    """Write a 16-bit field (if ``value`` >= 0); returns its checksum delta."""
    if value < 0:
        return 0
    old = (buf[off] << 8) | buf[off + 1]
    buf[off] = value >> 8
    buf[off + 1] = value & 0xFF
    return (value - old) % _M


def _fix16(buf: bytearray, off: int, delta: int) -> None:
    c = _adjust((buf[off] << 8) | buf[off + 1], delta)
    buf[off] = c >> 8
    buf[off + 1] = c & 0xFF


def _transport(
    buf: bytearray, l3: int, proto: int, l4: int, end: int, dl3: int, sport: int, dport: int
) -> None:
    """Rewrite ports / ICMP id at ``l4`` and fix the transport checksum (kernel
    l4proto_manip_pkt()). Fields beyond ``end`` (a short ICMP quote) are left alone."""
    avail = end - l4
    if proto == 6 or proto == 17 or proto == 136 or proto == 132 or proto == 33:
        if avail < 4:
            return
        d = (_set16(buf, l4, sport) + _set16(buf, l4 + 2, dport) + dl3) % _M
        if proto == 6:
            # kernel tcp_manip_pkt(): the checksum only when the whole fixed header is there
            if avail >= 20 and d:
                _fix16(buf, l4 + 16, d)
        elif proto == 17:
            if avail >= 8 and d and (buf[l4 + 6] or buf[l4 + 7]):  # 0 = no checksum
                _fix16(buf, l4 + 6, d)
                if not (buf[l4 + 6] or buf[l4 + 7]):
                    buf[l4 + 6] = buf[l4 + 7] = 0xFF  # CSUM_MANGLED_0
        elif proto == 136:
            if avail >= 8 and d:
                _fix16(buf, l4 + 6, d)
                if not (buf[l4 + 6] or buf[l4 + 7]):
                    buf[l4 + 6] = buf[l4 + 7] = 0xFF
        elif proto == 33:
            if avail >= 8 and d:
                _fix16(buf, l4 + 6, d)
        elif avail >= 12 and (sport >= 0 or dport >= 0):  # SCTP: recompute the CRC32c
            mv = memoryview(buf)
            crc = crc32c(mv[l4 : l4 + 8])
            crc = crc32c(b"\0\0\0\0", crc)
            crc = crc32c(mv[l4 + 12 : end], crc)
            mv.release()
            buf[l4 + 8 : l4 + 12] = crc.to_bytes(4, "little")
        return
    if proto == 1 or proto == 58:
        if avail < 8:
            return
        types = _ICMP_ID_TYPES if proto == 1 else _ICMPV6_ID_TYPES
        d = _set16(buf, l4 + 4, sport) if buf[l4] in types else 0
        if proto == 58:
            d = (d + dl3) % _M  # ICMPv6's checksum covers the pseudo header
        if d:
            _fix16(buf, l4 + 2, d)


def rewrite(
    data: bytes | bytearray,
    src: bytes | None = None,
    dst: bytes | None = None,
    sport: int = -1,
    dport: int = -1,
) -> bytes:
    """The datagram with new addresses and ports (None / -1: unchanged).

    For ICMP/ICMPv6 queries ``sport`` is the identifier and ``dport`` is ignored (a tuple's
    type/code never changes). Addresses of the wrong length for the datagram are ignored.
    """
    buf = bytearray(data)
    l3, proto, l4, end = _locate(buf)
    if l3 == 0:
        return bytes(buf)
    dl3 = _set_addrs(buf, l3, src, dst)
    if l4 >= 0:
        _transport(buf, l3, proto, l4, end, dl3, sport, dport)
    return bytes(buf)


def rewrite_icmp_error(
    data: bytes | bytearray,
    src: bytes | None,
    dst: bytes | None,
    inner_src: bytes | None,
    inner_dst: bytes | None,
    inner_sport: int = -1,
    inner_dport: int = -1,
) -> bytes:
    """An ICMP/ICMPv6 error with new outer addresses and a new quoted datagram.

    The quoted datagram gets ``inner_*`` (addresses, ports or echo id) with its own IPv4 header
    checksum and transport checksum updated where quoted; the outer ICMP checksum then moves by
    the delta of the whole quote (plus, for ICMPv6, the outer pseudo header's).
    """
    buf = bytearray(data)
    l3, proto, l4, end = _locate(buf)
    if l3 == 0:
        return bytes(buf)
    dl3 = _set_addrs(buf, l3, src, dst)
    if l4 < 0 or end - l4 < 8 or proto not in (1, 58):
        return bytes(buf)
    start = l4 + 8
    old = buf[start:end]
    inner = bytearray(old)
    il3, iproto, il4, iend = _locate(inner)
    if il3 == (4 if proto == 1 else 6):
        idl3 = _set_addrs(inner, il3, inner_src, inner_dst)
        if il4 >= 0:
            _transport(inner, il3, iproto, il4, iend, idl3, inner_sport, inner_dport)
    if (end - start) & 1:  # the checksum pads an odd tail with a zero byte
        d = _delta(old + b"\0", inner + b"\0")
    else:
        d = _delta(old, inner)
    buf[start:end] = inner
    if proto == 58:
        d = (d + dl3) % _M
    if d:
        _fix16(buf, l4 + 2, d)
    return bytes(buf)


# ------------------------------------------------------------------ from a connection


def _fields(key: bytes) -> tuple[bytes, bytes, int, int]:
    """(src, dst, sport, dport) of a packed key (keys.py layout), ports -1 where none."""
    n = len(key)
    if n == 12 or n == 36:
        a = (n - 4) >> 1
        p = 2 * a
        return (key[:a], key[a:p], _from(key[p : p + 2]), _from(key[p + 2 : p + 4]))
    if n == 13 or n == 37:
        a = (n - 5) >> 1
        p = 1 + 2 * a
        return (key[1 : 1 + a], key[1 + a : p], _from(key[p : p + 2]), _from(key[p + 2 :]))
    a = (n - 1) >> 1
    return (key[1 : 1 + a], key[1 + a :], -1, -1)


def nat_targets(conn: Conn, d: int) -> tuple[bytes, bytes, int, int]:
    """What a packet of direction ``d`` must look like after NAT: the inverse of the other
    direction's tuple (kernel nf_nat_manip_pkt(): nf_ct_invert_tuple(&target,
    &ct->tuplehash[!dir].tuple)). For ICMP the id is the same field in both tuples."""
    osrc, odst, osport, odport = _fields(conn.rkey if d == 0 else conn.key)
    proto = conn.proto
    if proto == 1 or proto == 58:
        return (odst, osrc, osport, -1)
    return (odst, osrc, odport, osport)


def nat_packet(data: bytes, ctstate: int, d: int, conn: Conn | None) -> bytes:
    """The datagram as the active node must forward it (``data`` itself when nothing changes).

    Call with the engine's verdict for ``data``. A connection without SRC_NAT/DST_NAT costs one
    test. A RELATED ICMP error is translated as the kernel's nf_nat_icmp_reply_translation():
    the outer header gets the manips of its direction only (an error from a router on the way
    keeps the router's source unless the connection is DNATed the other way), the quote is
    made to look like the packet the other side sent.
    """
    if conn is None or not conn.status & NAT_MASK or d < 0:
        return data
    # Fast path: IPv4 without options, unfragmented TCP/UDP -- bytes 12..24 are the packet's
    # tuple (addresses then ports), and the target is the other direction's key inverted.
    if data[0] == 0x45 and not (data[6] & 0x3F or data[7]) and len(data) >= 28:
        proto = data[9]
        if proto == 6 or proto == 17:
            other = conn.rkey if d == 0 else conn.key
            o = 0 if len(other) == 12 else 1
            new = (
                other[o + 4 : o + 8]
                + other[o : o + 4]
                + other[o + 10 : o + 12]
                + other[o + 8 : o + 10]
            )
            if len(new) == 12 and (proto == 17 or len(data) >= 40):
                return _fast4(data, proto, new)
    if ctstate == _RELATED and _is_icmp_error(data):
        # (RELATED is also the first packets of an expected connection: those are not
        # ICMP errors and take the normal path)
        return _nat_icmp_error(data, d, conn)
    src, dst, sport, dport = nat_targets(conn, d)
    return rewrite(data, src, dst, sport, dport)


def _fast4(data: bytes, proto: int, new: bytes) -> bytes:
    old = data[12:24]
    if old == new:
        return data
    dip = (_from(new[:8], "big") - _from(old[:8], "big")) % _M
    dl4 = (dip + _from(new[8:], "big") - _from(old[8:], "big")) % _M
    buf = bytearray(data)
    buf[12:24] = new
    if dip:
        _fix16(buf, 10, dip)
    if dl4:
        if proto == 6:
            _fix16(buf, 36, dl4)
        elif buf[26] or buf[27]:  # UDP checksum 0: none
            _fix16(buf, 26, dl4)
            if not (buf[26] or buf[27]):
                buf[26] = buf[27] = 0xFF
    return bytes(buf)


def _is_icmp_error(data: bytes) -> bool:
    buf = bytearray(data)
    _l3, proto, l4, _end = _locate(buf)
    if l4 < 0 or l4 >= len(buf):
        return False
    if proto == 1:
        return buf[l4] in ICMP_ERROR_TYPES
    if proto == 58:
        return buf[l4] in ICMPV6_ERROR_TYPES
    return False


def _nat_icmp_error(data: bytes, d: int, conn: Conn) -> bytes:
    # The error travels in direction d; the quoted datagram travelled the other way.
    tsrc, tdst, _tsport, _tdport = nat_targets(conn, d)
    cur = _fields(conn.key if d == 0 else conn.rkey)
    # Outer: only the fields this direction's manips change (kernel: the status bit gate of
    # nf_nat_icmp_reply_translation(); a router's own source address stays).
    osrc = tsrc if tsrc != cur[0] else None
    odst = tdst if tdst != cur[1] else None
    # Quote: the other direction's tuple as its sender put it on the wire.
    qsrc, qdst, qsport, qdport = _fields(conn.rkey if d == 0 else conn.key)
    if conn.proto == 1 or conn.proto == 58:
        qdport = -1
    return rewrite_icmp_error(data, osrc, odst, qsrc, qdst, qsport, qdport)
