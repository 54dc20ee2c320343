"""The live level's bursty miss model: the standby misses every packet during bursts.

Why bursts in time, not a per-packet chain: the simulation's ``bursty`` model (faults.py,
Gilbert-Elliott, ``burst_length`` in packets) decides per packet, but at the live level the
packets are the kernel's, and an nftables rule has no memory between packets (``numgen
random`` is Bernoulli). A real overload is a stretch of time, not a run of packets: the
daemon is descheduled, the NFQUEUE fills (net/netfilter/nfnetlink_queue.c,
__nfqnl_enqueue_packet: ``queue_total >= queue_maxlen`` drops, or fails open), and every
packet of that stretch is lost to the tracker. So a burst here is an interval in which the
standby's data ingress drops everything.

The schedule is an alternating renewal process: burst lengths are exponential with mean
``mean_s``, the gaps between bursts exponential with mean ``mean_s * (1 - p) / p``, so burst
starts form a Poisson process over the gap time and the long-run share of time in a burst
is p. With traffic spread evenly over time that is also the share of packets missed; the
runner reads the real share from nft counters, since the traffic is not even.

How a burst is applied: one nftables table on the standby (netdev ingress of lan0 and
wan0, priority -500, before NFQUEUE) with an always-present rule ``iifname @burst counter
drop``; a burst starts by adding "lan0" and "wan0" to the set and ends by deleting them.
A set element change is one netlink transaction, made here through libnftables (ctypes,
no process per toggle, so a toggle takes well under a millisecond). This module's ``main``
is the toggler: the runner starts it in the standby's namespace and stops it by pid.

``burst_schedule`` is pure (seeded ``random.Random``, no clock): the unit tests check it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import random
import signal
import sys
import time
from typing import Final

__all__ = ["BURST_SET", "burst_schedule", "bursty_miss_table", "main", "read_counters"]

BURST_SET: Final = "burst"
DEVICES: Final = ("lan0", "wan0")


def burst_schedule(
    p: float, mean_s: float, duration: float, seed: int
) -> list[tuple[float, float]]:
    """Bursts (start, end) in seconds from 0, until ``duration``; the share of time in
    bursts tends to ``p`` and a burst lasts ``mean_s`` on average (both exponential)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"miss rate {p} is out of range [0, 1)")
    if mean_s <= 0:
        raise ValueError(f"mean burst length {mean_s} must be > 0")
    if p == 0.0:
        return []
    rng = random.Random(seed)
    gap_mean = mean_s * (1.0 - p) / p
    out: list[tuple[float, float]] = []
    t = 0.0
    while True:
        t += rng.expovariate(1.0 / gap_mean)
        if t >= duration:
            return out
        end = min(duration, t + rng.expovariate(1.0 / mean_s))
        out.append((t, end))
        t = end


def bursty_miss_table(table: str) -> str:
    """The standby's miss table: counts every data packet, drops while the set is full."""
    chains = "".join(
        f'chain in_{d} {{ type filter hook ingress device "{d}" priority -500; '
        f'counter name "seen"; iifname @{BURST_SET} counter name "missed" drop; }}\n'
        for d in DEVICES
    )
    return (
        f"table netdev {table} {{\ncounter seen {{ }}\ncounter missed {{ }}\n"
        f"set {BURST_SET} {{ type ifname; }}\n{chains}}}\n"
    )


def read_counters(nft_json: str) -> dict[str, int]:
    """Named counters' packets from ``nft -j list counters``: name -> packets."""
    out: dict[str, int] = {}
    for item in json.loads(nft_json).get("nftables", []):
        c = item.get("counter")
        if isinstance(c, dict) and "name" in c:
            out[str(c["name"])] = int(c.get("packets", 0))
    return out


class _Nft:
    """libnftables through ctypes: one netlink transaction per command, no process."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        self.lib = ctypes.CDLL(name)
        self.lib.nft_ctx_new.restype = ctypes.c_void_p
        self.lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        self.lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.ctx = self.lib.nft_ctx_new(0)

    def run(self, cmd: str) -> bool:
        return int(self.lib.nft_run_cmd_from_buffer(self.ctx, cmd.encode())) == 0


def main(argv: list[str] | None = None) -> int:
    """The toggler: run the schedule on this namespace's miss table; one line per burst."""
    ap = argparse.ArgumentParser(prog="python -m pmct.study.live_bursts")
    ap.add_argument("--table", required=True)
    ap.add_argument("--p", type=float, required=True)
    ap.add_argument("--mean-ms", type=float, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True)
    a = ap.parse_args(argv)
    sched = burst_schedule(a.p, a.mean_ms / 1000.0, a.duration, a.seed)
    nft = _Nft()
    elems = ", ".join(f'"{d}"' for d in DEVICES)
    on = f"add element netdev {a.table} {BURST_SET} {{ {elems} }}"
    off = f"delete element netdev {a.table} {BURST_SET} {{ {elems} }}"
    state = {"on": False}

    def stop(_sig: int, _frame: object) -> None:
        if state["on"]:
            nft.run(off)
        print("stopped", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    t0 = time.monotonic()
    print(f"schedule {len(sched)} bursts over {a.duration:g} s", flush=True)
    for start, end in sched:
        time.sleep(max(0.0, t0 + start - time.monotonic()))
        ok = nft.run(on)
        state["on"] = ok
        t_on = time.monotonic() - t0
        time.sleep(max(0.0, t0 + end - time.monotonic()))
        if ok:
            nft.run(off)
        state["on"] = False
        t_off = time.monotonic() - t0
        print(f"burst {t_on:.4f} {t_off:.4f}{'' if ok else ' failed'}", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
