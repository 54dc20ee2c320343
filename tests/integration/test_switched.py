"""Switched ethernet: the cluster multicast MAC (``cluster.mode = "multicast-mac"``) on learning
bridges (ageing 300 s), where a shared unicast MAC would leave the passive node blind.

* Config checks and frame/rule builders for the mode (no root needed).
* Tables equal: TCP, UDP, ICMP (and an ICMP error) through fw-a on the switches; fw-b tracks
  the same table and sends nothing. The switches really learn (the firewalls' own MACs are in
  their forwarding databases) and never learn the cluster MACs (so they flood them), and
  the neighbours resolved the cluster addresses to the multicast MACs.
* Failover: the counter stream survives fw-a's death and ``pmct promote`` on fw-b.
* Control: the hub set-up (one shared unicast MAC) on the same learning switches: the
  switch learns the shared MAC on fw-a's port and fw-b never sees the stream, which shows
  that the tests above measure the switched mode and not a flooding bridge.
* Stop: the joined multicast MAC and its nft tables are gone when pmct stops.

(The keepalived failover on the switches: test_keepalived.py, lab parameter "switch".)
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator

import dpkt
import pytest

from pmct.config import parse_config
from pmct.errors import ConfigError
from pmct.lab.scenario import (
    Capture,
    Stream,
    conntrack_entries,
    pmct_cli,
    probe,
    table_key,
)
from pmct.lab.topology import (
    LAN_GW,
    LAN_MCAST_MAC,
    SERVER_IP,
    WAN_GW,
    WAN_MCAST_MAC,
    Lab,
)
from pmct.node.netfilter import ClusterMac
from pmct.node.netlink import arp_announcement

PORT = 5555
BASE = '[interfaces]\ndata = ["lan0", "wan0"]\n'


# ---------------------------------------------------------------------------- no root


def test_config_multicast_mac_mode() -> None:
    cfg = parse_config(
        BASE + '[cluster]\nmode = "multicast-mac"\n'
        '[cluster.interface.lan0]\nmac = "03:00:00:C1:00:01"\naddresses = ["198.18.1.1/24"]\n'
    )
    assert cfg.cluster.mode == "multicast-mac"
    lan = cfg.cluster.interface("lan0")
    assert lan is not None and lan.mac == "03:00:00:c1:00:01"
    assert parse_config(BASE).cluster.mode == "hub"  # the default


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[cluster]\nmode = "switch"\n',
            "cluster.mode: must be one of 'hub', 'multicast-mac', not 'switch'",
        ),
        (
            '[cluster]\nmode = "multicast-mac"\n'
            '[cluster.interface.lan0]\nmac = "02:00:00:c1:00:01"\n',
            "cluster.interface.lan0.mac: must be a multicast MAC",
        ),
        (
            '[cluster.interface.lan0]\nmac = "03:00:00:c1:00:01"\n',
            'a multicast cluster MAC needs "multicast-mac"',
        ),
        (
            '[cluster]\nmode = "multicast-mac"\n[cluster.interface.lan0]\n'
            'mac = "03:00:00:c1:00:01"\naddresses = ["2001:db8::1/64"]\n',
            "cluster.interface.lan0.addresses[0]: IPv6 cluster addresses need",
        ),
        (
            '[cluster]\nmode = "multicast-mac"\n[cluster.interface.lan0]\n'
            'addresses = ["198.18.1.1/24"]\n',
            'cluster.interface.lan0: needs a mac with cluster.mode = "multicast-mac"',
        ),
    ],
)
def test_config_multicast_mac_mode_errors(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + text, "t.toml")
    assert error in str(e.value)


def test_cluster_mac_rules_and_announcement() -> None:
    script = ClusterMac("lan0.5", "03:00:00:C1:00:01").script()
    # the rules name the interface and the MAC; the tables a valid nft identifier
    assert 'hook ingress device "lan0.5"' in script
    assert "ether daddr 03:00:00:c1:00:01 meta pkttype set host" in script
    assert 'oifname "lan0.5" arp saddr ether set 03:00:00:c1:00:01' in script
    assert "table netdev pmct_cmac_lan0_5 " in script and "table arp pmct_cmac_lan0_5 " in script
    # the gratuitous ARP names the cluster MAC but leaves from the node's own MAC
    eth = dpkt.ethernet.Ethernet(arp_announcement(LAN_MCAST_MAC, LAN_GW, "02:aa:bb:cc:dd:ee"))
    assert eth.src == bytes.fromhex("02aabbccddee") and eth.dst == b"\xff" * 6
    assert eth.data.sha == bytes.fromhex("030000c10001")


# ---------------------------------------------------------------------------- in the lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(switched=True)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture
def hub_config_lab() -> Iterator[Lab]:
    """The hub set-up (shared unicast MAC) on learning bridges: the measured failure mode."""
    lab = Lab()
    try:
        lab.up()
        for br in ("br-lan", "br-wan"):
            lab.ip("hub", "link", "set", br, "type", "bridge", "ageing_time", "30000")
        yield lab
    finally:
        lab.down()


def fdb(lab: Lab) -> dict[str, str]:
    """The switches' learned MACs: MAC -> port."""
    out = json.loads(lab.sh("hub", ["bridge", "-j", "fdb", "show", "dynamic"]).stdout)
    return {e["mac"]: e["ifname"] for e in out if e.get("master")}


def own_mac(lab: Lab, fw: str, dev: str) -> str:
    return str(json.loads(lab.sh(fw, ["ip", "-j", "link", "show", dev]).stdout)[0]["address"])


def neighbour(lab: Lab, node: str, ip: str) -> str | None:
    for e in json.loads(lab.sh(node, ["ip", "-j", "neigh", "show", ip]).stdout):
        return e.get("lladdr")
    return None


def stream_entry(lab: Lab, fw: str) -> dict[str, object] | None:
    for e in conntrack_entries(lab, fw):
        if e["proto"] == "tcp" and e["orig"][3] == PORT:
            return e
    return None


@pytest.mark.netns
@pytest.mark.slow
def test_switch_tables_equal_and_the_passive_node_is_silent(lab: Lab) -> None:
    lab.start_node("fw-a", role="active")
    lab.start_node("fw-b", role="passive")
    lab.start(
        "udp-echo", "server", [sys.executable, "-m", "pmct.lab.probe", "udp-echo", "--port", "7"]
    )
    rx_before = {p: lab.port_rx(p) for p in ("lb", "wb")}
    caps = [Capture(lab, "lb"), Capture(lab, "wb")]

    stream = Stream(lab, port=PORT)
    stream.wait_received(150, 150, timeout=30)
    client, server = stream.stop()
    assert (client["errors"], server["errors"]) == ([], [])
    assert (client["state"], server["state"]) == ("closed", "closed")
    udp = probe(lab, "client", "udp", SERVER_IP, "7")
    assert udp.returncode == 0, udp.stdout + udp.stderr
    ping = probe(lab, "client", "ping", SERVER_IP, "-c", "3")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    refused = probe(lab, "client", "udp-refused", SERVER_IP, "9")
    assert refused.returncode == 0, refused.stdout + refused.stderr

    frames = [f for c in caps for f in c.stop()]
    assert frames == []
    assert {p: lab.port_rx(p) for p in ("lb", "wb")} == rx_before

    # learning switches: fw-a's own MACs learned on its ports, the cluster MACs never (so
    # frames to them are flooded to both firewalls); neighbours use the cluster MACs
    learned = fdb(lab)
    assert learned.get(own_mac(lab, "fw-a", "lan0")) == "la"
    assert learned.get(own_mac(lab, "fw-a", "wan0")) == "wa"
    assert LAN_MCAST_MAC not in learned and WAN_MCAST_MAC not in learned
    assert neighbour(lab, "client", LAN_GW) == LAN_MCAST_MAC
    assert neighbour(lab, "server", WAN_GW) == WAN_MCAST_MAC

    a = conntrack_entries(lab, "fw-a")
    b = conntrack_entries(lab, "fw-b")
    assert sorted(map(table_key, a)) == sorted(map(table_key, b))
    assert {"tcp", "udp", "icmp"} <= {e["proto"] for e in a}
    st_a = lab.control("fw-a", "status")
    st_b = lab.control("fw-b", "status")
    assert st_a["ctstates"]["related"] >= 1  # the port unreachable
    # fw-b also sees the IPv6 ND/MLD fw-a's own stack sends (never queued on fw-a)
    del st_a["ctstates"]["untracked"], st_b["ctstates"]["untracked"]
    assert st_a["ctstates"] == st_b["ctstates"]
    assert st_b["verdicts"]["accept"] == 0


@pytest.mark.netns
@pytest.mark.slow
def test_switch_failover_keeps_an_established_tcp_stream(lab: Lab) -> None:
    lab.start_node("fw-a", role="active", strict=True, tcp_loose=False)
    lab.start_node("fw-b", role="passive", strict=True, tcp_loose=False)
    stream = Stream(lab, port=PORT)
    stream.wait_received(100, 100, timeout=30)
    entry = stream_entry(lab, "fw-b")
    assert entry is not None and entry["state"] == "ESTABLISHED"

    lab.stop("fw-a", signal.SIGKILL)
    lab.links_down("fw-a")
    c0, s0 = stream.received()
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    stream.wait_received(c0 + 200, s0 + 200, timeout=60)
    assert lab.control("fw-b", "status")["verdicts"]["accept"] > 0
    learned = fdb(lab)
    assert learned.get(own_mac(lab, "fw-b", "wan0")) == "wb"  # fw-b forwards now
    assert LAN_MCAST_MAC not in learned and WAN_MCAST_MAC not in learned

    client, server = stream.stop()
    assert client["errors"] == [] and server["errors"] == []
    assert client["state"] == "closed" and server["state"] == "closed"
    assert client["received"] == server["sent"] and server["received"] == client["sent"]
    print(
        f"switch failover: longest silence seen by the client {client['rx_gap_max']} s, "
        f"by the server {server['rx_gap_max']} s"
    )


@pytest.mark.netns
@pytest.mark.slow
def test_control_a_shared_unicast_mac_on_a_switch_blinds_the_passive_node(
    hub_config_lab: Lab,
) -> None:
    lab = hub_config_lab
    lab.start_node("fw-a", role="active")
    lab.start_node("fw-b", role="passive")
    stream = Stream(lab, port=PORT)
    stream.wait_received(150, 150, timeout=30)
    assert stream_entry(lab, "fw-a") is not None
    assert stream_entry(lab, "fw-b") is None  # the switch sends it all to fw-a's port
    learned = fdb(lab)
    assert learned.get("02:00:00:c1:00:01") == "la"  # the shared MAC, learned on fw-a's port
    client, server = stream.stop()
    assert client["errors"] == [] and server["errors"] == []


@pytest.mark.netns
@pytest.mark.slow
def test_stop_removes_the_cluster_mac(lab: Lab) -> None:
    def snapshot() -> tuple[str, str, str]:
        maddr = lab.sh("fw-b", ["ip", "maddr", "show"]).stdout
        return (
            " ".join(w for w in maddr.split() if w.startswith("03:00:00:c1")),
            "pmct_" if "pmct_" in lab.sh("fw-b", ["nft", "list", "ruleset"]).stdout else "",
            own_mac(lab, "fw-b", "lan0"),
        )

    before = snapshot()
    assert before[:2] == ("", "")
    lab.start_node("fw-b", role="passive")
    during = snapshot()
    assert LAN_MCAST_MAC in during[0] and WAN_MCAST_MAC in during[0]
    assert during[1] == "pmct_" and during[2] == before[2]  # own MAC kept
    lab.stop("fw-b")
    assert snapshot() == before
