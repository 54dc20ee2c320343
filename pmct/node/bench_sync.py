"""``pmct bench sync``: init sync over a real veth pair between two namespaces (root).

What runs is the node's own ct_sync path: two processes, each a SyncShell (syncshell.py) with
its SyncTransport (transport.py, a UDP socket bound to the veth) around an engine table, driven
by a select() loop on the socket and the core's one timer, exactly as in ``pmct run``. The
master process fills its table with N established IPv4 TCP entries (pmct.sync.sim.sample_conn),
then the slave process starts with an empty table, asks for init sync and runs until the walk's
INITSYNC_DONE has been applied.

Printed per N (nothing is asserted; both processes share this machine's CPUs):

* connections/s: N / the slave's wall time from start (request sent) to ready, which includes
  the master's snapshot of its table keys before the walk;
  "walk s" is the part from INITSYNC_BEGIN to INITSYNC_DONE as the slave saw it (0: both
  arrived in one batch);
* bytes per connection on the wire: UDP payload of everything the slave received until ready
  (the walk and the one or two announces around it), / N; and with 28 bytes of IPv4 + UDP
  header per datagram added (the slave's request and ACKs go the other way: not counted);
* CPU seconds of each side over the same interval (time.process_time() in each process:
  master from the walk's start to its INITSYNC_DONE, slave from start to ready);
* for a throttled walk (``--rate``): the walk's duration from INITSYNC_BEGIN to INITSYNC_DONE
  as the slave saw them, the rate that gives, and the pacer's expectation
  ``(N - capacity) / rate``: the bucket starts full (one packet + the slack, pacer.py), then
  the configured rate (docs/protocol.md §12).

``python -m pmct.node.bench_sync [--n 10000 100000 1000000] [--rate 4000] [--hmac]``; the
``worker`` sub-command is what runs inside each namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pmct.sync.pacer import default_slack

__all__ = ["bench_sync", "main", "run_bench"]

ADDR = {"master": "198.19.255.1", "slave": "198.19.255.2"}
IFACE = {"master": "bsm0", "slave": "bss0"}
PORT = 3780
KEY = b"bench-sync-key-0123456789abcdef\n"


# ---------------------------------------------------------------------------- worker


def _worker(a: argparse.Namespace) -> int:
    import gc

    from pmct.config import SyncNodeConfig
    from pmct.conntrack.constants import Status
    from pmct.conntrack.core import Engine
    from pmct.conntrack.settings import Settings
    from pmct.node.syncshell import SyncShell
    from pmct.sync.protocol import SyncState
    from pmct.sync.sim import sample_conn
    from pmct.sync.table import EngineTable

    master = a.role == "master"
    other = "slave" if master else "master"
    stop = [False]

    def on_term(*_: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    engine = Engine(Settings(max_entries=max(2 * a.n, 1024)))
    now = time.monotonic()
    if master:
        table = EngineTable(engine)
        confirmed = int(Status.CONFIRMED)
        for i in range(a.n):
            c = sample_conn(i, expires=now + 432_000.0)
            c.status |= confirmed
            table.insert(c, now)
        gc.collect()
    cfg = SyncNodeConfig(
        enabled=True,
        node_id=1 if master else 2,
        peers=(2 if master else 1,),
        address=(ADDR[other],),
        port=PORT,
        initsync_rate=a.rate,
        hmac_key_file=a.key or "",
    )
    now = time.monotonic()
    shell = SyncShell(cfg, IFACE[a.role], engine, master=master, run_dir=a.dir, now=now)
    core = shell.core
    sock = shell.fileno()
    Path(a.dir, f"{a.role}.up").write_text("1")
    res: dict[str, Any] = {"role": a.role, "n": a.n}
    t0 = now
    cpu0 = time.process_time()
    begin: float | None = None
    done = False
    while not stop[0]:
        now = time.monotonic()
        t = shell.deadline()
        timeout = 0.05 if t is None else max(0.0, min(0.05, t - now))
        select.select([sock], [], [], timeout)
        now = time.monotonic()
        tx = shell.transport
        before = (time.process_time(), tx.tx_packets, tx.tx_bytes)
        shell.service(now)
        if master:
            if "walk_cpu0" not in res and core.stats["walks_started"]:
                res["walk_cpu0"] = before[0]  # the walk began in this service() call
                res["walk_t0"] = now
                res["tx0"] = before[1:]
            if not done and core.stats["walks_completed"]:
                done = True
                res["cpu"] = time.process_time() - res.pop("walk_cpu0")
                res["wall"] = now - res.pop("walk_t0")
                p0, b0 = res.pop("tx0")
                res["tx_packets"] = tx.tx_packets - p0
                res["tx_bytes"] = tx.tx_bytes - b0
                res["retransmitted"] = core.stats["retransmitted"]
                res["nack_received"] = core.stats["nack_received"]
                _write(a, res)
        else:
            if begin is None and core.progress(now=now).walk is not None:
                begin = now  # INITSYNC_BEGIN arrived in this service() call
            if core.sync_state == SyncState.SYNCED:
                res["cpu"] = time.process_time() - cpu0
                res["wall"] = now - t0
                res["walk"] = now - begin if begin is not None else None
                res["rx_packets"] = tx.rx_packets
                res["rx_bytes"] = tx.rx_bytes
                res["entries"] = len(engine.table)
                res["counters"] = core.counters()
                _write(a, res)
                break
    shell.close()
    return 0


def _write(a: argparse.Namespace, res: dict[str, Any]) -> None:
    tmp = Path(a.dir, f"{a.role}.json.tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, Path(a.dir, f"{a.role}.json"))


# ---------------------------------------------------------------------------- orchestration


class _Pair:
    """Two namespaces joined by one veth pair; removed on exit, processes stopped by pid."""

    def __init__(self) -> None:
        self.prefix = f"pmctbs{os.getpid()}"
        self.ns = {r: f"{self.prefix}-{r}" for r in ("master", "slave")}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def __enter__(self) -> _Pair:
        try:
            for ns in self.ns.values():
                self._ip("netns", "add", ns)
                self._ip("-n", ns, "link", "set", "lo", "up")
            m, s = self.ns["master"], self.ns["slave"]
            self._ip(
                "link", "add", IFACE["master"], "netns", m, "type", "veth",
                "peer", "name", IFACE["slave"], "netns", s,
            )  # fmt: skip
            for role, ns in self.ns.items():
                self._ip("-n", ns, "addr", "add", f"{ADDR[role]}/30", "dev", IFACE[role])
                self._ip("-n", ns, "link", "set", IFACE[role], "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self, role: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns[role],
                    sys.executable,
                    "-m",
                    "pmct.node.bench_sync",
                    *argv,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
                    p.wait(10)
        self.procs = []

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {path.name}:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)


def _one(pair: _Pair, n: int, rate: float, key: str | None, timeout: float) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="pmct-bench-sync-"))
    try:
        common = ["worker", "--n", str(n), "--rate", str(rate), "--dir", str(d)]
        if key:
            common += ["--key", key]
        mlog, slog = d / "master.log", d / "slave.log"
        m = pair.start("master", [*common, "--role", "master"], mlog)
        _wait_file(d / "master.up", m, timeout, mlog)  # the table is full
        s = pair.start("slave", [*common, "--role", "slave"], slog)  # --n: its capacity
        _wait_file(d / "slave.json", s, timeout, slog)
        _wait_file(d / "master.json", m, 30, mlog)
        slave = json.loads((d / "slave.json").read_text())
        master = json.loads((d / "master.json").read_text())
    finally:
        pair.stop_all()
        shutil.rmtree(d, ignore_errors=True)
    pkts, payload = slave["rx_packets"], slave["rx_bytes"]
    return {
        "n": n,
        "rate": rate,
        "entries": slave["entries"],
        "wall": slave["wall"],
        "walk": slave["walk"],
        "cps": n / slave["wall"],
        "walk_cps": n / slave["walk"] if slave["walk"] else 0.0,
        "bytes_per_conn": payload / n,
        "bytes_per_conn_ip": (payload + 28 * pkts) / n,
        "datagrams": pkts,
        "cpu_master": master["cpu"],
        "cpu_slave": slave["cpu"],
        "nack_sent": slave["counters"]["nack_sent"],
        "retransmitted": master["retransmitted"],
    }


def run_bench(
    ns: list[int], rates: list[float], *, hmac: bool = False, rate_seconds: float = 5.0
) -> list[dict[str, Any]]:
    """Run the benchmark, print a table, return the rows."""
    if os.geteuid() != 0:
        raise RuntimeError("pmct bench sync needs root (network namespaces)")
    out: list[dict[str, Any]] = []
    keydir = tempfile.mkdtemp(prefix="pmct-bench-key-")
    key = None
    if hmac:
        key = os.path.join(keydir, "sync.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, KEY)
        os.close(fd)
    try:
        with _Pair() as pair:
            print(
                f"ct_sync init sync over a veth pair (unicast UDP{', HMAC-SHA256' if hmac else ''})"
            )
            print(
                f"{'N':>9} {'seconds':>8} {'conn/s':>9} {'walk s':>7} {'B/conn':>7} "
                f"{'B/conn+IP':>9} {'datagrams':>9} {'CPU master':>10} {'CPU slave':>9} "
                f"{'NACKs':>5} {'retx':>5}"
            )
            for n in ns:
                r = _one(pair, n, 0.0, key, timeout=600)
                out.append(r)
                print(
                    f"{n:>9} {r['wall']:>8.3f} {r['cps']:>9,.0f} {r['walk'] or 0:>7.3f} "
                    f"{r['bytes_per_conn']:>7.2f} "
                    f"{r['bytes_per_conn_ip']:>9.2f} {r['datagrams']:>9} "
                    f"{r['cpu_master']:>9.2f}s {r['cpu_slave']:>8.2f}s {r['nack_sent']:>5} "
                    f"{r['retransmitted']:>5}",
                    flush=True,
                )
            for rate in rates:
                n = int(rate * rate_seconds)
                r = _one(pair, n, rate, key, timeout=600)
                out.append(r)
                quantum = 52 if hmac else 53  # one packet's worth of records
                burst = quantum + default_slack(rate, quantum)  # the pacer's capacity
                expect = (n - burst) / rate
                print(
                    f"throttled to {rate:,.0f}/s: {n} entries, walk {r['walk']:.3f} s "
                    f"(BEGIN to DONE) = {r['walk_cps']:,.1f} conn/s; the pacer's expectation "
                    f"(N - {burst} burst) / rate = {expect:.3f} s "
                    f"({100 * (r['walk'] / expect - 1):+.2f} %); {r['entries']} entries arrived",
                    flush=True,
                )
    finally:
        shutil.rmtree(keydir, ignore_errors=True)
    return out


def bench_sync(
    n: Annotated[
        list[int] | None, typer.Option("--n", help="table sizes (repeat the option)")
    ] = None,
    rate: Annotated[
        list[float] | None, typer.Option("--rate", help="throttled runs, connections/s")
    ] = None,
    hmac: Annotated[bool, typer.Option(help="authenticate with HMAC-SHA256")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write rows here")] = None,
) -> None:
    """Init sync over a veth pair: connections/s, bytes/connection, CPU per side (root)."""
    try:
        rows = run_bench(n or [10_000, 100_000, 1_000_000], rate or [4_000.0], hmac=hmac)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        typer.echo(f"pmct: {e}", err=True)
        raise typer.Exit(2) from None
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmct.node.bench_sync", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--role", choices=("master", "slave"), required=True)
    w.add_argument("--n", type=int, default=0)
    w.add_argument("--rate", type=float, default=0.0)
    w.add_argument("--dir", required=True)
    w.add_argument("--key", default="")
    b = sub.add_parser("run")
    b.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    b.add_argument("--rate", type=float, nargs="*", default=[4_000.0])
    b.add_argument("--hmac", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "worker":
        return _worker(a)
    if a.cmd == "run":
        run_bench(a.n, a.rate, hmac=a.hmac)
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
