"""Connection helpers in the node (issue 7): the [helpers] config section, the daemon's engine,
``pmct conntrack -L expect`` over the control socket, and the EXPECT stream of the sync shell.

No root: the Daemon is never set up (its control handler and engine are used directly) and the
sync shells talk over an in-memory transport with a fake clock, as in test_syncshell.py. The
real thing (curl, an FTP server, the pair, failover) is tests/integration/test_ftp_helper.py.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from pathlib import Path

import pytest
from pktbuild import ACK, PSH, SYN, tcp4, tcp6

from pmct.config import DEFAULT_TOML, HelpersConfig, as_mapping, load_config, parse_config
from pmct.conntrack.constants import CtState
from pmct.conntrack.core import Engine
from pmct.conntrack.helpers import FTP, TFTP
from pmct.errors import ConfigError
from pmct.node.daemon import Daemon
from pmct.node.helpers import expect_listing
from pmct.node.syncshell import SyncShell

C4, S4 = "198.18.1.2", "198.18.2.2"
C6, S6 = "2001:db8::2", "2001:db8:1::2"
REL, EST = int(CtState.RELATED), int(CtState.ESTABLISHED)
PORT_MSG = "must be a port number (1..65535), not"


# ---------------------------------------------------------------------------- FTP packets


class Ctl:
    """One FTP control connection (client port ``cport`` -> server port ``sport``)."""

    def __init__(self, cport: int, *, v6: bool = False, sport: int = 21) -> None:
        self.v6 = v6
        self.c, self.s = (C6, S6) if v6 else (C4, S4)
        self.cport, self.sport = cport, sport
        self.cseq, self.sseq = 1000 + cport, 9000 + cport
        self.out: list[bytes] = []
        self._seg(True, SYN, b"")
        self.cseq += 1
        self._seg(False, SYN | ACK, b"")
        self.sseq += 1
        self._seg(True, ACK, b"")
        self.server(b"220 pmct\r\n")
        self.client(b"USER anonymous\r\n")
        self.server(b"331 password please\r\n")

    def _seg(self, client: bool, flags: int, payload: bytes) -> None:
        build = tcp6 if self.v6 else tcp4
        if client:
            seq, ack = self.cseq, self.sseq
            pkt = build(self.cport, self.sport, flags, seq, ack if flags & ACK else 0,
                        src=self.c, dst=self.s, payload=payload)  # fmt: skip
        else:
            seq, ack = self.sseq, self.cseq
            pkt = build(self.sport, self.cport, flags, seq, ack if flags & ACK else 0,
                        src=self.s, dst=self.c, payload=payload)  # fmt: skip
        self.out.append(pkt)

    def client(self, payload: bytes) -> None:
        self._seg(True, ACK | PSH, payload)
        self.cseq += len(payload)
        self._seg(False, ACK, b"")

    def server(self, payload: bytes) -> None:
        self._seg(False, ACK | PSH, payload)
        self.sseq += len(payload)
        self._seg(True, ACK, b"")

    def port(self, port: int) -> None:
        """Active mode: PORT (IPv4) or EPRT (IPv6) announcing the client's ``port``."""
        if self.v6:
            self.client(f"EPRT |2|{self.c}|{port}|\r\n".encode())
        else:
            hp = self.c.replace(".", ",") + f",{port >> 8},{port & 0xFF}"
            self.client(f"PORT {hp}\r\n".encode())
        self.server(b"200 ok\r\n")

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out


def feed(engine: Engine, pkts: list[bytes], now: float) -> list[int]:
    return [engine.process_ip(p, now)[0] for p in pkts]


def active_syn(port: int, *, v6: bool = False) -> bytes:
    """The server's SYN from port 20 to the announced client port (active-mode data)."""
    if v6:
        return tcp6(20, port, SYN, 1, src=S6, dst=C6)
    return tcp4(20, port, SYN, 1, src=S4, dst=C4)


# ---------------------------------------------------------------------------- config


def test_no_helper_by_default_as_in_the_kernel_since_4_7() -> None:
    cfg = load_config()
    assert cfg.helpers == HelpersConfig() and cfg.helpers.mapping() == {}
    assert Daemon(cfg).engine.helper_ports == {}
    # the annotated default documents the section and both helpers without setting any
    assert re.search(r"^\[helpers\]$", DEFAULT_TOML, re.M)
    assert re.search(r"^#\s+ftp\s+= \[21\]", DEFAULT_TOML, re.M)
    assert re.search(r"^#\s+tftp\s+= \[69\]", DEFAULT_TOML, re.M)


def test_helpers_section_reaches_the_daemons_engine() -> None:
    cfg = parse_config("[helpers]\nftp = [21, 2121]\ntftp = 69\n")
    assert cfg.helpers.mapping() == {"ftp": (21, 2121), "tftp": (69,)}
    assert Daemon(cfg).engine.helper_ports == {(6, 21): FTP, (6, 2121): FTP, (17, 69): TFTP}
    assert as_mapping(cfg)["helpers"] == {"ftp": [21, 2121], "tftp": [69]}


def test_an_empty_list_switches_a_helper_off() -> None:
    cfg = parse_config("[helpers]\nftp = []\ntftp = [69]\n")
    assert cfg.helpers.mapping() == {"tftp": (69,)}
    assert Daemon(cfg).engine.helper_ports == {(17, 69): TFTP}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[helpers]\nftpp = [21]\n", "<t>:2: helpers.ftpp: unknown key; did you mean 'ftp'?"),
        ("[helpers]\nsip = 5060\n", "<t>:2: helpers.sip: unknown key; known keys: ftp, tftp"),
        ("[helpers]\nftp = \"21\"\n", "<t>:2: helpers.ftp: " + PORT_MSG + " a string"),
        ("[helpers]\nftp = [21, \"x\"]\n", "<t>:2: helpers.ftp[1]: " + PORT_MSG + " a string"),
        ("[helpers]\nftp = true\n", "<t>:2: helpers.ftp: " + PORT_MSG + " a boolean"),
        ("[helpers]\nftp = [0]\n", "<t>:2: helpers.ftp[0]: must be between 1 and 65535, not 0"),
        ("[helpers]\ntftp = 70000\n", "<t>:2: helpers.tftp: "
         "must be between 1 and 65535, not 70000"),
        ("\n[helpers]\nftp = [21, 2121, 21]\n", "<t>:3: helpers.ftp: lists port 21 twice"),
        ("[helpers]\nftp = { port = 21 }\n", "<t>:2: helpers.ftp: " + PORT_MSG + " a table"),
        ("helpers = [21]\n", "<t>:1: helpers: must be a table, not an array"),
    ],
)  # fmt: skip
def test_helper_config_errors_name_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "<t>")
    assert str(e.value) == expected


def test_example_node_configs_load_with_helpers_unset() -> None:
    repo = Path(__file__).resolve().parents[3]
    for name in ("node-a.toml", "node-b.toml"):
        assert load_config(repo / "configs" / name).helpers.mapping() == {}


# ---------------------------------------------------------------------------- conntrack -L expect


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_control_socket_lists_expectations_like_conntrack_L_expect(v6: bool) -> None:
    d = Daemon(parse_config("[helpers]\nftp = 2121\n"))
    ctl = Ctl(40100, v6=v6, sport=2121)
    ctl.port(50123)
    now = time.monotonic()  # the daemon's clock (the handler reads it itself)
    assert set(feed(d.engine, ctl.take(), now)) <= {int(CtState.NEW), EST}
    res = d.handle({"cmd": "expect"})
    assert json.loads(json.dumps(res)) == res  # what the control socket sends
    c, s = (C6, S6) if v6 else (C4, S4)
    ones = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if v6 else "255.255.255.255"
    [entry] = res["entries"]
    left = entry.pop("timeout")
    assert 290 <= left <= 300  # nf_conntrack_ftp's policy timeout, 5 minutes, from creation
    assert entry == {
        "proto": "tcp",
        "tuple": [s, c, 0, 50123],  # from the server, any source port, to the announced one
        "mask": [ones, ones, 0, 65535],
        "master": [c, s, 40100, 2121],
        "class": 0,
        "flags": 0,
        "helper": "ftp",
    }
    [line] = res["lines"]
    assert line.startswith(f"{left} proto=6 src={s} dst={c} sport=0 dport=50123 ")
    assert line.endswith(f"master-src={c} master-dst={s} sport=40100 dport=2121 class=0 helper=ftp")
    # the data connection uses it up: RELATED, and the listing is empty again
    assert d.engine.process_ip(active_syn(50123, v6=v6), now)[0] == REL
    assert d.handle({"cmd": "expect"}) == {"lines": [], "entries": []}


def test_expect_listing_counts_down_and_forgets_expired_ones() -> None:
    e = Engine(helpers={"ftp": [21]})
    ctl = Ctl(40200)
    ctl.port(50200)
    feed(e, ctl.take(), 0.0)
    assert expect_listing(e, 100.0)["entries"][0]["timeout"] == 200
    assert expect_listing(e, 300.0) == {"lines": [], "entries": []}


def test_no_expectation_without_a_helper_on_that_port() -> None:
    d = Daemon(parse_config("[helpers]\nftp = 2121\n"))
    ctl = Ctl(40300)  # to port 21, which has no helper here
    ctl.port(50300)
    now = time.monotonic()
    feed(d.engine, ctl.take(), now)
    assert d.engine.expect.count == 0 and d.handle({"cmd": "expect"})["entries"] == []
    assert d.engine.process_ip(active_syn(50300), now)[0] == int(CtState.NEW)


# ---------------------------------------------------------------------------- the sync shell


class FakeTransport:
    """Datagrams go straight into the peer's inbox."""

    def __init__(self) -> None:
        self.inbox: deque[bytes] = deque()
        self.peer: FakeTransport | None = None

    def fileno(self) -> int:
        return -1

    def recv_many(self, limit: int = 256) -> list[bytes]:
        out = []
        while self.inbox and len(out) < limit:
            out.append(self.inbox.popleft())
        return out

    def send(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.inbox.append(data)

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class Pair:
    """Two nodes with FTP on port 21 and ct_sync between them (node 1 master)."""

    def __init__(self, tmp: Path, mode: str, *, start_b: bool = True) -> None:
        self.tmp, self.mode = tmp, mode
        self.now = 10.0
        self.ta, self.tb = FakeTransport(), FakeTransport()
        self.ta.peer, self.tb.peer = self.tb, self.ta
        self.a, self.sa = self._node(1, self.ta, master=True)
        self.b: Engine | None = None
        self.sb: SyncShell | None = None
        if start_b:
            self.start_b()

    def _node(self, node: int, t: FakeTransport, *, master: bool) -> tuple[Engine, SyncShell]:
        cfg = parse_config(
            f'[interfaces]\nsync = "sync0"\n[helpers]\nftp = [21]\n[sync]\nenabled = true\n'
            f'node_id = {node}\npeers = [{3 - node}]\nmode = "{self.mode}"\n'
            'address = "192.0.2.99"\n'
        )
        engine = Engine(cfg.conntrack, events=True, helpers=cfg.helpers.mapping())
        run_dir = self.tmp / f"node{node}"
        run_dir.mkdir(exist_ok=True)
        shell = SyncShell(
            cfg.sync, "sync0", engine, master=master, run_dir=str(run_dir), now=self.now,
            transport=t,  # type: ignore[arg-type]
        )  # fmt: skip
        return engine, shell

    def start_b(self) -> None:
        self.b, self.sb = self._node(2, self.tb, master=False)

    def run(self, seconds: float) -> None:
        """The daemon's loop: table events to the shell, then service (which drains the
        expectation events), every millisecond of a fake clock."""
        end = self.now + seconds
        while self.now < end:
            for e, s in ((self.a, self.sa), (self.b, self.sb)):
                if e is not None and s is not None:
                    s.engine_events(e.drain_events(), self.now)
                    s.service(self.now)
            self.now = round(self.now + 0.001, 6)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_replicate_master_streams_expectations_and_their_end(tmp_path: Path, v6: bool) -> None:
    p = Pair(tmp_path, "replicate")
    p.run(0.2)
    assert p.sb is not None and p.sb.ready(p.now) and p.b is not None
    ctl = Ctl(40400, v6=v6)
    ctl.port(50400)
    feed(p.a, ctl.take(), p.now)  # only the master tracks the wire in replicate mode
    p.run(0.05)
    assert [e.dport for e in p.b.expectations(p.now)] == [50400]
    [master_b] = [c for c in p.b.table if c.helper is FTP]
    assert p.b.expectations(p.now)[0].master is master_b
    # a second PORT evicts the first (FTP's max_expected is 1): EXP_DELETE + EXP_UPDATE
    ctl.port(50401)
    feed(p.a, ctl.take(), p.now)
    p.run(0.05)
    assert [e.dport for e in p.b.expectations(p.now)] == [50401]
    # used on the master: the EXP_DELETE removes it on the standby too
    assert p.a.process_ip(active_syn(50401, v6=v6), p.now)[0] == REL
    p.run(0.05)
    assert p.b.expectations(p.now) == []
    ctl.port(50402)
    feed(p.a, ctl.take(), p.now)
    p.run(0.05)
    stats = p.sb.core.stats
    assert (stats["apply_exp_stored"], stats["apply_exp_deleted"]) == (3, 2)
    # failover: the standby's copy relates the data connection announced before it
    p.sb.promote(p.now)
    assert p.b.process_ip(active_syn(50402, v6=v6), p.now)[0] == REL


def test_concurrent_mode_sends_no_expect_records_but_the_walk_carries_them(
    tmp_path: Path,
) -> None:
    p = Pair(tmp_path, "concurrent", start_b=False)
    ctl = Ctl(40500)
    ctl.port(50500)
    feed(p.a, ctl.take(), p.now)
    p.run(0.05)
    assert p.a.expect.events == []  # drained, not piling up, although nothing is streamed
    assert p.sa.core.stats["tx_records"] == 0
    p.start_b()  # a (re)started standby: its init sync walk brings the pending expectation
    p.run(0.3)
    assert p.sb is not None and p.b is not None and p.sb.ready(p.now)
    assert [e.dport for e in p.b.expectations(p.now)] == [50500]
    assert p.b.process_ip(active_syn(50500), p.now)[0] == REL
    p.run(0.01)
    assert p.b.expect.events == []  # the standby's own expectation events are drained too


# ---------------------------------------------------------------------------- the CLI


def test_pmct_conntrack_L_expect_over_a_control_socket(tmp_path: Path) -> None:
    """The CLI against a control socket served by a Daemon's handler (thread: the loop)."""
    import threading

    from typer.testing import CliRunner

    from pmct.cli import app
    from pmct.node.control import ControlServer

    d = Daemon(parse_config("[helpers]\nftp = 21\n"))
    ctl = Ctl(40600)
    ctl.port(50600)
    feed(d.engine, ctl.take(), time.monotonic())
    sock = str(tmp_path / "control.sock")
    srv = ControlServer(sock, d.handle, allowed_uid=os.getuid())
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            srv.service(0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        run = CliRunner().invoke
        r = run(app, ["conntrack", "-L", "expect", "-s", sock])
        assert r.exit_code == 0, r.output
        [line, summary] = r.output.splitlines()  # CliRunner mixes stderr in
        assert " dport=50600 " in line and line.endswith("helper=ftp")
        assert summary == "pmct (pmct-conntrack): 1 expectations have been shown."
        r = run(app, ["conntrack", "-L", "expect", "--json", "-s", sock])
        assert r.exit_code == 0 and json.loads(r.output)[0]["tuple"][3] == 50600
        r = run(app, ["conntrack", "-L", "-s", sock])  # the connections, as before
        assert r.exit_code == 0 and "dport=21 " in r.output and "helper=ftp" in r.output
        for args, msg in (
            (["-L", "bogus"], "unknown table 'bogus'"),
            (["-E", "expect"], "only -L lists the expect table"),
        ):
            r = run(app, ["conntrack", *args, "-s", sock])
            assert r.exit_code == 2 and msg in r.output, r.output
    finally:
        stop.set()
        t.join()
        srv.close()
