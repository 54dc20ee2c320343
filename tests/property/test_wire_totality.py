"""Totality: no input makes the wire layer raise (the h11 fuzz invariant, style rule 5).

Random bytes, and valid datagrams with bytes flipped, cut or appended, go through
ip_from_frame(), parse_ip() (with and without the link layer's version) and, for fragments,
Defragmenter.push() at random times. Each call must return, and what it returns must be
consistent: a Packet with a datagram no longer than its input, memory accounting that goes
back to zero once every queue has expired.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from unit.wire.wirebuild import frag6hdr, frags4, frags6, icmp, ip4, ip6, tcp, udp

from pmct.wire import Packet, parse_ip
from pmct.wire.defrag import Defragmenter
from pmct.wire.ipv6 import router_drop
from pmct.wire.link import SUPPORTED_LINKTYPES, ip_from_frame, repair_captured

A4, B4 = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
PADN = b"\x01\x04\x00\x00\x00\x00"
_Q4 = ip4(B4, A4, 6, tcp(80, 1000, 0x12, seq=1, ack=2))
_Q6 = ip6(B6, A6, 17, udp(53, 1000, b"answer"))
SEEDS = [
    ip4(A4, B4, 6, tcp(1000, 80, 0x02, opts=b"\x02\x04\x05\xb4"), opts=b"\x01\x01\x01\x00"),
    ip4(A4, B4, 17, udp(1000, 53, b"query")),
    ip4(A4, B4, 1, icmp(8, 0, b"\x00\x01\x00\x01", b"ping")),
    ip4(A4, B4, 1, icmp(3, 3, data=_Q4[:28])),
    ip4(A4, B4, 47, bytes([0x30, 0x81, 0x88, 0x0B, 0, 4, 0x12, 0x34, 0, 0, 0, 1])),
    ip4(A4, B4, 132, bytes(12) + bytes([1, 0, 0, 20]) + bytes(16)),
    ip4(A4, B4, 17, udp(1, 2, bytes(24))[:16], frag=0x2000, ident=9),
    ip4(A4, B4, 17, bytes(16), frag=0x0002, ident=9),
    ip6(
        A6,
        B6,
        0,
        bytes([43, 0])
        + PADN
        + bytes([60, 0, 0, 0, 0, 0, 0, 0])
        + bytes([6, 0])
        + PADN
        + tcp(1, 2, 0x10),
    ),
    ip6(A6, B6, 51, bytes([17, 1]) + bytes(10) + udp(1, 2, b"x")),
    ip6(A6, B6, 58, icmp(1, 4, data=_Q6[:48])),
    ip6("fe80::1", B6, 58, icmp(137, 0, data=bytes(32) + bytes([4, 7]) + bytes(6) + _Q6), hlim=255),
    ip6(A6, B6, 44, frag6hdr(17, 0, True, 5) + udp(1, 2, bytes(24))[:16]),
    ip6(A6, B6, 60, bytes([44, 0]) + PADN + frag6hdr(6, 16, False, 5) + bytes(8)),
    ip6(A6, B6, 0, bytes([17, 0, 0xC2, 4, 0, 1, 0, 0]) + udp(1, 2), plen=0),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=16))
    return bytes(data)


def _check(data: bytes, pkt: Packet) -> None:
    assert isinstance(pkt, Packet)
    assert len(pkt.data) <= len(data)
    if pkt.drop is None:
        assert pkt.l3 in (4, 6)
        assert len(pkt.src) == len(pkt.dst) == (4 if pkt.l3 == 4 else 16)
        assert pkt.l4len >= 0
    if pkt.inner is not None:
        assert pkt.inner.inner is None
    router_drop(pkt)


@given(st.binary(max_size=120), st.sampled_from([0, 4, 6]))
def test_parse_ip_random_bytes(data: bytes, version: int) -> None:
    _check(data, parse_ip(data, version))


@given(mutated(), st.sampled_from([0, 4, 6]))
def test_parse_ip_mutated_datagrams(data: bytes, version: int) -> None:
    pkt = parse_ip(data, version)
    _check(data, pkt)
    _check(repair_captured(data), parse_ip(repair_captured(data), version))


@given(st.binary(max_size=120), st.sampled_from(sorted(SUPPORTED_LINKTYPES | {7, 105})))
def test_ip_from_frame_random_bytes(frame: bytes, linktype: int) -> None:
    ip = ip_from_frame(frame, linktype)
    assert ip is None or (isinstance(ip, bytes) and len(ip) <= len(frame))


def _fragments(draw: st.DrawFn) -> list[bytes]:
    payload = draw(st.binary(min_size=1, max_size=64))
    pieces = [
        (draw(st.integers(0, 8)) * 8, draw(st.integers(0, 40)), draw(st.booleans()))
        for _ in range(draw(st.integers(1, 6)))
    ]
    ident = draw(st.integers(0, 3))
    if draw(st.booleans()):
        tos = draw(st.integers(0, 3))
        return frags4(A4, B4, 17, payload, ident, pieces, tos=tos)
    return frags6(A6, B6, 17, payload, ident, pieces, tc=draw(st.integers(0, 3)))


@given(st.data())
def test_defragmenter_never_raises(data: st.DataObject) -> None:
    d = Defragmenter(high_thresh4=20_000, high_thresh6=20_000)
    now = 0.0
    for _ in range(data.draw(st.integers(1, 5))):
        datagrams = _fragments(data.draw)
        if data.draw(st.booleans()):
            datagrams.append(data.draw(mutated()))
        for raw in datagrams:
            now += data.draw(st.sampled_from([0.0, 0.5, 29.0, 61.0]))
            pkt = parse_ip(raw)
            out = d.push(pkt, now)
            assert out is None or isinstance(out, bytes)
            if out is not None:
                _check(out, parse_ip(out))
            assert d.mem4 >= 0 and d.mem6 >= 0
        if data.draw(st.booleans()):
            d.expire(now)
    d.expire(now + 1000.0)
    assert len(d) == 0 and d.mem4 == 0 and d.mem6 == 0
