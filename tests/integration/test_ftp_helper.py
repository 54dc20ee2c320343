"""The FTP helper for real (issue 7): curl and Python's ftplib against a pyftpdlib server,
through the firewall pair, with a ruleset that admits FTP data connections only as related.

Ruleset on both firewalls: established and related accepted, invalid dropped, IPv6 neighbour
discovery (untracked) accepted, and the only NEW connection allowed is a TCP SYN from the LAN
to port 21 (the control connection); ``tcp_loose`` off and ``queue.fail = "closed"``. So a
data connection gets through only if the node forwarding it holds an expectation for it: in
active mode (PORT/EPRT) it comes from the WAN, in passive mode (PASV/EPSV) it goes to a port
no rule opens. Both nodes run ``[helpers] ftp = [21, 2121]`` and ct_sync on sync0; pyftpdlib
listens on 21 and, throttled to SLOW bytes/s per data connection, on 2121.

* all modes: EPSV, PASV, EPRT and PORT over IPv4, EPSV and EPRT over IPv6 (curl -v shows the
  command it used); the file arrives whole and fw-a counts a RELATED packet for each.
* control: the helper off (fw-a alone): the control connection works (login, the data
  command is sent) but every data connection is dropped by the ruleset, so the tests above
  measure the helper.
* failover in the middle of FTP sessions, for concurrent mode, replicate mode (fw-b does not
  track the wire: it knows the expectations only from ct_sync's EXPECT stream) and a restart
  of fw-b (its expectations and control entries come from ct_sync's init sync walk):
  (a) two rate-limited transfers (passive IPv4, active IPv6) run while fw-a dies and fw-b is
      promoted; they finish, byte for byte;
  (b) two ftplib sessions announce a passive data connection (PASV over IPv4, EPSV over IPv6)
      before the failover, ``pmct conntrack -L expect`` on fw-b lists both, and each opens its
      data connection only after the failover: RELATED on fw-b, file complete; two more
      sessions (PORT, EPRT) logged in before the failover announce and open an active data
      connection after it (fw-b's helper reads a control connection it took over: SEQ_PICKUP
      for entries it got from ct_sync). See DRIVER for why active ones cannot be announced
      before and opened after with pyftpdlib.

Every process is started through the Lab (stopped by pid in ``lab.down()``), namespaces are
removed by the fixture. Waits are for progress with generous deadlines; nothing asserts on speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from synclab import fail, pmct, sync_toml, wait_ready

from pmct.lab.scenario import wait_for
from pmct.lab.topology import LAN_MAC, WAN_MAC, Lab, LabError

pytestmark = [pytest.mark.netns, pytest.mark.slow]

C4, S4 = "198.18.1.2", "198.18.2.2"
SLOW = 100_000  # bytes/s of the throttled server
C6, S6 = "2001:db8:1::2", "2001:db8:2::2"
GW6 = {"client": ("c0", C6, "2001:db8:1::1"), "server": ("s0", S6, "2001:db8:2::1")}

POLICY = """
[policy]
default = "drop"

[[policy.rule]]
ctstate = ["established", "related"]
action = "accept"

[[policy.rule]]
ctstate = "invalid"
action = "drop"

[[policy.rule]]
ctstate = "untracked"
action = "accept"
comment = "IPv6 neighbour discovery"

[[policy.rule]]
ctstate = "new"
in = "lan0"
proto = "tcp"
dport = [21, 2121]
syn = true
action = "accept"
comment = "FTP control connections from the LAN; data connections only as related"
"""

SERVER = r"""
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
from pyftpdlib.ioloop import Select
from pyftpdlib.servers import FTPServer

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
root, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
auth = DummyAuthorizer()
auth.add_anonymous(root)


class Slow(ThrottledDTPHandler):
    write_limit = limit  # bytes/s the server sends on a data connection


class Handler(FTPHandler):
    authorizer = auth
    permit_foreign_addresses = False
    timeout = 600
    use_sendfile = False
    if limit:
        dtp_handler = Slow


# select(), not the default epoll loop, and no sendfile(): with those, pyftpdlib 2.2 now and
# then stopped sending a file mid-way with the window open, or never noticed that an active
# data connection had connected (captures: every packet it sent arrived, nothing dropped).
# With them it still did, rarely, while four data connections ran at once, so the failover
# test opens its sessions' data connections one after the other.
FTPServer(("::", port), Handler, ioloop=Select()).serve_forever()
"""

# One FTP session (ftplib: PASV/PORT over IPv4, EPSV/EPRT over IPv6, by the address family).
# Passive: announces the data connection (PASV/EPSV), waits for the go file, then opens it.
# Active: logs in, waits for the go file, then sends PORT/EPRT and RETR. pyftpdlib connects
# to the client as soon as it reads PORT/EPRT (not at RETR, as vsftpd does), so an active data
# connection cannot be announced before a failover and opened after it; this one is both
# announced and opened after it, through a control connection the new master took over.
DRIVER = r"""
import ftplib, hashlib, json, os, socket, sys, time

host, mode, name, status, go = sys.argv[1:6]
step = "start"
t0 = time.monotonic()


def say(**kw):
    kw["t"] = round(time.monotonic() - t0, 3)
    with open(status + ".tmp", "w") as f:
        json.dump(kw, f)
    os.replace(status + ".tmp", status)


try:
    ftp = ftplib.FTP()
    ftp.connect(host, 21, timeout=60)
    ftp.login()
    ftp.voidcmd("TYPE I")
    if mode == "passive":
        cmd = "PASV" if ftp.af == socket.AF_INET else "EPSV"
        _, port = ftp.makepasv()
        say(state="negotiated", cmd=cmd, port=port)
    else:
        cmd, port = "PORT" if ftp.af == socket.AF_INET else "EPRT", 0
        say(state="negotiated", cmd=cmd, port=port)
    while not os.path.exists(go):
        time.sleep(0.05)
    if mode == "passive":
        step = "connect"
        conn = socket.create_connection((host, port), timeout=15)
        step = "RETR"
        ftp.sendcmd("RETR " + name)
    else:
        step = cmd
        listener = ftp.makeport()
        listener.settimeout(15)
        port = listener.getsockname()[1]
        step = "RETR"
        ftp.sendcmd("RETR " + name)
        step = "accept"
        conn, _ = listener.accept()
    step = "data"
    conn.settimeout(30)
    data = bytearray()
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    step = "226"
    ftp.voidresp()
    ftp.quit()
    say(state="done", cmd=cmd, port=port, size=len(data), sha256=hashlib.sha256(data).hexdigest())
except Exception as e:
    say(state="failed", error=f"{type(e).__name__}: {e} (at {step})")
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


# ---------------------------------------------------------------------------- set-up


def enable_ipv6(lab: Lab) -> None:
    """The lab is IPv4 only: give client and server IPv6 addresses and routes via the
    cluster's IPv6 addresses, and turn IPv6 forwarding on in the firewalls (global in Linux;
    pmct's verdict is the gate, pmct/node/forwarding.py)."""
    for node, (dev, addr, gw) in GW6.items():
        lab.sysctl(
            node,
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0",
            f"net.ipv6.conf.{dev}.disable_ipv6=0",
            f"net.ipv6.conf.{dev}.accept_ra=0",
        )
        lab.ip(node, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        lab.ip(node, "-6", "route", "add", "default", "via", gw)
    for fw in ("fw-a", "fw-b"):
        lab.sysctl(fw, "net.ipv6.conf.all.forwarding=1")


def fw_config(lab: Lab, fw: str, role: str, *, helper: bool, mode: str) -> str:
    return (
        f'[node]\nname = "{fw}"\nrole = "{role}"\nrun_dir = "{lab.run_dir}/{fw}"\n\n'
        '[interfaces]\ndata = ["lan0", "wan0"]\nsync = "sync0"\n\n'
        f'[cluster.interface.lan0]\nmac = "{LAN_MAC}"\n'
        'addresses = ["198.18.1.1/24", "2001:db8:1::1/64"]\n\n'
        f'[cluster.interface.wan0]\nmac = "{WAN_MAC}"\n'
        'addresses = ["198.18.2.1/24", "2001:db8:2::1/64"]\n\n'
        '[queue]\nfail = "closed"\n\n[conntrack]\ntcp_loose = false\n'
        f"{POLICY}\n"
        + ("[helpers]\nftp = [21, 2121]\n" if helper else "")
        + sync_toml(fw, mode=mode)
    )


def start_fw(
    lab: Lab, fw: str, role: str, *, helper: bool = True, mode: str = "concurrent"
) -> None:
    path = f"{lab.run_dir}/{fw}.toml"
    Path(path).write_text(fw_config(lab, fw, role, helper=helper, mode=mode))
    lab.start(fw, fw, [sys.executable, "-m", "pmct", "run", "--config", path])

    def answers() -> bool:
        if not lab.alive(fw):
            raise LabError(f"{fw}: pmct run exited:\n{lab.log_text(fw)[-3000:]}")
        try:
            lab.control(fw, "ping")
            return True
        except Exception:
            return False

    wait_for(f"{fw} to answer", answers, 20)
    wait_ready(lab, fw)


class Ftp:
    """pyftpdlib in the server namespace: port 21, and port 2121 sending data connections at
    SLOW bytes/s (so a transfer runs on the wire for seconds, whatever the socket buffers)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.root = Path(lab.run_dir) / "ftproot"
        self.root.mkdir()
        rnd = os.urandom
        self.files = {"small.txt": b"hello through the pair\n", "file.bin": rnd(200_000)}
        self.files["big.bin"] = rnd(20 * SLOW)  # 20 s from port 2121: long enough under load
        for name, data in self.files.items():
            (self.root / name).write_bytes(data)
        for port, limit in ((21, 0), (2121, SLOW)):
            name = f"ftpd-{port}"
            lab.start(name, "server", [sys.executable, "-c", SERVER, str(self.root), str(port),
                                       str(limit)])  # fmt: skip

            def listening(name: str = name, port: int = port) -> bool:
                if not lab.alive(name):
                    raise LabError(f"{name} exited:\n{lab.log_text(name)[-3000:]}")
                out = lab.sh("server", ["ss", "-Hltn", f"sport = :{port}"]).stdout
                return bool(out.strip())

            wait_for(f"the FTP server on port {port} to listen", listening, 20)

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


def url(v6: bool, name: str, port: int = 21) -> str:
    return f"ftp://[{S6}]:{port}/{name}" if v6 else f"ftp://{S4}:{port}/{name}"


def curl_args(v6: bool, cmd: str, name: str, out: str, port: int = 21) -> list[str]:
    """curl choosing the FTP command ``cmd`` for the data connection."""
    opts = {
        "EPSV": [],
        "PASV": ["--disable-epsv"],
        "EPRT": ["-P", "-"],
        "PORT": ["-P", "-", "--disable-eprt"],
    }[cmd]
    return ["curl", "-v", "-g", "-sS", *opts, "-o", out, url(v6, name, port)]


def curl(
    lab: Lab, v6: bool, cmd: str, name: str, *, max_time: float = 20
) -> tuple[int, str, bytes]:
    out = f"{lab.run_dir}/curl-{cmd}-{'6' if v6 else '4'}.out"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)
    argv = curl_args(v6, cmd, name, out)
    argv[1:1] = ["--connect-timeout", "3", "--max-time", str(max_time)]
    p = lab.sh("client", argv, check=False, timeout=max_time + 10)
    data = Path(out).read_bytes() if os.path.exists(out) else b""
    return p.returncode, p.stderr, data


def diagnosis(lab: Lab, fw: str) -> str:
    """What a node holds, for a failure message."""
    st = lab.control(fw, "status")
    return "\n".join(
        [
            f"{fw} ctstates {st['ctstates']} invalid {st['invalid']} default {st['default']}",
            f"verdicts {st['verdicts']} queue {st['queue']} errors {st['errors']}",
            *lab.control(fw, "conntrack")["lines"],
            "expectations:",
            *lab.control(fw, "expect")["lines"],
            lab.log_text(fw)[-1500:],
            "ftpd: " + lab.log_text("ftpd-21")[-1500:],
        ]
    )


def related(lab: Lab, fw: str) -> int:
    return int(lab.control(fw, "status")["ctstates"]["related"])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- tests

MODES = [(False, "EPSV"), (False, "PASV"), (False, "EPRT"), (False, "PORT"), (True, "EPSV"),
         (True, "EPRT")]  # fmt: skip


def test_ftp_active_and_passive_ipv4_and_ipv6_data_only_as_related(lab: Lab) -> None:
    enable_ipv6(lab)
    start_fw(lab, "fw-a", "active")
    start_fw(lab, "fw-b", "passive")
    ftp = Ftp(lab)
    for v6, cmd in MODES:
        before = related(lab, "fw-a")
        rc, err, data = curl(lab, v6, cmd, "file.bin")
        what = f"{cmd} over IPv{6 if v6 else 4}"
        assert rc == 0, f"{what}: curl exit {rc}\n{err[-2000:]}"
        assert f"> {cmd}" in err, f"{what}: curl did not use {cmd}\n{err[-2000:]}"
        assert sha(data) == ftp.sha("file.bin"), what
        assert related(lab, "fw-a") > before, what
    # the passive node tracked the same data connections (concurrent mode, its own helper)
    assert related(lab, "fw-b") >= len(MODES)
    assert lab.control("fw-a", "status")["errors"]["callback"] == 0


def test_control_without_the_helper_the_ruleset_refuses_data_connections(lab: Lab) -> None:
    enable_ipv6(lab)
    start_fw(lab, "fw-a", "active", helper=False)
    ftp = Ftp(lab)
    for v6, cmd in ((False, "EPSV"), (False, "PASV"), (False, "EPRT"), (True, "EPSV")):
        before = lab.control("fw-a", "status")["default"]["hits"]
        rc, err, data = curl(lab, v6, cmd, "file.bin", max_time=10)
        what = f"{cmd} over IPv{6 if v6 else 4}"
        # the control connection works: logged in, the data connection negotiated
        assert "< 230 " in err and f"> {cmd}" in err, f"{what}: no control connection\n{err}"
        assert rc != 0 and sha(data) != ftp.sha("file.bin"), f"{what}: data got through"
        assert lab.control("fw-a", "status")["default"]["hits"] > before, what
    assert related(lab, "fw-a") == 0
    assert lab.control("fw-a", "expect") == {"lines": [], "entries": []}


# ---------------------------------------------------------------------------- failover


class Driver:
    """A DRIVER session in the client namespace."""

    def __init__(self, lab: Lab, tag: str, v6: bool, mode: str, go: str) -> None:
        self.lab, self.tag = lab, tag
        self.status_path = f"{lab.run_dir}/driver-{tag}.json"
        host = S6 if v6 else S4
        argv = [sys.executable, "-c", DRIVER, host, mode, "file.bin", self.status_path, go]
        lab.start(f"driver-{tag}", "client", argv)

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(Path(self.status_path).read_text()))
        except (OSError, ValueError):
            return {}

    def wait(self, state: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            st = self.status()
            if st.get("state") == "failed":
                raise LabError(f"driver {self.tag}: {st.get('error')}")
            return st if st.get("state") == state else None

        return wait_for(f"driver {self.tag} {state}", reached, timeout)


class Transfer:
    """A curl download from the slow server (port 2121) running in the background."""

    def __init__(self, lab: Lab, tag: str, v6: bool, cmd: str) -> None:
        self.lab, self.tag = lab, tag
        self.out = f"{lab.run_dir}/transfer-{tag}.out"
        argv = curl_args(v6, cmd, "big.bin", self.out, port=2121)
        argv[1:1] = ["--max-time", "120"]
        self.proc = lab.start(f"curl-{tag}", "client", argv)

    def received(self) -> int:
        try:
            return os.path.getsize(self.out)
        except OSError:
            return 0

    def finish(self, timeout: float = 90) -> bytes:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"transfer {self.tag} did not finish") from None
        log = self.lab.log_text(f"curl-{self.tag}")
        self.lab.stop(f"curl-{self.tag}")
        assert rc == 0, f"transfer {self.tag}: curl exit {rc}\n{log[-2000:]}"
        return Path(self.out).read_bytes()


SESSIONS = [("pasv4", False, "passive"), ("port4", False, "active"),
            ("epsv6", True, "passive"), ("eprt6", True, "active")]  # fmt: skip


@pytest.mark.parametrize("how", ["concurrent", "replicate", "restart"])
def test_failover_in_the_middle_of_ftp_sessions(lab: Lab, how: str) -> None:
    mode = "replicate" if how == "replicate" else "concurrent"
    enable_ipv6(lab)
    start_fw(lab, "fw-a", "active", mode=mode)
    start_fw(lab, "fw-b", "passive", mode=mode)
    ftp = Ftp(lab)
    go = f"{lab.run_dir}/go"  # one go file per driver: go-<tag>
    transfers = [Transfer(lab, "epsv4", False, "EPSV"), Transfer(lab, "eprt6", True, "EPRT")]
    drivers = [Driver(lab, tag, v6, m, f"{go}-{tag}") for tag, v6, m in SESSIONS]
    negotiated = {d.tag: d.wait("negotiated") for d in drivers}
    for t in transfers:
        wait_for(f"transfer {t.tag} to run", lambda t=t: t.received() > 100_000, 30)
    if how == "restart":
        # fw-b restarts with an empty table; everything it knows about the running FTP
        # sessions (control entries, data connections, expectations) comes from the walk
        lab.stop("fw-b", signal.SIGTERM)
        start_fw(lab, "fw-b", "passive", mode=mode)
        st = lab.control("fw-b", "status")["sync"]
        assert st["state"] == "SYNCED" and st["counters"]["apply_exp_stored"] >= 2

    # fw-b knows every announced data connection (its own helper, the EXPECT stream, or the
    # init sync walk), listed like `conntrack -L expect`
    def expected_ports() -> set[int]:
        return {e["tuple"][3] for e in lab.control("fw-b", "expect")["entries"]}

    want = {st["port"] for st in negotiated.values() if st["port"]}
    assert len(want) == 2, negotiated
    wait_for("fw-b to know the expectations", lambda: want <= expected_ports(), 15)
    p = pmct("conntrack", "-L", "expect", "-s", lab.socket("fw-b"))
    assert p.returncode == 0, p.stderr
    assert "2 expectations have been shown" in p.stderr, (p.stdout, p.stderr)
    for port in want:
        assert f" dport={port} " in p.stdout and "helper=ftp" in p.stdout, p.stdout
    if how == "replicate":  # fw-b does not track the wire: they came as EXPECT records
        counters = lab.control("fw-b", "status")["sync"]["counters"]
        assert counters["apply_exp_stored"] >= 2, counters

    # failover while the transfers run and before the data connections open
    progress = {t.tag: t.received() for t in transfers}
    assert all(n < len(ftp.files["big.bin"]) for n in progress.values()), progress
    fail(lab, "fw-a")
    p = pmct("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    rel_before = related(lab, "fw-b")
    for d in drivers:  # one after the other (see SERVER)
        Path(f"{go}-{d.tag}").write_text("go\n")
        try:
            st = d.wait("done", 60)
        except LabError as e:
            raise LabError(f"{e}\n{diagnosis(lab, 'fw-b')}") from None
        assert st["cmd"] == negotiated[d.tag]["cmd"], d.tag
        assert st["size"] == len(ftp.files["file.bin"]), d.tag
        assert st["sha256"] == ftp.sha("file.bin"), d.tag
    assert {st["cmd"] for st in negotiated.values()} == {"PASV", "PORT", "EPSV", "EPRT"}
    assert related(lab, "fw-b") >= rel_before + len(drivers)
    for t in transfers:
        data = t.finish()
        assert len(data) > progress[t.tag], t.tag  # it went on after the failover ...
        assert sha(data) == ftp.sha("big.bin"), t.tag  # ... byte for byte
    assert lab.control("fw-b", "status")["errors"]["callback"] == 0
