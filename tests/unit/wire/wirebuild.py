"""Byte-exact packet builders for the wire tests.

dpkt builds the ordinary packets (tests use it directly); these helpers exist for what dpkt
"corrects" on the way out: fragments with chosen offsets and lengths, wrong length fields,
cut headers, raw extension-header chains.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "a4",
    "a6",
    "eth",
    "frag6hdr",
    "frags4",
    "frags6",
    "icmp",
    "ip4",
    "ip6",
    "ip_checksum",
    "tcp",
    "udp",
]


def a4(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, s)


def a6(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, s)


def ip_checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ident: int = 1,
    frag: int = 0,
    tos: int = 0,
    ttl: int = 64,
    opts: bytes = b"",
    tot: int | None = None,
) -> bytes:
    """An IPv4 datagram with a correct header checksum; ``frag`` is the raw flags+offset."""
    ihl = 20 + len(opts)
    t = ihl + len(payload) if tot is None else tot
    h = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | (ihl // 4), tos, t, ident, frag, ttl, proto, 0, a4(src), a4(dst)
    )
    h += opts
    h = h[:10] + struct.pack("!H", ip_checksum(h)) + h[12:]
    return h + payload


def frags4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    ident: int,
    pieces: list[tuple[int, int, bool]],
    **kw: int,
) -> list[bytes]:
    """IPv4 fragments of ``payload``: one per (offset, length, more-fragments)."""
    out = []
    for off, ln, more in pieces:
        f = (0x2000 if more else 0) | (off >> 3)
        out.append(ip4(src, dst, proto, payload[off : off + ln], ident=ident, frag=f, **kw))
    return out


def ip6(
    src: str,
    dst: str,
    nh: int,
    payload: bytes,
    *,
    hlim: int = 64,
    tc: int = 0,
    plen: int | None = None,
) -> bytes:
    pl = len(payload) if plen is None else plen
    first = (6 << 28) | (tc << 20)
    return struct.pack("!IHBB16s16s", first, pl, nh, hlim, a6(src), a6(dst)) + payload


def frag6hdr(nh: int, off: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nh, 0, off | (1 if more else 0), ident)


def frags6(
    src: str,
    dst: str,
    nh: int,
    payload: bytes,
    ident: int,
    pieces: list[tuple[int, int, bool]],
    *,
    pre: bytes = b"",
    pre_nh: int = 44,
    tc: int = 0,
) -> list[bytes]:
    """IPv6 fragments; ``pre`` are unfragmentable extension headers whose chain ends in 44."""
    out = []
    for off, ln, more in pieces:
        body = pre + frag6hdr(nh, off, more, ident) + payload[off : off + ln]
        out.append(ip6(src, dst, pre_nh, body, tc=tc))
    return out


def udp(sport: int, dport: int, data: bytes = b"", *, length: int | None = None) -> bytes:
    ln = (8 + len(data)) & 0xFFFF if length is None else length
    return struct.pack("!HHHH", sport, dport, ln, 0) + data


def tcp(
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    win: int = 65535,
    data: bytes = b"",
    opts: bytes = b"",
) -> bytes:
    off = (20 + len(opts)) // 4
    hdr = struct.pack("!HHIIHHHH", sport, dport, seq, ack, (off << 12) | flags, win, 0, 0)
    return hdr + opts + data


def icmp(t: int, c: int, rest: bytes = b"\0\0\0\0", data: bytes = b"") -> bytes:
    return struct.pack("!BBH", t, c, 0) + rest + data


def eth(ip: bytes, etype: int | None = None) -> bytes:
    if etype is None:
        etype = 0x0800 if ip and ip[0] >> 4 == 4 else 0x86DD
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + struct.pack("!H", etype) + ip
