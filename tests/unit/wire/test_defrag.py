"""pmct.wire.defrag: the kernel's fragment queues.

Every scenario marked "kernel-verified" was replayed through Linux 6.18 with kernel_oracle.py
--bridge: the oracle showed ``frag`` for the fragments held and a verdict (``reassembled``) on
the one the test expects to complete the datagram. The tests pin pmct to those answers.
"""

from __future__ import annotations

import pytest
from unit.wire.wirebuild import frag6hdr, frags4, frags6, ip4, ip6, udp

from pmct.wire import parse_ip
from pmct.wire.defrag import COUNTERS, QSIZE4, QSIZE6, Defragmenter, truesize
from pmct.wire.ipv4 import header_checksum

A4, B4 = "10.0.1.1", "10.9.1.2"
A6, B6 = "2001:db8:1::1", "2001:db8:2::2"
P = udp(5000, 53, bytes(range(32)))  # 40 bytes of UDP to cut into pieces
WHOLE4 = ip4(A4, B4, 17, P, ident=77)
WHOLE6 = ip6(A6, B6, 17, P)

Pieces = list[tuple[int, int, bool]]


def push_all(d: Defragmenter, datagrams: list[bytes], now: float = 0.0) -> list[bytes | None]:
    out = []
    for data in datagrams:
        pkt = parse_ip(data)
        assert pkt.frag is not None, "test input must be fragments"
        out.append(d.push(pkt, now))
    return out


def v4(pieces: Pieces, ident: int = 77, **kw: int) -> list[bytes]:
    return frags4(A4, B4, 17, P, ident, pieces, **kw)


def v6(pieces: Pieces, ident: int = 77) -> list[bytes]:
    return frags6(A6, B6, 17, P, ident, pieces)


def held(results: list[bytes | None]) -> list[bool]:
    return [r is None for r in results]


# ----------------------------------------------------------------------- IPv4


def test_v4_in_order() -> None:
    d = Defragmenter()
    r = push_all(d, v4([(0, 16, True), (16, 16, True), (32, 8, False)]))
    assert held(r) == [True, True, False]
    assert r[2] == WHOLE4
    assert d.counters["reassembled"] == 1 and len(d) == 0 and d.mem4 == 0


def test_v4_reverse_order() -> None:
    r = push_all(Defragmenter(), v4([(32, 8, False), (16, 16, True), (0, 16, True)]))
    assert held(r) == [True, True, False] and r[2] == WHOLE4


def test_v4_reassembled_header() -> None:
    """tot_len fixed, MF/offset cleared, checksum valid, headers of the offset-0 fragment
    (IP options included), TTL/id of that fragment."""
    opts = b"\x01\x01\x01\x00"
    first = ip4(A4, B4, 17, P[:16], ident=9, frag=0x2000, opts=opts, ttl=9)
    last = ip4(A4, B4, 17, P[16:], ident=9, frag=2, ttl=200)
    whole = push_all(Defragmenter(), [last, first])[1]
    assert whole is not None
    assert whole == ip4(A4, B4, 17, P, ident=9, opts=opts, ttl=9)
    assert header_checksum(whole[:24]) == 0
    pkt = parse_ip(whole)
    assert pkt.frag is None and pkt.sport == 5000 and pkt.l4len == 40


def test_v4_df_kept_only_if_the_largest_fragment_had_it() -> None:
    big_df = [
        ip4(A4, B4, 17, P[:24], ident=5, frag=0x6000),
        ip4(A4, B4, 17, P[24:], ident=5, frag=0x0003),
    ]
    whole = push_all(Defragmenter(), big_df)[1]
    assert whole is not None and whole[6] == 0x40
    small_df = [
        ip4(A4, B4, 17, P[:24], ident=6, frag=0x2000),
        ip4(A4, B4, 17, P[24:], ident=6, frag=0x4003),
    ]
    whole = push_all(Defragmenter(), small_df)[1]
    assert whole is not None and whole[6] == 0


def test_v4_overlap_discards_the_queue() -> None:
    """kernel-verified: after an overlap nothing completes."""
    d = Defragmenter()
    r = push_all(d, v4([(0, 16, True), (8, 16, True), (16, 16, True), (32, 8, False)]))
    assert held(r) == [True] * 4
    assert d.counters["overlap"] == 1


def test_v4_duplicate_is_ignored() -> None:
    """kernel-verified."""
    d = Defragmenter()
    r = push_all(d, v4([(0, 16, True), (0, 16, True), (16, 24, False)]))
    assert held(r) == [True, True, False] and r[2] == WHOLE4
    assert d.counters["duplicate"] == 1


def test_v4_non_last_fragment_is_cut_to_a_multiple_of_8() -> None:
    """kernel-verified: a 13-byte MF fragment counts as 8 bytes."""
    pieces = [
        ip4(A4, B4, 17, P[:13], ident=77, frag=0x2000),
        ip4(A4, B4, 17, P[8:], ident=77, frag=1),
    ]
    r = push_all(Defragmenter(), pieces)
    assert r[1] == WHOLE4


def test_v4_empty_fragment_discards_the_queue() -> None:
    """kernel-verified (contrast: IPv6 keeps the queue)."""
    d = Defragmenter()
    r = push_all(d, v4([(0, 16, True), (16, 0, True), (16, 24, False)]))
    assert held(r) == [True] * 3 and d.counters["empty"] == 1


def test_v4_runs_decide_duplicate_or_overlap() -> None:
    """kernel-verified: runs are built only by in-order appends at the tail.

    Out of order, [16,24) [0,8) [8,16) are three runs; [0,16) spans two of them: overlap,
    queue gone, nothing completes. In order, [0,8) [8,16) form one run and the same [0,16)
    lies inside it: duplicate, and the datagram completes."""
    d = Defragmenter()
    pieces = [(16, 8, True), (0, 8, True), (8, 8, True), (0, 16, True), (24, 16, False)]
    assert held(push_all(d, v4(pieces))) == [True] * 5
    assert d.counters["overlap"] == 1
    d = Defragmenter()
    r = push_all(d, v4([(0, 8, True), (8, 8, True), (0, 16, True), (16, 24, False)]))
    assert held(r) == [True, True, True, False] and r[3] == WHOLE4
    assert d.counters["duplicate"] == 1


def test_v4_data_beyond_the_last_fragment() -> None:
    """kernel-verified: both discard the queue in IPv4."""
    d = Defragmenter()
    assert held(push_all(d, v4([(8, 8, False), (16, 8, True), (0, 8, True)]))) == [True] * 3
    d2 = Defragmenter()
    assert held(push_all(d2, v4([(16, 8, False), (16, 16, False), (0, 16, True)]))) == [True] * 3
    assert d.counters["bad_end"] == 1 and d2.counters["bad_end"] == 1


def test_v4_queue_key_includes_the_protocol() -> None:
    d = Defragmenter()
    first = frags4(A4, B4, 17, P, 5, [(0, 16, True)])[0]
    last_other_proto = frags4(A4, B4, 6, P, 5, [(16, 24, False)])[0]
    assert held(push_all(d, [first, last_other_proto])) == [True, True]
    assert len(d) == 2


def _too_far(others: int) -> list[bytes | None]:
    pieces = v4([(0, 16, True)], ident=1)
    for k in range(others):  # other datagrams from the same source, never completed
        pieces += v4([(0, 8, True)], ident=1000 + k)
    pieces += v4([(16, 24, False)], ident=1)
    return push_all(Defragmenter(), pieces)


def test_v4_too_far_restarts_the_queue() -> None:
    """kernel-verified: ipfrag_max_dist 64. 66 foreign fragments in between: the queue is
    restarted and the last fragment alone completes nothing; 60: it completes."""
    assert all(r is None for r in _too_far(66))
    near = _too_far(60)
    assert all(r is None for r in near[:-1]) and near[-1] == ip4(A4, B4, 17, P, ident=1)


def test_v4_oversize_is_dropped_at_reassembly() -> None:
    """kernel-verified: 20 + 65536 bytes is "Oversized IP packet"."""
    big = udp(5000, 53, bytes(65536 - 8))
    pieces = [(o, 1480, True) for o in range(0, 65120, 1480)] + [(65120, 416, False)]
    d = Defragmenter()
    r = push_all(d, frags4(A4, B4, 17, big, 3, pieces))
    assert all(x is None for x in r) and d.counters["too_big"] == 1 and len(d) == 0


def test_v4_ecn_merge() -> None:
    """kernel-verified: ECT(0) + not-ECT is dropped; CE + ECT(0) is reassembled with CE."""
    d = Defragmenter()
    mix = [v4([(0, 16, True)], tos=2)[0], v4([(16, 24, False)], tos=0)[0]]
    assert held(push_all(d, mix)) == [True, True] and d.counters["bad_ecn"] == 1
    ce = [v4([(0, 16, True)], tos=2)[0], v4([(16, 24, False)], tos=3)[0]]
    whole = push_all(Defragmenter(), ce)[1]
    assert whole is not None and whole[1] == 3


def test_v4_timeout_is_counted_from_the_first_fragment() -> None:
    """kernel-verified (kernel_oracle.py --realtime): completing at 29 s reassembles; first
    at 0 s, middle at 20 s, last at 31 s does not."""
    d = Defragmenter()
    f = v4([(0, 16, True), (16, 16, True), (32, 8, False)])
    assert push_all(d, f[:1], now=100.0) == [None]
    assert push_all(d, f[1:2], now=129.0) == [None]  # does not extend the deadline
    assert d.expire(129.9) == 0
    assert push_all(d, f[2:], now=130.0) == [None]  # the queue died at 130: a new one
    assert d.counters["timeout"] == 1 and len(d) == 1
    assert d.expire(160.0) == 1 and len(d) == 0 and d.mem4 == 0
    assert d.counters["timeout"] == 2


# ----------------------------------------------------------------------- IPv6


def test_v6_in_order_and_reverse() -> None:
    r = push_all(Defragmenter(), v6([(0, 16, True), (16, 16, True), (32, 8, False)]))
    assert held(r) == [True, True, False] and r[2] == WHOLE6
    r = push_all(Defragmenter(), v6([(32, 8, False), (16, 16, True), (0, 16, True)]))
    assert r[2] == WHOLE6


def test_v6_fragment_header_behind_destination_options() -> None:
    """kernel-verified: the header before the fragment header takes over its next header."""
    dst = bytes([44, 0, 1, 4, 0, 0, 0, 0])
    frags = frags6(A6, B6, 17, P, 8, [(0, 16, True), (16, 24, False)], pre=dst, pre_nh=60)
    whole = push_all(Defragmenter(), frags)[1]
    assert whole == ip6(A6, B6, 60, bytes([17]) + dst[1:] + P)
    pkt = parse_ip(whole)
    assert pkt.frag is None and pkt.proto == 17 and pkt.l4off == 48 and pkt.sport == 5000


def test_v6_overlap_and_duplicate() -> None:
    """kernel-verified (RFC 5722)."""
    d = Defragmenter()
    r = push_all(d, v6([(0, 16, True), (8, 16, True), (16, 16, True), (32, 8, False)]))
    assert held(r) == [True] * 4 and d.counters["overlap"] == 1
    d = Defragmenter()
    r = push_all(d, v6([(0, 16, True), (0, 16, True), (16, 24, False)]))
    assert r[2] == WHOLE6 and d.counters["duplicate"] == 1


def test_v6_unaligned_first_fragment_passes_unreassembled() -> None:
    """kernel-verified: -EPROTO; conntrack reads the L4 header behind the fragment header
    (here it finds UDP whose length field says 40: "truncated/malformed packet")."""
    d = Defragmenter()
    out = push_all(d, v6([(0, 13, True)]))[0]
    assert out is not None and d.counters["unaligned"] == 1 and len(d) == 0
    pkt = parse_ip(out)
    assert pkt.frag is None and pkt.proto == 17 and pkt.sport == 5000 and pkt.l4len == 13


def test_v6_unaligned_later_fragment_comes_back_as_a_fragment() -> None:
    """kernel-verified: conntrack gets a non-first fragment: INVALID."""
    d = Defragmenter()
    queued = push_all(d, v6([(0, 16, True)]))
    out = push_all(d, v6([(16, 13, True)]))[0]
    assert queued == [None] and out is not None and len(d) == 0  # the queue was killed
    again = parse_ip(out)
    assert again.frag is not None and again.frag.offset == 16


def test_v6_atomic_fragment_is_reassembled_at_once() -> None:
    """kernel-verified: offset 0 without M completes its own queue."""
    whole = push_all(Defragmenter(), v6([(0, 40, False)]))[0]
    assert whole == WHOLE6


def test_v6_conflicting_last_fragment_keeps_the_queue() -> None:
    """kernel-verified (contrast with IPv4): only the offending fragment is dropped."""
    d = Defragmenter()
    r = push_all(d, v6([(16, 8, False), (16, 16, False), (0, 16, True)]))
    assert held(r) == [True, True, False] and d.counters["bad_end"] == 1
    assert r[2] is not None and len(r[2]) == 40 + 24


def test_v6_empty_fragment_keeps_the_queue() -> None:
    """kernel-verified (contrast with IPv4)."""
    d = Defragmenter()
    r = push_all(d, v6([(0, 16, True), (16, 0, True), (16, 24, False)]))
    assert r[2] == WHOLE6 and d.counters["empty"] == 1


def test_v6_key_ignores_the_next_header() -> None:
    first = frags6(A6, B6, 17, P, 4, [(0, 16, True)])[0]
    last = frags6(A6, B6, 6, P, 4, [(16, 24, False)])[0]  # another next header, same id
    whole = push_all(Defragmenter(), [first, last])[1]
    assert whole == WHOLE6  # the first fragment's next header wins


def test_v6_fragment_end_beyond_65535_is_dropped_queue_kept() -> None:
    d = Defragmenter()
    far = ip6(A6, B6, 44, frag6hdr(17, 65528, False, 4) + bytes(16))
    assert push_all(d, [far]) == [None] and d.counters["too_big"] == 1 and len(d) == 1


def test_v6_ecn_merge() -> None:
    ce = frags6(A6, B6, 17, P, 4, [(0, 16, True)], tc=3)
    ect = frags6(A6, B6, 17, P, 4, [(16, 24, False)], tc=2)
    whole = push_all(Defragmenter(), ce + ect)[1]
    assert whole is not None and (whole[1] >> 4) & 3 == 3
    not_ect = frags6(A6, B6, 17, P, 5, [(16, 24, False)], tc=0)
    d = Defragmenter()
    assert push_all(d, frags6(A6, B6, 17, P, 5, [(0, 16, True)], tc=2) + not_ect) == [None] * 2
    assert d.counters["bad_ecn"] == 1


def test_v6_timeout_is_60_seconds() -> None:
    """kernel-verified (--realtime): last fragment at 58 s completes; first at 0 s, middle
    at 45 s, last at 62 s does not."""
    d = Defragmenter()
    f = v6([(0, 16, True), (16, 8, True), (24, 16, False)])
    assert push_all(d, f[:1], now=0.0) == [None]
    assert push_all(d, f[1:2], now=45.0) == [None]
    assert push_all(d, f[2:], now=62.0) == [None] and d.counters["timeout"] == 1
    d = Defragmenter()
    push_all(d, v6([(0, 16, True)]), now=0.0)
    assert d.expire(59.0) == 0 and d.expire(60.0) == 1 and d.mem6 == 0
    d = Defragmenter()
    g = v6([(0, 16, True), (16, 24, False)])
    assert push_all(d, g[:1], now=0.0) == [None]
    assert push_all(d, g[1:], now=58.0) == [WHOLE6]


# ----------------------------------------------------------------------- memory, API


def test_truesize_model() -> None:
    """Measured with kernel_oracle.py (see the module docstring of pmct.wire.defrag)."""
    assert [truesize(n) for n in (28, 226, 227, 674, 675, 1500, 1698, 1699, 2020)] == [
        832,
        832,
        1280,
        1280,
        2304,
        2304,
        2304,
        4352,
        4352,
    ]


@pytest.mark.parametrize(
    ("v6", "payload", "accepted"),
    [
        (False, 1480, 1675),
        (False, 1000, 1675),
        (False, 600, 2833),
        (False, 8, 4064),
        (False, 2000, 921),
        (True, 1448, 1685),
        (True, 96, 4128),
    ],
)
def test_memory_threshold_matches_the_kernel(v6: bool, payload: int, accepted: int) -> None:
    """kernel-verified: with ``accepted`` first fragments queued (each its own datagram, from
    different sources) the completing fragment of the first datagram is still accepted; one
    more queued fragment and it is refused: 4 MiB high_thresh."""
    body = udp(5000, 53, bytes(payload + 8))

    def first(k: int) -> bytes:
        if v6:
            return frags6(A6, B6, 17, body, 1000 + k, [(0, payload, True)])[0]
        src = f"10.3.{k // 250}.{k % 250 + 1}"  # sources differ: ipfrag_max_dist stays quiet
        return frags4(src, B4, 17, body, 1000 + k, [(0, payload, True)])[0]

    last = (
        frags6(A6, B6, 17, body, 1000, [(payload, 8, False)])[0]
        if v6
        else frags4("10.3.0.1", B4, 17, body, 1000, [(payload, 8, False)])[0]
    )
    for extra, completes in ((0, True), (1, False)):
        d = Defragmenter()
        assert push_all(d, [first(k) for k in range(accepted + extra)]) == [None] * (
            accepted + extra
        )
        assert (push_all(d, [last])[0] is not None) == completes


def test_memory_threshold_refuses_fragments() -> None:
    """DEVIATION(kernel) pin: truesize is the veth/AF_PACKET value whatever the NIC. Above
    high_thresh nothing is accepted, not even for existing queues (inet_frag_find())."""
    f = v4([(0, 16, True), (16, 24, False)])
    per_frag = truesize(len(f[0]))
    assert per_frag == 832
    d = Defragmenter(high_thresh4=QSIZE4 + per_frag - 1)
    assert push_all(d, f[:1]) == [None]
    assert d.mem4 == QSIZE4 + per_frag
    assert push_all(d, f[1:]) == [None] and d.counters["no_memory"] == 1
    d.expire(1000.0)
    assert d.mem4 == 0 and len(d) == 0
    assert push_all(d, f[:1], now=1000.0) == [None] and len(d) == 1  # accepted again
    at_limit = Defragmenter(high_thresh4=QSIZE4 + per_frag)  # "more than", not "at least"
    assert push_all(at_limit, f) == [None, WHOLE4]
    six = Defragmenter(high_thresh6=QSIZE6 - 1)
    assert push_all(six, v6([(0, 16, True), (16, 24, False)])) == [None, None]
    assert six.counters["no_memory"] == 1


def test_push_of_a_non_fragment() -> None:
    d = Defragmenter()
    pkt = parse_ip(WHOLE4)
    assert d.push(pkt, 0.0) == WHOLE4
    dropped = parse_ip(b"\x45")
    assert d.push(dropped, 0.0) is None
    assert d.counters["not_fragment"] == 2


@pytest.mark.parametrize("name", COUNTERS)
def test_counter_names_are_all_present(name: str) -> None:
    assert Defragmenter().counters[name] == 0
