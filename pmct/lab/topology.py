"""The reference lab in network namespaces: client — LAN hub — {fw-a, fw-b} — WAN hub — server.

::

    client c0 198.18.1.2/24 ─┐                                    ┌─ s0 198.18.2.2/24 server
                             │ br-lan (hub)          br-wan (hub) │
                    fw-a lan0┤ 198.18.1.1/24    198.18.2.1/24 wan0├fw-a
                    fw-b lan0┘ (cluster MAC/IP, added by pmct)    └wan0 fw-b
                    fw-a sync0 198.19.0.1/30 ─── sync0 198.19.0.2/30 fw-b

Both bridges live in the ``hub`` namespace with ``ageing_time 0`` (every frame is flooded, so
both firewalls receive everything: measurements.md §6 "A"), ``stp_state 0`` and
``mcast_snooping 0``. The firewalls' data interfaces start with no address and their own MAC;
``pmct run`` gives both the same cluster MAC and addresses (configs/node-a.toml).

``Lab(switched=True)`` is the switched-ethernet variant: both bridges are ordinary learning
switches (``ageing_time`` 300 s) and the firewalls run ``cluster.mode = "multicast-mac"``:
they keep their own MACs and answer ARP for the cluster addresses with a multicast cluster MAC
(LAN_MCAST_MAC, WAN_MCAST_MAC), which the switch floods to both (measurements.md §6 "B").

Rules:
1. Namespace names are unique per run (``pmct<pid>-<node>``) and every namespace, process and
   file the lab makes is removed by ``down()``, which also runs when ``up()`` fails half-way
   and on leaving a ``with Lab() as lab:`` block.
2. Traffic stays between the lab's own namespaces, on 198.18.0.0/15 (RFC 2544 benchmarking).
3. Processes are stopped by their pid, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["CLIENT_IP", "SERVER_IP", "Lab", "LabError", "lab_policy"]

CLIENT_IP: Final = "198.18.1.2"
SERVER_IP: Final = "198.18.2.2"
LAN_GW: Final = "198.18.1.1"
WAN_GW: Final = "198.18.2.1"
LAN_MAC: Final = "02:00:00:c1:00:01"
WAN_MAC: Final = "02:00:00:c1:00:02"
LAN_MCAST_MAC: Final = "03:00:00:c1:00:01"  # switched variant: multicast cluster MACs
WAN_MCAST_MAC: Final = "03:00:00:c1:00:02"
SWITCH_AGEING: Final = "30000"  # centiseconds: 300 s, the Linux bridge default
FIREWALLS: Final = ("fw-a", "fw-b")
NODES: Final = ("client", "hub", "fw-a", "fw-b", "server")
# Hub ports (in the hub namespace) and who is on the other end.
PORTS: Final = {
    "lc": ("client", "c0", "br-lan"),
    "la": ("fw-a", "lan0", "br-lan"),
    "lb": ("fw-b", "lan0", "br-lan"),
    "wa": ("fw-a", "wan0", "br-wan"),
    "wb": ("fw-b", "wan0", "br-wan"),
    "ws": ("server", "s0", "br-wan"),
}
RUN_ROOT: Final = "/run/pmct"
CURRENT: Final = f"{RUN_ROOT}/lab.json"


class LabError(RuntimeError):
    """A lab command failed (the message holds the command and its stderr)."""


def lab_policy(strict: bool) -> str:
    """The ruleset of the lab's firewalls (TOML).

    strict: only a TCP SYN from the LAN may open a connection, invalid is dropped, nothing new
    from the WAN (the failover test); otherwise anything new from the LAN is accepted.
    """
    new_from_lan = (
        'ctstate = "new"\nin = "lan0"\nproto = "tcp"\nsyn = true\naction = "accept"\n'
        'comment = "only a TCP SYN from the LAN opens a connection"\n'
        if strict
        else 'ctstate = "new"\nin = "lan0"\naction = "accept"\n'
    )
    return (
        '[policy]\ndefault = "drop"\n\n'
        '[[policy.rule]]\nctstate = ["established", "related"]\naction = "accept"\n\n'
        '[[policy.rule]]\nctstate = "invalid"\naction = "drop"\n\n'
        '[[policy.rule]]\nctstate = "untracked"\naction = "accept"\n\n'
        f"[[policy.rule]]\n{new_from_lan}"
    )


@dataclass
class _Proc:
    name: str
    node: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    log: str


class Lab:
    """Build, use and remove the lab. Use as a context manager, or up()/down()."""

    def __init__(
        self, prefix: str | None = None, *, keep_state: bool = False, switched: bool = False
    ) -> None:
        self.prefix = prefix or f"pmct{os.getpid()}"
        self.switched = switched  # learning switches + cluster.mode "multicast-mac"
        self.ns = {n: f"{self.prefix}-{n.replace('-', '')}" for n in NODES}
        self.run_dir = f"{RUN_ROOT}/{self.prefix}"
        self.procs: dict[str, _Proc] = {}
        self.keep_state = keep_state  # `pmct lab up`: remember the lab in /run/pmct/lab.json
        self.is_up = False

    # ------------------------------------------------------------------ shell helpers

    def sh(
        self, node: str | None, cmd: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        argv = list(cmd) if node is None else ["ip", "netns", "exec", self.ns[node], *cmd]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {p.stderr.strip() or p.returncode}")
        return p

    def ip(self, node: str, *args: str, check: bool = True) -> None:
        self.sh(None, ["ip", "-n", self.ns[node], *args], check=check)

    def sysctl(self, node: str, *settings: str) -> None:
        self.sh(node, ["sysctl", "-qw", *settings])

    # ------------------------------------------------------------------ build / remove

    def up(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self.is_up = True
        if self.keep_state:
            self._save()
        return self

    def _build(self) -> None:
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        for node in NODES:
            self.sh(None, ["ip", "netns", "add", self.ns[node]])
            self.ip(node, "link", "set", "lo", "up")
            self.sysctl(node, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        for node in ("client", "hub", "server"):
            self.sysctl(
                node, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"
            )
        hub = self.ns["hub"]
        for br in ("br-lan", "br-wan"):
            self.sh(
                None,
                [
                    "ip",
                    "-n",
                    hub,
                    "link",
                    "add",
                    br,
                    "type",
                    "bridge",
                    "ageing_time",
                    SWITCH_AGEING if self.switched else "0",
                    "stp_state",
                    "0",
                    "mcast_snooping",
                    "0",
                ],
            )
            self.ip("hub", "link", "set", br, "up")
        # A hub repeats frames, it does not filter them. Once br_netfilter is loaded (the
        # kernel oracle loads it), every new namespace starts with bridge-nf-call-iptables=1
        # and each frame crossing a bridge would also run the hub namespace's IP hooks
        # (br_nf_pre_routing/forward/post_routing and an skb extension, twice per forwarded
        # packet): work no real hub does, that both firewalls would pay for in every
        # benchmark. -e: without br_netfilter the keys do not exist and there is nothing to do.
        self.sh(
            "hub",
            [
                "sysctl",
                "-qw",
                "-e",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )
        for port, (node, dev, br) in PORTS.items():
            self.sh(
                None,
                [
                    "ip",
                    "link",
                    "add",
                    dev,
                    "netns",
                    self.ns[node],
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    hub,
                ],
            )
            self.ip("hub", "link", "set", port, "master", br, "up")
            self.ip(node, "link", "set", dev, "up")
        self.sh(
            None,
            [
                "ip",
                "link",
                "add",
                "sync0",
                "netns",
                self.ns["fw-a"],
                "type",
                "veth",
                "peer",
                "name",
                "sync0",
                "netns",
                self.ns["fw-b"],
            ],
        )
        # client and server
        self.ip("client", "addr", "add", f"{CLIENT_IP}/24", "dev", "c0")
        self.ip("client", "route", "add", "default", "via", LAN_GW)
        self.ip("server", "addr", "add", f"{SERVER_IP}/24", "dev", "s0")
        self.ip("server", "route", "add", "default", "via", WAN_GW)
        for node in ("client", "server"):
            self.sysctl(node, "net.ipv4.conf.all.accept_redirects=0")
        # firewalls: forwarding is switched per interface by pmct; no addresses on the data
        # interfaces until pmct adds the cluster ones
        for fw, sync_ip in (("fw-a", "198.19.0.1/30"), ("fw-b", "198.19.0.2/30")):
            self.sysctl(
                fw,
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.all.accept_redirects=0",
            )
            self.ip(fw, "addr", "add", sync_ip, "dev", "sync0")
            self.ip(fw, "link", "set", "sync0", "up")

    def down(self) -> None:
        """Stop every process the lab started, delete its namespaces and files. Never raises."""
        for name in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(name)
        for node in NODES:
            with contextlib.suppress(Exception):
                subprocess.run(
                    ["ip", "netns", "del", self.ns[node]], capture_output=True, timeout=30
                )
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            cur = json.loads(Path(CURRENT).read_text())
            if cur.get("prefix") == self.prefix:
                os.unlink(CURRENT)
        self.is_up = False

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------------ state for lab up/down

    def _save(self) -> None:
        state = {
            "prefix": self.prefix,
            "namespaces": self.ns,
            "run_dir": self.run_dir,
            "procs": {
                n: {"node": p.node, "pid": p.pid, "log": p.log} for n, p in self.procs.items()
            },
        }
        tmp = CURRENT + ".tmp"
        Path(tmp).write_text(json.dumps(state, indent=1))
        os.replace(tmp, CURRENT)

    @classmethod
    def current(cls) -> Lab | None:
        """The lab ``pmct lab up`` left running, or None."""
        try:
            state = json.loads(Path(CURRENT).read_text())
        except (OSError, ValueError):
            return None
        lab = cls(state["prefix"], keep_state=True)
        lab.is_up = True
        for name, p in state.get("procs", {}).items():
            lab.procs[name] = _Proc(name, p["node"], None, int(p["pid"]), p["log"])
        return lab

    # ------------------------------------------------------------------ processes

    def start(
        self, name: str, node: str, argv: Sequence[str], *, detach: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a node's namespace; stdout+stderr go to <run_dir>/<name>.log."""
        if name in self.procs:
            raise LabError(f"a process named {name!r} is already running")
        log = f"{self.run_dir}/{name}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[node], *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        # `ip netns exec` execs the command in place, so this is the command's own pid.
        self.procs[name] = _Proc(name, node, p, p.pid, log)
        if self.keep_state:
            self._save()
        return p

    def adopt(self, name: str, node: str, pid: int, log: str = "") -> None:
        """Track a process the lab did not start itself (a daemon's child), so that
        ``stop(name)`` and ``down()`` end it by pid."""
        if name in self.procs:
            raise LabError(f"a process named {name!r} is already running")
        self.procs[name] = _Proc(name, node, None, pid, log)
        if self.keep_state:
            self._save()

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        if p is None:
            return False
        if p.popen is not None:
            return p.popen.poll() is None
        return _pid_alive(p.pid)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal a process by pid and wait for it (SIGKILL after ``timeout``); its status."""
        p = self.procs.pop(name, None)
        if p is None:
            return None
        if self.keep_state and self.is_up:
            self._save()
        code: int | None = None
        if p.popen is not None:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
                try:
                    code = p.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
                    code = p.popen.wait(10)
            else:
                code = p.popen.returncode
        elif _pid_alive(p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            deadline = time.monotonic() + timeout
            while _pid_alive(p.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
        return code

    def log_text(self, name: str) -> str:
        try:
            return Path(f"{self.run_dir}/{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ pmct nodes

    def socket(self, fw: str) -> str:
        return f"{self.run_dir}/{fw}/control.sock"

    def config_text(
        self,
        fw: str,
        *,
        role: str,
        tcp_loose: bool = True,
        strict: bool = False,
        fail: str = "open",
        max_len: int | None = None,
        rcvbuf: int | None = None,
        backend: str | None = None,
        gso: bool = False,
        passive_capture: str | None = None,
        extra: str = "",
    ) -> str:
        lan_mac, wan_mac = (LAN_MCAST_MAC, WAN_MCAST_MAC) if self.switched else (LAN_MAC, WAN_MAC)
        return (
            f'[node]\nname = "{fw}"\nrole = "{role}"\nrun_dir = "{self.run_dir}/{fw}"\n\n'
            '[interfaces]\ndata = ["lan0", "wan0"]\nsync = "sync0"\n\n'
            + ('[cluster]\nmode = "multicast-mac"\n\n' if self.switched else "")
            + f'[cluster.interface.lan0]\nmac = "{lan_mac}"\naddresses = ["{LAN_GW}/24"]\n\n'
            f'[cluster.interface.wan0]\nmac = "{wan_mac}"\naddresses = ["{WAN_GW}/24"]\n\n'
            f'[queue]\nfail = "{fail}"\n'
            + (f"max_len = {max_len}\n" if max_len else "")
            + (f"rcvbuf = {rcvbuf}\n" if rcvbuf else "")
            + (f'backend = "{backend}"\n' if backend else "")
            + ("gso = true\n" if gso else "")
            + (f'passive_capture = "{passive_capture}"\n' if passive_capture else "")
            + "\n"
            f"[conntrack]\ntcp_loose = {'true' if tcp_loose else 'false'}\n\n"
            f"{lab_policy(strict)}\n{extra}"
        )

    def start_node(
        self, fw: str, *, role: str, wait: float = 20.0, detach: bool = False, **cfg: Any
    ) -> subprocess.Popen[bytes]:
        """Write the node's config and run ``pmct run`` in its namespace; wait until ready."""
        path = f"{self.run_dir}/{fw}.toml"
        Path(path).write_text(self.config_text(fw, role=role, **cfg))
        p = self.start(
            fw, fw, [sys.executable, "-m", "pmct", "run", "--config", path], detach=detach
        )
        self.wait_ready(fw, wait)
        return p

    def wait_ready(self, fw: str, timeout: float = 20.0) -> None:
        from pmct.node.control import ControlError, request

        deadline = time.monotonic() + timeout
        while True:
            if not self.alive(fw):
                raise LabError(f"{fw}: pmct run exited:\n{self.log_text(fw)[-3000:]}")
            try:
                if request(self.socket(fw), "ping", timeout=2.0).get("ready"):
                    return
            except ControlError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"{fw}: not ready after {timeout} s:\n{self.log_text(fw)[-3000:]}")
            time.sleep(0.05)

    def control(self, fw: str, cmd: str, **args: Any) -> Any:
        from pmct.node.control import request

        return request(self.socket(fw), cmd, **args)

    def links_down(self, fw: str) -> None:
        for dev in ("lan0", "wan0"):
            self.ip(fw, "link", "set", dev, "down")

    def port_rx(self, port: str) -> int:
        """Frames the hub received on a port = frames the node behind it sent."""
        out = self.sh("hub", ["cat", f"/sys/class/net/{port}/statistics/rx_packets"]).stdout
        return int(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False
