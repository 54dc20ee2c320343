"""The node's ct_sync shell (pmct/node/syncshell.py) and transport (pmct/node/transport.py).

Two SyncShells around real engines, joined by an in-memory transport and driven by a fake
clock: what the daemon does with them (service, engine events, promote/demote, readiness, the
split-brain callback) without namespaces. The socket itself is tested on the loopback
interface when root; the namespace tests (tests/integration/test_sync_*.py) run the whole daemon.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from pktbuild import ACK, PSH, SYN, tcp4

from pmct.config import SyncNodeConfig, parse_config
from pmct.conntrack.constants import CtState, TcpState
from pmct.conntrack.core import Engine
from pmct.errors import ConfigError
from pmct.node.metrics import render_prometheus, render_status
from pmct.node.syncshell import SyncSetupError, SyncShell, load_key, next_epoch
from pmct.node.transport import SyncTransport, TransportError
from pmct.sync.sim import table_diff
from pmct.sync.table import EngineTable

WS7 = b"\x01\x03\x03\x07"
BACK = {"src": "198.51.100.2", "dst": "192.0.2.1"}


class FakeTransport:
    """Datagrams go straight into the peer's inbox (while ``up``)."""

    def __init__(self) -> None:
        self.inbox: deque[bytes] = deque()
        self.peer: FakeTransport | None = None
        self.up = True
        self.sent = 0

    def fileno(self) -> int:
        return -1

    def recv_many(self, limit: int = 256) -> list[bytes]:
        out = []
        while self.inbox and len(out) < limit:
            out.append(self.inbox.popleft())
        return out

    def send(self, data: bytes) -> None:
        self.sent += 1
        if self.up and self.peer is not None:
            self.peer.inbox.append(data)

    def stats(self) -> dict[str, int]:
        return {"tx_packets": self.sent}

    def close(self) -> None:
        pass


def wire() -> tuple[FakeTransport, FakeTransport]:
    a, b = FakeTransport(), FakeTransport()
    a.peer, b.peer = b, a
    return a, b


class Node:
    def __init__(
        self,
        tmp: Path,
        node: int,
        transport: FakeTransport,
        *,
        master: bool,
        now: float,
        mode: str = "concurrent",
        rate: float = 0.0,
    ) -> None:
        self.engine = Engine(events=True)
        self.roles: list[tuple[bool, str]] = []
        self.readiness: list[bool] = []
        self.transport = transport
        cfg = SyncNodeConfig(
            enabled=True,
            node_id=node,
            peers=(3 - node,),
            mode=mode,
            address=("192.0.2.99",),
            initsync_rate=rate,
        )
        run_dir = tmp / f"node{node}"
        run_dir.mkdir(exist_ok=True)
        self.shell = SyncShell(
            cfg,
            "unused",
            self.engine,
            master=master,
            run_dir=str(run_dir),
            now=now,
            on_role=lambda m, why: self.roles.append((m, why)),
            on_ready=self.readiness.append,
            transport=transport,  # type: ignore[arg-type]
        )


def run(nodes: list[Node], start: float, until: float, step: float = 0.001) -> float:
    """Service every node at each step (the daemon's loop, with a fake clock)."""
    now = start
    while now < until:
        for n in nodes:
            n.shell.engine_events(n.engine.drain_events(), now)
            n.shell.service(now)
        now = round(now + step, 6)
    return now


def handshake(e: Engine, now: float, sport: int = 40000) -> None:
    for pkt in (
        tcp4(sport, 80, SYN, 1000, 0, win=64240, opts=WS7),
        tcp4(80, sport, SYN | ACK, 5000, 1001, win=65160, opts=WS7, **BACK),
        tcp4(sport, 80, ACK, 1001, 5001, win=502),
        tcp4(sport, 80, PSH | ACK, 1001, 5001, win=502, payload=b"GET / HTTP/1.0\r\n\r\n"),
        tcp4(80, sport, ACK, 5001, 1019, win=509, **BACK),
    ):
        v = e.process_ip(pkt, now)
        assert v[0] in (CtState.NEW, CtState.ESTABLISHED)


def test_init_sync_through_the_shell_copies_the_engine_table(tmp_path: Path) -> None:
    ta, tb = wire()
    a = Node(tmp_path, 1, ta, master=True, now=10.0)
    for port in range(40000, 40050):
        handshake(a.engine, 10.0, port)
    b = Node(tmp_path, 2, tb, master=False, now=10.0)
    assert not b.shell.ready(10.0)  # a fresh node waits for its init sync ...
    run([a, b], 10.0, 10.2)
    assert b.shell.ready(10.2) and b.readiness == [True]  # ... which the master answered
    assert len(b.engine.table) == 50
    diff = table_diff(EngineTable(a.engine), EngineTable(b.engine), now=10.2, tolerance=0.01)
    assert diff == []
    st = b.shell.status(10.2)
    assert st["state"] == "SYNCED" and st["master"] == 1 and st["initsync"]["walk"] is None
    assert st["counters"]["apply_inserted"] == 50 and st["counters"]["walks_received"] == 1
    assert b.shell.frozen  # the synced objects were moved out of the GC's view


def test_a_node_alone_becomes_ready_after_master_timeout(tmp_path: Path) -> None:
    ta, _ = wire()
    ta.up = False  # nobody answers
    b = Node(tmp_path, 2, ta, master=False, now=0.0)
    timeout = b.shell.core.config.master_timeout
    run([b], 0.0, timeout - 0.1, step=0.05)
    assert not b.shell.ready(timeout - 0.1) and b.readiness == []
    run([b], timeout - 0.1, timeout + 0.2, step=0.05)
    assert b.shell.ready(timeout + 0.2) and b.readiness == [True]  # nobody to sync from
    assert b.shell.core.stats["initsync_requests_sent"] >= 3  # it kept asking meanwhile


def test_not_ready_while_a_heard_master_walks_the_table(tmp_path: Path) -> None:
    ta, tb = wire()
    a = Node(tmp_path, 1, ta, master=True, now=0.0, rate=100.0)
    for port in range(40000, 40400):  # 400 entries at 100/s: a walk of about 3.5 s
        handshake(a.engine, 0.0, port)
    b = Node(tmp_path, 2, tb, master=False, now=0.0)
    run([a, b], 0.0, 2.0, step=0.01)
    p = b.shell.core.progress(now=2.0)
    assert p.state == "SYNCING" and 0 < p.percent < 100 and p.rate > 0
    assert not b.shell.ready(2.0)
    run([a, b], 2.0, 6.0, step=0.01)  # past master_timeout: the master is alive, so it waits
    assert b.shell.ready(6.0) and b.readiness == [True]
    assert len(b.engine.table) == 400


def test_replicate_standby_does_not_track_and_applies_the_stream(tmp_path: Path) -> None:
    ta, tb = wire()
    a = Node(tmp_path, 1, ta, master=True, now=0.0, mode="replicate")
    b = Node(tmp_path, 2, tb, master=False, now=0.0, mode="replicate")
    assert a.shell.tracks_wire and not b.shell.tracks_wire
    t = run([a, b], 0.0, 0.1)
    assert b.shell.ready(t)
    handshake(a.engine, t)  # engine events -> local_update -> the stream
    t = run([a, b], t, t + 0.1)
    (ca,) = list(a.engine.table)
    (cb,) = list(b.engine.table)
    assert (cb.key, cb.state) == (ca.key, TcpState.ESTABLISHED)
    assert sum(b.engine.verdicts) == 0  # never ran on traffic
    a.engine.table.delete(ca, "test")  # a DESTROY event is streamed as a delete
    t = run([a, b], t, t + 0.1)
    assert len(b.engine.table) == 0
    b.shell.promote(t)
    assert b.shell.tracks_wire and b.shell.core.role.name == "MASTER"


def test_split_brain_demotes_exactly_one_and_tells_the_daemon(tmp_path: Path) -> None:
    ta, tb = wire()
    ta.up = tb.up = False  # the sync link is cut
    a = Node(tmp_path, 1, ta, master=True, now=0.0)
    b = Node(tmp_path, 2, tb, master=False, now=0.0)
    run([a, b], 0.0, 0.1)
    b.shell.promote(0.1)  # both masters now
    term_a, term_b = a.shell.core.term, b.shell.core.term
    ta.up = tb.up = True  # restored
    run([a, b], 0.1, 2.5, step=0.01)
    masters = [n for n in (a, b) if n.shell.core.role.name == "MASTER"]
    assert len(masters) == 1
    winner = a if (term_a, 1) > (term_b, 2) else b
    loser = b if winner is a else a
    assert masters == [winner] and winner.roles == []
    assert len(loser.roles) == 1 and loser.roles[0][0] is False
    assert loser.roles[0][1].startswith("split_brain")
    assert loser.shell.core.master == winner.shell.core.node_id


def test_epoch_grows_across_restarts_within_one_second(tmp_path: Path) -> None:
    path = str(tmp_path / "sync-epoch")
    e1 = next_epoch(path, 1_700_000_000.2)
    e2 = next_epoch(path, 1_700_000_000.7)
    e3 = next_epoch(path, 1_700_000_100.0)
    assert (e1, e2, e3) == (1_700_000_000, 1_700_000_001, 1_700_000_100)


def test_key_file(tmp_path: Path) -> None:
    p = tmp_path / "key"
    p.write_text("  0123456789abcdef0123\n")
    p.chmod(0o600)
    assert load_key(str(p)) == b"0123456789abcdef0123"
    p.write_text("short\n")
    with pytest.raises(SyncSetupError, match="at least 16 bytes"):
        load_key(str(p))
    with pytest.raises(SyncSetupError, match="No such file"):
        load_key(str(tmp_path / "missing"))


def test_status_renders_for_people_and_prometheus(tmp_path: Path) -> None:
    ta, tb = wire()
    a = Node(tmp_path, 1, ta, master=True, now=0.0)
    handshake(a.engine, 0.0)
    b = Node(tmp_path, 2, tb, master=False, now=0.0, rate=10.0)
    run([a, b], 0.0, 0.05)
    st: dict[str, Any] = {
        "node": "fw-b",
        "role": "passive",
        "uptime": 1.0,
        "pid": 1,
        "queue": {"num": 0, "fail": "open"},
        "packets": {"total": 0, "per_second": 0.0},
        "ctstates": {},
        "verdicts": {},
        "errors": {"callback": 0, "unparsed": 0},
        "invalid": {},
        "conntrack": {"entries": 0, "limit": 1, "by_proto_state": {}, "stats": {}},
        "rules": [],
        "default": {"action": "drop", "hits": 0},
        "sync": b.shell.status(0.05),
    }
    text = render_status(st)
    assert "sync: ready, concurrent slave (node 2" in text and "master 1" in text
    prom = render_prometheus(st)
    assert 'pmct_sync_ready{node="fw-b"} 1' in prom
    assert 'pmct_sync_dropped_total{node="fw-b",reason="unauthenticated"} 0' in prom


# ---------------------------------------------------------------------------- config


def test_sync_section_defaults_and_errors() -> None:
    cfg = parse_config("")
    assert cfg.sync == SyncNodeConfig() and not cfg.sync.enabled
    ok = parse_config(
        '[interfaces]\nsync = "sync0"\n[sync]\nenabled = true\nnode_id = 2\npeers = 1\n'
        'mode = "replicate"\naddress = "198.19.0.1"\ninitsync_rate = 4000\n'
    )
    assert ok.sync.peers == (1,) and ok.sync.address == ("198.19.0.1",)
    assert ok.sync.mode == "replicate" and ok.sync.initsync_rate == 4000.0
    for text, match in (
        ("[sync]\nenabled = true\naddress = '198.19.0.2'\n", "needs interfaces.sync"),
        ("[interfaces]\nsync = 's0'\n[sync]\nenabled = true\n", "sync.address"),
        ("[sync]\nnode_id = 2\npeers = [2]\n", "own id"),
        ("[sync]\nmode = 'both'\n", "sync.mode"),
        ("[sync]\naddress = 'fw-b'\n", "not an IP address"),
        ("[sync]\nhmac_key_file = 'key'\n", "absolute path"),
        ("[sync]\nbacklgo = 5\n", "did you mean 'backlog'"),
        (
            "[interfaces]\nsync = 's0'\n[sync]\nenabled = true\naddress = '239.1.1.1'\n",
            "needs transport",
        ),
        (
            "[interfaces]\nsync = 's0'\n[sync]\nenabled = true\ntransport = 'multicast'\n"
            "address = '198.19.0.2'\n",
            "one multicast group",
        ),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_config(text)


def test_example_sync_configs_are_a_matching_pair() -> None:
    from pmct.config import load_config

    examples = Path(__file__).resolve().parents[3] / "configs" / "examples"
    a = load_config(examples / "sync-fw-a.toml").sync
    b = load_config(examples / "sync-fw-b.toml").sync
    assert a.enabled and b.enabled and (a.node_id, b.node_id) == b.peers + a.peers
    assert (a.mode, a.transport, a.port, a.hmac_key_file) == (
        b.mode,
        b.transport,
        b.port,
        b.hmac_key_file,
    )
    assert a.address != b.address


# ---------------------------------------------------------------------------- socket


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs root")
def test_transport_moves_whole_datagrams_on_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # a free port
    t = SyncTransport("lo", ["127.0.0.1"], port)
    try:
        assert t.recv_many() == []  # non-blocking
        for size in (1, 1472, 9000):
            t.send(bytes([size % 256]) * size)
        got = t.recv_many()
        assert [len(d) for d in got] == [1, 1472, 9000]
        assert t.stats()["tx_packets"] == 3 and t.stats()["rx_bytes"] == 1 + 1472 + 9000
    finally:
        t.close()


def test_transport_errors_name_the_problem() -> None:
    with pytest.raises(TransportError, match="does not exist"):
        SyncTransport("nosuchif0", ["198.19.0.2"], 3780)
    with pytest.raises(TransportError, match="mix"):
        SyncTransport("lo", ["198.19.0.2", "2001:db8::1"], 3780)


# ---------------------------------------------------------------------------- daemon gate


def test_daemon_refuses_promotion_while_not_ready_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pmct.node.daemon import Daemon
    from pmct.node.forwarding import Role

    ta, _ = wire()
    ta.up = False
    cfg = parse_config(f'[node]\nrun_dir = "{tmp_path}"\n')
    daemon = Daemon(cfg)
    node = Node(tmp_path, 2, ta, master=False, now=0.0)
    daemon.sync = node.shell  # a node whose init sync has not happened
    daemon.ready = True
    switched: list[Role] = []
    monkeypatch.setattr(daemon, "set_role", lambda role, source: switched.append(role) or True)
    monkeypatch.setattr("pmct.node.daemon.time.monotonic", lambda: 1.0)
    assert daemon.handle({"cmd": "ping"})["ready"] is False
    for req in ({"cmd": "promote"}, {"cmd": "role", "role": "active"}):
        res = daemon.handle(req)
        assert res["changed"] is False and res["refused"].startswith("not ready")
    assert switched == []
    assert daemon.handle({"cmd": "demote"})["changed"] is True  # demoting is always allowed
    res = daemon.handle({"cmd": "promote", "force": True})
    assert "refused" not in res and switched == [Role.PASSIVE, Role.ACTIVE]
    # alone for longer than master_timeout: nobody to sync from, so ready
    monkeypatch.setattr("pmct.node.daemon.time.monotonic", lambda: 10.0)
    assert daemon.handle({"cmd": "ping"})["ready"] is True
    assert "refused" not in daemon.handle({"cmd": "promote"})
