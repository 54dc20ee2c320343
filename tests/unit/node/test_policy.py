"""The node's ruleset (pmct/node/policy.py): first match wins, every field, header decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pktbuild import ACK, SYN, icmp4, ip6, tcp4, tcp6, udp4, udp_dgram

from pmct.conntrack.constants import CtState
from pmct.node.policy import (
    Action,
    Rule,
    Ruleset,
    ctstate_mark,
    describe,
    packet_fields,
    parse_net,
)

NEW, EST, REL, INV, UNT, HELD, DROPPED = (
    int(CtState.NEW),
    int(CtState.ESTABLISHED),
    int(CtState.RELATED),
    int(CtState.INVALID),
    int(CtState.UNTRACKED),
    int(CtState.HELD),
    int(CtState.DROPPED),
)
A, D, R = Action.ACCEPT, Action.DROP, Action.REJECT

SYN_PKT = tcp4(40000, 80, SYN, src="198.18.1.2", dst="198.18.2.2")
ACK_PKT = tcp4(40000, 80, ACK, 1, 1, src="198.18.1.2", dst="198.18.2.2")
UDP_PKT = udp4(5353, 53, src="198.18.1.2", dst="198.18.2.2")
PING = icmp4(8, src="198.18.1.2", dst="198.18.2.2")


def stateful() -> Ruleset:
    """The classic: established/related in, invalid out, new only from the LAN as TCP SYN."""
    return Ruleset(
        [
            Rule(A, ctstates=(EST, REL)),
            Rule(D, ctstates=(INV, DROPPED)),
            Rule(A, ctstates=(NEW,), iif=frozenset({"lan0"}), protos=frozenset({6}), syn=True),
        ],
        D,
    )


def test_first_match_wins_and_default_applies() -> None:
    rs = stateful()
    assert rs.decide(EST, 1, "wan0", ACK_PKT) == A
    assert rs.decide(REL, 1, "wan0", PING) == A
    assert rs.decide(INV, -1, "lan0", SYN_PKT) == D
    assert rs.decide(NEW, 0, "lan0", SYN_PKT) == A
    assert rs.decide(NEW, 0, "wan0", SYN_PKT) == D  # nothing new from the WAN
    assert rs.decide(NEW, 0, "lan0", ACK_PKT) == D  # a mid-stream pickup is no SYN
    assert rs.decide(NEW, 0, "lan0", UDP_PKT) == D
    assert rs.hits == [2, 1, 1, 3]


def test_order_matters() -> None:
    drop_first = Ruleset([Rule(D, protos=frozenset({17})), Rule(A)], D)
    accept_first = Ruleset([Rule(A), Rule(D, protos=frozenset({17}))], D)
    assert drop_first.decide(NEW, 0, "lan0", UDP_PKT) == D
    assert accept_first.decide(NEW, 0, "lan0", UDP_PKT) == A


def test_empty_ruleset_is_the_default() -> None:
    assert Ruleset([], A).decide(INV, -1, None, b"") == A
    assert Ruleset([], R).decide(NEW, 0, "x", SYN_PKT) == R


def test_direction_and_a_packet_without_connection() -> None:
    rs = Ruleset([Rule(A, direction=1)], D)
    assert rs.decide(EST, 1, "wan0", ACK_PKT) == A
    assert rs.decide(EST, 0, "wan0", ACK_PKT) == D
    assert rs.decide(INV, -1, "wan0", ACK_PKT) == D


def test_untracked_and_fragment_states_are_separate() -> None:
    rs = Ruleset([Rule(A, ctstates=(UNT,))], D)
    assert rs.decide(UNT, -1, "lan0", b"") == A
    assert rs.decide(HELD, -1, "lan0", b"") == D


def test_addresses_and_prefixes_v4_v6() -> None:
    rs = Ruleset(
        [
            Rule(A, src=(parse_net("198.18.1.0/24"),)),
            Rule(R, dst=(parse_net("2001:db8::2"),)),
        ],
        D,
    )
    assert rs.decide(NEW, 0, "lan0", SYN_PKT) == A
    assert rs.decide(NEW, 0, "lan0", tcp4(1, 2, SYN, src="198.19.1.2", dst="198.18.1.9")) == D
    assert rs.decide(NEW, 0, "lan0", tcp6(1, 2, SYN)) == R  # 2001:db8::1 -> ::2
    # an IPv4 prefix never matches an IPv6 address with the same low bits
    v4 = Ruleset([Rule(A, src=(parse_net("0.0.0.0/0"),))], D)
    assert v4.decide(NEW, 0, "lan0", tcp6(1, 2, SYN)) == D


def test_ports_need_a_port_header() -> None:
    rs = Ruleset([Rule(A, protos=frozenset({6, 17}), dports=((53, 53), (80, 90)))], D)
    assert rs.decide(NEW, 0, "lan0", SYN_PKT) == A
    assert rs.decide(NEW, 0, "lan0", UDP_PKT) == A
    assert rs.decide(NEW, 0, "lan0", tcp4(1, 91, SYN)) == D
    assert rs.decide(NEW, 0, "lan0", PING) == D
    src = Ruleset([Rule(A, protos=frozenset({6}), sports=((40000, 40010),))], D)
    assert src.decide(NEW, 0, "lan0", SYN_PKT) == A


def test_syn_false_means_tcp_but_not_a_syn() -> None:
    rs = Ruleset([Rule(A, protos=frozenset({6}), syn=False)], D)
    assert rs.decide(NEW, 0, "lan0", ACK_PKT) == A
    assert rs.decide(NEW, 0, "lan0", SYN_PKT) == D
    assert rs.decide(NEW, 0, "lan0", tcp4(1, 2, SYN | ACK)) == A  # SYN/ACK is not --syn


def test_out_interface_asks_the_route_lookup_only_when_needed() -> None:
    asked: list[tuple[int, int]] = []

    def oif(l3: int, dst: int) -> str | None:
        asked.append((l3, dst))
        return "wan0" if dst >> 24 == 198 else None

    rs = Ruleset([Rule(A, ctstates=(EST,)), Rule(A, oif=frozenset({"wan0"}))], D)
    assert rs.needs_oif
    assert rs.decide(EST, 0, "lan0", SYN_PKT, oif) == A
    assert asked == []
    assert rs.decide(NEW, 0, "lan0", SYN_PKT, oif) == A
    assert asked == [(4, int.from_bytes(bytes([198, 18, 2, 2]), "big"))]
    assert rs.decide(NEW, 0, "lan0", tcp4(1, 2, SYN, dst="10.0.0.1"), oif) == D
    assert rs.decide(NEW, 0, "lan0", SYN_PKT, None) == D  # unknown route never matches


def test_packet_fields() -> None:
    assert packet_fields(SYN_PKT) == (
        4,
        6,
        0xC6120102,
        0xC6120202,
        40000,
        80,
        SYN,
    )
    assert packet_fields(UDP_PKT)[1:] == (17, 0xC6120102, 0xC6120202, 5353, 53, -1)
    assert packet_fields(PING)[4:] == (-1, -1, -1)
    l3, proto, *_rest, sport, dport, flags = packet_fields(tcp6(7, 8, SYN | ACK))
    assert (l3, proto, sport, dport, flags) == (6, 6, 7, 8, SYN | ACK)


def test_packet_fields_walks_ipv6_extension_headers() -> None:
    hop_by_hop = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # next: UDP, 8 bytes, PadN
    pkt = ip6("2001:db8::1", "2001:db8::2", 0, hop_by_hop + udp_dgram(1000, 2000))
    assert packet_fields(pkt)[1] == 17
    assert packet_fields(pkt)[4:6] == (1000, 2000)
    first = struct.pack("!BBHI", 17, 0, 0x0001, 99)  # fragment header, offset 0, more fragments
    assert packet_fields(ip6("2001:db8::1", "2001:db8::2", 44, first + udp_dgram(3, 4)))[4:6] == (
        3,
        4,
    )
    later = struct.pack("!BBHI", 17, 0, 0x0008 | 1, 99)  # offset 8 bytes: no UDP header here
    f = packet_fields(ip6("2001:db8::1", "2001:db8::2", 44, later + b"\0" * 8))
    assert f[4] == -1


def test_non_first_ipv4_fragment_has_no_ports() -> None:
    from pktbuild import ip4

    frag = ip4("198.18.1.2", "198.18.2.2", 17, b"\0" * 16, frag=2)  # offset 16 bytes
    assert packet_fields(frag)[4:] == (-1, -1, -1)
    rs = Ruleset([Rule(A, protos=frozenset({17}), dports=((0, 65535),))], D)
    assert rs.decide(NEW, 0, "lan0", frag) == D


@given(st.binary(max_size=80))
def test_packet_fields_is_total(data: bytes) -> None:
    f = packet_fields(data)
    assert len(f) == 7
    rs = Ruleset([Rule(A, protos=frozenset({6}), dports=((1, 2),), syn=True)], D)
    assert rs.decide(NEW, 0, "lan0", data) in (A, D)


def test_ctstate_mark_uses_nft_ct_state_bits() -> None:
    assert [ctstate_mark(s) for s in (INV, EST, REL, NEW, UNT, HELD, DROPPED)] == [
        1,
        2,
        4,
        8,
        64,
        0,
        1,
    ]


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("198.18.0.0/15", "198.18.0.0/15"),
        ("198.18.1.7/24", "198.18.1.0/24"),
        ("198.18.1.7", "198.18.1.7/32"),
        ("2001:db8::1/32", "2001:db8::/32"),
    ],
)
def test_parse_net(text: str, back: str) -> None:
    assert str(parse_net(text)) == back


def test_parse_net_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_net("198.18.0.0/33")


def test_describe() -> None:
    r = Rule(
        A,
        ctstates=(NEW,),
        iif=frozenset({"lan0"}),
        protos=frozenset({6}),
        dports=((80, 80), (8000, 8080)),
        syn=True,
        comment="web",
    )
    assert describe(r) == "ctstate new in lan0 proto tcp dport 80,8000-8080 syn -> accept # web"
    assert describe(Rule(D, ctstates=(INV, DROPPED))) == "ctstate invalid -> drop"
