"""Failover gap benchmark: how long the cluster forwards nothing when the active node dies.

``python -m pmct.node.bench_failover [--runs 3] [--modes ...] [--switched] [--json FILE]``
(root) builds the lab once per run: fw-a active, fw-b passive, the counter stream (a line
every 10 ms both ways, pmct.lab.stream) and a ping every millisecond from the client to the
server through fw-a, so the first packet the new active node forwards is known to within a
millisecond. Then fw-a dies (frozen/killed, links down) and fw-b takes over:

modes
    promote      the benchmark runs ``pmct promote`` (the CLI) on fw-b right after the death
    socket       the benchmark sends the promote request over fw-b's control socket itself
                 (what the CLI does once Python has started: the daemon's own share)
    ka-1         keepalived (configs/keepalived/, advert_int 1 s) detects it and runs
                 pmct-notify.sh -> ``pmct promote``
    ka-0.1       the same with advert_int 0.1 s (VRRPv3 centisecond adverts)
    ka-0.1-file  advert_int 0.1 s, the notify script writes the state file instead of
                 running the CLI (PMCT_NOTIFY_VIA=file)

The death: fw-a's pmct (and keepalived) are frozen with SIGSTOP (that instant is "the
death"), then its links go down, then everything of fw-a is killed.

Measured per run (unix times; captures are tcpdump on the hub ports, inbound = frames a node
sent, so "forwarded" means a frame the node put on the LAN or WAN segment):

    fw-a last     death -> fw-a's last forwarded frame (~0: the freeze stops it at once)
    promote at    death -> the promote was asked for (benchmark: before running the CLI or
                  sending the request; keepalived: when pmct-notify.sh started, i.e. just
                  after keepalived entered MASTER)
    promote took  how long the CLI / the request / the notify script took to return
    first fwd     death -> the first IPv4 frame fw-b forwarded (the ping: <= 1 ms late)
    after ask     promote asked -> that first frame (the issue's "< 50 ms after pmct
                  promote" target is about this one)
    stream gap    the longest time the TCP stream's client or server received nothing; TCP's
                  retransmission back-off (RTO 0.2 s doubling) adds to the outage, so this is
                  what an application sees

Printed, never asserted: everything shares this machine's CPUs. Split-brain handling is not
measured here (it needs ct_sync's MASTER_ANNOUNCE).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

from pmct.lab.keepalived import Keepalived
from pmct.lab.scenario import Stream, pmct_cli, wait_for
from pmct.lab.topology import SERVER_IP, Lab

__all__ = ["Result", "main", "run_one"]

MODES: Final = ("promote", "socket", "ka-1", "ka-0.1", "ka-0.1-file")
_KEEPALIVED: Final = {"ka-1": (1.0, "cli"), "ka-0.1": (0.1, "cli"), "ka-0.1-file": (0.1, "file")}
ETH_IPV4: Final = 0x0800


@dataclass(slots=True)
class Result:
    mode: str
    switched: bool
    fw_a_last: float | None  # seconds after the death (all fields)
    promote_at: float | None
    promote_took: float | None
    first_forwarded: float | None
    after_ask: float | None
    stream_gap: float | None
    stream_ok: bool
    note: str = ""


def _ipv4_times(frames: list[tuple[float, bytes]]) -> list[float]:
    return [ts for ts, f in frames if len(f) >= 34 and int.from_bytes(f[12:14]) == ETH_IPV4]


class _Capture:
    """tcpdump on a hub port, inbound only (= frames the node behind it sent), in immediate
    mode: without it libpcap hands packets over a ring block at a time (up to a second late)
    and a tcpdump stopped with SIGINT never writes the last, unfinished block."""

    def __init__(self, lab: Lab, port: str) -> None:
        self.lab = lab
        self.name = f"tcpdump-{port}"
        self.file = f"{lab.run_dir}/failover-{port}.pcap"
        lab.start(
            self.name,
            "hub",
            ["tcpdump", "-i", port, "-Q", "in", "-n", "-U", "--immediate-mode", "-w", self.file],
        )
        wait_for(f"tcpdump on {port}", lambda: "listening on" in lab.log_text(self.name), 10)

    def read(self) -> list[tuple[float, bytes]]:
        """Stop tcpdump; (unix time, frame) of every captured frame."""
        import dpkt

        self.lab.stop(self.name, signal.SIGINT)
        with open(self.file, "rb") as f:
            return [(float(ts), bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]


def run_one(mode: str, *, switched: bool = False, backend: str | None = None) -> Result:
    lab = Lab(switched=switched)
    cfg: dict[str, Any] = {"tcp_loose": False, **({"backend": backend} if backend else {})}
    try:
        lab.up()
        ka: Keepalived | None = None
        if mode in _KEEPALIVED:
            advert, via = _KEEPALIVED[mode]
            lab.start_node("fw-a", role="passive", **cfg)
            lab.start_node("fw-b", role="passive", **cfg)
            ka = Keepalived(lab, advert_int=advert, notify_via=via)
            ka.start("fw-a")
            ka.wait_state("fw-a", "MASTER")
            wait_for("fw-a promoted", lambda: lab.control("fw-a", "ping")["role"] == "active", 30)
            ka.start("fw-b")
            ka.wait_state("fw-b", "BACKUP")
        else:
            lab.start_node("fw-a", role="active", **cfg)
            lab.start_node("fw-b", role="passive", **cfg)
        caps = {p: _Capture(lab, p) for p in ("la", "wa", "lb", "wb")}
        lab.start("ping", "client", ["ping", "-q", "-n", "-i", "0.001", SERVER_IP])
        stream = Stream(lab)
        stream.wait_received(100, 100, timeout=30)

        # --- death
        note = ""
        if ka is not None:
            t_death = ka.kill("fw-a")
            wait_for(
                "keepalived to promote fw-b",
                lambda: [e.action for e in ka.events("fw-b")][-1:] == ["promote"],
                60,
            )
            ev = ka.events("fw-b")[-1]
            t_ask, t_done = ev.time, ev.end
            if ev.status != 0:
                note = f"notify exit status {ev.status}"
        else:  # freeze first: a killed pmct unbinds its queue and --queue-bypass would let
            # fw-a's kernel forward until its links are down
            os.kill(lab.procs["fw-a"].pid, signal.SIGSTOP)
            t_death = time.time()
            lab.links_down("fw-a")
            lab.stop("fw-a", signal.SIGKILL)
            t_ask = time.time()
            if mode == "socket":
                lab.control("fw-b", "promote")
                t_done = time.time()
            else:
                p = pmct_cli("promote", "-s", lab.socket("fw-b"))
                t_done = time.time()
                if p.returncode != 0:
                    note = f"promote failed: {p.stderr.strip()}"
        c0, s0 = stream.received()
        try:
            stream.wait_received(c0 + 100, s0 + 100, timeout=60)
        except Exception as e:  # reported, not raised: the other runs still count
            note = note or f"stream did not recover: {e}"
        client, server = stream.stop()
        lab.stop("ping", signal.SIGINT)
        frames = {p: c.read() for p, c in caps.items()}

        a_times = _ipv4_times(frames["la"] + frames["wa"])
        b_times = [t for t in _ipv4_times(frames["lb"] + frames["wb"]) if t >= t_death]
        first = min(b_times) if b_times else None
        gaps = [float(x["rx_gap_max"]) for x in (client, server) if x.get("rx_gap_max") is not None]
        return Result(
            mode=mode,
            switched=switched,
            fw_a_last=(max(a_times) - t_death) if a_times else None,
            promote_at=t_ask - t_death,
            promote_took=t_done - t_ask,
            first_forwarded=(first - t_death) if first is not None else None,
            after_ask=(first - t_ask) if first is not None else None,
            stream_gap=max(gaps) if gaps else None,
            stream_ok=not client.get("errors") and not server.get("errors"),
            note=note,
        )
    finally:
        lab.down()


def _fmt(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


HEAD: Final = (
    f"{'mode':<12} {'lab':<6} {'fw-a last':>9} {'promote at':>10} {'took':>6} "
    f"{'first fwd':>9} {'after ask':>9} {'gap':>6} {'stream':>6}"
)


def _line(r: Result) -> str:
    return (
        f"{r.mode:<12} {'switch' if r.switched else 'hub':<6} {_fmt(r.fw_a_last):>9} "
        f"{_fmt(r.promote_at):>10} {_fmt(r.promote_took):>6} {_fmt(r.first_forwarded):>9} "
        f"{_fmt(r.after_ask):>9} {_fmt(r.stream_gap):>6} {'ok' if r.stream_ok else 'BROKE':>6}"
        + (f"  {r.note}" if r.note else "")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_failover", description=__doc__)
    ap.add_argument("--runs", type=int, default=3, help="runs per mode")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--switched", action="store_true", help="learning switches, multicast MAC")
    ap.add_argument("--backend", default=None, help="pmct queue.backend")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_failover: needs root (network namespaces)", file=sys.stderr)
        return 2
    modes = a.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"bench_failover: unknown mode {bad[0]!r} (known: {', '.join(MODES)})")
        return 2
    print("seconds after the death of fw-a\n" + HEAD, flush=True)
    results: list[Result] = []
    for mode in modes:
        for _ in range(a.runs):
            r = run_one(mode, switched=a.switched, backend=a.backend)
            results.append(r)
            print(_line(r), flush=True)
    print("\nmedians (max)")
    for mode in modes:
        rs = [r for r in results if r.mode == mode]

        def med(field: str, rs: list[Result] = rs) -> str:
            vals = [getattr(r, field) for r in rs if getattr(r, field) is not None]
            if not vals:
                return "-"
            return f"{statistics.median(vals):.3f} ({max(vals):.3f})"

        print(
            f"{mode:<12} promote at {med('promote_at')}, took {med('promote_took')}, "
            f"first forwarded {med('first_forwarded')}, {med('after_ask')} after the ask; "
            f"stream gap {med('stream_gap')}; stream broke in "
            f"{sum(not r.stream_ok for r in rs)}/{len(rs)}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
