"""Test packet builders (dpkt): IP datagrams as bytes, the way NFQUEUE hands them over.

Shared by unit tests; dpkt stays out of pmct's hot path, it is only used here and in pcap I/O.
"""

from __future__ import annotations

import socket

import dpkt

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

A4 = "192.0.2.1"
B4 = "198.51.100.2"
A6 = "2001:db8::1"
B6 = "2001:db8::2"


def _a4(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, addr)


def _a6(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, addr)


def ip4(
    src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 1, frag: int = 0
) -> bytes:
    ip = dpkt.ip.IP(src=_a4(src), dst=_a4(dst), p=proto, ttl=ttl, id=ident, _flags_offset=frag)
    ip.data = payload
    ip.len = 20 + len(payload)
    return bytes(ip)


def ip6(src: str, dst: str, nxt: int, payload: bytes, *, hlim: int = 64) -> bytes:
    ip = dpkt.ip6.IP6(src=_a6(src), dst=_a6(dst), nxt=nxt, hlim=hlim)
    ip.data = payload
    ip.plen = len(payload)
    ip.extension_hdrs = {}
    return bytes(ip.pack_hdr()) + payload


def tcp_seg(
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    win: int = 65535,
    payload: bytes = b"",
    opts: bytes = b"",
) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=win, opts=opts)
    t.off = (20 + len(opts)) // 4
    t.data = payload
    return bytes(t)


def tcp4(
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    *,
    src: str = A4,
    dst: str = B4,
    win: int = 65535,
    payload: bytes = b"",
    opts: bytes = b"",
) -> bytes:
    return ip4(src, dst, 6, tcp_seg(sport, dport, flags, seq, ack, win, payload, opts))


def tcp6(
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    *,
    src: str = A6,
    dst: str = B6,
    win: int = 65535,
    payload: bytes = b"",
    opts: bytes = b"",
) -> bytes:
    return ip6(src, dst, 6, tcp_seg(sport, dport, flags, seq, ack, win, payload, opts))


def udp_dgram(sport: int, dport: int, payload: bytes = b"x") -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return bytes(u)


def udp4(sport: int, dport: int, payload: bytes = b"x", *, src: str = A4, dst: str = B4) -> bytes:
    return ip4(src, dst, 17, udp_dgram(sport, dport, payload))


def udp6(sport: int, dport: int, payload: bytes = b"x", *, src: str = A6, dst: str = B6) -> bytes:
    return ip6(src, dst, 17, udp_dgram(sport, dport, payload))


def icmp4(
    itype: int,
    code: int = 0,
    ident: int = 7,
    seq: int = 1,
    *,
    src: str = A4,
    dst: str = B4,
    body: bytes | None = None,
) -> bytes:
    if body is None:
        body = ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + b"ping"
    msg = bytes((itype, code)) + b"\0\0" + body
    return ip4(src, dst, 1, msg)


def icmp4_error(
    itype: int, code: int, quoted: bytes, *, src: str, dst: str, keep: int = 28
) -> bytes:
    """An ICMP error quoting the first ``keep`` bytes of ``quoted`` (IP header + 8 bytes)."""
    return ip4(src, dst, 1, bytes((itype, code)) + b"\0\0" + b"\0\0\0\0" + quoted[:keep])


def icmp6(
    itype: int,
    code: int = 0,
    ident: int = 7,
    seq: int = 1,
    *,
    src: str = A6,
    dst: str = B6,
    body: bytes | None = None,
    hlim: int = 64,
) -> bytes:
    if body is None:
        body = ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + b"ping"
    return ip6(src, dst, 58, bytes((itype, code)) + b"\0\0" + body, hlim=hlim)


def icmp6_error(
    itype: int, code: int, quoted: bytes, *, src: str, dst: str, keep: int = 48
) -> bytes:
    return ip6(src, dst, 58, bytes((itype, code)) + b"\0\0" + b"\0\0\0\0" + quoted[:keep])
