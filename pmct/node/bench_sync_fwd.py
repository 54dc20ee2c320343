"""Benchmark: does an init-sync walk starve the active node's packet path? (root)

The question (issue 4): the master serves a walk of 100k-1M entries *while it forwards*. The
walk runs in the same process and loop as the NFQUEUE verdicts (daemon.py: one select() loop;
syncshell.service() between queue drains), so every millisecond spent encoding walk packets is
a millisecond a queued packet waits.

What runs: the namespace lab (pmct.lab.topology.Lab: client - fw-a, fw-b - server, sync0).
fw-a is the real daemon (``pmct run``, ct_sync unicast on sync0), started through
``worker`` below, which fills the engine's table with N established synthetic entries
(pmct.sync.sim.sample_conn: addresses outside the lab's, so no lab packet ever matches one)
before the loop starts, then ``gc.freeze()``s them (a master that built its table over hours
has long promoted it to the oldest GC generation; the benchmark measures the walk, not a full
collection of a fresh million objects). fw-b is not running at first.

Phases, per N (printed, nothing asserted):

1. idle: ``ping -i 0.002`` client -> server through fw-a for ``--seconds``: RTT p50/p99/max;
   then ``iperf3`` (TCP, one stream) for ``--seconds``: Mbit/s.
2. walk + ping: fw-b starts with an empty table and asks for init sync; ping runs from the
   start of fw-b until fw-b is ready (the walk); RTT p50/p99/max over that window.
3. walk + iperf3: fw-b is stopped and started again (a second walk of the same N), iperf3 runs
   for the duration of phase 2's walk plus a second; Mbit/s over the run and its slowest
   0.5 s interval.

Also printed: the walk's duration and records/s (fw-b's log: walk began .. complete), and from
fw-a's log the longest SyncShell.service() call (wall clock; the worker wraps it -- this process
only) and, when pmct.sync is interpreted, the slowest core calls with their CPU time, plus any
garbage collection over 10 ms. ``--walk-budget 0`` runs fw-a without the per-iteration budget
(docs/protocol.md §12) for comparison.

The machine's 2 vCPUs run fw-a, fw-b (applying the walk flat out), ping, iperf3 and whatever
else is running: wall-clock latencies include time fw-a waits for a CPU. Compare the columns of
one run, and runs with and without the budget at similar load (``uptime`` is printed).

``python -m pmct.node.bench_sync_fwd run [--n 100000 1000000] [--seconds 3] [--walk-budget N]``
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

SYNC_IP = {"fw-a": "198.19.0.1", "fw-b": "198.19.0.2"}
NODE_ID = {"fw-a": 1, "fw-b": 2}


def _worker(a: argparse.Namespace) -> int:
    """``pmct run`` with the engine's table pre-filled with ``--fill`` synthetic entries."""
    import logging

    from pmct.config import load_config
    from pmct.conntrack.constants import Status
    from pmct.node.daemon import Daemon
    from pmct.node.syncshell import SyncShell
    from pmct.sync.sim import sample_conn
    from pmct.sync.table import EngineTable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    blog = logging.getLogger("pmct.bench")
    # Instrumentation (this process only): how long each sync service() call holds the loop.
    service = SyncShell.service
    slow: list[float] = []

    def timed(self: SyncShell, now: float) -> None:
        t = time.perf_counter()
        service(self, now)
        dt = time.perf_counter() - t
        if dt > 0.002:
            slow.append(dt)
            if len(slow) % 200 == 1:
                blog.info("service() calls > 2 ms: %d, max %.1f ms", len(slow), 1e3 * max(slow))

    SyncShell.service = timed  # type: ignore[method-assign]
    from pmct.sync.protocol import SyncProtocol

    worst: dict[str, float] = {}

    def wrap(name: str) -> None:
        fn = getattr(SyncProtocol, name)

        def w(*args: Any, **kw: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            r = fn(*args, **kw)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if dt > worst.get(name, 0.0):
                worst[name] = dt
                if dt > 0.05:
                    blog.info("slow %s: %.1f ms (CPU %.1f ms)", name, dt * 1e3, dc * 1e3)
            return r

        setattr(SyncProtocol, name, w)

    gc_t = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_t[0] = time.perf_counter()
        elif (dt := time.perf_counter() - gc_t[0]) > 0.01:
            blog.info("gc generation %d: %.1f ms", info["generation"], dt * 1e3)

    gc.callbacks.append(on_gc)
    if type(SyncProtocol.__dict__.get("receive_datagram")).__name__ == "function":  # interpreted
        for name in ("receive_datagram", "datagrams_to_send", "handle_timer", "get_timer"):
            wrap(name)
    if a.walk_budget is not None:  # the comparison run: the core's walk_budget overridden
        import dataclasses

        import pmct.node.syncshell as shell_mod

        made = shell_mod.sync_config

        def with_budget(*args: Any) -> Any:
            return dataclasses.replace(made(*args), walk_budget=a.walk_budget)

        shell_mod.sync_config = with_budget  # type: ignore[assignment]
    cfg = load_config(a.config)
    d = Daemon(cfg)
    table = EngineTable(d.engine)
    now = time.monotonic()
    confirmed = int(Status.CONFIRMED)
    for i in range(a.fill):
        c = sample_conn(i, expires=now + 432_000.0)
        c.status |= confirmed
        table.insert(c, now)
    gc.collect()
    gc.freeze()
    blog.info("filled %d entries", a.fill)
    try:
        return d.run()
    finally:
        blog.info("service() calls > 2 ms: %d, max %.1f ms", len(slow), 1e3 * max(slow, default=0))


RATE = [0.0]  # initsync_rate of both nodes (--rate)


def _sync_toml(fw: str, n: int) -> str:
    peer = "fw-b" if fw == "fw-a" else "fw-a"
    return (
        f"\n[sync]\nenabled = true\nnode_id = {NODE_ID[fw]}\npeers = [{NODE_ID[peer]}]\n"
        f'transport = "unicast"\naddress = "{SYNC_IP[peer]}"\ninitsync_rate = {RATE[0]}\n'
    )


def _config(lab: Any, fw: str, role: str, n: int) -> str:
    text = lab.config_text(fw, role=role, extra=_sync_toml(fw, n))
    text = text.replace("[conntrack]\n", f"[conntrack]\nmax_entries = {max(2 * n, 262144)}\n", 1)
    path = f"{lab.run_dir}/{fw}.toml"
    Path(path).write_text(text)
    return path


_PING = re.compile(r"^\[([0-9.]+)\].*icmp_seq=(\d+) .*time=([0-9.]+) ms", re.M)
_WALK = re.compile(r"^(\S+ \S+) INFO pmct.sync: ct_sync: init sync walk \d+ (began|complete)", re.M)


def _walk_window(lab: Any) -> tuple[float, float]:
    """Wall-clock begin and end of fw-b's (last) walk, from its log."""
    import datetime as dt

    times: dict[str, float] = {}
    for stamp, what in _WALK.findall(lab.log_text("fw-b")):
        t = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        times[what] = t
    return times["began"], times["complete"]


def _window(text: str, t0: float, t1: float) -> tuple[list[float], int]:
    """RTTs of the replies received in [t0, t1], and the seqs missing among them."""
    got = [(int(q), float(r)) for t, q, r in _PING.findall(text) if t0 <= float(t) <= t1]
    if not got:
        return [], 0
    seqs = [q for q, _ in got]
    return [r for _, r in got], max(seqs) - min(seqs) + 1 - len(set(seqs))


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ping_start(lab: Any, name: str) -> subprocess.Popen[bytes]:
    from pmct.lab.topology import SERVER_IP

    return lab.start(name, "client", ["ping", "-D", "-n", "-i", "0.002", "-W", "1", SERVER_IP])


def _ping_stop(
    lab: Any, name: str, t0: float = 0.0, t1: float = float("inf")
) -> tuple[list[float], int]:
    lab.stop(name, signal.SIGINT)
    return _window(lab.log_text(name), t0, t1)


def _iperf(lab: Any, seconds: float) -> tuple[float, float]:
    """Mbit/s over the run, and of its slowest 0.5 s interval."""
    from pmct.lab.topology import SERVER_IP

    p = lab.sh(
        "client",
        ["iperf3", "-c", SERVER_IP, "-t", f"{seconds:.1f}", "-i", "0.5", "-J"],
        timeout=seconds + 30,
    )
    j = json.loads(p.stdout)
    total = j["end"]["sum_received"]["bits_per_second"] / 1e6
    ivals = [
        iv["sum"]["bits_per_second"] / 1e6 for iv in j["intervals"] if iv["sum"]["seconds"] > 0.4
    ]
    return total, min(ivals) if ivals else float("nan")


def _start_fw_b(lab: Any, n: int) -> float:
    path = _config(lab, "fw-b", "passive", n)
    lab.start("fw-b", "fw-b", [sys.executable, "-m", "pmct", "run", "--config", path])
    return time.monotonic()


def _wait_synced(lab: Any, timeout: float) -> dict[str, Any]:
    from pmct.lab.scenario import wait_for

    def synced() -> bool:
        # "ping", not "status": status walks the whole table (by_proto_state), which would
        # load fw-b; fw-b hears fw-a, so it is ready only once the walk is applied
        try:
            return bool(lab.control("fw-b", "ping")["ready"])
        except Exception:
            return False

    wait_for("fw-b synced", synced, timeout, poll=0.1)
    st: dict[str, Any] = lab.control("fw-b", "status")["sync"]
    return st


def _one(n: int, seconds: float, walk_budget: int | None) -> dict[str, Any]:
    from pmct.lab.scenario import wait_for
    from pmct.lab.topology import Lab

    lab = Lab()
    res: dict[str, Any] = {"n": n}
    try:
        lab.up()
        lab.start("iperf3-s", "server", ["iperf3", "-s"])
        path = _config(lab, "fw-a", "active", n)
        lab.start(
            "fw-a",
            "fw-a",
            [sys.executable, "-m", "pmct.node.bench_sync_fwd", "worker", "--config", path,
             "--fill", str(n),
             *(["--walk-budget", str(walk_budget)] if walk_budget is not None else [])],
        )  # fmt: skip
        lab.wait_ready("fw-a", 120 + n / 5000)
        time.sleep(1.0)
        # 1. idle
        _ping_start(lab, "ping-idle")
        time.sleep(seconds)
        res["idle_rtt"], res["idle_lost"] = _ping_stop(lab, "ping-idle")
        res["idle_mbit"], res["idle_min_mbit"] = _iperf(lab, seconds)
        # 2. walk + ping
        _ping_start(lab, "ping-walk")
        _start_fw_b(lab, n)
        _wait_synced(lab, 600)
        time.sleep(0.2)
        begin, end = _walk_window(lab)
        res["walk_s"] = end - begin
        res["walk_rate"] = n / res["walk_s"] if res["walk_s"] > 0 else 0.0
        res["walk_rtt"], res["walk_lost"] = _ping_stop(lab, "ping-walk", begin, end)
        # 3. walk + iperf3
        lab.stop("fw-b", signal.SIGTERM)
        Path(lab.run_dir, "fw-b.log").unlink(missing_ok=True)  # the next walk's lines only
        time.sleep(0.5)
        out: dict[str, tuple[float, float]] = {}

        def run_iperf() -> None:
            out["r"] = _iperf(lab, res["walk_s"] + 1.0)

        import threading

        th = threading.Thread(target=run_iperf)
        th.start()
        time.sleep(0.5)
        _start_fw_b(lab, n)
        _wait_synced(lab, 600)
        th.join()
        res["walk_mbit"], res["walk_min_mbit"] = out["r"]
        wait_for("fw-a alive", lambda: lab.alive("fw-a"), 1)
    finally:
        lab.stop("fw-a", signal.SIGTERM)  # its last line: the longest service() call
        res["fw_a_log"] = [x for x in lab.log_text("fw-a").splitlines() if "bench" in x][-12:]
        lab.down()
    return res


def _uptime() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def run(ns: list[int], seconds: float, walk_budget: int | None = None) -> list[dict[str, Any]]:
    rows = []
    print(
        f"{'N':>8} {'walk s':>7} {'rec/s':>8} | {'RTT ms idle p50/p99/max':>24} "
        f"{'lost':>4} | {'RTT ms walk p50/p99/max':>24} {'lost':>4} | "
        f"{'Mbit/s idle (min)':>17} | {'Mbit/s walk (min)':>17}"
    )
    print(
        f"walk_budget: {'default' if walk_budget is None else walk_budget}; "
        f"initsync_rate: {RATE[0] or 'unthrottled'}; {_uptime()}"
    )
    for n in ns:
        r = _one(n, seconds, walk_budget)
        rows.append(r)

        def rtt(xs: list[float]) -> str:
            return f"{statistics.median(xs):.3f}/{_pct(xs, 0.99):.2f}/{max(xs):.2f}" if xs else "-"

        print(
            f"{n:>8} {r['walk_s']:>7.2f} {r['walk_rate']:>8,.0f} | {rtt(r['idle_rtt']):>24} "
            f"{r['idle_lost']:>4} | {rtt(r['walk_rtt']):>24} {r['walk_lost']:>4} | "
            f"{r['idle_mbit']:>8.0f} ({r['idle_min_mbit']:>5.0f}) | "
            f"{r['walk_mbit']:>8.0f} ({r['walk_min_mbit']:>5.0f})",
            flush=True,
        )
        for line in r["fw_a_log"]:
            if "filled" not in line:
                print("   fw-a:", line)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_sync_fwd", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--config", required=True)
    w.add_argument("--fill", type=int, default=0)
    w.add_argument("--walk-budget", type=int, default=None)
    b = sub.add_parser("run")
    b.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    b.add_argument("--seconds", type=float, default=3.0)
    b.add_argument("--json", default="")
    b.add_argument("--rate", type=float, default=0.0, help="initsync_rate (0: unthrottled)")
    b.add_argument(
        "--walk-budget", type=int, default=None, help="override fw-a's walk_budget (0: no cap)"
    )
    a = ap.parse_args(argv)
    if a.cmd == "worker":
        return _worker(a)
    if a.cmd == "run":
        RATE[0] = a.rate
        rows = run(a.n, a.seconds, a.walk_budget)
        if a.json:
            Path(a.json).write_text(json.dumps(rows))
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
