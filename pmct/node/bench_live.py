"""Live benchmark: traffic through fw-a in the lab, pmct against the kernel, in one run.

``python -m pmct.node.bench_live [--seconds 5] [--json FILE]`` (root) builds the lab once per
mode and pushes iperf3 traffic from the client through fw-a to the server:

modes
    kernel      plain IPv4 forwarding on fw-a, no rules (fw-b has no addresses: it ignores
                the flooded frames)
    conntrack   kernel conntrack + a stateful iptables ruleset on fw-a (FORWARD policy DROP,
                ESTABLISHED,RELATED accept, INVALID drop, NEW from lan0 accept)
    pmct        pmct active on fw-a, pmct passive on fw-b (the lab's default ruleset),
                queue.backend = "netfilterqueue" (one verdict per packet)
    pmct-nl     the same with queue.backend = "netlink" (batch verdicts)
    pmct-gso    netlink backend with queue.gso = true (GSO super-packets queued whole)
    pmct-nl-q   pmct-nl with queue.passive_capture = "queue": fw-b reads NFQUEUE too,
                instead of a packet ring and an ingress drop (the default "ring")

traffic
    tcp         one iperf3 TCP flow, offloads on (GSO/GRO super-packets on the veths)
    tcp-nooff   the same with tso/gso/gro off on every veth in the path
    udp64       iperf3 UDP, 64-byte payloads, unlimited rate

It prints, per run: receiver Mbit/s, packets/s forwarded by fw-a (its interfaces' rx
counters), the CPU used by the pmct daemons, and for pmct how many of the packets the client
and the server put on the hubs (the hub ports' rx counters: what both firewalls should see)
each node did NOT track ("missed"). A node misses a packet when its queue is full: with
fail = "open" the kernel then lets the packet pass untracked and counts it nowhere
(nfnetlink_queue.c: NFQA_CFG_F_FAIL_OPEN skips queue_dropped), so this comparison is the only
way to see it. A few ARP frames make "missed" slightly positive even when nothing is missed.
Numbers are printed, never asserted: everything shares this machine's CPUs (measurements.md
§0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from pmct.lab.topology import LAN_GW, SERVER_IP, WAN_GW, Lab

__all__ = ["main"]

MODES = ("kernel", "conntrack", "pmct", "pmct-nl", "pmct-gso", "pmct-nl-q")
PMCT_MODES = {
    "pmct": {"backend": "netfilterqueue"},
    "pmct-nl": {"backend": "netlink"},
    "pmct-gso": {"backend": "netlink", "gso": True},
    "pmct-nl-q": {"backend": "netlink", "passive_capture": "queue"},
}
TRAFFIC = ("tcp", "tcp-nooff", "udp64")

STATEFUL = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -i lan0 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
"""


@dataclass
class Result:
    mode: str
    traffic: str
    mbps: float
    fw_pps: float
    cpu_a: float | None  # CPU % of fw-a's pmct
    cpu_b: float | None  # CPU % of fw-b's pmct
    sent: int  # frames the client and the server put on the hubs
    active_missed: int | None
    passive_missed: int | None
    queue_drops: int | None
    note: str = ""
    per_drain_a: float | None = None  # netlink backend: packets per wake-up of fw-a's daemon
    per_drain_b: float | None = None


def _cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fw_rx(lab: Lab) -> int:
    total = 0
    for dev in ("lan0", "wan0"):
        out = lab.sh("fw-a", ["cat", f"/sys/class/net/{dev}/statistics/rx_packets"]).stdout
        total += int(out)
    return total


def _offloads(lab: Lab, on: bool) -> None:
    state = "on" if on else "off"
    pairs = [("client", "c0"), ("server", "s0"), ("fw-a", "lan0"), ("fw-a", "wan0")]
    pairs += [("fw-b", "lan0"), ("fw-b", "wan0")]
    pairs += [("hub", p) for p in ("lc", "la", "lb", "wa", "wb", "ws")]
    for node, dev in pairs:
        lab.sh(node, ["ethtool", "-K", dev, "tso", state, "gso", state, "gro", state], check=False)


def _setup(lab: Lab, mode: str, queue: dict[str, int | None]) -> None:
    if mode in PMCT_MODES:
        opts: dict[str, Any] = {**queue, **PMCT_MODES[mode]}
        lab.start_node("fw-a", role="active", **opts)
        lab.start_node("fw-b", role="passive", **opts)
        return
    for dev, ip in (("lan0", LAN_GW), ("wan0", WAN_GW)):
        lab.ip("fw-a", "addr", "add", f"{ip}/24", "dev", dev)
    if mode == "conntrack":
        p = subprocess.run(
            ["ip", "netns", "exec", lab.ns["fw-a"], "iptables-restore"],
            input=STATEFUL,
            text=True,
            capture_output=True,
        )
        if p.returncode:
            raise RuntimeError(f"iptables-restore: {p.stderr}")


def _iperf(lab: Lab, traffic: str, seconds: float) -> dict[str, Any]:
    lab.start("iperf-server", "server", ["iperf3", "-s", "-1", "-B", SERVER_IP])
    time.sleep(0.3)
    args = ["iperf3", "-c", SERVER_IP, "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    if traffic == "udp64":
        args += ["-u", "-l", "64", "-b", "0"]
    try:
        p = lab.sh("client", args, check=False, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return {"error": "iperf3 did not finish"}
    finally:
        lab.stop("iperf-server")
    try:
        return dict(json.loads(p.stdout))
    except ValueError:
        return {"error": p.stderr.strip() or p.stdout.strip()[:200]}


def run_one(
    mode: str,
    traffic: str,
    seconds: float,
    queue: dict[str, int | None],
    nice: int | None = None,
) -> Result:
    lab = Lab()
    try:
        lab.up()
        _offloads(lab, traffic != "tcp-nooff")
        _setup(lab, mode, queue)
        pids = {fw: lab.procs[fw].pid for fw in ("fw-a", "fw-b") if fw in lab.procs}
        if nice is not None:  # what `Nice=` in the systemd unit does
            for pid in pids.values():
                os.setpriority(os.PRIO_PROCESS, pid, nice)
        st0 = {fw: lab.control(fw, "status") for fw in pids}
        cpu0 = {fw: _cpu(p) for fw, p in pids.items()}
        hub0 = lab.port_rx("lc") + lab.port_rx("ws")
        rx0, t0 = _fw_rx(lab), time.monotonic()
        res = _iperf(lab, traffic, seconds)
        rx1, t1 = _fw_rx(lab), time.monotonic()
        time.sleep(0.3)  # let the queues drain before reading the daemons' counters
        sent = lab.port_rx("lc") + lab.port_rx("ws") - hub0
        cpu1 = {fw: _cpu(p) for fw, p in pids.items()}
        if "error" in res:
            return Result(
                mode, traffic, 0.0, 0.0, None, None, sent, None, None, None, str(res["error"])
            )
        end = res["end"]
        summary = end.get("sum_received") or end.get("sum") or {}
        mbps = float(summary.get("bits_per_second", 0.0)) / 1e6
        wall = t1 - t0
        fw_pps = (rx1 - rx0) / wall
        if not pids:
            return Result(mode, traffic, mbps, fw_pps, None, None, sent, None, None, None)
        st1 = {fw: lab.control(fw, "status") for fw in pids}
        tracked = {fw: st1[fw]["packets"]["total"] - st0[fw]["packets"]["total"] for fw in pids}
        qd = sum(
            (st1[fw]["queue"]["queue_dropped"] or 0) + (st1[fw]["queue"]["user_dropped"] or 0)
            for fw in pids
        )
        # With offloads on, a GSO super-frame on the veth is several packets once segmented for
        # the queue, so the frame count understates what there was to see: take the larger.
        # A passive node's packet ring (capture.py) sees the frames as they crossed the hub.
        frames = sent
        sent = max(sent, *tracked.values())
        ref = {
            fw: frames if (st1[fw]["queue"].get("ring") or {}).get("open") else sent for fw in pids
        }
        per_drain: dict[str, float | None] = {}
        for fw in pids:
            d0, d1 = st0[fw]["queue"].get("drain"), st1[fw]["queue"].get("drain")
            if d0 and d1 and d1["drains"] > d0["drains"]:
                n = (d1["packets"] - d0["packets"]) / (d1["drains"] - d0["drains"])
                per_drain[fw] = round(n, 1)
        return Result(
            mode,
            traffic,
            mbps,
            fw_pps,
            round(100.0 * (cpu1["fw-a"] - cpu0["fw-a"]) / wall, 1),
            round(100.0 * (cpu1["fw-b"] - cpu0["fw-b"]) / wall, 1),
            sent,
            ref["fw-a"] - tracked["fw-a"],
            ref["fw-b"] - tracked["fw-b"],
            qd,
            per_drain_a=per_drain.get("fw-a"),
            per_drain_b=per_drain.get("fw-b"),
        )
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_live", description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--traffic", default=",".join(TRAFFIC))
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--max-len", type=int, default=None, help="pmct queue.max_len")
    ap.add_argument("--rcvbuf", type=int, default=None, help="pmct queue.rcvbuf")
    ap.add_argument(
        "--nice",
        type=int,
        default=None,
        help="run the pmct daemons at this nice value (e.g. -10, as Nice= in the unit)",
    )
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_live: needs root (network namespaces)", file=sys.stderr)
        return 2
    results: list[Result] = []
    head = (
        f"{'mode':<10} {'traffic':<10} {'Mbit/s':>9} {'fw pkt/s':>10} {'A CPU%':>7} {'B CPU%':>7} "
        f"{'sent':>9} {'A missed':>9} {'B missed':>9} {'q.drops':>7} {'A pkt/wake':>10} "
        f"{'B pkt/wake':>10}"
    )
    print(head, flush=True)
    for traffic in a.traffic.split(","):
        for mode in a.modes.split(","):
            r = run_one(
                mode, traffic, a.seconds, {"max_len": a.max_len, "rcvbuf": a.rcvbuf}, a.nice
            )
            results.append(r)

            def f(v: Any, w: int) -> str:
                return f"{'-' if v is None else v:>{w}}"

            print(
                f"{r.mode:<10} {r.traffic:<10} {r.mbps:9.1f} {r.fw_pps:10.0f} "
                f"{f(r.cpu_a, 7)} {f(r.cpu_b, 7)} {r.sent:9d} {f(r.active_missed, 9)} "
                f"{f(r.passive_missed, 9)} {f(r.queue_drops, 7)} {f(r.per_drain_a, 10)} "
                f"{f(r.per_drain_b, 10)} {r.note}",
                flush=True,
            )
    for traffic in a.traffic.split(","):
        by = {r.mode: r for r in results if r.traffic == traffic}
        ref = by.get("conntrack")
        if ref is None or not ref.mbps:
            continue
        for mode in PMCT_MODES:
            if mode not in by:
                continue
            line = f"{traffic}: {mode} moves {by[mode].mbps / ref.mbps:.2f} x the Mbit/s"
            if traffic != "tcp" and ref.fw_pps:  # with offloads on, frames are not packets
                line += f", {by[mode].fw_pps / ref.fw_pps:.2f} x the packets/s"
            print(line + " of kernel conntrack")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump([asdict(r) for r in results], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
