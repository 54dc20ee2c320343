"""Differential fuzzing of the TCP tracker against the kernel, recorded as a digest.

``conversations(seed, n)`` makes ``n`` random TCP conversations (one client port each):
handshakes with random options, simultaneous opens, mid-stream pickups, data, retransmissions,
closes and reopens, RSTs at random sequence numbers, stray SYNs and SYN/ACKs, SACK blocks,
zero windows, invalid flag mixes, sequence numbers near the 2**32 wrap. The generator is
deterministic (random.Random(seed)), so the same packets can be replayed through the kernel.

For each seed in RECORDED the packets were replayed through Linux 6.18 with
/work/shared/tools/kernel_oracle.py --bridge (default sysctls); the kernel's per-packet
answers (ctstate, direction, TCP state, timeout, ignored or invalid with its reason) were
hashed. ``test_fuzz_digest`` checks that pmct gives exactly the same answers; when it fails,
run ``test_fuzz_against_kernel`` (root, marker ``oracle``) to see the packets that differ.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import TCP_STATE_NAMES, Status
from pmct.conntrack.proto import tcp
from pmct.conntrack.proto.base import IGNORE, KILL, REPEAT
from pmct.conntrack.settings import Settings
from pmct.fidelity import find_kernel_oracle

M = 0xFFFF_FFFF
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CONFIRMED = int(Status.CONFIRMED)
SEEN_REPLY = int(Status.SEEN_REPLY)
CLI = socket.inet_aton("10.1.0.1")
SRV = socket.inet_aton("10.2.0.2")

# (seed, conversations, packets, sha256 of the kernel's answers)
RECORDED = [
    (101, 300, 5608, "2bb1a3edf6f37fc02d00398d6e1315f3be777eb9c62aef2512c3fd0aaacc4b3b"),
    (202, 300, 5785, "1fbdc5a5ce680e5294ff08b687ab84c2f030ef3fc6f9b303e981f4e145e852c7"),
    (303, 300, 5914, "608bdd4047ab01a80b42ecad0a00591bda32ef34eab9b88af7246ee10d8a22f9"),
]

Packet = tuple[int, int, int, int, int, int, bytes]  # side, flags, seq, ack, win, plen, opts


def _syn_options(rng: random.Random) -> bytes:
    o = b""
    if rng.random() < 0.8:
        o += b"\x02\x04\x05\xb4"  # MSS
    if rng.random() < 0.7:
        o += b"\x04\x02"  # SACK permitted
    if rng.random() < 0.6:
        o += b"\x08\x0a" + struct.pack("!II", rng.getrandbits(32), 0)  # timestamps
    if rng.random() < 0.7:
        o += b"\x01\x03\x03" + bytes([rng.choice([0, 1, 2, 7, 8, 14, 15])])  # window scale
    return o


class _End:
    def __init__(self, isn: int, win: int) -> None:
        self.isn = isn
        self.nxt = isn
        self.win = win


def _conversation(rng: random.Random) -> list[Packet]:
    pk: list[Packet] = []
    c = _End(rng.choice([rng.getrandbits(32), M - rng.randrange(5000), rng.randrange(1000)]), 0)
    c.win = rng.choice([65535, 29200, 512, 0, 1000])
    s = _End(rng.choice([rng.getrandbits(32), M - rng.randrange(5000)]), 0)
    s.win = rng.choice([65535, 28960, 1000, 0])
    ends = (c, s)

    def emit(side: int, flags: int, seq: int, ack: int, win: int, plen: int = 0, o: bytes = b""):
        pk.append((side, flags, seq & M, ack & M, win & 0xFFFF, plen, o))

    start = rng.random()
    if start < 0.75:  # a handshake, maybe with retransmissions or a second SYN
        o = _syn_options(rng)
        emit(0, SYN, c.isn, 0, c.win, 0, o)
        c.nxt = (c.isn + 1) & M
        if rng.random() < 0.15:
            emit(0, SYN, c.isn, 0, c.win, 0, o)
        if rng.random() < 0.1:
            c.isn = rng.getrandbits(32)
            emit(0, SYN, c.isn, 0, c.win, 0, o)
            c.nxt = (c.isn + 1) & M
        o2 = _syn_options(rng)
        s.nxt = (s.isn + 1) & M
        if rng.random() < 0.9:
            emit(1, SYN | ACK, s.isn, c.nxt, s.win, 0, o2)
            if rng.random() < 0.1:
                emit(1, SYN | ACK, s.isn, c.nxt, s.win, 0, o2)
            if rng.random() < 0.9:
                emit(0, ACK, c.nxt, s.nxt, c.win)
    elif start < 0.85:  # picked up in the middle
        pass
    elif start < 0.93:  # simultaneous open
        emit(0, SYN, c.isn, 0, c.win, 0, _syn_options(rng))
        c.nxt = (c.isn + 1) & M
        emit(1, SYN, s.isn, 0, s.win, 0, _syn_options(rng))
        s.nxt = (s.isn + 1) & M
        if rng.random() < 0.5:
            emit(1, SYN | ACK, s.isn, c.nxt, s.win, 0, _syn_options(rng))
            emit(0, SYN | ACK, c.isn, s.nxt, c.win, 0, _syn_options(rng))
        else:
            emit(0, SYN | ACK, c.isn, s.nxt, c.win, 0, _syn_options(rng))
            emit(1, ACK, s.nxt, c.nxt, s.win)
    else:  # an odd first segment
        fl = rng.choice([ACK, FIN | ACK, RST, SYN | ACK, PSH | ACK, 0, FIN, SYN | FIN, URG | ACK])
        emit(0, fl, c.isn, s.isn, c.win)
    last: Packet | None = None
    for _ in range(rng.randrange(3, 25)):
        side = rng.randrange(2)
        me, peer = ends[side], ends[1 - side]
        ev = rng.random()
        seq, ack = me.nxt, peer.nxt
        win = me.win if rng.random() < 0.9 else rng.choice([0, 1, 65535, rng.randrange(65536)])
        flags, plen, o = ACK, 0, b""
        if rng.random() < 0.3:
            o = b"\x01\x01\x08\x0a" + struct.pack("!II", rng.getrandbits(32), rng.getrandbits(32))
        if ev < 0.35:
            plen = rng.choice([1, 10, 100, 1000, 1400, 3000, 20000])
            flags = PSH | ACK
        elif ev < 0.45:
            pass
        elif ev < 0.52 and last is not None:
            pk.extend([last] * rng.choice([1, 1, 3, 4]))
            continue
        elif ev < 0.55:  # a proper close, maybe a reopen
            emit(side, FIN | ACK, me.nxt, peer.nxt, me.win)
            me.nxt = (me.nxt + 1) & M
            emit(1 - side, ACK, peer.nxt, me.nxt, peer.win)
            if rng.random() < 0.8:
                emit(1 - side, FIN | ACK, peer.nxt, me.nxt, peer.win)
                peer.nxt = (peer.nxt + 1) & M
                if rng.random() < 0.8:
                    emit(side, ACK, me.nxt, peer.nxt, me.win)
            if rng.random() < 0.5:
                s2 = rng.choice([0, 1, side])
                e2, o2 = ends[s2], ends[1 - s2]
                e2.isn = rng.choice([(e2.nxt + rng.randrange(1, 1 << 20)) & M, rng.getrandbits(32)])
                emit(s2, SYN, e2.isn, 0, e2.win, 0, _syn_options(rng))
                e2.nxt = (e2.isn + 1) & M
                if rng.random() < 0.7:
                    o2.isn = rng.getrandbits(32)
                    emit(1 - s2, SYN | ACK, o2.isn, e2.nxt, o2.win, 0, _syn_options(rng))
                    o2.nxt = (o2.isn + 1) & M
                    emit(s2, ACK, e2.nxt, o2.nxt, e2.win)
            last = pk[-1]
            continue
        elif ev < 0.58:
            flags = FIN | ACK
        elif ev < 0.64:
            flags = rng.choice([RST, RST | ACK])
            r = rng.random()
            if r < 0.3:
                seq = me.nxt
            elif r < 0.5:
                seq = (me.nxt + rng.randrange(1, 70000)) & M
            elif r < 0.6:
                seq = 0
            elif r < 0.8:
                seq = (me.nxt - rng.randrange(1, 70000)) & M
            else:
                seq = rng.getrandbits(32)
            if rng.random() < 0.3:
                ack = 0
        elif ev < 0.69:
            flags = SYN
            o = _syn_options(rng)
            if side == 0 and rng.random() < 0.5:
                me.isn = rng.getrandbits(32)
                seq = me.isn
            else:
                seq = me.isn if rng.random() < 0.5 else rng.getrandbits(32)
            ack = 0
        elif ev < 0.74:
            flags = SYN | ACK
            o = _syn_options(rng)
            seq = me.isn if rng.random() < 0.5 else rng.getrandbits(32)
            ack = peer.nxt if rng.random() < 0.5 else (peer.isn + 1) & M
        elif ev < 0.80:
            shift = [1, -1, 70000, -70000, 1 << 31, rng.getrandbits(32), 66000, -140000]
            seq = (seq + rng.choice(shift)) & M
            plen = rng.choice([0, 10, 1000])
        elif ev < 0.86:
            shift = [1, -1, 70000, -70000, 1 << 31, rng.getrandbits(32), -66001, -200000]
            ack = (ack + rng.choice(shift)) & M
        elif ev < 0.91:
            blocks = b"".join(
                struct.pack(
                    "!II",
                    (ack + rng.randrange(-3000, 90000)) & M,
                    (ack + rng.randrange(-2000, 100000)) & M,
                )
                for _ in range(rng.randrange(1, 4))
            )
            o = b"\x01\x01\x05" + bytes([2 + len(blocks)]) + blocks
        elif ev < 0.95:
            flags = rng.choice(
                [0, FIN, SYN | FIN, SYN | RST, URG, ACK | URG, FIN | ACK | URG, SYN | URG, PSH]
            )
        else:
            plen = rng.choice([35000, 65535]) if rng.random() < 0.3 else 0
            win = 0
        plen = min(plen, 5600)
        emit(side, flags, seq, ack, win, plen, o)
        last = pk[-1]
        if (plen or flags & (SYN | FIN)) and rng.random() < 0.85 and seq == me.nxt:
            me.nxt = (me.nxt + plen + (flags & SYN and 1) + (flags & FIN)) & M
    return pk


def conversations(seed: int, n: int) -> list[list[Packet]]:
    rng = random.Random(seed)
    return [_conversation(rng) for _ in range(n)]


def _datagram(p: Packet, port: int) -> tuple[bytes, int, int, int]:
    side, flags, seq, ack, win, plen, o = p
    o = o + b"\0" * (-len(o) % 4)
    doff = 20 + len(o)
    sport, dport = (port, 80) if side == 0 else (80, port)
    th = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 2, flags, win, 0, 0)
    l4 = th + o + b"D" * plen
    src, dst = (CLI, SRV) if side == 0 else (SRV, CLI)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 6, 0, src, dst)
    return ip + l4, 20, len(l4), doff


def pmct_lines(convs: list[list[Packet]], s: Settings | None = None) -> list[str]:
    """What pmct answers, per packet, in the format of _kernel_lines() (engine core emulated)."""
    s = s or Settings()
    lines = []
    for k, conv in enumerate(convs):
        conn: Conn | None = None
        orig = 0
        for p in conv:
            data, l4off, l4len, doff = _datagram(p, 20000 + k)
            side, flags, seq, ack, win = p[:5]
            bad = tcp.error(data, l4off, l4len, flags, doff, False)
            if bad is not None:
                lines.append(f"invalid: {bad}")
                continue
            while True:
                if conn is None:
                    conn = Conn(1, b"k", b"r", 4, 6)
                    orig = side
                d = 0 if side == orig else 1
                r = tcp.packet(conn, d, data, l4off, l4len, seq, ack, flags, win, doff, 0.0, s)
                if r is not REPEAT:
                    break
                conn = None
            if r is not None and r is not IGNORE and r is not KILL:
                if not conn.status & CONFIRMED:
                    conn = None
                lines.append(f"invalid: {r}")
                continue
            ct = "established" if d or conn.status & SEEN_REPLY else "new"
            conn.status |= CONFIRMED | (SEEN_REPLY if d else 0)
            direction = ("original", "reply")[d]
            if r is KILL:
                conn = None
                lines.append(f"{ct} {direction} gone")
                continue
            line = f"{ct} {direction} {TCP_STATE_NAMES[conn.state]} {round(conn.expires)}"
            lines.append(line + (" ignored" if r is IGNORE else ""))
    return lines


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize(("seed", "n", "packets", "digest"), RECORDED)
def test_fuzz_digest(seed: int, n: int, packets: int, digest: str) -> None:
    lines = pmct_lines(conversations(seed, n))
    assert len(lines) == packets
    assert _digest(lines) == digest


def _kernel_lines(tsv: str) -> list[str]:
    lines = []
    for row in tsv.splitlines():
        if row.startswith("#"):
            continue
        _, ct, d, l4, tmo, _status, _reached, _id, note = row.split("\t")
        note = ",".join(n for n in note.split(",") if n not in ("-", "ipcsum"))
        if ct == "invalid":
            why = note.split(",nf_ct_proto_6:")[0].removeprefix("nf_ct_proto_6: ")
            if not why.startswith("packet"):
                why = " ".join(w for w in why.split(" ") if not w.isdigit())
            lines.append(f"invalid: {why}")
        elif note == "entry-gone":
            lines.append(f"{ct} {d} gone")
        else:
            lines.append(f"{ct} {d} {l4} {tmo}" + (" ignored" if note else ""))
    return lines


def kernel_lines(convs: list[list[Packet]], sysctls: tuple[str, ...] = ()) -> list[str]:
    """Replay the conversations through the real kernel (root; kernel_oracle.py)."""
    oracle = find_kernel_oracle()
    assert oracle is not None
    eth = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00"
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    t = 0
    for k, conv in enumerate(convs):
        for p in conv:
            frame = eth + _datagram(p, 20000 + k)[0]
            out.append(
                struct.pack("<IIII", 1 + t // 1000, (t % 1000) * 1000, len(frame), len(frame))
            )
            out.append(frame)
            t += 1
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "tcp_fuzz.pcap"
        pcap.write_bytes(b"".join(out))
        cmd = ["python3", str(oracle), str(pcap), "--bridge", "--no-ct-dump", "--entry", "tcp"]
        cmd += ["--out", f"{pcap}.tsv"]
        for kv in sysctls:
            cmd += ["--sysctl", kv]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        return _kernel_lines(Path(f"{pcap}.tsv").read_text())


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize(("seed", "n", "packets", "digest"), RECORDED)
def test_fuzz_against_kernel(seed: int, n: int, packets: int, digest: str) -> None:
    convs = conversations(seed, n)
    kernel = kernel_lines(convs)
    assert _digest(kernel) == digest, "the kernel's answers changed: re-record RECORDED"
    mine = pmct_lines(convs)
    diffs = [(i, k, m) for i, (k, m) in enumerate(zip(kernel, mine, strict=True)) if k != m]
    assert not diffs, diffs[:20]
