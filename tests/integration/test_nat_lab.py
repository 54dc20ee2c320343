"""NAT in the lab (issue 8): the WAN sees only the public address, and failover keeps NATed
connections -- outbound (source NAT) and inbound (port forwarding).

Set-up on both firewalls (the same ``[nat]``, so both compute the same bindings):

* source NAT of the LAN (198.18.1.0/24) to the WAN cluster address (``masquerade = "wan0"``
  resolves to 198.18.2.1 from ``[cluster.interface.wan0]``), ports remapped into
  SNAT_PORTS -- the client's ephemeral ports lie outside that range, so *every* connection
  gets a port chosen by the deterministic walk, not a kept one: the strongest case for "the
  passive node chose the same port";
* a port forward 198.18.2.1:FWD_PORT -> client 198.18.1.2:INNER_PORT;
* the server loses its default route: it can reach 198.18.2.0/24 only, so a packet that left
  the firewall un-NATed could not even be answered.

Strict policy and ``tcp_loose`` off (a node forwards a connection only if it tracked its
handshake), plus one rule admitting the forward's SYN from the WAN; ``queue.fail = "closed"``,
which NAT requires (with fail open, the killed node's unbound queue let the server's packets
for the public address through un-NATed to its own stack, which reset the sessions).
The waits are for progress with generous deadlines; nothing asserts on speed.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
from collections.abc import Iterator
from typing import Any

import dpkt
import pytest
from synclab import Sessions, sync_toml

from pmct.lab.scenario import Capture, conntrack_entries, pmct_cli, queue_opts, wait_for
from pmct.lab.stream import read_status
from pmct.lab.topology import CLIENT_IP, SERVER_IP, WAN_GW, Lab, LabError

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PUBLIC = WAN_GW  # 198.18.2.1, the WAN cluster address
SNAT_PORTS = (30000, 30063)
FWD_PORT = 8080
INNER_PORT = 6666
LAN = ipaddress.ip_network("198.18.1.0/24")

NAT_TOML = f"""
[[policy.rule]]
ctstate = "new"
in = "wan0"
proto = "tcp"
dst = "{PUBLIC}"
dport = {FWD_PORT}
syn = true
action = "accept"
comment = "the port forward (the policy sees the packet before NAT)"

[nat]
seed = "pmct-lab"

[[nat.snat]]
src = ["{LAN}"]
not_dst = ["{LAN}"]
masquerade = "wan0"
ports = "{SNAT_PORTS[0]}-{SNAT_PORTS[1]}"

[[nat.dnat]]
dst = "{PUBLIC}"
proto = "tcp"
dport = {FWD_PORT}
to = "{CLIENT_IP}"
to_port = {INNER_PORT}
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        lab.ip("server", "route", "del", "default")  # the server knows 198.18.2.0/24 only
        yield lab
    finally:
        lab.down()


def start(
    lab: Lab,
    fw: str,
    role: str,
    *,
    sync: str = "",
    strict: bool = True,
    **opts: Any,
) -> None:
    """``pmct run`` with NAT (and ct_sync in mode ``sync`` when given) on ``fw``."""
    extra = NAT_TOML + (sync_toml(fw, mode=sync) if sync else "")
    lab.start_node(
        fw, role=role, strict=strict, tcp_loose=False, fail="closed", extra=extra, **opts
    )


def fail(lab: Lab, fw: str) -> None:
    lab.stop(fw, signal.SIGKILL)  # the daemon dies: no clean-up at all
    lab.links_down(fw)


def promote(lab: Lab, fw: str) -> None:
    p = pmct_cli("promote", "-s", lab.socket(fw))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr


def tcp_entries(lab: Lab, fw: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """TCP entries: (orig tuple) -> (reply tuple, state, status)."""
    return {
        tuple(e["orig"]): (tuple(e["reply"]), e["state"], e["status"])
        for e in conntrack_entries(lab, fw)
        if e["proto"] == "tcp"
    }


def wait_tables_agree(lab: Lab, a: str, b: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Both nodes hold the same TCP entries with the same reply tuples (bindings)."""

    def same() -> dict[tuple[Any, ...], tuple[Any, ...]] | None:
        ta, tb = tcp_entries(lab, a), tcp_entries(lab, b)
        return ta if ta and ta == tb else None

    return wait_for(f"{a} and {b} to hold the same NAT bindings", same, 20)


def assert_snat(table: dict[tuple[Any, ...], tuple[Any, ...]], ports: list[int]) -> None:
    """Every session is SNATed to PUBLIC with a port from SNAT_PORTS. (Two sessions may share
    a public port: they differ in the server port, and the reply tuple is what is unique.)"""
    for port in ports:
        ((orig, (reply, state, status)),) = [
            (o, v) for o, v in table.items() if o[1] == SERVER_IP and o[3] == port
        ]
        assert orig[0] == CLIENT_IP and reply[0] == SERVER_IP and reply[1] == PUBLIC
        assert SNAT_PORTS[0] <= reply[3] <= SNAT_PORTS[1], reply
        assert status & 0x10 and state == "ESTABLISHED"  # IPS_SRC_NAT


def ipv4_frames(frames: list[bytes]) -> list[dpkt.ip.IP]:
    out = []
    for f in frames:
        eth = dpkt.ethernet.Ethernet(f)
        if isinstance(eth.data, dpkt.ip.IP):
            out.append(eth.data)
    return out


# ---------------------------------------------------------------------------- SNAT


@pytest.mark.parametrize("backend", ["netfilterqueue", "netlink"])
def test_wan_sees_only_the_public_address_and_failover_keeps_the_port(
    lab: Lab, backend: str
) -> None:
    start(lab, "fw-a", "active", **queue_opts(backend))
    start(lab, "fw-b", "passive", **queue_opts(backend))
    caps = {port: Capture(lab, port) for port in ("wa", "wb", "ws")}
    sessions = Sessions(lab, 4)
    sessions.wait_more(40)

    # the passive node computed the same bindings from the same packets (no ct_sync here)
    table = wait_tables_agree(lab, "fw-a", "fw-b")
    assert_snat(table, sessions.ports)

    frames = {port: ipv4_frames(c.stop()) for port, c in caps.items()}
    assert frames["wa"] and frames["ws"]
    assert frames["wb"] == []  # the passive node is silent
    for ip in frames["wa"]:  # everything fw-a sent on the WAN came from the public address
        assert dpkt.utils.inet_to_str(ip.src) == PUBLIC
    for ip in frames["ws"]:  # and the server only ever talked to it
        assert dpkt.utils.inet_to_str(ip.dst) == PUBLIC
        if isinstance(ip.data, dpkt.tcp.TCP) and ip.data.sport in sessions.ports:
            assert SNAT_PORTS[0] <= ip.data.dport <= SNAT_PORTS[1]
    assert not any(ipaddress.ip_address(ip.src) in LAN for ip in frames["ws"] + frames["wa"])

    fail(lab, "fw-a")
    promote(lab, "fw-b")
    sessions.wait_more(60)  # every session, both ways, through fw-b alone
    after = tcp_entries(lab, "fw-b")
    for orig, (reply, _state, _status) in table.items():
        assert after[orig][0] == reply  # the same public port after the failover
    st = lab.control("fw-b", "status")
    assert st["nat"]["masquerade"] == {"wan0": [PUBLIC]}
    sessions.assert_intact(sessions.stop())


# ---------------------------------------------------------------------------- DNAT


class Inbound:
    """One counter stream from the server to PUBLIC:FWD_PORT, forwarded to the client."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        base = [sys.executable, "-m", "pmct.lab.stream"]
        self.files = {
            "inner": f"{lab.run_dir}/fwd-inner.json",
            "outer": f"{lab.run_dir}/fwd-outer.json",
        }
        opts = ["--interval", "0.01"]
        lab.start(
            "fwd-inner",
            "client",
            [*base, "serve", "--port", str(INNER_PORT), "--status", self.files["inner"], *opts],
        )
        wait_for("the LAN server", lambda: read_status(self.files["inner"]), 10)
        lab.start(
            "fwd-outer",
            "server",
            [
                *base,
                "connect",
                "--host",
                PUBLIC,
                "--port",
                str(FWD_PORT),
                "--status",
                self.files["outer"],
                *opts,
            ],
        )

    def status(self, side: str) -> dict[str, Any]:
        return read_status(self.files[side]) or {}

    def wait_more(self, lines: int, timeout: float = 60) -> None:
        start = (self.status("inner").get("received", 0), self.status("outer").get("received", 0))

        def ok() -> bool:
            bad = self.status("inner").get("errors", []) + self.status("outer").get("errors", [])
            if bad:
                raise LabError(f"the forwarded stream broke: {bad}")
            i, o = self.status("inner").get("received", 0), self.status("outer").get("received", 0)
            return i >= start[0] + lines and o >= start[1] + lines

        wait_for(f"{lines} more lines through the forward", ok, timeout)

    def stop(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self.lab.stop("fwd-outer", signal.SIGTERM)
        self.lab.stop("fwd-inner", signal.SIGTERM)
        return self.status("outer"), self.status("inner")


def fwd_entry(table: dict[tuple[Any, ...], tuple[Any, ...]]) -> tuple[Any, ...]:
    ((orig, (reply, state, status)),) = [
        (o, v) for o, v in table.items() if o[1] == PUBLIC and o[3] == FWD_PORT
    ]
    assert orig[0] == SERVER_IP
    assert reply[0] == CLIENT_IP and reply[2] == INNER_PORT and reply[1] == SERVER_IP
    assert status & 0x20 and state == "ESTABLISHED"  # IPS_DST_NAT
    return (orig, reply)


@pytest.mark.parametrize("backend", ["netfilterqueue", "netlink"])
def test_port_forward_survives_failover(lab: Lab, backend: str) -> None:
    start(lab, "fw-a", "active", **queue_opts(backend))
    start(lab, "fw-b", "passive", **queue_opts(backend))
    fwd = Inbound(lab)
    fwd.wait_more(100)
    binding = fwd_entry(wait_tables_agree(lab, "fw-a", "fw-b"))

    fail(lab, "fw-a")
    promote(lab, "fw-b")
    fwd.wait_more(200)
    assert fwd_entry(tcp_entries(lab, "fw-b")) == binding
    outer, inner = fwd.stop()
    assert outer["errors"] == [] and inner["errors"] == []
    assert outer["state"] == "closed" and inner["state"] == "closed"
    assert outer["received"] == inner["sent"] and inner["received"] == outer["sent"]


# ---------------------------------------------------------------------------- ct_sync


@pytest.mark.parametrize("mode", ["concurrent", "replicate"])
def test_restarted_passive_gets_the_bindings_by_init_sync(lab: Lab, mode: str) -> None:
    """fw-b restarts under NATed traffic: it missed every handshake, so it can hold the
    bindings only from ct_sync's init sync (records carry the reply tuple); then fw-a dies
    and fw-b carries the outbound sessions and the forward on. In replicate mode fw-b does
    not track the wire at all: every binding it holds came from fw-a's stream."""
    start(lab, "fw-a", "active", sync=mode)
    start(lab, "fw-b", "passive", sync=mode)
    sessions = Sessions(lab, 3)
    fwd = Inbound(lab)
    sessions.wait_more(20)
    fwd.wait_more(50)
    lab.stop("fw-b", signal.SIGTERM)  # its table is gone with the process
    sessions.wait_more(10)
    start(lab, "fw-b", "passive", sync=mode)  # returns once ready: init sync done
    table = wait_tables_agree(lab, "fw-a", "fw-b")
    assert_snat(table, sessions.ports)
    binding = fwd_entry(table)
    sync = lab.control("fw-b", "status")["sync"]
    assert sync["counters"]["walks_received"] >= 1

    fail(lab, "fw-a")
    promote(lab, "fw-b")
    sessions.wait_more(60)
    fwd.wait_more(200)
    after = tcp_entries(lab, "fw-b")
    for orig, (reply, _s, _st) in table.items():
        if orig in after:
            assert after[orig][0] == reply
    assert fwd_entry(after) == binding
    sessions.assert_intact(sessions.stop())
    outer, inner = fwd.stop()
    assert outer["errors"] == [] and inner["errors"] == []
    assert outer["received"] == inner["sent"] and inner["received"] == outer["sent"]


# ---------------------------------------------------------------------------- ICMP errors

REFUSED = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("{SERVER_IP}", 9))  # nothing listens there: the server answers port unreachable
s.settimeout(5)
for _ in range(3):
    s.send(b"pmct-nat-icmp")
    try:
        s.recv(100)
    except ConnectionRefusedError:
        print("refused", s.getsockname()[1])
        break
    except TimeoutError:
        continue
else:
    print("no error")
"""


def test_icmp_error_for_a_natted_flow_is_translated_back(lab: Lab) -> None:
    """The server's port unreachable goes to the public address and quotes the SNATed
    datagram; fw-a translates outer and quoted headers back, so the client's connected UDP
    socket sees ECONNREFUSED (the kernel matches the quote against the socket's own tuple)."""
    start(lab, "fw-a", "active", strict=False)  # any new connection from the LAN: UDP too
    cap = Capture(lab, "ws")
    p = lab.sh("client", [sys.executable, "-c", REFUSED], check=False, timeout=30)
    assert p.stdout.startswith("refused"), (p.stdout, p.stderr)

    def unreachables() -> list[dpkt.ip.IP]:
        try:  # tcpdump -U writes every frame at once; a loaded host may lag a little
            with open(cap.file, "rb") as f:
                frames = [bytes(buf) for _ts, buf in dpkt.pcap.Reader(f)]
        except (OSError, ValueError, dpkt.NeedData):
            return []
        return [
            ip
            for ip in ipv4_frames(frames)
            if isinstance(ip.data, dpkt.icmp.ICMP) and ip.data.type == 3
        ]

    wait_for("the server's port unreachable in the capture", unreachables, 10)
    cap.stop()
    errors = unreachables()
    assert errors and all(dpkt.utils.inet_to_str(ip.dst) == PUBLIC for ip in errors)
    quoted = errors[0].data.data.data  # the datagram the server received: the SNATed one
    assert dpkt.utils.inet_to_str(quoted.src) == PUBLIC
    st = lab.control("fw-a", "status")
    assert st["ctstates"]["related"] >= 1
