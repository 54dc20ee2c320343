"""The failover test, the heart of the product, and its control.

Strict ruleset on both firewalls (only a TCP SYN from the LAN opens a connection, invalid is
dropped, nothing new from the WAN) and ``tcp_loose`` off, so a node can forward a connection
only if it tracked the connection's handshake.

* failover: a counter stream (a line every 10 ms, both ways) runs through fw-a; fw-a dies
  (daemon SIGKILLed, links down); ``pmct promote`` on fw-b; the stream goes on with no reset
  and no lost, duplicated or reordered byte (every received line is the next number).
* control: the same, but fw-b starts after the stream began, so it missed the handshake:
  after the promote the stream is cut (no line gets through any more), which proves the
  first test measures fw-b's state and not something else.

The waits are for progress with generous deadlines; nothing asserts on speed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from pmct.lab.scenario import Stream, conntrack_entries, pmct_cli, queue_opts, wait_for
from pmct.lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 5555


@pytest.fixture(params=["netfilterqueue", "netlink", "netlink-gso", "netlink-passive-queue"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every queue set-up must keep the stream (and the control must cut it)."""
    return str(request.param)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def stream_entry(lab: Lab, fw: str) -> dict[str, object] | None:
    for e in conntrack_entries(lab, fw):
        if e["proto"] == "tcp" and e["orig"][3] == PORT:
            return e
    return None


def fail_fw_a(lab: Lab) -> None:
    lab.stop("fw-a", signal.SIGKILL)  # the daemon dies: no clean-up at all
    lab.links_down("fw-a")


def test_failover_keeps_an_established_tcp_stream(lab: Lab, backend: str) -> None:
    lab.start_node("fw-a", role="active", strict=True, tcp_loose=False, **queue_opts(backend))
    lab.start_node("fw-b", role="passive", strict=True, tcp_loose=False, **queue_opts(backend))
    stream = Stream(lab, port=PORT)
    stream.wait_received(100, 100, timeout=30)
    entry = stream_entry(lab, "fw-b")
    assert entry is not None and entry["state"] == "ESTABLISHED"

    fail_fw_a(lab)
    c0, s0 = stream.received()
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr

    # at least 2 s more of the stream, in both directions, through fw-b alone
    stream.wait_received(c0 + 200, s0 + 200, timeout=60)
    client, server = stream.client(), stream.server()
    assert client["errors"] == [] and server["errors"] == []
    assert client["state"] == "open" and server["state"] == "open"
    st = lab.control("fw-b", "status")
    assert st["role"] == "active" and st["verdicts"]["accept"] > 0
    assert stream_entry(lab, "fw-b") is not None

    client, server = stream.stop()  # orderly close, checked to the last line
    assert client["errors"] == [] and server["errors"] == []
    assert client["state"] == "closed" and server["state"] == "closed"
    # nothing lost, nothing duplicated: each side received exactly what the other sent
    assert client["received"] == server["sent"] and server["received"] == client["sent"]
    print(
        f"failover: longest silence seen by the client {client['rx_gap_max']} s, "
        f"by the server {server['rx_gap_max']} s"
    )


def test_control_a_node_that_missed_the_handshake_cuts_the_stream(lab: Lab, backend: str) -> None:
    lab.start_node("fw-a", role="active", strict=True, tcp_loose=False, **queue_opts(backend))
    stream = Stream(lab, port=PORT)
    stream.wait_received(100, 100, timeout=30)
    lab.start_node("fw-b", role="passive", strict=True, tcp_loose=False, **queue_opts(backend))
    # fw-b now sees the stream mid-way: with tcp_loose off every packet is INVALID to it
    wait_for(
        "fw-b to judge the stream invalid",
        lambda: lab.control("fw-b", "status")["ctstates"]["invalid"] >= 20,
        30,
    )
    assert stream_entry(lab, "fw-b") is None

    fail_fw_a(lab)
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    drops0 = lab.control("fw-b", "status")["verdicts"]["drop"]
    # TCP keeps retransmitting into fw-b, which drops it as invalid: the stream is cut.
    wait_for(
        "fw-b to drop the retransmissions",
        lambda: lab.control("fw-b", "status")["verdicts"]["drop"] >= drops0 + 3,
        30,
    )
    c1, s1 = stream.received()
    wait_for(
        "3 s without a line",
        lambda: min(stream.client()["since_rx"], stream.server()["since_rx"]) >= 3.0,
        30,
    )
    assert stream.received() == (c1, s1)
    assert stream.client()["state"] == "open"  # cut, not closed: no RST, no FIN got through
    assert stream_entry(lab, "fw-b") is None
