"""ct_sync carries NAT bindings (docs/nat.md §4), pure: two engines with the same [nat] rules,
joined by the protocol core over the simulated network (pmct/sync/sim.py).

* A record's reply tuple is inserted as given (not inverted from the original), with the
  SRC_NAT / DST_NAT bits, by init sync in both modes.
* A standby whose own choice differed (it missed a packet, so its table and therefore its walk
  differed) ends with the master's binding: in concurrent mode the merge rule lets a different
  binding win over local state (``apply_nat_rebound``), in replicate mode the log is the truth.
* The receiver's allocator learns the ports synced entries hold: its next binding avoids them,
  exactly as the master's does.
"""

from __future__ import annotations

import socket
from typing import Any

import dpkt
import pytest

from pmct.conntrack.constants import Status
from pmct.conntrack.core import Engine
from pmct.nat.alloc import Nat
from pmct.nat.rules import parse_nat
from pmct.sync.codec import inverse_key
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import SimNet
from pmct.sync.table import EngineTable

PUBLIC, SERVER = "198.18.2.1", "198.18.2.2"
# Three public ports only: the walk's choice depends on which ones are already taken.
RULES = {
    "seed": "sync-test",
    "snat": [{"src": ["198.18.1.0/24"], "to": PUBLIC, "ports": "30000-30002"}],
    "dnat": [{"dst": PUBLIC, "proto": "tcp", "dport": 8080, "to": "198.18.1.9", "to_port": 80}],
}
NAT_BITS = int(Status.SRC_NAT | Status.DST_NAT)


def syn(src: str, sport: int, dst: str = SERVER, dport: int = 443) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_SYN, win=8192)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=t)
    ip.len = 20 + len(bytes(t))
    return bytes(ip)


def nat_engine() -> Engine:
    e = Engine(events=True)
    e.nat_bind = Nat(parse_nat(RULES)).bind
    return e


def bindings(e: Engine) -> list[tuple[bytes, bytes, int]]:
    return sorted((c.key, c.rkey, c.status & NAT_BITS) for c in e.conns())


def diverging_pair() -> tuple[Engine, Engine, bytes, bytes]:
    """Master sees connections 1 and 2; the standby misses 1's SYN, and connection 2 therefore
    gets the other public port on the standby than on the master."""
    for sport in range(40000, 40200):
        p1, p2 = syn("198.18.1.2", sport), syn("198.18.1.3", sport + 1000)
        a, b = nat_engine(), nat_engine()
        a.process_ip(p1, 1.0)
        a.process_ip(p2, 1.001)
        b.process_ip(p2, 1.001)
        (c2b,) = list(b.conns())
        c2a = a.table.get(c2b.key, 2.0)
        assert c2a is not None
        if c2a.rkey != c2b.rkey:
            return a, b, p1, p2
    raise AssertionError("no diverging case found")


def sync(a: Engine, b: Engine, mode: str) -> tuple[SyncProtocol, SyncProtocol]:
    net = SimNet(seed=1, now=2.0)
    master = net.add(
        SyncProtocol(
            SyncConfig(1, frozenset({2}), mode=mode),
            EngineTable(a),  # type: ignore[arg-type]
            epoch=1,
            now=2.0,
            role=Role.MASTER,
        )
    )
    slave = net.add(
        SyncProtocol(
            SyncConfig(2, frozenset({1}), mode=mode),
            EngineTable(b),  # type: ignore[arg-type]
            epoch=2,
            now=2.0,
        )
    )
    net.run(5.0, stop=lambda: slave.ready and net.in_flight == 0)
    assert slave.ready
    return master, slave


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
def test_init_sync_inserts_the_reply_tuple_as_given(mode: str) -> None:
    a = nat_engine()
    for i in range(6):
        a.process_ip(syn(f"198.18.1.{2 + i}", 40000 + i), 1.0 + i / 100)
    a.process_ip(syn("203.0.113.5", 51000, PUBLIC, 8080), 1.1)  # the forward
    b = Engine()  # no NAT hook even: the binding comes from the records alone
    sync(a, b, mode)
    got = bindings(b)
    assert got == bindings(a)
    assert all(rkey != inverse_key(key) and bits for key, rkey, bits in got)
    assert sum(1 for *_k, bits in got if bits & Status.DST_NAT) == 1


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
def test_standby_takes_the_masters_binding_over_its_own(mode: str) -> None:
    a, b, _p1, _p2 = diverging_pair()
    own = bindings(b)
    _master, slave = sync(a, b, mode)
    assert bindings(b) == bindings(a) != own
    if mode == "concurrent":
        assert slave.counters()["apply_nat_rebound"] >= 1


def test_receiver_allocator_learns_synced_ports() -> None:
    """After sync the standby binds the next connection exactly as the master does: the
    ports the synced entries hold are taken in its table too."""
    a, b, _p1, _p2 = diverging_pair()
    sync(a, b, "concurrent")
    p3 = syn("198.18.1.4", 45555)
    va: Any = a.process_ip(p3, 3.0)
    vb: Any = b.process_ip(p3, 3.0)
    assert va[0] == vb[0] and va[2] is not None and vb[2] is not None
    assert va[2].rkey == vb[2].rkey
    # the new connection got the one port the two synced entries leave free
    ports = {int.from_bytes(c.rkey[10:12]) for c in b.conns()}
    assert ports == {30000, 30001, 30002}
    assert bindings(a) == bindings(b)
