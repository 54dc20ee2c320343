"""ct_sync over IPv6 on the sync link: unicast (link-local with a zone, ULA) and multicast
(link-local ``ff02::`` and site-local ``ff05::`` groups joined on the sync interface).

The IPv4 address is removed from sync0 on both firewalls, so nothing but IPv6 can carry the
sync: fw-b restarts with an empty table while sessions run through fw-a, init-syncs over IPv6
(its state is SYNCED with fw-a as master -- not merely "ready" because no master was heard),
its table equals fw-a's, and a failover to it keeps the sessions. An nftables ingress counter
on each sync0 shows that ct_sync datagrams arrived over IPv6, none over IPv4, and no IPv6
fragment: the transport sizes datagrams for the interface (1452 bytes at MTU 1500).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest
from synclab import (
    PORT,
    Sessions,
    fail,
    has_sessions,
    nft,
    pmct,
    start_fw,
    status,
    sync_status,
    udp_flows,
    wait_tables_equal,
)

from pmct.lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

V4 = {"fw-a": "198.19.0.1/30", "fw-b": "198.19.0.2/30"}
LINK_LOCAL = {"fw-a": "fe80::5:1", "fw-b": "fe80::5:2"}
ULA = {"fw-a": "fd00:5c::1", "fw-b": "fd00:5c::2"}
# transport, address fw-a uses, address fw-b uses
CASES = {
    "unicast-link-local": ("unicast", LINK_LOCAL["fw-b"], f"{LINK_LOCAL['fw-a']}%sync0"),
    "unicast-ula": ("unicast", ULA["fw-b"], ULA["fw-a"]),
    "multicast-ff02": ("multicast", "ff02::5c:3780", "ff02::5c:3780"),
    "multicast-ff05": ("multicast", "ff05::5c:3780", "ff05::5c:3780"),
}


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        for fw in ("fw-a", "fw-b"):
            lab.ip(fw, "addr", "del", V4[fw], "dev", "sync0")
            lab.ip(fw, "-6", "addr", "add", f"{LINK_LOCAL[fw]}/64", "dev", "sync0", "nodad")
            lab.ip(fw, "-6", "addr", "add", f"{ULA[fw]}/64", "dev", "sync0", "nodad")
            nft(
                lab,
                fw,
                "table netdev pmcttest_v6 { chain in { type filter hook ingress device "
                f'"sync0" priority 0; meta protocol ip6 udp dport {PORT} counter; '
                f"meta protocol ip udp dport {PORT} counter; "
                "meta protocol ip6 exthdr frag exists counter; }; }\n",
            )
        yield lab
    finally:
        lab.down()


def counters(lab: Lab, fw: str) -> list[int]:
    """Packets counted by the three pmcttest_v6 rules: [IPv6 sync, IPv4 sync, IPv6 frags]."""
    p = lab.sh(fw, ["nft", "-j", "list", "table", "netdev", "pmcttest_v6"])
    out = []
    for item in json.loads(p.stdout)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                out.append(int(expr["counter"]["packets"]))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_init_sync_and_failover_over_ipv6(lab: Lab, case: str) -> None:
    transport, addr_a, addr_b = CASES[case]
    start_fw(lab, "fw-a", "active", transport=transport, address=addr_a)
    start_fw(lab, "fw-b", "passive", transport=transport, address=addr_b)
    sessions = Sessions(lab, 3)
    sessions.wait_more(20)

    lab.stop("fw-b", signal.SIGTERM)  # its table is gone with the process
    udp_flows(lab, 500)  # entries fw-b can only learn from the walk
    start_fw(lab, "fw-b", "passive", transport=transport, address=addr_b)
    sb = sync_status(lab, "fw-b")
    assert sb["state"] == "SYNCED" and sb["master"] == 1, sb  # synced, not "nobody heard"
    assert sb["address"] == [addr_b] and sb["transport"] == transport
    assert sb["counters"]["walks_received"] >= 1
    assert sb["counters"]["apply_inserted"] >= 500 + len(sessions.ports)
    wait_tables_equal(lab, "fw-a", "fw-b")
    assert has_sessions(lab, "fw-b", sessions)
    for fw in ("fw-a", "fw-b"):
        v6, v4, frags = counters(lab, fw)
        assert v6 > 0 and v4 == 0 and frags == 0, (fw, v6, v4, frags)

    fail(lab, "fw-a")
    p = pmct("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    sessions.wait_more(40)
    assert status(lab, "fw-b")["verdicts"]["accept"] > 0
    sessions.assert_intact(sessions.stop())
