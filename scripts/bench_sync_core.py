#!/usr/bin/env python3
"""Benchmark of the pure ct_sync core: init sync of N IPv4 TCP connections, no sockets.

What is measured (numbers printed, nothing asserted):

- encode: the master's walk, ``SyncProtocol.datagrams_to_send()`` until INITSYNC_DONE
  (table lookup, record encoding, packet framing, HMAC, backlog) and its handling of the ACKs,
  CPU seconds;
- decode+apply: the slave's ``receive_datagram()`` for every datagram (authentication, decoding,
  in-order delivery, merge into an empty table) and its ACKs, CPU seconds;
- bytes per connection on the wire: UDP payload of every walk datagram (BEGIN, SYNC, DONE)
  divided by N, and the same plus 28 bytes of IPv4 + UDP header per datagram;
- the throttled rate: a walk at ``--rate`` records/s driven by a simulated clock (the pacer
  alone decides when packets leave), reported as records / simulated seconds.

Both sides use the real engine table (pmct.conntrack ConnTable via EngineTable) unless
``--dict`` is given. CPython's cyclic GC costs a lot when a million objects are created in
a burst; ``--gc-off`` disables it while timing (as pmct/bench.py does), the default keeps it.
Usage: ``python scripts/bench_sync_core.py [--n 100000 1000000] [--hmac]``.
"""

from __future__ import annotations

import argparse
import gc
import time

from pmct.conntrack.core import Engine
from pmct.conntrack.settings import Settings
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.sim import SimNet, sample_conn
from pmct.sync.table import DictTable, EngineTable, SyncTable

KEY = b"bench-key-0123456789abcdef012345"


def make_table(n: int, use_dict: bool) -> SyncTable:
    if use_dict:
        return DictTable()
    return EngineTable(Engine(Settings(max_entries=max(2 * n, 1024))))


def fill(table: SyncTable, n: int) -> None:
    for i in range(n):
        c = sample_conn(i)
        c.status |= 8  # CONFIRMED
        table.insert(c, 0.0)


def run(n: int, *, hmac: bool, window: bool, use_dict: bool, gc_off: bool) -> dict[str, float]:
    key = KEY if hmac else None
    mt = make_table(n, use_dict)
    fill(mt, n)
    st = make_table(n, use_dict)
    mcfg = SyncConfig(
        1,
        frozenset({2}),
        hmac_key=key,
        send_window=window,
        walk_burst_packets=1 << 30,
        backlog=1024,
    )
    scfg = SyncConfig(2, frozenset({1}), hmac_key=key)
    master = SyncProtocol(mcfg, mt, epoch=1, now=0.0, role=Role.MASTER)
    slave = SyncProtocol(scfg, st, epoch=2, now=0.0)
    for d in master.datagrams_to_send(now=0.0):
        slave.receive_datagram(d, now=0.0)
    slave.handle_timer(now=0.0)
    for d in slave.datagrams_to_send(now=0.0):
        master.receive_datagram(d, now=0.0)
    gc.collect()
    if gc_off:
        gc.disable()  # as pmct/bench.py does for the engine: measure the code, not the collector
    enc = dec = 0.0
    out: list[bytes] = []
    try:
        # The walk waits for the slave's ACKs (flow control, docs/protocol.md §12): alternate
        # like two hosts would, timing each side's CPU separately.
        now = 0.0
        while not slave.ready:
            now += 0.001
            t0 = time.process_time()
            master.handle_timer(now=now)
            batch = master.datagrams_to_send(now=now)
            t1 = time.process_time()
            for d in batch:
                slave.receive_datagram(d, now=now)
            slave.handle_timer(now=now)
            back = slave.datagrams_to_send(now=now)
            t2 = time.process_time()
            for d in back:
                master.receive_datagram(d, now=now)
            t3 = time.process_time()
            enc += (t1 - t0) + (t3 - t2)
            dec += t2 - t1
            out += batch
    finally:
        gc.enable()
    assert slave.ready and slave.stats["apply_inserted"] == n, slave.counters()
    walk = [d for d in out if d[1] in (3, 5, 6)]  # SYNC, BEGIN, DONE (announces excluded)
    payload = sum(map(len, walk))
    return {
        "n": n,
        "packets": len(walk),
        "encode_s": enc,
        "decode_s": dec,
        "encode_cps": n / enc,
        "decode_cps": n / dec,
        "total_cps": n / (enc + dec),
        "bytes_per_conn": payload / n,
        "bytes_per_conn_ip": (payload + 28 * len(walk)) / n,
    }


def throttled(n: int, rate: float) -> tuple[float, float]:
    """Records per simulated second of a paced walk, and its duration."""
    net = SimNet(seed=1)
    mt, st = DictTable(), DictTable()
    fill(mt, n)
    net.add(
        SyncProtocol(
            SyncConfig(1, frozenset({2}), initsync_rate=rate),
            mt,
            epoch=1,
            now=0.0,
            role=Role.MASTER,
        )
    )
    slave = net.add(SyncProtocol(SyncConfig(2, frozenset({1})), st, epoch=2, now=0.0))
    begin: list[float] = []

    def stop() -> bool:
        if not begin and slave._walk_rx is not None:
            begin.append(slave._walk_rx.started)
        return slave.ready

    net.run(10 * n / rate + 10, stop=stop)
    duration = net.now - begin[0]
    return n / duration, duration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--hmac", action="store_true", help="only the HMAC runs")
    ap.add_argument("--dict", action="store_true", help="DictTable instead of the engine table")
    ap.add_argument("--rate", type=float, default=4000.0)
    ap.add_argument("--gc-off", action="store_true", help="disable the cyclic GC while timing")
    args = ap.parse_args()
    variants = [(True, False)] if args.hmac else [(False, False), (True, False), (False, True)]
    print(
        f"{'N':>9} {'hmac':>5} {'window':>6} {'pkts':>6} {'encode c/s':>11} "
        f"{'decode c/s':>11} {'total c/s':>10} {'B/conn':>7} {'B/conn+IP':>9}"
    )
    for n in args.n:
        for hmac, window in variants:
            r = run(n, hmac=hmac, window=window, use_dict=args.dict, gc_off=args.gc_off)
            print(
                f"{n:>9} {hmac!s:>5} {window!s:>6} {r['packets']:>6.0f} {r['encode_cps']:>11,.0f} "
                f"{r['decode_cps']:>11,.0f} {r['total_cps']:>10,.0f} {r['bytes_per_conn']:>7.2f} "
                f"{r['bytes_per_conn_ip']:>9.2f}"
            )
            gc.collect()
    n = min(args.n[0], 40_000)
    got, duration = throttled(n, args.rate)
    print(
        f"throttled walk of {n} at {args.rate:.0f}/s (simulated clock): {got:,.1f} records/s "
        f"over {duration:.3f} s ({100 * (got / args.rate - 1):+.2f} %; one packet of burst)"
    )


if __name__ == "__main__":
    main()
