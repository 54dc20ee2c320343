"""Live benchmark of NAT: the same lab traffic through pmct with source NAT on and off.

``python -m pmct.node.bench_nat [--seconds 5] [--repeat 3] [--json FILE]`` (root) reuses
bench_live.py (lab, iperf3 traffic, counters) with four pmct set-ups, all with
``queue.fail = "closed"`` (NAT requires it) so that NAT is the only difference within a pair:

    pmct / pmct-nat         netfilterqueue backend, NAT off / on
    pmct-nl / pmct-nl-nat   netlink backend, NAT off / on

NAT on = the LAN masqueraded to the WAN cluster address (every packet of the flow is
rewritten on the active node and goes back to the kernel in its verdict; with the netlink
backend such a packet needs its own verdict message instead of joining the batch verdict).
The passive node binds too, but never rewrites. Each set-up runs ``--repeat`` times per
traffic kind, interleaved, and the medians are printed with the on/off ratio of the pair:
ratios from the same run are what this noisy, shared 2-CPU machine can compare
(measurements.md §0). Numbers are printed, never asserted.

``--micro`` measures instead the per-packet cost in this process, without the kernel: an
established IPv4 TCP flow (1400-byte segments, both directions) through ``Datapath.handle``
of an active node, NAT off (no rules) and on (masquerade: every packet rewritten), in
interleaved chunks of 200 packets (median ratio, fastest chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from typing import Any

from pmct.lab.topology import LAN_GW
from pmct.node import bench_live
from pmct.node.bench_live import Result, run_one

__all__ = ["main"]

NAT_TOML = f"""
[nat]
seed = "bench"

[[nat.snat]]
src = ["{LAN_GW.rsplit(".", 1)[0]}.0/24"]
masquerade = "wan0"
"""

SETUPS: dict[str, dict[str, Any]] = {
    "pmct": {"backend": "netfilterqueue", "fail": "closed"},
    "pmct-nat": {"backend": "netfilterqueue", "fail": "closed", "extra": NAT_TOML},
    "pmct-nl": {"backend": "netlink", "fail": "closed"},
    "pmct-nl-nat": {"backend": "netlink", "fail": "closed", "extra": NAT_TOML},
}
PAIRS = (("pmct", "pmct-nat"), ("pmct-nl", "pmct-nl-nat"))
TRAFFIC = ("tcp", "tcp-nooff", "udp64")

# bench_live starts a pmct pair for every mode named in its PMCT_MODES, passing the options
# on to Lab.start_node; the NAT set-ups join that table (an addition, nothing is replaced).
for _name, _opts in SETUPS.items():
    bench_live.PMCT_MODES.setdefault(_name, _opts)


def _median(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def _seg(src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int) -> bytes:
    """An IPv4 TCP segment with valid checksums; 1400 bytes of payload when PSH is set."""
    import socket

    import dpkt

    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=65535)
    t.data = b"x" * 1400 if flags & dpkt.tcp.TH_PUSH else b""
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=t)
    ip.len = 20 + len(bytes(t))
    return bytes(ip)


def micro(n: int = 40000) -> None:
    """Per-packet cost of Datapath.handle with NAT off and on (see the module docstring)."""
    from pmct.config import parse_config
    from pmct.conntrack.core import Engine
    from pmct.node.datapath import Datapath
    from pmct.node.natshell import NatShell
    from pmct.node.policy import CTSTATE_MARK_BITS

    seg = _seg
    c, s, pub = "198.18.1.2", "198.18.2.2", "198.18.2.1"
    syn, ack, psh = 0x02, 0x10, 0x18
    text = '[queue]\nfail = "closed"\n[cluster.interface.wan0]\naddresses = ["198.18.2.1/24"]\n'

    def build(nat: bool) -> tuple[Datapath, list[tuple[bytes, int]]]:
        cfg = parse_config(text + (NAT_TOML if nat else ""), "micro")
        e = Engine(cfg.conntrack)
        dp = Datapath(e, lambda *a: 1, {1: "lan0", 2: "wan0"}, ctstate_bits=CTSTATE_MARK_BITS)
        dp.active = True
        if nat:
            sh = NatShell(cfg.nat, cfg.cluster)
            sh.attach(e)
            dp.nat = sh.packet
        _v, _m, out = dp.handle(seg(c, s, 40000, 5201, syn, 0, 0), 1, 0)
        port = int.from_bytes(out[20:22], "big") if out is not None else 40000
        rdst = pub if nat else c
        dp.handle(seg(s, rdst, 5201, port, syn | ack, 100, 1), 2, 0)
        dp.handle(seg(c, s, 40000, 5201, ack, 1, 101), 1, 0)
        flow = []
        for i in range(n // 2):
            flow.append((seg(c, s, 40000, 5201, psh, 1 + 1400 * i, 101), 1))
            flow.append((seg(s, rdst, 5201, port, ack, 101, 1 + 1400 * (i + 1)), 2))
        return dp, flow

    # Fine-grained interleaving: chunks of CHUNK packets, NAT off then on, alternately, so
    # that a change of the machine's load hits both alike; the median of the per-chunk
    # ratios and the fastest chunk of each are reported.
    chunk = 200
    dps = {nat: build(nat) for nat in (False, True)}
    per: dict[bool, list[float]] = {False: [], True: []}
    rewritten = 0
    for i in range(0, n, chunk):
        for nat in (False, True):
            dp, flow = dps[nat]
            handle = dp.handle
            part = flow[i : i + chunk]
            t0 = time.perf_counter()
            for data, indev in part:
                if handle(data, indev, 0)[2] is not None and nat:
                    rewritten += 1
            per[nat].append((time.perf_counter() - t0) / len(part))
    NatShell.detach(dps[True][0].engine)
    ratios = sorted(on / off for off, on in zip(per[False], per[True], strict=True))
    ratio = statistics.median(ratios)
    off, on = min(per[False]), min(per[True])
    print(f"Datapath.handle, established TCP, {n} packets each, {len(ratios)} interleaved chunks:")
    print(f"  NAT off: fastest chunk {off * 1e6:6.2f} us/packet ({1 / off:9.0f} packets/s)")
    print(f"  NAT on:  fastest chunk {on * 1e6:6.2f} us/packet ({1 / on:9.0f} packets/s)")
    print(f"  NAT on / off: median chunk ratio {ratio:.2f} x the time; rewritten {rewritten}")


def _cpu_us(r: Result) -> float | None:
    """fw-a's pmct CPU time per packet it forwarded (µs): less sensitive to the throughput
    the loaded machine allows than Mbit/s."""
    if r.cpu_a is None or not r.fw_pps:
        return None
    return r.cpu_a / 100.0 / r.fw_pps * 1e6


def summarize(results: list[Result], setups: list[str], traffics: list[str]) -> None:
    print("\nmedians (NAT on / off within each pair, same run):")
    for traffic in traffics:
        med: dict[str, dict[str, float | None]] = {}
        for setup in setups:
            rs = [r for r in results if r.mode == setup and r.traffic == traffic]
            if not rs:
                continue
            med[setup] = m = {
                "mbps": _median([r.mbps for r in rs]),
                "pps": _median([r.fw_pps for r in rs]),
                "cpu_a": _median([r.cpu_a for r in rs]),
                "cpu_us": _median([_cpu_us(r) for r in rs]),
            }
            print(
                f"  {traffic:<10} {setup:<12} {m['mbps'] or 0:9.1f} Mbit/s "
                f"{m['pps'] or 0:10.0f} pkt/s  fw-a CPU {m['cpu_a']}% = "
                f"{m['cpu_us'] or 0:.1f} us per forwarded packet"
            )
        for off, on in PAIRS:
            x, y = med.get(off), med.get(on)
            if x and y and x["mbps"] and x["pps"] and x["cpu_us"]:
                print(
                    f"  {traffic:<10} {on} / {off}: "
                    f"{(y['mbps'] or 0) / x['mbps']:.2f} x Mbit/s, "
                    f"{(y['pps'] or 0) / x['pps']:.2f} x pkt/s, "
                    f"{(y['cpu_us'] or 0) / x['cpu_us']:.2f} x CPU per packet"
                )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_nat", description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--traffic", default=",".join(TRAFFIC))
    ap.add_argument("--json", default=None, help="also write every run here")
    ap.add_argument("--micro", action="store_true", help="per-packet cost, no lab")
    ap.add_argument("--summarize", default=None, help="print the medians of a --json file")
    a = ap.parse_args(argv)
    if a.summarize:
        with open(a.summarize) as fh:
            results = [Result(**r) for r in json.load(fh)]
        summarize(results, a.setups.split(","), a.traffic.split(","))
        return 0
    if a.micro:
        micro()
        return 0
    if os.geteuid() != 0:
        print("bench_nat: needs root (network namespaces)", file=sys.stderr)
        return 2
    with open("/proc/loadavg") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])}", flush=True)
    setups = a.setups.split(",")
    results: list[Result] = []
    print(
        f"{'setup':<12} {'traffic':<10} {'run':>3} {'Mbit/s':>9} {'fw pkt/s':>10} "
        f"{'A CPU%':>7} {'B CPU%':>7} {'A missed':>9} {'note'}",
        flush=True,
    )
    for traffic in a.traffic.split(","):
        for rep in range(a.repeat):
            for setup in setups:  # interleaved: a load change hits every set-up alike
                r = run_one(setup, traffic, a.seconds, {"max_len": None, "rcvbuf": None})
                results.append(r)
                print(
                    f"{r.mode:<12} {r.traffic:<10} {rep + 1:>3} {r.mbps:9.1f} {r.fw_pps:10.0f} "
                    f"{r.cpu_a!s:>7} {r.cpu_b!s:>7} {r.active_missed!s:>9} {r.note}",
                    flush=True,
                )
    summarize(results, setups, a.traffic.split(","))
    with open("/proc/loadavg") as f:
        print(f"load average at end: {' '.join(f.read().split()[:3])}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump([asdict(r) for r in results], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
