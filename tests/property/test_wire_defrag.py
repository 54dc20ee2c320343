"""Defragmenter round trip: any order, any exact duplicates, the original datagram comes out.

A datagram is cut at random 8-byte boundaries; the fragments (plus exact copies of some of
them, which always fall inside a run already queued and so are duplicates) are pushed in a
random order. Exactly one push, the one that supplies the last missing byte, returns the
datagram, identical to the unfragmented original (IPv4: same header, checksum recomputed;
IPv6: fragment header gone).
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from unit.wire.wirebuild import frags4, frags6, ip4, ip6, udp

from pmct.wire import parse_ip
from pmct.wire.defrag import Defragmenter

A4, B4 = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


@st.composite
def cut_plans(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, bool]], list[int]]:
    payload = udp(1000, 53, draw(st.binary(min_size=1, max_size=300)))
    n = len(payload)
    cuts = sorted(draw(st.sets(st.integers(1, (n - 1) // 8), max_size=8)))
    bounds = [0] + [c * 8 for c in cuts] + [n]
    pieces = [(a, b - a, b != n) for a, b in itertools.pairwise(bounds)]
    order = draw(st.permutations(range(len(pieces))))
    dups = draw(st.lists(st.integers(0, len(pieces) - 1), max_size=3))
    return payload, pieces, list(order) + dups


def _run(frags: list[bytes], order: list[int], whole: bytes) -> None:
    d = Defragmenter()
    seen: set[int] = set()
    results = []
    for i in order:
        out = d.push(parse_ip(frags[i]), 1.0)
        seen.add(i)
        results.append(out)
        if len(seen) == len(frags):
            assert out == whole
            break
        assert out is None
    assert sum(r is not None for r in results) == 1
    assert len(d) == 0 and d.mem4 == 0 and d.mem6 == 0


@given(cut_plans(), st.integers(0, 0xFFFF), st.integers(0, 3))
def test_ipv4_round_trip(plan: tuple[bytes, list, list[int]], ident: int, tos: int) -> None:
    payload, pieces, order = plan
    frags = frags4(A4, B4, 17, payload, ident, pieces, tos=tos)
    _run(frags, order, ip4(A4, B4, 17, payload, ident=ident, tos=tos))


@given(cut_plans(), st.integers(0, 0xFFFFFFFF), st.integers(0, 3))
def test_ipv6_round_trip(plan: tuple[bytes, list, list[int]], ident: int, tc: int) -> None:
    payload, pieces, order = plan
    frags = frags6(A6, B6, 17, payload, ident, pieces, tc=tc)
    _run(frags, order, ip6(A6, B6, 17, payload, tc=tc))
