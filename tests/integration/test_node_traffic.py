"""End to end through the lab: TCP, UDP, ICMP cross fw-a; passive fw-b tracks the same table
and sends nothing on the shared segments; promote/demote and the state file; reject.

Real kernel, real NFQUEUE, network namespaces (marker netns; root). Every process is stopped
by pid and every namespace deleted by Lab.down() in the fixture's finally.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from pmct.lab.scenario import (
    Capture,
    Stream,
    conntrack_entries,
    pmct_cli,
    probe,
    queue_opts,
    table_key,
    wait_for,
)
from pmct.lab.topology import SERVER_IP, Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

BODY = 300_000  # bytes the HTTP server answers: a few hundred segments


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(params=["netfilterqueue", "netlink", "netlink-gso", "netlink-passive-queue"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_servers(lab: Lab) -> None:
    lab.start(
        "http",
        "server",
        [sys.executable, "-m", "pmct.lab.probe", "http", "--bind", SERVER_IP, "--size", str(BODY)],
    )
    lab.start(
        "udp-echo", "server", [sys.executable, "-m", "pmct.lab.probe", "udp-echo", "--port", "7"]
    )


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def curl(lab: Lab, path: str = "/") -> tuple[int, int]:
    p = lab.sh(
        "client",
        [
            "curl",
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            f"http://{SERVER_IP}:8080{path}",
        ],
        check=False,
    )
    code, _, size = p.stdout.partition(" ")
    return int(code or 0), int(size or 0)


def test_traffic_through_fw_a_and_fw_b_tracks_the_same_table_silently(
    lab: Lab, backend: str
) -> None:
    lab.start_node("fw-a", role="active", **queue_opts(backend))
    lab.start_node("fw-b", role="passive", **queue_opts(backend))
    start_servers(lab)
    rx_before = {p: lab.port_rx(p) for p in ("lb", "wb")}
    caps = [Capture(lab, "lb"), Capture(lab, "wb")]

    # TCP: HTTP with curl, several times
    wait_for("the HTTP server", lambda: curl(lab)[0] == 200, 15, poll=0.2)
    for i in range(3):
        assert curl(lab, f"/{i}") == (200, BODY)
    # TCP: a long stream, closed cleanly afterwards
    stream = Stream(lab, port=5555)
    stream.wait_received(150, 150, timeout=30)
    client, server = stream.stop()
    assert (client["errors"], server["errors"]) == ([], [])
    assert (client["state"], server["state"]) == ("closed", "closed")
    # UDP request/reply, ICMP echo, and an ICMP error (port unreachable, RELATED)
    udp = probe(lab, "client", "udp", SERVER_IP, "7")
    assert udp.returncode == 0, udp.stdout + udp.stderr
    ping = probe(lab, "client", "ping", SERVER_IP, "-c", "3")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    refused = probe(lab, "client", "udp-refused", SERVER_IP, "9")
    assert refused.returncode == 0, refused.stdout + refused.stderr

    # The passive node put nothing on either shared segment, by capture and by counter.
    frames = [f for c in caps for f in c.stop()]
    assert frames == []
    assert {p: lab.port_rx(p) for p in ("lb", "wb")} == rx_before

    # Both nodes saw the same packets: same connections, same states, same status bits.
    a = conntrack_entries(lab, "fw-a")
    b = conntrack_entries(lab, "fw-b")
    assert sorted(map(table_key, a)) == sorted(map(table_key, b))
    protos = {e["proto"] for e in a}
    assert {"tcp", "udp", "icmp"} <= protos
    ports = {e["orig"][3] for e in a if e["proto"] == "tcp"}
    assert {8080, 5555} <= ports
    st_a = lab.control("fw-a", "status")
    st_b = lab.control("fw-b", "status")
    assert st_a["ctstates"]["related"] >= 1  # the port unreachable
    # Same verdicts, except "untracked": fw-b also sees the IPv6 ND/MLD that fw-a's own stack
    # sends on the segment (locally generated, so fw-a never queues it).
    del st_a["ctstates"]["untracked"], st_b["ctstates"]["untracked"]
    if backend in ("netfilterqueue", "netlink"):
        # fw-a's queue segments GSO super-packets (queue.gso off); fw-b's packet ring sees
        # them whole, as they crossed the hub: fewer ESTABLISHED packets, the same otherwise.
        est_a, est_b = st_a["ctstates"].pop("established"), st_b["ctstates"].pop("established")
        assert 0 < est_b <= est_a
        assert st_b["queue"]["ring"]["packets"] == st_b["packets"]["total"]
        assert st_b["queue"]["ring"]["drops"] == 0
    assert st_a["ctstates"] == st_b["ctstates"]
    assert st_a["verdicts"]["accept"] > 0 and st_a["errors"] == {"callback": 0, "unparsed": 0}
    assert st_b["verdicts"]["accept"] == 0 and st_b["verdicts"]["drop"] == st_b["packets"]["total"]


def test_promote_demote_state_file_and_cli(lab: Lab) -> None:
    lab.start_node("fw-a", role="active")
    lab.start_node("fw-b", role="passive")
    start_servers(lab)
    wait_for("the HTTP server", lambda: curl(lab)[0] == 200, 15, poll=0.2)
    role_a = f"{lab.run_dir}/fw-a/role"
    role_b = f"{lab.run_dir}/fw-b/role"
    assert (read(role_a), read(role_b)) == ("active\n", "passive\n")

    # swap through the CLI
    p = pmct_cli("demote", "-s", lab.socket("fw-a"))
    assert p.returncode == 0 and p.stdout.strip() == "passive", p.stderr
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    assert p.returncode == 0 and p.stdout.strip() == "active", p.stderr
    assert curl(lab) == (200, BODY)
    assert lab.control("fw-b", "status")["verdicts"]["accept"] > 0
    # and back through the state files, the way a cluster manager would
    with open(role_b, "w") as f:
        f.write("0\n")
    with open(role_a, "w") as f:
        f.write("1\n")
    wait_for("fw-a active", lambda: read(role_a) == "active\n", 5)
    wait_for("fw-b passive", lambda: read(role_b) == "passive\n", 5)
    assert curl(lab) == (200, BODY)

    # status in both formats
    p = pmct_cli("status", "--json", "-s", lab.socket("fw-a"))
    st = json.loads(p.stdout)
    assert st["role"] == "active" and st["role_changes"] == 2
    p = pmct_cli("status", "-s", lab.socket("fw-b"))
    assert p.stdout.startswith("pmct fw-b: passive")
    p = pmct_cli("status", "--ready", "-s", lab.socket("fw-b"))
    assert p.returncode == 0
    p = pmct_cli("conntrack", "-L", "-s", lab.socket("fw-a"))
    assert "dport=8080" in p.stdout and "TIME_WAIT" in p.stdout
    p = pmct_cli("conntrack", "-S", "-s", lab.socket("fw-a"))
    assert p.stdout.startswith("cpu=0") and "insert=" in p.stdout


def test_stop_removes_everything_it_installed(lab: Lab) -> None:
    def snapshot(fw: str) -> dict[str, object]:
        """What pmct may change on the data interfaces: MAC, flags, non-link-local addresses,
        forwarding; and the rules."""
        links = json.loads(lab.sh(fw, ["ip", "-j", "addr"]).stdout)
        out: dict[str, object] = {}
        for link in links:
            if link["ifname"] in ("lan0", "wan0"):
                addrs = sorted(
                    f"{a['local']}/{a['prefixlen']}"
                    for a in link.get("addr_info", [])
                    if a.get("scope") != "link"
                )
                fwd = lab.sh(fw, ["sysctl", "-n", f"net.ipv4.conf.{link['ifname']}.forwarding"])
                out[link["ifname"]] = (
                    link["address"],
                    "PROMISC" in link["flags"],
                    addrs,
                    fwd.stdout.strip(),
                )
        out["nft"] = "pmct_silence" in lab.sh(fw, ["nft", "list", "ruleset"]).stdout
        out["iptables"] = "PMCT" in lab.sh(fw, ["iptables-save"]).stdout
        out["ip6tables"] = "PMCT" in lab.sh(fw, ["ip6tables-save"]).stdout
        return out

    before = snapshot("fw-b")
    lab.start_node("fw-b", role="passive")
    during = snapshot("fw-b")
    assert during["lan0"] == ("02:00:00:c1:00:01", True, ["198.18.1.1/24"], "0")
    assert during["nft"] and during["iptables"] and during["ip6tables"]
    assert lab.stop("fw-b") == 0  # SIGTERM: a clean exit
    assert snapshot("fw-b") == before
    assert not before["nft"] and not before["iptables"]


def test_reject_and_fail_closed(lab: Lab, backend: str) -> None:
    extra = '[[policy.rule]]\nctstate = "new"\nin = "wan0"\nproto = "tcp"\naction = "reject"\n'
    lab.start_node("fw-a", role="active", fail="closed", extra=extra, **queue_opts(backend))
    # nothing new from the WAN: the client has no listener, but the firewall answers first
    p = lab.sh(
        "server",
        ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://198.18.1.2:80/"],
        check=False,
    )
    assert p.returncode == 7  # "Failed to connect": a RST came back, no 5 s timeout (code 28)
    st = lab.control("fw-a", "status")
    assert st["verdicts"]["reject"] >= 1
    assert "NFQUEUE --queue-num 0" in lab.sh("fw-a", ["iptables-save"]).stdout
    assert "--queue-bypass" not in lab.sh("fw-a", ["iptables-save"]).stdout


def test_metrics_port_and_live_events(lab: Lab) -> None:
    lab.start_node("fw-a", role="active", extra='[metrics]\nlisten = "127.0.0.1:9468"\n')
    start_servers(lab)
    lab.start(
        "events",
        "client",
        [sys.executable, "-m", "pmct", "conntrack", "-E", "-s", lab.socket("fw-a")],
    )
    wait_for("the HTTP server", lambda: curl(lab)[0] == 200, 15, poll=0.2)
    wait_for(
        "the event subscriber",
        lambda: lab.control("fw-a", "status")["event_subscribers"] == 1,
        10,
    )
    assert curl(lab) == (200, BODY)
    wait_for("[UPDATE] events", lambda: "TIME_WAIT" in lab.log_text("events"), 10)
    log = lab.log_text("events")
    assert "    [NEW] tcp      6 120 SYN_SENT src=198.18.1.2 dst=198.18.2.2" in log
    assert "ESTABLISHED" in log
    p = lab.sh("fw-a", ["curl", "-s", "-m", "5", "http://127.0.0.1:9468/metrics"])
    assert "# TYPE pmct_nf_conntrack_entries gauge" in p.stdout
    assert 'pmct_role{node="fw-a",role="active"} 1' in p.stdout
    assert 'pmct_connections{node="fw-a",protocol="tcp",state="TIME_WAIT"}' in p.stdout
