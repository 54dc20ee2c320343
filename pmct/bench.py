"""Engine benchmarks: packets per second over real traces and bytes per connection at scale.

Numbers are printed, never asserted (a timed assertion is a flaky test). The packets are read
and stripped of their link layer before timing starts, so the figure is the engine's alone:
what the NFQUEUE loop pays per packet on top of receiving it.
"""

from __future__ import annotations

import gc
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pmct.conntrack.core import Engine
from pmct.conntrack.settings import Settings

__all__ = ["EngineRun", "bench_memory", "bench_traces", "load_ip_packets"]


@dataclass(slots=True)
class EngineRun:
    name: str
    packets: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


def load_ip_packets(path: Path) -> list[tuple[float, bytes]]:
    """(timestamp, IP datagram) for every IP frame of a capture."""
    from pmct.replay import iter_frames  # pcap I/O lives in replay
    from pmct.wire.link import ip_from_frame

    out = []
    for _idx, ts, linktype, frame in iter_frames(path):
        data = ip_from_frame(frame, linktype)
        if data is not None:
            out.append((ts, data))
    return out


def _run(packets: list[tuple[float, bytes]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        eng = Engine()
        process = eng.process_ip
        gc.collect()
        t0 = time.perf_counter()
        for ts, data in packets:
            process(data, ts)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_traces(paths: Iterable[Path], repeat: int = 3) -> list[EngineRun]:
    """Best-of-``repeat`` engine time per trace, plus the whole mix as one row."""
    runs = []
    total_pkts = 0
    total_s = 0.0
    for path in paths:
        packets = load_ip_packets(path)
        if not packets:
            continue
        s = _run(packets, repeat)
        runs.append(EngineRun(path.name, len(packets), s))
        total_pkts += len(packets)
        total_s += s
    runs.append(EngineRun("ALL", total_pkts, total_s))
    return runs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def _tcp4(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int) -> bytes:
    return _IP.pack(0x45, 0, 40, 0, 0, 64, 6, 0, src, dst) + _TCP.pack(
        sport, dport, seq, ack, 0x50, flags, 65535, 0, 0
    )


def bench_memory(n: int = 1_000_000) -> tuple[float, float, int]:
    """Open ``n`` TCP connections (full 3-way handshake each) and measure resident memory.

    Returns (bytes per connection, seconds, connections in the table). Addresses come from
    198.18.0.0/15 (RFC 2544 benchmarking); nothing is sent anywhere, the packets only exist
    in memory.
    """
    eng = Engine(Settings(max_entries=n + 10))
    gc.collect()
    gc.disable()
    before = _rss_bytes()
    t0 = time.perf_counter()
    server = bytes((198, 18, 0, 1))
    process = eng.process_ip
    for i in range(n):
        client = bytes((198, 19, (i >> 8) & 0xFF, i & 0xFF))
        sport = 1024 + (i >> 16)
        isn = (i * 2654435761) & 0xFFFFFFFF
        process(_tcp4(client, server, sport, 80, 0x02, isn, 0), 0.0)
        process(_tcp4(server, client, 80, sport, 0x12, 7, (isn + 1) & 0xFFFFFFFF), 0.0)
        process(_tcp4(client, server, sport, 80, 0x10, (isn + 1) & 0xFFFFFFFF, 8), 0.0)
    seconds = time.perf_counter() - t0
    gc.enable()
    gc.collect()
    after = _rss_bytes()
    return (after - before) / max(1, len(eng.table)), seconds, len(eng.table)
