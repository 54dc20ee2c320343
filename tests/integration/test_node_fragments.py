"""Fragmented datagrams through the pair (netfilter.py PMCT_DEFRAG).

nf_conntrack never sees a fragment: nf_defrag reassembles first and the forward path
refragments. pmct's queue rules must give the queue the same whole datagrams, which needs the
kernel's defrag enabled in the namespace (``CT --notrack`` does not enable it). Without it
every fragment reached pmct alone, was held by the engine and dropped by the default policy:
``ping -s 3000`` through the pair failed. Here echoes of 3,000 to 30,000 bytes (2 to 21
fragments each way) pass through fw-a, fw-b tracks the same ICMP entry from the same whole
datagrams and stays silent, and the control (the defrag chain flushed on fw-a) shows the
fragments held again and the echo lost.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pmct.lab.scenario import conntrack_entries, queue_opts, table_key
from pmct.lab.topology import SERVER_IP, Lab

pytestmark = [pytest.mark.netns]

SIZES = (3000, 8000, 30000)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def ping(lab: Lab, size: int, count: int = 2) -> bool:
    p = lab.sh(
        "client", ["ping", "-c", str(count), "-W", "2", "-s", str(size), SERVER_IP], check=False
    )
    return p.returncode == 0


@pytest.mark.parametrize("passive", ["netlink", "netlink-passive-queue"])
def test_fragmented_echoes_pass_and_both_nodes_track_them(lab: Lab, passive: str) -> None:
    lab.start_node("fw-a", role="active", **queue_opts("netlink"))
    lab.start_node("fw-b", role="passive", **queue_opts(passive))
    rx_b = lab.port_rx("lb") + lab.port_rx("wb")
    for size in SIZES:
        assert ping(lab, size), f"ping -s {size} through fw-a"
    for fw in ("fw-a", "fw-b"):
        st = lab.control(fw, "status")
        if fw == "fw-b" and passive == "netlink":
            # the packet ring (capture.py) taps the wire before nf_defrag: the engine's own
            # defragmenter holds the fragments and tracks the reassembled datagram
            assert st["ctstates"]["frag"] > 0
        else:
            assert st["ctstates"]["frag"] == 0, fw  # the queue saw whole datagrams only
        assert st["errors"] == {"callback": 0, "unparsed": 0}, fw
    a = sorted(map(table_key, conntrack_entries(lab, "fw-a")))
    b = sorted(map(table_key, conntrack_entries(lab, "fw-b")))
    assert a == b and any(k[0] == "icmp" for k in a)
    assert lab.port_rx("lb") + lab.port_rx("wb") == rx_b  # the passive stayed silent

    # control: without the kernel's defrag the fragments reach pmct one by one again
    for tool in ("iptables", "ip6tables"):
        lab.sh("fw-a", [tool, "-w", "-t", "raw", "-F", "PMCT_DEFRAG"])
    assert not ping(lab, 8000, count=1)
    assert lab.control("fw-a", "status")["ctstates"]["frag"] > 0


def queue_total(lab: Lab, fw: str) -> int:
    """Packets the kernel holds for pmct now (/proc/net/netfilter/nfnetlink_queue field 3)."""
    out = lab.sh(fw, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout.split()
    return int(out[2])


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_netfilterqueue_judges_what_fits_and_never_strands_a_bigger_datagram(
    lab: Lab, fail: str
) -> None:
    """netfilterqueue copies at most MAX_COPY_RANGE bytes into its 4 KB buffer: a reassembled
    datagram up to that size is tracked like any other; a bigger one arrives truncated and
    gets the fail-mode verdict, counted as unparsed. Before the range was lowered, its message
    did not fit the buffer, never got a verdict and stayed queued for good."""
    lab.start_node("fw-a", role="active", fail=fail, **queue_opts("netfilterqueue"))
    assert ping(lab, 3000)
    assert lab.control("fw-a", "status")["errors"]["unparsed"] == 0
    assert ping(lab, 8000, count=1) is (fail == "open")
    st = lab.control("fw-a", "status")
    assert st["errors"]["unparsed"] >= 1
    assert queue_total(lab, "fw-a") == 0  # every queued packet got its verdict
