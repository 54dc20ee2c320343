"""Fixtures for two (or more) SyncProtocol cores over pmct.sync.sim.SimNet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pmct.conntrack.conn import Conn
from pmct.conntrack.keys import IPPROTO_ICMP, IPPROTO_UDP, make_key
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import SimNet, sample_conn, table_diff
from pmct.sync.table import DictTable

KEY = b"0123456789abcdef0123456789abcdef"


@dataclass
class Pair:
    net: SimNet
    master: SyncProtocol
    slave: SyncProtocol
    mt: DictTable
    st: DictTable

    def diff(self, *, tolerance: float = 0.01, window: bool = False) -> list[str]:
        return table_diff(self.mt, self.st, now=self.net.now, tolerance=tolerance, window=window)

    def settled(self) -> bool:
        rx = self.slave._rx
        return (
            self.net.in_flight == 0
            and self.slave.ready
            and rx is not None
            and not rx.has_gap
            and not rx.pending
            and rx.expected == self.master._seq  # everything the master sent arrived
            and not self.master._pending
            and self.master._walk is None
        )


def mixed_conns(n: int, *, expires: float = 400_000.0) -> list[Conn]:
    """TCP v4/v6, UDP with a stream mark, ICMP (explicit reply key), NAT'd TCP."""
    out = []
    for i in range(n):
        kind = i % 10
        if kind < 6:
            c = sample_conn(i, expires=expires + i)
        elif kind == 6:
            c = sample_conn(i, v6=True, expires=expires + i)
        elif kind == 7:
            c = sample_conn(i, proto=IPPROTO_UDP, expires=expires + i)
            c.stream_ts = 1.0
        elif kind == 8:
            c = sample_conn(i, proto=IPPROTO_ICMP, expires=30 + i / 1000)
            src, dst = c.orig.src, c.orig.dst
            c.key = make_key(IPPROTO_ICMP, src, dst, i & 0xFFFF, 8 << 8)
            c.rkey = make_key(IPPROTO_ICMP, dst, src, i & 0xFFFF, 0)
        else:
            c = sample_conn(i, expires=expires + i)
            c.rkey = make_key(6, c.orig.dst, bytes([198, 51, 100, 1]), 443, 20000 + i % 40000)
            c.mark = i
        out.append(c)
    return out


def _make_pair(
    *,
    mode: str = "concurrent",
    conns: list[Conn] | None = None,
    seed: int = 0,
    hmac: bool = True,
    master_cfg: dict[str, object] | None = None,
    slave_cfg: dict[str, object] | None = None,
    slave_table: DictTable | None = None,
) -> Pair:
    net = SimNet(seed=seed)
    mt = DictTable()
    for c in conns or []:
        mt.add(c)
    st = slave_table if slave_table is not None else DictTable()
    key = KEY if hmac else None
    mc = SyncConfig(1, frozenset({2}), mode=mode, hmac_key=key, **(master_cfg or {}))  # type: ignore[arg-type]
    sc = SyncConfig(2, frozenset({1}), mode=mode, hmac_key=key, **(slave_cfg or {}))  # type: ignore[arg-type]
    master = net.add(SyncProtocol(mc, mt, epoch=1000, now=0.0, role=Role.MASTER, initial_seq=seed))
    slave = net.add(SyncProtocol(sc, st, epoch=2000, now=0.0, initial_seq=0xFFFFFFF0))
    return Pair(net, master, slave, mt, st)


@pytest.fixture
def make_pair() -> Callable[..., Pair]:
    return _make_pair


@pytest.fixture
def conns() -> Callable[..., list[Conn]]:
    return mixed_conns
