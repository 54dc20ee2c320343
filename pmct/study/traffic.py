"""The study's traffic: IP datagrams with timestamps, from pcaps or a seeded generator.

Why a generator: the shared traces are short and have few concurrent connections, while a
failover study needs many sessions open at once, with the heavy-tailed lifetimes of real
traffic (most flows are short "mice", a few are long "elephants"; flow durations are close to
log-normal). ``generate`` writes N flows whose packets are exactly what a host pair would
send -- TCP handshakes with window scaling, data acknowledged within the window, FIN or RST
closes (or none), DNS-like and stream-like UDP, ICMP echo -- so that both engines follow them
with the kernel's full TCP window tracking, not a liberal shortcut. It is deterministic for a
seed: the same Random draws in the same order, no clock.

Packets are IPv4 with valid IP, TCP, UDP and ICMP checksums (the engine skips checksum
verification by default, as pmct's Settings do; the checksums are there so that a capture of
this traffic written with dpkt would be accepted by the kernel oracle too).

``Traffic.sessions`` indexes the TCP packets by connection (both directions under one
canonical key), so a failover probe finds "the next packets of this session" by bisection.
"""

from __future__ import annotations

import bisect
import random
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pmct.conntrack.keys import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, make_key
from pmct.errors import ConfigError
from pmct.study.spec import GeneratorSpec
from pmct.sync.codec import inverse_key

__all__ = ["Traffic", "canonical_key", "from_packets", "generate", "load_pcap_dir", "tcp_key"]

_IP4: Final = struct.Struct("!BBHHHBBH4s4s")
_TCP: Final = struct.Struct("!HHIIBBHHH")
_UDP: Final = struct.Struct("!HHHH")
_ICMP: Final = struct.Struct("!BBHHH")
_PSEUDO: Final = struct.Struct("!4s4sBBH")
_PORTS: Final = struct.Struct("!HH")

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_SYN_OPTS: Final = b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # MSS 1460, NOP, window scale 7
_MASK32: Final = 0xFFFF_FFFF


@dataclass(slots=True)
class Traffic:
    """Datagrams in time order; ``sessions`` maps a TCP canonical key to packet indices."""

    times: list[float]
    packets: list[bytes]
    flows: int
    description: str
    sessions: dict[bytes, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.packets)

    @property
    def start(self) -> float:
        return self.times[0] if self.times else 0.0

    @property
    def end(self) -> float:
        return self.times[-1] if self.times else 0.0

    def next_packets(self, key: bytes, after: int, count: int) -> list[int]:
        """Indices of the next ``count`` packets of TCP session ``key`` at index >= ``after``."""
        idx = self.sessions.get(key)
        if not idx:
            return []
        i = bisect.bisect_left(idx, after)
        return idx[i : i + count]


# ------------------------------------------------------------------ keys


def tcp_key(data: bytes) -> bytes | None:
    """The engine's packed key (pmct.conntrack.keys) of a TCP datagram, else None."""
    if len(data) < 20:
        return None
    v = data[0] >> 4
    if v == 4:
        ihl = (data[0] & 0x0F) * 4
        frag = (data[6] << 8 | data[7]) & 0x3FFF
        if data[9] != IPPROTO_TCP or frag or len(data) < ihl + 4:
            return None
        sport, dport = _PORTS.unpack_from(data, ihl)
        return make_key(IPPROTO_TCP, data[12:16], data[16:20], sport, dport)
    if v == 6 and len(data) >= 44 and data[6] == IPPROTO_TCP:
        sport, dport = _PORTS.unpack_from(data, 40)
        return make_key(IPPROTO_TCP, data[8:24], data[24:40], sport, dport)
    return None


def canonical_key(key: bytes) -> bytes:
    """One key for both directions of a (non-NAT) TCP connection."""
    return min(key, inverse_key(key))


def from_packets(items: Iterable[tuple[float, bytes]], *, flows: int, description: str) -> Traffic:
    """Sort (time, datagram) pairs (stable) and index the TCP sessions."""
    pairs = sorted(items, key=lambda x: x[0])
    times = [t for t, _ in pairs]
    packets = [d for _, d in pairs]
    sessions: dict[bytes, list[int]] = {}
    for i, data in enumerate(packets):
        k = tcp_key(data)
        if k is not None:
            sessions.setdefault(canonical_key(k), []).append(i)
    return Traffic(times, packets, flows, description, sessions)


# ------------------------------------------------------------------ packet building


def _csum(data: bytes) -> int:
    """RFC 1071 Internet checksum (array('H') sums in host order; the fold is order-free)."""
    if len(data) & 1:
        data += b"\x00"
    s = sum(array("H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    s = ~s & 0xFFFF
    return int.from_bytes(s.to_bytes(2, "little"), "big")


def _ip4(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int) -> bytes:
    hdr = _IP4.pack(0x45, 0, 20 + len(l4), ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
    c = _csum(hdr)
    return hdr[:10] + c.to_bytes(2, "big") + hdr[12:] + l4


def _l4_csum(src: bytes, dst: bytes, proto: int, l4: bytes) -> int:
    return _csum(_PSEUDO.pack(src, dst, 0, proto, len(l4)) + l4)


def tcp4(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    flags: int,
    seq: int,
    ack: int,
    win: int,
    payload: bytes = b"",
    opts: bytes = b"",
    ident: int = 0,
) -> bytes:
    doff = (20 + len(opts)) // 4
    seg = _TCP.pack(sport, dport, seq & _MASK32, ack & _MASK32, doff << 4, flags, win, 0, 0)
    seg += opts + payload
    c = _l4_csum(src, dst, IPPROTO_TCP, seg)
    return _ip4(src, dst, IPPROTO_TCP, seg[:16] + c.to_bytes(2, "big") + seg[18:], ident)


def udp4(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int = 0) -> bytes:
    dg = _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
    c = _l4_csum(src, dst, IPPROTO_UDP, dg) or 0xFFFF
    return _ip4(src, dst, IPPROTO_UDP, dg[:6] + c.to_bytes(2, "big") + dg[8:], ident)


def icmp4_echo(
    src: bytes, dst: bytes, reply: bool, ident: int, seq: int, payload: bytes = bytes(56)
) -> bytes:
    msg = _ICMP.pack(0 if reply else 8, 0, 0, ident, seq) + payload
    c = _csum(msg)
    return _ip4(src, dst, IPPROTO_ICMP, msg[:2] + c.to_bytes(2, "big") + msg[4:], ident)


_ZEROS: Final = bytes(1448)


# ------------------------------------------------------------------ flows


class _Flow:
    """One flow's packets as (time, datagram); times only grow."""

    __slots__ = ("cli", "out", "srv", "t")

    def __init__(self, cli: bytes, srv: bytes, t: float) -> None:
        self.cli, self.srv, self.t = cli, srv, t
        self.out: list[tuple[float, bytes]] = []


def _tcp_flow(
    rng: random.Random,
    f: _Flow,
    sport: int,
    dport: int,
    kind: str,
    rtt: float,
    end: float,
    close: str,
) -> None:
    """Handshake, request/response exchanges until ``end``, then close (fin/rst/open)."""
    half = rtt / 2
    cli, srv = f.cli, f.srv
    cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
    ident = rng.getrandbits(16)
    out = f.out

    def c2s(flags: int, n: int = 0, opts: bytes = b"", win: int = 502) -> None:
        nonlocal cseq, ident
        out.append(
            (f.t, tcp4(cli, srv, sport, dport, flags, cseq, sseq, win, _ZEROS[:n], opts, ident))
        )
        ident += 1
        cseq += n + (1 if flags & (SYN | FIN) else 0)

    def s2c(flags: int, n: int = 0, opts: bytes = b"", win: int = 509) -> None:
        nonlocal sseq
        out.append((f.t, tcp4(srv, cli, dport, sport, flags, sseq, cseq, win, _ZEROS[:n], opts)))
        sseq += n + (1 if flags & (SYN | FIN) else 0)

    # handshake: the SYN carries no ACK number
    out.append((f.t, tcp4(cli, srv, sport, dport, SYN, cseq, 0, 64240, b"", _SYN_OPTS, ident)))
    cseq += 1
    f.t += half
    s2c(SYN | ACK, 0, _SYN_OPTS, 65160)
    f.t += half
    c2s(ACK)
    while True:
        # one exchange: a request, then a response of ``segs`` segments, ACKed every two
        if kind == "long":
            segs, gap = 1, rng.expovariate(1 / 5.0)  # interactive: keystroke and echo
            req, seg_len = rng.randint(1, 64), rng.randint(1, 200)
        elif kind == "bulk":
            segs, gap = rng.randint(20, 120), rng.expovariate(1 / 2.0)
            req, seg_len = rng.randint(100, 600), 1448
        else:
            segs, gap = rng.randint(1, 12), rng.expovariate(1 / 0.2)
            req, seg_len = rng.randint(100, 900), rng.randint(500, 1448)
        f.t += rng.uniform(0, half)
        c2s(PSH | ACK, req)
        f.t += half
        pace = half / 4 if kind != "bulk" else max(half / 4, rng.uniform(0.005, 0.05))
        for k in range(segs):
            s2c(PSH | ACK if k == segs - 1 else ACK, seg_len)
            f.t += pace
            if k & 1 or k == segs - 1:
                f.t += half
                c2s(ACK)
        f.t += gap
        if f.t >= end:
            break
    f.t += rng.uniform(0, half)
    if close == "fin":
        c2s(FIN | ACK)
        f.t += half
        s2c(FIN | ACK)
        f.t += half
        c2s(ACK)
    elif close == "rst":
        c2s(RST | ACK)


def _udp_flow(rng: random.Random, f: _Flow, sport: int, kind: str, rtt: float, end: float) -> None:
    if kind == "dns":
        f.out.append((f.t, udp4(f.cli, f.srv, sport, 53, _ZEROS[: rng.randint(28, 60)])))
        f.t += rtt
        f.out.append((f.t, udp4(f.srv, f.cli, 53, sport, _ZEROS[: rng.randint(60, 300)])))
        return
    dport = rng.choice((443, 3478, 5004))  # QUIC, STUN/RTP-ish streams
    while f.t < end:
        n = rng.randint(100, 1200)
        if rng.random() < 0.5:
            f.out.append((f.t, udp4(f.cli, f.srv, sport, dport, _ZEROS[:n])))
        else:
            f.out.append((f.t, udp4(f.srv, f.cli, dport, sport, _ZEROS[:n])))
        f.t += rng.expovariate(1 / 0.3)


def _icmp_flow(rng: random.Random, f: _Flow, rtt: float) -> None:
    ident = rng.getrandbits(16)
    for seq in range(1, rng.randint(1, 10) + 1):
        f.out.append((f.t, icmp4_echo(f.cli, f.srv, False, ident, seq)))
        if rng.random() < 0.97:  # an occasional unanswered ping
            f.out.append((f.t + rtt, icmp4_echo(f.srv, f.cli, True, ident, seq)))
        f.t += 1.0


def generate(spec: GeneratorSpec, seed: int) -> Traffic:
    """``spec.flows`` flows starting uniformly over ``spec.duration`` seconds.

    TCP flows are web-like (short: log-normal lifetime, median 0.5 s), bulk (median 8 s,
    paced like a download) or, with ``long_share``, long-lived interactive sessions (mostly
    idle, lasting up to the end of the run); ``open_share`` of them are never closed, 5 % end
    with an RST, the rest with a FIN exchange. UDP is 70 % one-shot DNS, 30 % streams
    (median 10 s); ICMP is 1..10 echo requests one second apart.
    """
    rng = random.Random(seed)
    total = spec.tcp + spec.udp + spec.icmp
    p_tcp, p_udp = spec.tcp / total, spec.udp / total
    items: list[tuple[float, bytes]] = []
    for i in range(spec.flows):
        cli = struct.pack("!I", 0x0A00_0000 + 1 + (i % 0xFF_FFFE))
        srv = bytes((198, 51, 100, 1 + rng.randrange(200)))
        f = _Flow(cli, srv, rng.uniform(0.0, spec.duration))
        rtt = spec.rtt * rng.lognormvariate(0.0, 0.5)
        sport = rng.randint(32768, 60999)
        u = rng.random()
        if u < p_tcp:
            v = rng.random()
            if v < spec.long_share:
                kind = "long"
                end = f.t + rng.uniform(0.3, 1.5) * spec.duration
            elif v < spec.long_share + (1 - spec.long_share) * 0.25:
                kind, end = "bulk", f.t + rng.lognormvariate(2.08, 0.8)  # median e^2.08 = 8 s
            else:
                kind, end = "web", f.t + rng.lognormvariate(-0.69, 1.0)  # median 0.5 s
            w = rng.random()
            if w < spec.open_share:
                close = "open"
            else:
                close = "rst" if w < spec.open_share + 0.05 else "fin"
            dport = 22 if kind == "long" else rng.choice((80, 443, 443, 443))
            _tcp_flow(rng, f, sport, dport, kind, rtt, end, close)
        elif u < p_tcp + p_udp:
            if rng.random() < 0.7:
                _udp_flow(rng, f, sport, "dns", rtt, f.t)
            else:
                _udp_flow(rng, f, sport, "stream", rtt, f.t + rng.lognormvariate(2.3, 0.8))
        else:
            _icmp_flow(rng, f, rtt)
        items.extend(f.out)
    desc = (
        f"generated: {spec.flows} flows over {spec.duration:g} s "
        f"(tcp {spec.tcp:g} / udp {spec.udp:g} / icmp {spec.icmp:g}), seed {seed}"
    )
    return from_packets(items, flows=spec.flows, description=desc)


def load_pcap_dir(path: Path) -> Traffic:
    """Every capture in ``path`` (*.pcap, *.pcapng, optionally .gz), overlaid from t = 0.

    Each capture's clock is shifted so that it starts at 0: the captures play at the same
    time, which is what makes a folder of small traces a busy link.
    """
    from pmct.bench import load_ip_packets

    if not path.is_dir():
        raise ConfigError(f"traffic.pcap_dir: not a folder: {path}")
    files = sorted(
        p for p in path.iterdir() if p.name.endswith((".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz"))
    )
    if not files:
        raise ConfigError(f"traffic.pcap_dir: no .pcap/.pcapng files in {path}")
    items: list[tuple[float, bytes]] = []
    for p in files:
        pkts = load_ip_packets(p)
        if pkts:
            t0 = pkts[0][0]
            items.extend((t - t0, d) for t, d in pkts)
    desc = f"pcap: {len(files)} captures from {path}, overlaid from t = 0"
    return from_packets(items, flows=len(files), description=desc)
