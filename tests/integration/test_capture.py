"""The passive node's packet ring against the real kernel: what the BPF filter lets in.

A namespace with two veth pairs (data interface ``d0`` and a non-data ``x0``); frames are
sent from the peers with AF_PACKET, so their destination MAC, protocol and interface are
chosen exactly. The ring must hold the IPv4/IPv6 frames for this host, broadcast and
multicast on ``d0``, and nothing else. Namespace deleted in the fixture's finally.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.netns]

NS = f"pmct-cap-{os.getpid()}"

SCRIPT = textwrap.dedent(
    """
    import json, socket, struct, sys, time
    sys.path.insert(0, sys.argv[1])
    from pmct.config import parse_config
    from pmct.conntrack.core import Engine
    from pmct.node.capture import RingCapture
    from pmct.node.datapath import Datapath
    from pmct.node.policy import CTSTATE_MARK_BITS

    ipv6 = sys.argv[2] == "1"
    seen = []
    def decide(ct, d, ifname, data, oif):
        seen.append([ifname, data[-8:].decode(errors="replace")])
        return 0
    d0, x0 = socket.if_nametoindex("d0"), socket.if_nametoindex("x0")
    dp = Datapath(Engine(parse_config("").conntrack), decide, {d0: "d0", x0: "x0"},
                  ctstate_bits=CTSTATE_MARK_BITS)
    dp.active = True
    ring = RingCapture([d0], ipv6=ipv6, size=4 << 20)
    own = bytes.fromhex(open("/sys/class/net/d0/address").read().strip().replace(":", ""))

    def ip4(tag):
        body = b"\\x00\\x35\\x00\\x35" + struct.pack("!H", 16) + b"\\x00\\x00" + tag
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
                        bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
        s = sum(struct.unpack("!10H", h))
        s = (s & 0xFFFF) + (s >> 16); s = (s & 0xFFFF) + (s >> 16)
        return h[:10] + struct.pack("!H", ~s & 0xFFFF) + h[12:] + body

    def ip6(tag):
        body = b"\\x00\\x35\\x00\\x35" + struct.pack("!H", 16) + b"\\x00\\x00" + tag
        a, b = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
        return struct.pack("!IHBB", 0x60000000, len(body), 17, 64) + a + b + body

    frames = [  # (sending peer, destination MAC, ethertype, datagram)
        ("p0", own, 0x0800, ip4(b"host-v4_")),
        ("p0", b"\\xff" * 6, 0x0800, ip4(b"bcast-v4")),
        ("p0", bytes.fromhex("01005e000001"), 0x0800, ip4(b"mcast-v4")),
        ("p0", own, 0x86DD, ip6(b"host-v6_")),
        ("p0", bytes.fromhex("020000000099"), 0x0800, ip4(b"other-v4")),  # PACKET_OTHERHOST
        ("p0", own, 0x0806, b"\\x00" * 20 + b"arp-arp_"),
        ("y0", own, 0x0800, ip4(b"not-data")),  # x0 is not a data interface
    ]
    for dev in ("d0", "p0", "x0", "y0"):  # a veth drops what it sends before carrier is up
        while open(f"/sys/class/net/{dev}/operstate").read().strip() != "up":
            time.sleep(0.01)
    for peer, dst, etype, payload in frames:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((peer, 0))
        s.send(dst + b"\\x02\\x00\\x00\\x00\\x00\\x01" + struct.pack("!H", etype) + payload)
        s.close()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(seen) < 4:
        ring.drain(dp)
        time.sleep(0.01)
    time.sleep(0.05)
    ring.drain(dp)
    st = ring.stats()
    ring.close()
    print(json.dumps({"seen": seen, "stats": st, "packets": dp.packets, "errors": dp.errors}))
    """
)


@pytest.fixture
def ns() -> Iterator[str]:
    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", NS, *args], check=True)

    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ip("link", "add", "d0", "type", "veth", "peer", "name", "p0")
        ip("link", "add", "x0", "type", "veth", "peer", "name", "y0")
        for dev in ("d0", "p0", "x0", "y0", "lo"):
            ip("link", "set", dev, "up")
        # multicast 224.0.0.1 is joined by every host: d0 receives its MAC as PACKET_MULTICAST
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


@pytest.mark.parametrize("ipv6", [True, False])
def test_the_ring_holds_what_the_ip_stack_of_a_data_interface_would_take(
    ns: str, ipv6: bool
) -> None:
    import json

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, repo, "1" if ipv6 else "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    want = [["d0", "host-v4_"], ["d0", "bcast-v4"], ["d0", "mcast-v4"]]
    if ipv6:
        want.append(["d0", "host-v6_"])
    # the peers' own IPv6 ND/MLD after link-up may come too (multicast for d0): not ours
    tags = {"host-v4_", "bcast-v4", "mcast-v4", "host-v6_", "other-v4", "arp-arp_", "not-data"}
    assert [s for s in out["seen"] if s[1] in tags] == want
    assert out["stats"]["drops"] == 0 and out["stats"]["errors"] == 0, out
    assert out["packets"] == out["stats"]["packets"] == len(out["seen"])
