"""``pmct lab demo``: the failover story, told step by step for someone seeing pmct first.

A TCP stream (a counter line every 10 ms in both directions) runs from the client through
fw-a to the server. fw-a dies. ``pmct promote`` makes fw-b active, and because fw-b tracked
every packet while it was passive, the strict ruleset lets the stream's packets through: the
counter goes on, with no reset and no lost or duplicated line. Then the control: the same
with a fw-b that started after the stream began (so it missed the handshake) cuts the stream.

Everything runs in throw-away namespaces that are deleted at the end, also on Ctrl-C.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from pmct.lab.scenario import Stream, pmct_cli
from pmct.lab.topology import CLIENT_IP, SERVER_IP, Lab, LabError

__all__ = ["run_demo"]

PORT = 5555


def _say(text: str = "") -> None:
    print(text, flush=True)


def _table(lab: Lab, fw: str, port: int = PORT) -> None:
    try:
        lines = [ln for ln in lab.control(fw, "conntrack")["lines"] if f"dport={port} " in ln]
    except Exception as e:  # a dead node is part of the story
        _say(f"      {fw}: (no answer: {e})")
        return
    if not lines:
        _say(f"      {fw}: no entry for the stream")
    for ln in lines:
        _say(f"      {fw}: {ln}")


def _watch(
    stream: Stream, seconds: float, t0: float, until: Callable[[int, int], bool] | None = None
) -> tuple[int, int]:
    """Print the counters every half second for ``seconds`` (or until ``until`` is true)."""
    end = time.monotonic() + seconds
    c = s = 0
    while True:
        c, s = stream.received()
        _say(
            f"      t={time.monotonic() - t0:5.1f}s  client has received {c:5d} lines, "
            f"server {s:5d}"
        )
        errors = stream.errors()
        if errors:
            raise LabError(f"the stream broke: {errors}")
        if (until is not None and until(c, s)) or time.monotonic() >= end:
            return c, s
        time.sleep(0.5)


def _fail_fw_a(lab: Lab) -> None:
    lab.stop("fw-a", signal.SIGKILL)
    lab.links_down("fw-a")


def _failover(lab: Lab, before: float) -> bool:
    t0 = time.monotonic()
    _say("[2] pmct starts on both firewalls: fw-a active, fw-b passive.")
    _say("    Strict ruleset on both: established/related pass, invalid is dropped, only a")
    _say("    TCP SYN from the LAN may open a connection, nothing new from the WAN;")
    _say("    tcp_loose off: no connection is picked up mid-stream.")
    lab.start_node("fw-a", role="active", strict=True, tcp_loose=False)
    lab.start_node("fw-b", role="passive", strict=True, tcp_loose=False)
    rx0 = lab.port_rx("lb") + lab.port_rx("wb")
    _say()
    _say(f"[3] A TCP stream from the client {CLIENT_IP} to the server {SERVER_IP}:{PORT}:")
    _say("    both ends send the next number every 10 ms and check every number they get.")
    stream = Stream(lab, port=PORT)
    _watch(stream, before, t0)
    _say("    Both firewalls track it; fw-b tracks it although it forwards nothing:")
    _table(lab, "fw-a")
    _table(lab, "fw-b")
    sent = lab.port_rx("lb") + lab.port_rx("wb") - rx0
    _say(f"    Frames fw-b has put on the two hubs while passive: {sent}.")
    _say()
    _say("[4] fw-a dies: its pmct is killed (SIGKILL) and its links go down.")
    _fail_fw_a(lab)
    c0, s0 = stream.received()
    _say()
    _say("[5] The cluster manager runs `pmct promote` on fw-b.")
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    _say(f"    pmct promote -> {p.stdout.strip() or p.stderr.strip()}")
    _watch(stream, 20.0, t0, until=lambda c, s: c >= c0 + 300 and s >= s0 + 300)
    client, server = stream.stop()
    _say()
    ok = (
        not client["errors"]
        and not server["errors"]
        and client["received"] == server["sent"]
        and server["received"] == client["sent"]
        and client["received"] >= c0 + 300
    )
    _say("[6] Result:")
    if ok:
        _say(
            f"    The stream survived. The client got lines 0..{client['received'] - 1} and the "
            f"server 0..{server['received'] - 1},"
        )
        _say(
            "    each exactly once and in order; no reset. The longest pause was "
            f"{max(client['rx_gap_max'], server['rx_gap_max']):.2f} s (TCP retransmission)."
        )
    else:
        _say(f"    UNEXPECTED: client {client}, server {server}")
    _say("    fw-b's table now (the stream was closed in order at the end):")
    _table(lab, "fw-b")
    st = lab.control("fw-b", "status")
    _say(
        f"    fw-b: {st['role']}, {st['packets']['total']} packets tracked, verdicts "
        f"{st['verdicts']}"
    )
    return ok and sent == 0


def _control(lab: Lab) -> bool:
    t0 = time.monotonic()
    _say("[C1] The same, but fw-b starts only after the stream began, so it never saw the")
    _say("     handshake (with tcp_loose off it cannot pick the connection up mid-way).")
    lab.start_node("fw-a", role="active", strict=True, tcp_loose=False)
    stream = Stream(lab, port=PORT + 1)
    _watch(stream, 1.5, t0)
    lab.start_node("fw-b", role="passive", strict=True, tcp_loose=False)
    _watch(stream, 1.0, t0)
    _table(lab, "fw-a", PORT + 1)
    _table(lab, "fw-b", PORT + 1)
    inval = lab.control("fw-b", "status")["ctstates"]["invalid"]
    _say(f"     fw-b has judged {inval} of the stream's packets INVALID.")
    _say("[C2] fw-a dies, fw-b is promoted.")
    _fail_fw_a(lab)
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    _say(f"     pmct promote -> {p.stdout.strip() or p.stderr.strip()}")
    time.sleep(1.0)
    c1, s1 = stream.received()
    _watch(stream, 4.0, t0)
    c2, s2 = stream.received()
    cut = (c2, s2) == (c1, s1)
    _say(
        "[C3] Result: "
        + (
            "the stream is cut: fw-b drops its packets as INVALID. So the failover above"
            " worked because fw-b had tracked the connection."
            if cut
            else f"UNEXPECTED: the stream went on ({c1}->{c2}, {s1}->{s2})"
        )
    )
    stream.stop()
    return cut


def run_demo(*, before: float = 3.0, control: bool = True) -> int:
    """The whole story; 0 if everything happened as it should."""
    _say("pmct lab demo: a TCP connection survives the death of its firewall")
    _say()
    results: list[bool] = []
    for part, fn in (("failover", _failover), ("control", _control)):
        if part == "control" and not control:
            break
        lab = Lab()
        try:
            _say(
                ("[1] " if part == "failover" else "[C0] ")
                + f"Building the lab in network namespaces {lab.prefix}-*:"
            )
            if part == "failover":
                _say("    client -- LAN hub -- fw-a, fw-b -- WAN hub -- server, and a sync link")
                _say("    fw-a/fw-b. A hub floods every frame, so both firewalls see everything.")
            lab.up()
            args: Any = (lab, before) if part == "failover" else (lab,)
            results.append(fn(*args))
        except (LabError, OSError) as e:
            _say(f"    FAILED: {e}")
            results.append(False)
        finally:
            lab.down()
        _say()
    ok = all(results)
    _say("Demo " + ("done: everything happened as described." if ok else "FAILED (see above)."))
    return 0 if ok else 1
