from __future__ import annotations

from pmct.conntrack.constants import TcpState
from pmct.conntrack.core import Engine
from pmct.study.metrics import agreement, clone_conn, open_sessions, survival
from pmct.study.traffic import Traffic


def _replay_until(traffic: Traffic, t: float) -> tuple[Engine, int]:
    e = Engine()
    for i, (ts, d) in enumerate(zip(traffic.times, traffic.packets, strict=True)):
        if ts >= t:
            return e, i
        e.process_ip(d, ts)
    return e, len(traffic)


def test_clone_is_independent(small_traffic: Traffic) -> None:
    e, _ = _replay_until(small_traffic, 3.0)
    c = next(c for c in e.table if c.proto == 6)
    n = clone_conn(c)
    assert (n.key, n.rkey, n.state, n.status, n.expires, list(n.tw)) == (
        c.key,
        c.rkey,
        c.state,
        c.status,
        c.expires,
        list(c.tw),
    )
    n.tw[0] += 1
    n.state = TcpState.CLOSE
    assert n.tw[0] != c.tw[0] and c.state != TcpState.CLOSE
    u = next(c for c in e.table if c.proto == 17)
    assert clone_conn(u).stream_ts == u.stream_ts


def test_agreement_and_survival_bounds(small_traffic: Traffic) -> None:
    m, cursor = _replay_until(small_traffic, 4.0)
    same, _ = _replay_until(small_traffic, 4.0)
    a = agreement(m.table, same.table, 4.0)
    assert a.entries > 20 and a.agree == a.held == a.entries and a.share == 1.0
    empty = Engine()
    z = agreement(m.table, empty.table, 4.0)
    assert (z.held, z.agree, z.share) == (0, 0, 0.0)

    sessions = open_sessions(m.table, 4.0)
    assert sessions and all(c.state == TcpState.ESTABLISHED for c in sessions)
    s = survival(small_traffic, cursor, m.table, same.table, 4.0, probe_packets=3)
    assert s.open == len(sessions) and 0 < s.baseline <= s.probed <= s.open
    assert s.survived == s.baseline and s.share == 1.0
    s0 = survival(small_traffic, cursor, m.table, empty.table, 4.0, probe_packets=3)
    assert (s0.baseline, s0.survived) == (s.baseline, 0)
    # the probe works on copies: the engines are untouched
    assert agreement(m.table, same.table, 4.0) == a


def test_a_state_difference_is_disagreement(small_traffic: Traffic) -> None:
    m, _ = _replay_until(small_traffic, 4.0)
    s, _ = _replay_until(small_traffic, 4.0)
    victim = next(c for c in s.table if c.proto == 6 and c.state == TcpState.ESTABLISHED)
    victim.state = TcpState.FIN_WAIT
    a = agreement(m.table, s.table, 4.0)
    assert a.held == a.entries and a.agree == a.entries - 1
