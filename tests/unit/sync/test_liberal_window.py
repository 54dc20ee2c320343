"""SyncConfig.liberal_without_window: conntrackd's TCPWindowTracking Off as an option.

Records travel without a window section by default, so the receiver re-seeds the window from
the next segments (the kernel's rule for ctnetlink-injected entries). With the option on, an
entry left without any window gets IP_CT_TCP_FLAG_BE_LIBERAL both ways; an entry that keeps
its own window (concurrent mode, the node tracked it) is left strict.
"""

from __future__ import annotations

import pytest

from pmct.conntrack.constants import TcpState
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.records import has_window
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable

LIBERAL = 0x08
N = 50


def _sync(mode: str, liberal: bool, slave_table: DictTable) -> DictTable:
    mt = DictTable()
    for i in range(N):
        mt.add(sample_conn(i))
    mt.add(sample_conn(N, proto=17))  # UDP: nothing to make liberal
    master = SyncProtocol(
        SyncConfig(1, frozenset({2}), mode=mode), mt, epoch=1, now=0.0, role=Role.MASTER
    )
    slave = SyncProtocol(
        SyncConfig(2, frozenset({1}), mode=mode, liberal_without_window=liberal),
        slave_table,
        epoch=2,
        now=0.0,
    )
    now = 0.0
    while not slave.ready:
        now += 0.01
        for d in slave.datagrams_to_send(now=now):
            master.receive_datagram(d, now=now)
        t = master.get_timer()
        if t is not None and t <= now:
            master.handle_timer(now=now)
        for d in master.datagrams_to_send(now=now):
            slave.receive_datagram(d, now=now)
        t = slave.get_timer()
        if t is not None and t <= now:
            slave.handle_timer(now=now)
        assert now < 30
    return slave_table


def _tcp(table: DictTable) -> list:
    return [c for c in table.conns() if c.proto == 6]


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
def test_windowless_entries_become_liberal_only_with_the_option(mode: str) -> None:
    strict = _sync(mode, False, DictTable())
    assert len(_tcp(strict)) == N
    assert all(not has_window(c) and not (c.tflags0 | c.tflags1) & LIBERAL for c in _tcp(strict))
    liberal = _sync(mode, True, DictTable())
    assert len(_tcp(liberal)) == N
    assert all(c.tflags0 & LIBERAL and c.tflags1 & LIBERAL for c in _tcp(liberal))
    # the flags that travelled are kept next to it
    assert all(c.tflags0 & 0x03 == 0x03 for c in _tcp(liberal))


def test_an_entry_with_its_own_window_stays_strict() -> None:
    """Concurrent mode: the standby tracked connection 0 itself (older state, own window)."""
    own = DictTable()
    mine = sample_conn(0, state=TcpState.SYN_RECV)
    own.add(mine)
    table = _sync("concurrent", True, own)
    c0 = next(c for c in _tcp(table) if c.key == mine.key)
    assert has_window(c0) and not (c0.tflags0 | c0.tflags1) & LIBERAL
    others = [c for c in _tcp(table) if c.key != mine.key]
    assert len(others) == N - 1 and all(c.tflags0 & LIBERAL for c in others)


def test_node_config_maps_onto_the_core() -> None:
    from pmct.config import parse_config
    from pmct.errors import ConfigError
    from pmct.node.syncshell import sync_config

    assert not sync_config(parse_config("").sync, None).liberal_without_window
    cfg = parse_config("[sync]\ntcp_window_tracking = false\n")
    assert sync_config(cfg.sync, None).liberal_without_window
    with pytest.raises(ConfigError, match=r"sync\.tcp_window_tracking"):
        parse_config('[sync]\ntcp_window_tracking = "off"\n')
