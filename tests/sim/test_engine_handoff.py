"""ct_sync between two real engines: a synced entry carries on exactly where the master was.

This pins the claim of docs/protocol.md §4.3: an entry received without window data is
re-seeded by the TCP tracker from the next segment of each direction (kernel tcp_in_window(),
``td_maxwin == 0``), so established sessions survive a failover; with ``send_window`` the
standby judges every later segment exactly as the master does.
"""

from __future__ import annotations

import pytest
from pktbuild import ACK, FIN, PSH, SYN, tcp4, udp4

from pmct.conntrack.constants import CtState, Status, TcpState
from pmct.conntrack.core import Engine
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import SimNet
from pmct.sync.table import EngineTable

WS7 = b"\x01\x03\x03\x07"  # NOP, window scale 7


def handshake(e: Engine, now: float) -> None:
    for pkt, d in (
        (tcp4(40000, 80, SYN, 1000, 0, win=64240, opts=WS7), 0),
        (
            tcp4(
                80,
                40000,
                SYN | ACK,
                5000,
                1001,
                win=65160,
                opts=WS7,
                src="198.51.100.2",
                dst="192.0.2.1",
            ),
            1,
        ),
        (tcp4(40000, 80, ACK, 1001, 5001, win=502), 0),
        (tcp4(40000, 80, PSH | ACK, 1001, 5001, win=502, payload=b"GET / HTTP/1.0\r\n\r\n"), 0),
        (tcp4(80, 40000, ACK, 5001, 1019, win=509, src="198.51.100.2", dst="192.0.2.1"), 1),
    ):
        v = e.process_ip(pkt, now)
        assert v[0] in (CtState.NEW, CtState.ESTABLISHED) and v[1] == d


def later_segments() -> list[bytes]:
    back = {"src": "198.51.100.2", "dst": "192.0.2.1"}
    return [
        tcp4(80, 40000, PSH | ACK, 5001, 1019, win=509, payload=b"x" * 1000, **back),
        tcp4(40000, 80, ACK, 1019, 6001, win=501),
        tcp4(40000, 80, PSH | ACK, 1019, 6001, win=501, payload=b"y" * 100),
        tcp4(80, 40000, ACK, 6001 + 900_000_000, 1119, win=509, **back),  # far out of window
        tcp4(40000, 80, FIN | ACK, 1119, 6001, win=501),
        udp4(5353, 53),
    ]


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
@pytest.mark.parametrize("window", [False, True])
def test_standby_engine_continues_the_session(mode: str, window: bool) -> None:
    a, b = Engine(events=True), Engine()
    handshake(a, 1.0)
    net = SimNet(seed=1, now=1.0)
    cfg = {"mode": mode, "send_window": window}
    master = net.add(
        SyncProtocol(
            SyncConfig(1, frozenset({2}), **cfg),
            EngineTable(a),  # type: ignore[arg-type]
            epoch=1,
            now=1.0,
            role=Role.MASTER,
        )
    )
    slave = net.add(
        SyncProtocol(
            SyncConfig(2, frozenset({1}), **cfg),
            EngineTable(b),  # type: ignore[arg-type]
            epoch=2,
            now=1.0,
        )
    )
    net.run(3.0, stop=lambda: slave.ready and net.in_flight == 0)
    assert slave.ready and master.role == Role.MASTER
    (ca,) = list(a.table)
    (cb,) = list(b.table)
    assert (cb.key, cb.rkey, cb.state, cb.td_scale0, cb.td_scale1) == (
        ca.key,
        ca.rkey,
        TcpState.ESTABLISHED,
        7,
        7,
    )
    assert cb.status & Status.ASSURED and cb.status & Status.CONFIRMED
    assert cb.expires == pytest.approx(ca.expires, abs=0.01)
    assert (list(cb.tw) == list(ca.tw)) is window  # without window: relearn (all zero)
    # failover: the standby's engine now sees the traffic
    verdicts_a = [a.process_ip(p, 4.0)[:2] for p in later_segments()]
    verdicts_b = [b.process_ip(p, 4.0)[:2] for p in later_segments()]
    est = (CtState.ESTABLISHED, 0), (CtState.ESTABLISHED, 1)
    assert verdicts_b[:3] == [est[1], est[0], est[0]]  # the session carries on
    assert verdicts_b[4] == est[0]
    if window:
        assert verdicts_b == verdicts_a  # including the out-of-window segment
    assert verdicts_a[3][0] == CtState.INVALID
