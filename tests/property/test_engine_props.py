"""Property tests of the engine: it is total on any input and its table stays consistent.

Totality (the h11 fuzz invariant): process_ip on any bytes returns a verdict, never raises.
Consistency: after every packet, every live entry is indexed under both of its keys, nothing
else is indexed, the count matches, and verdicts agree with the entry's status bits.
"""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pktbuild import icmp4, tcp4, tcp6, udp4

from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine


def _traces_dir() -> Path:
    from pmct.fidelity import default_traces

    traces = default_traces()
    assert traces, "shared/traces not found beside the repository"
    return traces[0].parent


_TRACES = _traces_dir()


def check_table(eng: Engine) -> None:
    index = eng.table.index
    live = {id(c): c for c in index.values()}
    assert len(live) == eng.table.count == len(eng.table)
    for conn in live.values():
        assert index.get(conn.key) is conn
        assert index.get(conn.rkey) is conn
        assert conn.status & Status.CONFIRMED
        assert not conn.status & Status.DYING
        if conn.proto == 6:
            assert 0 <= conn.state <= 9
    expected_slots = sum(1 if c.key == c.rkey else 2 for c in live.values())
    assert len(index) == expected_slots


def check_verdict(eng: Engine, v: tuple) -> None:
    state, d, conn = v
    assert state in tuple(CtState)
    if conn is None:
        assert d == -1
        return
    assert d in (0, 1)
    assert state in (CtState.NEW, CtState.ESTABLISHED, CtState.RELATED)
    if state == CtState.NEW:
        assert d == 0 and not conn.status & Status.SEEN_REPLY
    if state == CtState.ESTABLISHED and d == 0:
        assert conn.status & Status.SEEN_REPLY
    # either live in the table, or deleted by this very packet (KILL, a RST before any reply)
    assert eng.table.index.get(conn.key) is conn or conn.status & Status.DYING


@given(st.lists(st.binary(max_size=120), max_size=30))
@settings(max_examples=300)
def test_random_bytes_never_raise(datagrams: list[bytes]) -> None:
    eng = Engine()
    for i, data in enumerate(datagrams):
        check_verdict(eng, eng.process_ip(data, float(i)))
    check_table(eng)


def _trace_packets(limit: int = 400) -> list[bytes]:
    from pmct.bench import load_ip_packets

    out: list[bytes] = []
    for name in (
        "mix_small.pcap",
        "ipv6_mix.pcap",
        "frag_dns_v4v6.pcap",
        "sctp.pcap",
        "icmp_fragneeded_tcp.pcap",
        "gre.pcap",
    ):
        out += [d for _, d in load_ip_packets(_TRACES / name)][: limit // 6]
    return out


_SAMPLES = _trace_packets()


@given(st.randoms(use_true_random=False), st.integers(1, 8))
@settings(max_examples=200)
def test_mutated_real_packets_never_raise(rnd: random.Random, flips: int) -> None:
    eng = Engine()
    for t, data in enumerate(rnd.sample(_SAMPLES, 25)):
        buf = bytearray(data)
        for _ in range(flips):
            if rnd.random() < 0.2 and len(buf) > 1:
                del buf[rnd.randrange(len(buf)) :]  # truncate
            elif buf:
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        check_verdict(eng, eng.process_ip(bytes(buf), t * 0.5))
        check_table(eng)


_HOSTS4 = ("192.0.2.1", "192.0.2.2", "198.51.100.7")
_HOSTS6 = ("2001:db8::1", "2001:db8::2")

packet_specs = st.one_of(
    st.tuples(
        st.just("tcp4"),
        st.sampled_from(_HOSTS4),
        st.sampled_from(_HOSTS4),
        st.sampled_from((1000, 2000)),
        st.sampled_from((80, 1000)),
        st.sampled_from((0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x18, 0x01, 0x03, 0x00, 0x06)),
        st.sampled_from((0, 1, 1000, 1001, 0xFFFFFFFF, 0x7FFFFFFF)),
        st.sampled_from((0, 1, 1000, 1001, 5001)),
        st.sampled_from((0, 1, 512, 65535)),
        st.integers(0, 3),
    ),
    st.tuples(
        st.just("tcp6"),
        st.sampled_from(_HOSTS6),
        st.sampled_from(_HOSTS6),
        st.sampled_from((1000, 2000)),
        st.sampled_from((80, 1000)),
        st.sampled_from((0x02, 0x12, 0x10, 0x11, 0x04)),
        st.sampled_from((0, 1000, 1001)),
        st.sampled_from((0, 1001, 5001)),
        st.just(65535),
        st.integers(0, 1),
    ),
    st.tuples(
        st.just("udp4"),
        st.sampled_from(_HOSTS4),
        st.sampled_from(_HOSTS4),
        st.sampled_from((53, 5000)),
        st.sampled_from((53, 5000)),
    ),
    st.tuples(
        st.just("icmp4"),
        st.sampled_from(_HOSTS4),
        st.sampled_from(_HOSTS4),
        st.sampled_from((0, 8, 13, 14, 3, 11)),
    ),
)


def _build(spec: tuple) -> bytes:
    kind = spec[0]
    if kind in ("tcp4", "tcp6"):
        _, src, dst, sport, dport, flags, seq, ack, win, plen = spec
        maker = tcp4 if kind == "tcp4" else tcp6
        return maker(
            sport, dport, flags, seq, ack, src=src, dst=dst, win=win, payload=b"d" * (plen * 100)
        )
    if kind == "udp4":
        _, src, dst, sport, dport = spec
        return udp4(sport, dport, src=src, dst=dst)
    _, src, dst, itype = spec
    if itype in (3, 11):
        quoted = udp4(5000, 53, src=dst, dst=src)
        return icmp4(itype, 3, src=src, dst=dst, body=b"\0\0\0\0" + quoted[:28])
    return icmp4(itype, src=src, dst=dst)


@given(st.lists(st.tuples(packet_specs, st.floats(0, 40)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_random_flows_keep_the_table_consistent(steps: list) -> None:
    eng = Engine(events=True)
    now = 0.0
    for spec, dt in steps:
        now += dt
        v = eng.process_ip(_build(spec), now)
        check_verdict(eng, v)
        check_table(eng)
    # every NEW event is matched by at most one DESTROY, and live entries were announced
    born: dict[int, int] = {}
    for kind, conn in eng.drain_events():
        born[id(conn)] = born.get(id(conn), 0) + (1 if kind == 1 else -1 if kind == 3 else 0)
        assert born[id(conn)] in (0, 1)
    for conn in eng.table:
        assert born.get(id(conn)) == 1
    eng.expire(now + 10 * 86400)
    assert len(eng.table) == 0 and not eng.table.index
