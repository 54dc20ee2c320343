"""Engine core: resolve, confirm, SEEN_REPLY, ICMP errors, expiry, table limit, events."""

from __future__ import annotations

from pktbuild import (
    A4,
    A6,
    ACK,
    B4,
    B6,
    SYN,
    icmp4,
    icmp4_error,
    icmp6,
    icmp6_error,
    ip4,
    tcp4,
    udp4,
    udp6,
)

from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine, EventType
from pmct.conntrack.keys import IPPROTO_TCP, decode_key, make_key
from pmct.conntrack.settings import Settings

NEW, EST, REL, INV, UNT = (
    CtState.NEW,
    CtState.ESTABLISHED,
    CtState.RELATED,
    CtState.INVALID,
    CtState.UNTRACKED,
)


def test_fast_path_key_is_the_tcp_key() -> None:
    data = tcp4(1234, 80, SYN, 100)
    key = make_key(IPPROTO_TCP, data[12:16], data[16:20], 1234, 80)
    assert data[12:24] == key
    t = decode_key(key)
    assert (t.l3, t.proto, t.sport, t.dport) == (4, 6, 1234, 80)


def test_udp_unreplied_then_stream() -> None:
    eng = Engine()
    st, d, c = eng.process_ip(udp4(5000, 53), 0.0)
    assert (st, d) == (NEW, 0)
    assert c is not None and c.expires == 30.0
    st, d, c2 = eng.process_ip(udp4(53, 5000, src=B4, dst=A4), 0.5)
    assert (st, d) == (EST, 1) and c2 is c
    # kernel: SEEN_REPLY is set after the tracker ran, so the first reply gets 30 s
    assert c.expires == 30.5
    assert c.status & Status.SEEN_REPLY and not c.status & Status.ASSURED
    st, d, _ = eng.process_ip(udp4(5000, 53), 1.0)
    assert (st, d) == (EST, 0)
    assert c.expires == 31.0  # still within the 2 s stream window
    eng.process_ip(udp4(5000, 53), 2.5)
    assert c.expires == 2.5 + 120 and c.status & Status.ASSURED


def test_udp_expiry_makes_a_new_entry() -> None:
    eng = Engine()
    _, _, c1 = eng.process_ip(udp4(5000, 53), 0.0)
    st, _, c2 = eng.process_ip(udp4(5000, 53), 31.0)
    assert st == NEW and c2 is not c1
    assert len(eng.table) == 1


def test_udp_malformed_length_is_invalid() -> None:
    eng = Engine()
    data = bytearray(udp4(5000, 53, b"abcd"))
    data[24:26] = (100).to_bytes(2, "big")  # UDP length beyond the datagram
    st, d, c = eng.process_ip(bytes(data), 0.0)
    assert (st, d, c) == (INV, -1, None)
    assert eng.last_reason == "truncated/malformed packet"
    assert eng.invalid_reasons["truncated/malformed packet"] == 1
    assert len(eng.table) == 0


def test_icmp_echo_entry_survives_reply() -> None:
    eng = Engine()
    assert eng.process_ip(icmp4(8), 0.0)[:2] == (NEW, 0)
    assert eng.process_ip(icmp4(0, src=B4, dst=A4), 0.1)[:2] == (EST, 1)
    assert eng.process_ip(icmp4(0, src=B4, dst=A4), 0.2)[:2] == (EST, 1)  # duplicate reply
    assert len(eng.table) == 1


def test_icmp_reply_without_request_is_invalid() -> None:
    eng = Engine()
    assert eng.process_ip(icmp4(0), 0.0)[0] == INV
    assert eng.process_ip(icmp4(99), 0.0)[0] == INV  # type > NR_ICMP_TYPES
    assert eng.last_reason == "invalid icmp type"
    assert len(eng.table) == 0


def test_icmp_error_quoting_udp_is_related() -> None:
    eng = Engine()
    probe = udp4(5000, 33434)
    eng.process_ip(probe, 0.0)
    # a router 203.0.113.9 tells A that B's port is unreachable: reply direction
    st, d, c = eng.process_ip(icmp4_error(3, 3, probe, src="203.0.113.9", dst=A4), 0.1)
    assert st == REL and c is not None
    # kernel: the error travels back to A, the original sender, so its outer daddr is A,
    # which is the destination of the reply tuple -> direction REPLY
    assert d == 1


def test_icmp_error_with_wrong_outer_daddr_is_invalid() -> None:
    eng = Engine()
    probe = udp4(5000, 33434)
    eng.process_ip(probe, 0.0)
    st, _, _ = eng.process_ip(icmp4_error(3, 3, probe, src="203.0.113.9", dst="203.0.113.7"), 0.1)
    assert st == INV and eng.last_reason == "icmp error: outer daddr != inner"


def test_icmp_error_without_connection_is_invalid() -> None:
    eng = Engine()
    st, _, _ = eng.process_ip(icmp4_error(11, 0, udp4(1, 2), src="203.0.113.9", dst=A4), 0.0)
    assert st == INV


def test_icmp_error_quoting_tcp_with_8_bytes_is_related() -> None:
    eng = Engine()
    syn = tcp4(40000, 80, SYN, 1000)
    assert eng.process_ip(syn, 0.0)[0] == NEW
    st, d, _ = eng.process_ip(icmp4_error(3, 4, syn, src="203.0.113.9", dst=A4), 0.1)
    assert (st, d) == (REL, 1)


def test_icmpv6_nd_is_untracked_and_echo_tracked() -> None:
    eng = Engine()
    assert eng.process_ip(icmp6(135, body=bytes(20)), 0.0)[0] == UNT
    assert eng.process_ip(icmp6(128), 0.0)[:2] == (NEW, 0)
    assert eng.process_ip(icmp6(129, src=B6, dst=A6), 0.0)[:2] == (EST, 1)


def test_icmpv6_error_quoting_udp_is_related() -> None:
    eng = Engine()
    probe = udp6(5000, 33435)
    eng.process_ip(probe, 0.0)
    st, d, _ = eng.process_ip(icmp6_error(1, 4, probe, src="2001:db8::99", dst=A6), 0.1)
    assert (st, d) == (REL, 1)


def test_generic_protocol_uses_generic_timeout() -> None:
    eng = Engine()
    st, d, c = eng.process_ip(ip4(A4, B4, 50, b"\0" * 16), 0.0)  # ESP
    assert (st, d) == (NEW, 0) and c is not None and c.expires == 600.0
    assert eng.process_ip(ip4(B4, A4, 50, b"\0" * 16), 1.0)[:2] == (EST, 1)


def test_table_limit_early_drops_unassured_then_drops_packets() -> None:
    eng = Engine(Settings(max_entries=2))
    eng.process_ip(udp4(1, 53), 0.0)
    eng.process_ip(udp4(2, 53), 0.0)
    st, _, c = eng.process_ip(udp4(3, 53), 0.0)
    assert st == NEW and len(eng.table) == 2 and eng.stats["early_drop"] == 1
    # make both entries ASSURED streams: nothing can be early-dropped any more
    for sport in (2, 3):
        eng.process_ip(udp4(53, sport, src=B4, dst=A4), 0.1)
        eng.process_ip(udp4(sport, 53), 3.0)
    st, _, c = eng.process_ip(udp4(4, 53), 3.0)
    assert (st, c) == (CtState.DROPPED, None) and eng.last_reason == "table full"
    assert len(eng.table) == 2


def test_expire_sweeps_the_table() -> None:
    eng = Engine()
    for sport in range(10):
        eng.process_ip(udp4(1000 + sport, 53), float(sport))
    assert len(eng.table) == 10
    assert eng.expire(35.5) == 5  # entries created at 0..4 s expired at 30..34 s
    assert len(eng.table) == 5
    assert eng.expire(100.0) == 5 and len(eng.table) == 0


def test_events_new_update_destroy() -> None:
    eng = Engine(events=True)
    eng.process_ip(udp4(5000, 53), 0.0)
    eng.process_ip(udp4(53, 5000, src=B4, dst=A4), 0.1)
    eng.process_ip(udp4(5000, 53), 0.2)  # nothing changes: no event
    eng.expire(100.0)
    kinds = [k for k, _ in eng.drain_events()]
    assert kinds == [EventType.NEW, EventType.UPDATE, EventType.DESTROY]
    assert eng.drain_events() == []


def test_tcp_handshake_through_engine() -> None:
    eng = Engine()
    st, d, c = eng.process_ip(tcp4(40000, 80, SYN, 1000), 0.0)
    assert (st, d) == (NEW, 0) and c is not None
    st, d, _ = eng.process_ip(tcp4(80, 40000, SYN | ACK, 5000, 1001, src=B4, dst=A4), 0.1)
    assert (st, d) == (EST, 1)
    st, d, _ = eng.process_ip(tcp4(40000, 80, ACK, 1001, 5001), 0.2)
    assert (st, d) == (EST, 0)
    assert c.state == 3 and c.status & Status.ASSURED


def test_garbage_never_raises() -> None:
    eng = Engine()
    for data in (
        b"",
        b"\x45",
        b"\x45" + bytes(39),
        b"\x60" + bytes(10),
        bytes(range(256)),
        b"\x4f" + bytes(60),
        b"\x45\x00\xff\xff" + bytes(36),
    ):
        st, _, _ = eng.process_ip(data, 0.0)
        assert st in (CtState.INVALID, CtState.DROPPED, CtState.HELD, CtState.NEW)


def test_tcp_on_ipv6_and_v4_do_not_collide() -> None:
    eng = Engine()
    eng.process_ip(tcp4(1, 2, SYN, 1), 0.0)
    eng.process_ip(udp4(1, 2), 0.0)
    eng.process_ip(udp6(1, 2, src=A6, dst=B6), 0.0)
    assert len(eng.table) == 3


def _process_slow_path(eng: Engine, data: bytes, now: float):  # type: ignore[no-untyped-def]
    """What process_ip does with the IPv4/TCP fast path switched off. (A function, not a
    subclass: the engine may be compiled by mypyc, whose classes are not subclassable.)"""
    if now >= eng._gc_due:
        eng.expire(now)
    eng.last_reason = None
    return eng._slow(data, now)


def _traces() -> list:
    from pmct.fidelity import default_traces

    return default_traces()


def test_fast_path_equals_slow_path_on_every_trace() -> None:
    from pmct.bench import load_ip_packets

    traces = _traces()
    assert traces, "shared/traces not found next to the repository"
    for path in traces:
        fast, slow = Engine(), Engine()
        for i, (ts, data) in enumerate(load_ip_packets(path)):
            vf = fast.process_ip(data, ts)
            vs = _process_slow_path(slow, data, ts)
            got = (vf[0], vf[1], vf[2] and vf[2].state, vf[2] and vf[2].expires)
            want = (vs[0], vs[1], vs[2] and vs[2].state, vs[2] and vs[2].expires)
            assert got == want, f"{path.name} packet {i}: fast {got} != slow {want}"
        assert len(fast.table) == len(slow.table)


def test_time_wait_reopen_through_the_fast_path() -> None:
    eng = Engine()
    eng.process_ip(tcp4(40000, 80, SYN, 1000), 0.0)
    eng.process_ip(tcp4(80, 40000, SYN | ACK, 5000, 1001, src=B4, dst=A4), 0.0)
    eng.process_ip(tcp4(40000, 80, ACK, 1001, 5001), 0.0)
    eng.process_ip(tcp4(40000, 80, ACK | 0x01, 1001, 5001), 0.1)  # FIN
    eng.process_ip(tcp4(80, 40000, ACK | 0x01, 5001, 1002, src=B4, dst=A4), 0.2)  # FIN
    _, _, c = eng.process_ip(tcp4(40000, 80, ACK, 1002, 5002), 0.3)
    assert c is not None and c.state == 7  # TIME_WAIT
    st, d, c2 = eng.process_ip(tcp4(40000, 80, SYN, 90000), 1.0)
    assert (st, d) == (NEW, 0) and c2 is not c and c2 is not None and c2.state == 1
    assert eng.stats["repeat"] == 1 and len(eng.table) == 1


def test_ipv6_without_upper_layer_header_is_invalid() -> None:
    from pktbuild import ip6

    eng = Engine()
    st, _, _ = eng.process_ip(ip6(A6, B6, 59, b""), 0.0)  # No Next Header
    assert st == INV and len(eng.table) == 0


def test_icmp_in_ipv6_and_icmpv6_in_ipv4_are_invalid() -> None:
    from pktbuild import ip6

    eng = Engine()
    assert eng.process_ip(ip6(A6, B6, 1, bytes((8, 0, 0, 0, 0, 7, 0, 1))), 0.0)[0] == INV
    assert eng.process_ip(ip4(A4, B4, 58, bytes((128, 0, 0, 0, 0, 7, 0, 1))), 0.0)[0] == INV
    assert eng.last_reason == "icmpv6: not in IPv6"


def test_dccp_is_generic_without_ports() -> None:
    # kernel 6.16+ has no DCCP tracker: a reply with other ports is the same entry
    eng = Engine()
    dccp = bytes(16)
    assert eng.process_ip(ip4(A4, B4, 33, b"\x04\xd2\x00\x50" + dccp[4:]), 0.0)[:2] == (NEW, 0)
    assert eng.process_ip(ip4(B4, A4, 33, b"\x00\x51\x04\xd3" + dccp[4:]), 0.0)[:2] == (EST, 1)
