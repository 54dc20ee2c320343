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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_nat", description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--traffic", default=",".join(TRAFFIC))
    ap.add_argument("--json", default=None, help="also write every run here")
    a = ap.parse_args(argv)
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
    print("\nmedians (NAT on / off within each pair, same run):")
    for traffic in a.traffic.split(","):
        med: dict[str, dict[str, float | None]] = {}
        for setup in setups:
            rs = [r for r in results if r.mode == setup and r.traffic == traffic]
            med[setup] = {
                "mbps": _median([r.mbps for r in rs]),
                "pps": _median([r.fw_pps for r in rs]),
                "cpu_a": _median([r.cpu_a for r in rs]),
            }
            m = med[setup]
            print(
                f"  {traffic:<10} {setup:<12} {m['mbps'] or 0:9.1f} Mbit/s "
                f"{m['pps'] or 0:10.0f} pkt/s  fw-a CPU {m['cpu_a']}%"
            )
        for off, on in PAIRS:
            if off in med and on in med and med[off]["mbps"] and med[off]["pps"]:
                print(
                    f"  {traffic:<10} {on} / {off}: "
                    f"{(med[on]['mbps'] or 0) / (med[off]['mbps'] or 1):.2f} x Mbit/s, "
                    f"{(med[on]['pps'] or 0) / (med[off]['pps'] or 1):.2f} x pkt/s"
                )
    with open("/proc/loadavg") as f:
        print(f"load average at end: {' '.join(f.read().split()[:3])}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump([asdict(r) for r in results], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
