"""Sequence adjustment (pmct/nat/seqadj.py) against the kernel's nf_conntrack_seqadj.c rules,
with every checksum checked against a full recomputation (dpkt)."""

from __future__ import annotations

import socket
import struct

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import Status
from pmct.conntrack.proto.tcp import seq_offset
from pmct.nat.seqadj import get_seqadj, seq_adjust, seqadj_set

ACK, PSHACK = 0x10, 0x18
M32 = 0xFFFFFFFF


def conn() -> Conn:
    return Conn(1, b"k" * 12, b"r" * 12, 4, 6)


def tcp4(seq: int, ack: int, data: bytes = b"", opts: bytes = b"") -> bytes:
    t = dpkt.tcp.TCP(sport=1000, dport=21, flags=PSHACK, seq=seq, ack=ack, opts=opts, data=data)
    t.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=b"\x0a\0\0\x02", dst=b"\xcb\0\x71\x05", p=6, data=t)
    ip.len = 20 + len(bytes(t))
    return bytes(ip)


def tcp6(seq: int, ack: int, data: bytes = b"") -> bytes:
    t = dpkt.tcp.TCP(sport=1000, dport=21, flags=PSHACK, seq=seq, ack=ack, data=data)
    ip = dpkt.ip6.IP6(
        src=socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        dst=socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
        nxt=6,
        hlim=64,
        data=t,
    )
    ip.plen = len(bytes(t))
    ip.extension_hdrs = {}
    return bytes(ip)


def fields(data: bytes) -> tuple[int, int]:
    t = dpkt.ip.IP(data).data
    return t.seq, t.ack


def v4_ok(data: bytes) -> bool:
    ip = dpkt.ip.IP(data)
    seg = data[20 : ip.len]
    pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 6, len(seg))
    stored = struct.unpack_from("!H", seg, 16)[0]
    return dpkt.in_cksum(pseudo + seg[:16] + b"\0\0" + seg[18:]) == stored


def v6_ok(data: bytes) -> bool:
    seg = data[40:]
    pseudo = data[8:40] + struct.pack("!IxxxB", len(seg), 6)
    stored = struct.unpack_from("!H", seg, 16)[0]
    return dpkt.in_cksum(pseudo + seg[:16] + b"\0\0" + seg[18:]) == stored


# ---------------------------------------------------------------------------------- set


def test_seqadj_set_follows_the_kernel() -> None:
    c = conn()
    seqadj_set(c, 0, 1000, 0)
    assert get_seqadj(c) is None and not c.status & Status.SEQ_ADJUST  # off 0: nothing
    seqadj_set(c, 0, 1000, 2)
    assert c.status & Status.SEQ_ADJUST
    assert get_seqadj(c) == [1000, 0, 2, 0, 0, 0]
    seqadj_set(c, 0, 1000, 2)  # the retransmission mangled again: no change
    assert get_seqadj(c) == [1000, 0, 2, 0, 0, 0]
    seqadj_set(c, 0, 900, 5)  # an older segment while before != after: ignored
    assert get_seqadj(c) == [1000, 0, 2, 0, 0, 0]
    seqadj_set(c, 0, 1500, -3)
    assert get_seqadj(c) == [1500, 2, -1, 0, 0, 0]
    seqadj_set(c, 1, 77, 4)
    assert get_seqadj(c) == [1500, 2, -1, 77, 0, 4]


def test_set_across_the_wrap() -> None:
    c = conn()
    seqadj_set(c, 0, M32 - 5, 3)
    seqadj_set(c, 0, 10, 3)  # after M32 - 5 modulo 2**32
    assert get_seqadj(c) == [10, 3, 6, 0, 0, 0]


def test_seq_offset_is_the_trackers_view() -> None:
    c = conn()
    assert seq_offset(c, 0, 5) == 0
    seqadj_set(c, 0, 1000, 2)
    assert seq_offset(c, 0, 1000) == 0  # the mangled segment itself: before
    assert seq_offset(c, 0, 1001) == 2
    assert seq_offset(c, 1, 1001) == 0


# ---------------------------------------------------------------------------------- adjust


def test_seq_and_ack_around_the_correction_position() -> None:
    c = conn()
    seqadj_set(c, 0, 1000, 2)  # direction 0 grew by 2 at 1000
    seqadj_set(c, 1, 5000, -1)  # direction 1 shrank by 1 at 5000
    # direction 0: seq before / at / after the position, ack mapped by direction 1's offsets
    for seq, want in [(900, 900), (1000, 1000), (1001, 1003), (1200, 1202)]:
        out = seq_adjust(tcp4(seq, 4000), 0, c)
        assert out is not None and fields(out) == (want, 4000) and v4_ok(out)
    # ack 5000 - 0 is not after 5000: offset_before (0); ack 5001 is: offset_after (-1)
    out = seq_adjust(tcp4(1, 5000), 0, c)
    assert out is not None and fields(out)[1] == 5000
    out = seq_adjust(tcp4(1, 5001), 0, c)
    assert out is not None and fields(out)[1] == 5002 and v4_ok(out)
    # direction 1: its own seq shrinks, its acks lose direction 0's +2
    out = seq_adjust(tcp4(5001, 1003), 1, c)
    assert out is not None and fields(out) == (5000, 1001) and v4_ok(out)


def test_ipv6_checksum() -> None:
    c = conn()
    seqadj_set(c, 0, 10, 7)
    out = seq_adjust(tcp6(11, 3, b"hello"), 0, c)
    assert out is not None and v6_ok(out)
    assert dpkt.ip6.IP6(out).data.seq == 18


def sack_opts(*blocks: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!II", a, b) for a, b in blocks)
    return b"\x01\x01\x05" + bytes([2 + len(body)]) + body


def test_sack_blocks_use_the_other_directions_offsets() -> None:
    c = conn()
    seqadj_set(c, 1, 5000, 4)  # the peer (direction 1) grew by 4 at 5000
    pkt = tcp4(1, 5000, opts=sack_opts((4990, 5000), (5010, 5020)))
    out = seq_adjust(pkt, 0, c)
    assert out is not None and v4_ok(out)
    opts = bytes(dpkt.ip.IP(out).data.opts)
    blocks = struct.unpack("!IIII", opts[4:20])
    # start - before(0) after 5000 ? - after(4) : - before(0)
    assert blocks == (4990, 5000, 5006, 5016)


def test_malformed_options_drop_like_the_kernel() -> None:
    c = conn()
    seqadj_set(c, 0, 1, 1)
    bad = tcp4(5, 5, opts=b"\x05\x01\x00\x00")  # option length 1 < 2
    assert seq_adjust(bad, 0, c) is None
    eol = tcp4(5, 5, opts=b"\x00\x05\x01\x00")  # EOL first: the rest is not read
    assert seq_adjust(eol, 0, c) is not None


def test_nothing_to_do() -> None:
    c = conn()
    pkt = tcp4(1, 2)
    assert seq_adjust(pkt, 0, c) is pkt  # no SEQ_ADJUST bit
    c.status |= Status.SEQ_ADJUST  # bit from the peer without offsets
    assert seq_adjust(pkt, 0, c) is pkt
    seqadj_set(c, 0, 1, 1)
    udp = bytes(dpkt.ip.IP(src=b"\1\2\3\4", dst=b"\4\3\2\1", p=17, data=b"\0" * 8))
    assert seq_adjust(udp, 0, c) is udp


# ---------------------------------------------------------------------------------- property


@settings(max_examples=300, deadline=None)
@given(
    isn=st.integers(0, M32),
    segs=st.lists(
        st.tuples(st.integers(1, 60), st.integers(-8, 12), st.booleans()), min_size=1, max_size=25
    ),
)
def test_in_order_stream_maps_both_ways(isn: int, segs: list[tuple[int, int, bool]]) -> None:
    """A sender's segments, some of them resized by a NAT helper: each leaves with its
    sequence number shifted by the growth of every resized segment before it; an ack for the
    start or the end of the newest segment, as the receiver sends it, maps back exactly through
    nf_ct_seq_adjust(), and the ack of its end through tcp_in_window's receiver_offset;
    checksums stay right."""
    c = conn()
    seq = isn
    shift = 0  # total growth so far
    for length, grow, resized in segs:
        grow = grow if resized and length + grow > 0 else 0
        out = seq_adjust(tcp4(seq, 0, b"x" * length), 0, c)
        if c.status & Status.SEQ_ADJUST:
            assert out is not None and v4_ok(out)
            assert fields(out)[0] == (seq + shift) & M32
        # the helper decides the resize after the packet's own shift is computed (same seq:
        # offset_before for it), then the packet grows
        seqadj_set(c, 0, seq, grow)
        out = seq_adjust(tcp4(seq, 0, b"x" * length), 0, c)  # the mangled packet itself
        if out is not None and c.status & Status.SEQ_ADJUST:
            assert fields(out)[0] == (seq + shift) & M32
        before = shift
        start_seen = (seq + shift) & M32
        end_seen = (seq + shift + length + grow) & M32
        shift += grow
        for seen, orig in [(start_seen, seq), (end_seen, (seq + length) & M32)]:
            # nf_ct_seq_adjust() on the receiver's ack (direction 1) is exact
            ack = seq_adjust(tcp4(7, seen), 1, c) if c.status & Status.SEQ_ADJUST else None
            if ack is not None:
                assert fields(ack)[1] == orig and v4_ok(ack)
        # the tracker's receiver_offset (nf_ct_seq_offset(ct, !dir, ack - 1), no "- before")
        # agrees for the ack of the whole segment while the stream has not shrunk and the
        # segment still holds 2 bytes (else ack - 1 is not after the position: the kernel's
        # own imprecision, transcribed)
        if before >= 0 and length + grow >= 2:
            assert (end_seen - seq_offset(c, 0, (end_seen - 1) & M32)) & M32 == (seq + length) & M32
        seq = (seq + length) & M32
