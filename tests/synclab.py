"""Helpers for the ct_sync namespace tests (tests/integration/test_sync_*.py).

The lab is pmct.lab.topology.Lab (client - hub - {fw-a, fw-b} - hub - server, plus the sync0
veth between the firewalls). fw-a is sync node 1 at 198.19.0.1, fw-b node 2 at 198.19.0.2.
Every process is started through the Lab, so ``lab.down()`` stops it by pid; every nft table a
helper adds lives in a lab namespace, so deleting the namespaces removes it.

Waits are for progress with generous deadlines; nothing asserts on speed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pmct.lab.scenario import conntrack_entries, wait_for
from pmct.lab.stream import read_status
from pmct.lab.topology import CLIENT_IP, SERVER_IP, Lab, LabError

SYNC_IP = {"fw-a": "198.19.0.1", "fw-b": "198.19.0.2"}
NODE_ID = {"fw-a": 1, "fw-b": 2}
PEER = {"fw-a": "fw-b", "fw-b": "fw-a"}
GROUP = "239.255.31.80"
PORT = 3780
KEY = "0123456789abcdef-pmct-sync-test-key"


def sync_toml(
    fw: str,
    *,
    mode: str = "concurrent",
    transport: str = "unicast",
    rate: float = 0,
    key_file: str = "",
    address: str = "",
) -> str:
    """``address``: the peer (unicast) or the group (multicast); default the IPv4 lab ones."""
    address = address or (GROUP if transport == "multicast" else SYNC_IP[PEER[fw]])
    return (
        f"\n[sync]\nenabled = true\nnode_id = {NODE_ID[fw]}\npeers = [{NODE_ID[PEER[fw]]}]\n"
        f'mode = "{mode}"\ntransport = "{transport}"\naddress = "{address}"\nport = {PORT}\n'
        f"initsync_rate = {rate}\n" + (f'hmac_key_file = "{key_file}"\n' if key_file else "")
    )


def write_key(lab: Lab, text: str = KEY) -> str:
    path = Path(lab.run_dir) / "sync.key"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def start_fw(
    lab: Lab,
    fw: str,
    role: str,
    *,
    wait_ready: bool = True,
    strict: bool = True,
    **sync: Any,
) -> None:
    """``pmct run`` with ct_sync on ``fw`` (tcp_loose off); waits until ready, or only until
    the daemon answers (``wait_ready=False``: it may still be in its initial sync)."""
    cfg: dict[str, Any] = {"strict": strict, "tcp_loose": False, "extra": sync_toml(fw, **sync)}
    if wait_ready:
        lab.start_node(fw, role=role, **cfg)
        return
    path = f"{lab.run_dir}/{fw}.toml"
    Path(path).write_text(lab.config_text(fw, role=role, **cfg))
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


def status(lab: Lab, fw: str) -> dict[str, Any]:
    return dict(lab.control(fw, "status"))


def sync_status(lab: Lab, fw: str) -> dict[str, Any]:
    return dict(status(lab, fw)["sync"])


def fail(lab: Lab, fw: str) -> None:
    """The node dies: daemon SIGKILLed (no clean-up at all), data links down."""
    lab.stop(fw, signal.SIGKILL)
    lab.links_down(fw)


def pmct(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pmct", *args], capture_output=True, text=True, timeout=timeout
    )


def nft(lab: Lab, fw: str, script: str) -> None:
    p = subprocess.run(
        ["ip", "netns", "exec", lab.ns[fw], "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if p.returncode != 0:
        raise LabError(f"nft in {fw}: {p.stderr.strip()}")


def cut_sync(lab: Lab) -> None:
    """Drop everything arriving on sync0, on both firewalls (the sync link is cut)."""
    for fw in ("fw-a", "fw-b"):
        nft(
            lab,
            fw,
            "table netdev pmcttest_cut { chain in { type filter hook ingress device "
            '"sync0" priority 0; policy drop; }; }\n',
        )


def restore_sync(lab: Lab) -> None:
    for fw in ("fw-a", "fw-b"):
        lab.sh(fw, ["nft", "delete", "table", "netdev", "pmcttest_cut"], check=False)


def sync_loss(lab: Lab, percent: int) -> str:
    """Random loss of ``percent`` % of the ct_sync datagrams arriving on each firewall.

    tc netem is the usual tool; where the kernel has no sch_netem (this build VM), an nftables
    ingress rule drawing a random number per datagram (``numgen random``) does the same: every
    datagram is dropped independently with that probability. Returns which one was used.
    """
    for fw in ("fw-a", "fw-b"):
        p = lab.sh(
            fw,
            ["tc", "qdisc", "add", "dev", "sync0", "root", "netem", "loss", f"{percent}%"],
            check=False,
        )
        if p.returncode != 0:
            break
    else:
        return "netem"
    for fw in ("fw-a", "fw-b"):
        lab.sh(fw, ["tc", "qdisc", "del", "dev", "sync0", "root"], check=False)
        nft(
            lab,
            fw,
            "table netdev pmcttest_loss { chain in { type filter hook ingress device "
            f'"sync0" priority 0; ip protocol udp udp dport {PORT} numgen random mod 100 '
            f"< {percent} counter drop; }}; }}\n",
        )
    return "nft"


def loss_dropped(lab: Lab) -> int:
    """Datagrams the nft loss rules dropped so far (both firewalls)."""
    total = 0
    for fw in ("fw-a", "fw-b"):
        p = lab.sh(fw, ["nft", "-j", "list", "table", "netdev", "pmcttest_loss"], check=False)
        if p.returncode != 0:
            continue
        for item in json.loads(p.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
    return total


# ---------------------------------------------------------------------------- traffic


class Sessions:
    """``count`` TCP counter streams (pmct.lab.stream), client -> server, ports base+i."""

    def __init__(self, lab: Lab, count: int, *, base: int = 6000, interval: float = 0.05):
        self.lab = lab
        self.ports = [base + i for i in range(count)]
        stream = [sys.executable, "-m", "pmct.lab.stream"]
        for port in self.ports:
            lab.start(
                f"srv-{port}",
                "server",
                [*stream, "serve", *self._opts("srv", port, interval)],
            )
        for port in self.ports:
            wait_for(f"server {port}", lambda p=port: read_status(self._file("srv", p)), 10)
        for port in self.ports:
            lab.start(
                f"cli-{port}",
                "client",
                [*stream, "connect", "--host", SERVER_IP, *self._opts("cli", port, interval)],
            )

    def _opts(self, side: str, port: int, interval: float) -> list[str]:
        path = self._file(side, port)
        return ["--port", str(port), "--status", path, "--interval", str(interval)]

    def _file(self, side: str, port: int) -> str:
        return f"{self.lab.run_dir}/stream-{side}-{port}.json"

    def status(self, side: str, port: int) -> dict[str, Any]:
        return read_status(self._file(side, port)) or {}

    def received(self) -> dict[int, tuple[int, int]]:
        return {
            p: (self.status("cli", p).get("received", 0), self.status("srv", p).get("received", 0))
            for p in self.ports
        }

    def errors(self) -> list[str]:
        out = []
        for p in self.ports:
            for side in ("cli", "srv"):
                out += [f"{side} {p}: {e}" for e in self.status(side, p).get("errors", [])]
        return out

    def wait_more(self, lines: int, timeout: float = 60) -> None:
        """Every session, both ways, receives ``lines`` more lines than now."""
        start = self.received()

        def ok() -> bool:
            bad = self.errors()
            if bad:
                raise LabError(f"a session broke: {bad}")
            now = self.received()
            return all(
                now[p][0] >= start[p][0] + lines and now[p][1] >= start[p][1] + lines
                for p in self.ports
            )

        wait_for(f"{lines} more lines on every session", ok, timeout)

    def stop(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Orderly close of every session; (client, server) final status of each."""
        for p in self.ports:
            self.lab.stop(f"cli-{p}", signal.SIGTERM)
        for p in self.ports:
            self.lab.stop(f"srv-{p}", signal.SIGTERM)
        return [(self.status("cli", p), self.status("srv", p)) for p in self.ports]

    def assert_intact(self, final: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """No reset, no error, and each side received exactly what the other sent."""
        for (c, s), p in zip(final, self.ports, strict=True):
            assert c["errors"] == [] and s["errors"] == [], (p, c, s)
            assert c["state"] == "closed" and s["state"] == "closed", (p, c, s)
            assert c["received"] == s["sent"] and s["received"] == c["sent"], (p, c, s)


UDP_FLOWS = """
import socket, sys
n, base, dst, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[5], base + i))
    s.sendto(b"pmct-sync-test", (dst, port))
    socks.append(s)
"""


def udp_flows(lab: Lab, n: int, *, base: int = 20000, port: int = 9) -> None:
    """``n`` UDP flows from the client to the server (one datagram each: n table entries)."""
    lab.sh(
        "client",
        [sys.executable, "-c", UDP_FLOWS, str(n), str(base), SERVER_IP, str(port), CLIENT_IP],
        timeout=60,
    )


# ---------------------------------------------------------------------------- tables


def entries(lab: Lab, fw: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for e in conntrack_entries(lab, fw):
        out[(e["proto"], tuple(e["orig"]), tuple(e["reply"]))] = e
    return out


def table_difference(lab: Lab, a: str, b: str, *, margin: int = 5) -> list[str]:
    """What differs between two nodes' tables (empty: equal).

    Compared: the set of connections and, for each, state and status. An entry that is about
    to expire (under ``margin`` seconds left on either node) may be missing on the other one:
    the two nodes expire it independently within milliseconds of each other.
    """
    ea, eb = entries(lab, a), entries(lab, b)
    out = []
    for key in ea.keys() | eb.keys():
        x, y = ea.get(key), eb.get(key)
        if x is None or y is None:
            present = x if x is not None else y
            assert present is not None
            if present["timeout"] >= margin:
                out.append(f"only on {a if y is None else b}: {key}")
            continue
        if (x["state"], x["status"]) != (y["state"], y["status"]):
            out.append(f"{key}: {a} {x['state']}/{x['status']}, {b} {y['state']}/{y['status']}")
    return sorted(out)


def wait_tables_equal(lab: Lab, a: str, b: str, timeout: float = 30) -> None:
    last: list[list[str]] = [[]]

    def equal() -> bool:
        last[0] = table_difference(lab, a, b)
        return not last[0]

    try:
        wait_for(f"{a} and {b} to hold the same table", equal, timeout, poll=0.2)
    except LabError:
        raise LabError(f"tables differ: {last[0][:20]}") from None


def wait_ready(lab: Lab, fw: str, timeout: float = 60) -> None:
    wait_for(f"{fw} ready", lambda: lab.control(fw, "ping")["ready"], timeout)


def has_sessions(lab: Lab, fw: str, sessions: Sessions) -> bool:
    """Every session is in ``fw``'s table as an ESTABLISHED TCP entry."""
    got = {
        e["orig"][3]
        for e in conntrack_entries(lab, fw)
        if e["proto"] == "tcp" and e["state"] == "ESTABLISHED"
    }
    return set(sessions.ports) <= got
