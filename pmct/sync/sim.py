"""A deterministic in-memory network for SyncProtocol cores: simulations, tests, benchmarks.

(aioquic tests: transfer()/roundtrip() between two cores; h11 ConnectionPair.) There is no
real clock: the simulator owns ``now`` and jumps from one deadline (a core's timer or a
datagram's arrival) to the next. Links are per direction, with scripted loss (a predicate),
random loss/duplication and reordering (delay jitter) from a seeded ``random.Random``, so a
run is reproducible bit for bit.

Rules: no sockets, no threads, no time module; everything observable is returned or counted.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pmct.conntrack.conn import Conn, new_tcp_window
from pmct.conntrack.constants import Status, TcpState
from pmct.conntrack.keys import IPPROTO_TCP, make_key
from pmct.sync.codec import HEADER, Header, decode_header, inverse_key
from pmct.sync.events import Event
from pmct.sync.protocol import SyncProtocol
from pmct.sync.records import conn_to_record
from pmct.sync.table import SyncTable

__all__ = ["Link", "SimNet", "peek_header", "sample_conn", "table_diff"]


def peek_header(data: bytes) -> Header | None:
    """The header of a datagram, or None (for scripted loss predicates)."""
    try:
        return decode_header(data) if len(data) >= HEADER.size else None
    except Exception:  # a predicate helper must not raise
        return None


@dataclass
class Link:
    """One direction of the sync wire."""

    delay: float = 0.001
    jitter: float = 0.0  # extra uniform delay in [0, jitter): reorders datagrams
    loss: float = 0.0
    dup: float = 0.0
    drop: Callable[[bytes], bool] | None = None  # scripted loss: True drops the datagram
    up: bool = True
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    bytes: int = 0


@dataclass(order=True)
class _Arrival:
    t: float
    n: int
    dst: int = field(compare=False)
    data: bytes = field(compare=False)


class SimNet:
    """Nodes by id; every datagram a node sends goes to every other node (multicast)."""

    def __init__(self, seed: int = 0, now: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.nodes: dict[int, SyncProtocol] = {}
        self.links: dict[tuple[int, int], Link] = {}
        self.events: list[tuple[float, int, Event]] = []
        self.inject: list[tuple[int, bytes]] = []  # (dst, data): delivered at the next step
        self._q: list[_Arrival] = []
        self._n = 0

    def add(self, proto: SyncProtocol) -> SyncProtocol:
        nid = proto.node_id
        for other in self.nodes:
            self.links.setdefault((nid, other), Link())
            self.links.setdefault((other, nid), Link())
        self.nodes[nid] = proto
        return proto

    def link(self, src: int, dst: int) -> Link:
        return self.links[(src, dst)]

    def _transmit(self, src: int, data: bytes) -> None:
        for dst in self.nodes:
            if dst == src:
                continue
            ln = self.links[(src, dst)]
            ln.sent += 1
            ln.bytes += len(data)
            if not ln.up or (ln.drop is not None and ln.drop(data)):
                ln.dropped += 1
                continue
            if ln.loss and self.rng.random() < ln.loss:
                ln.dropped += 1
                continue
            copies = 1
            if ln.dup and self.rng.random() < ln.dup:
                copies = 2
                ln.duplicated += 1
            for _ in range(copies):
                extra = self.rng.random() * ln.jitter if ln.jitter else 0.0
                self._n += 1
                heapq.heappush(self._q, _Arrival(self.now + ln.delay + extra, self._n, dst, data))

    def _flush(self, nid: int) -> None:
        proto = self.nodes[nid]
        for data in proto.datagrams_to_send(now=self.now):
            self._transmit(nid, data)
        while (ev := proto.next_event()) is not None:
            self.events.append((self.now, nid, ev))

    def step(self) -> None:
        """Process everything due at ``now``: timers, arrivals, then each node's output."""
        for proto in self.nodes.values():
            t = proto.get_timer()
            if t is not None and t <= self.now:
                proto.handle_timer(now=self.now)
        for dst, data in self.inject:
            self.nodes[dst].receive_datagram(data, now=self.now)
        self.inject.clear()
        while self._q and self._q[0].t <= self.now:
            a = heapq.heappop(self._q)
            self.nodes[a.dst].receive_datagram(a.data, now=self.now)
        for nid in self.nodes:
            self._flush(nid)

    @property
    def in_flight(self) -> int:
        """Datagrams sent and not yet delivered (or dropped)."""
        return len(self._q) + len(self.inject)

    def next_time(self) -> float | None:
        times = [t for p in self.nodes.values() if (t := p.get_timer()) is not None]
        if self._q:
            times.append(self._q[0].t)
        return min(times) if times else None

    def run(
        self,
        until: float,
        *,
        stop: Callable[[], bool] | None = None,
        max_steps: int = 10_000_000,
    ) -> float:
        """Advance until ``stop()`` holds or ``now`` would pass ``until``; returns ``now``."""
        for _ in range(max_steps):
            self.step()
            if stop is not None and stop():
                return self.now
            t = self.next_time()
            if t is None or t > until:
                self.now = until
                self.step()
                return self.now
            if t > self.now:
                self.now = t
        raise RuntimeError("simulation did not settle (max_steps)")


def table_diff(
    a: SyncTable, b: SyncTable, *, now: float, tolerance: float = 0.0, window: bool = False
) -> list[str]:
    """Differences between two tables in everything ct_sync carries (empty: converged).

    Deadlines may differ by ``tolerance`` seconds (one-way delay, ms rounding); everything
    else must be equal. Entries already expired at ``now`` are absent (the engine's table
    treats them so; DictTable does not expire).
    """
    va = {c.key: c for c in a.conns() if c.expires > now}
    vb = {c.key: c for c in b.conns() if c.expires > now}
    out = [f"only in first: {k.hex()}" for k in va.keys() - vb.keys()]
    out += [f"only in second: {k.hex()}" for k in vb.keys() - va.keys()]
    for k in va.keys() & vb.keys():
        ca, cb = va[k], vb[k]
        if abs(ca.expires - cb.expires) > tolerance:
            out.append(f"{k.hex()}: expires {ca.expires} != {cb.expires}")
        ra = conn_to_record(ca, now, window=window)
        rb = conn_to_record(cb, now, window=window)
        ra.timeout_ms = rb.timeout_ms = 0
        ra.stream_ms = rb.stream_ms = None
        if ra != rb:
            out.append(f"{k.hex()}: {ra} != {rb}")
    return sorted(out)


_ESTABLISHED_STATUS = int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED)


def sample_conn(
    i: int,
    *,
    proto: int = IPPROTO_TCP,
    state: int = TcpState.ESTABLISHED,
    expires: float = 432_000.0,
    v6: bool = False,
    status: int = _ESTABLISHED_STATUS,
) -> Conn:
    """Connection number ``i`` (distinct tuples for distinct ``i``), as the engine would hold
    an established entry; for simulations, tests and benchmarks."""
    if v6:
        src = b"\x20\x01\x0d\xb8" + bytes(8) + struct.pack("!I", i)
        dst = b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01"
    else:
        src = struct.pack("!I", 0x0A00_0000 + (i & 0xFF_FFFF))
        dst = bytes([192, 0, 2, 1 + (i >> 24)])
    key = make_key(proto, src, dst, 1024 + i % 64000, 443)
    conn = Conn(0, key, inverse_key(key), 6 if v6 else 4, proto)
    conn.status = status
    conn.state = state if proto == IPPROTO_TCP else 0
    conn.expires = expires
    if proto == IPPROTO_TCP:
        tw = new_tcp_window()
        tw[0], tw[1], tw[2] = 1000 + i, 66535 + i, 65535
        tw[3], tw[4], tw[5] = 5000 + i, 70535 + i, 65535
        conn.tw = tw
        conn.td_scale0 = conn.td_scale1 = 7
        conn.tflags0 = conn.tflags1 = 0x03  # WINDOW_SCALE | SACK_PERM
        conn.last_dir = 1
        conn.last_index = 3
        conn.last_wscale = 0
        conn.last_flags = 0
        conn.retrans = 0
    return conn
