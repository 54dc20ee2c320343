"""Real FTP traces replayed through a NATing engine: the FTP client is put behind a masquerade,
and every packet must get the verdict (ctstate, direction, TCP state) it gets without NAT.

How a trace is moved into the NAT world: the client's packets enter as captured (the LAN side
is unchanged by NAT); the server's packets are what the server would have sent had it talked to
the public address -- addressed to the entry's reply tuple (or, for a data connection the server
opens, to the port the rewritten PORT named), with acks (and SACK edges) in the numbering of the
rewritten, longer or shorter stream. The engine's NAT step must then turn each server packet
back into exactly the captured one (addresses, ports, seq, ack, payload), and the client's
PORT / EPRT commands must leave with the public address in them.

The public address is chosen so that the commands change length (the traces' clients are
141.142.220.235, 192.168.1.212 and 172.23.0.3; the text of 198.18.100.200 is 14 characters), so
the sequence adjustment and the tracker's receiver offset are exercised on every transfer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState
from pmct.conntrack.core import Engine
from pmct.nat.alloc import Nat
from pmct.nat.ftp import disable_ftp_nat, enable_ftp_nat, ftp_nat_packet
from pmct.nat.rewrite import nat_packet
from pmct.nat.rules import parse_nat
from pmct.nat.seqadj import get_seqadj
from pmct.replay import iter_frames
from pmct.serial import after
from pmct.wire.link import ip_from_frame

TRACES = Path("/work/shared/traces")
LOCAL = Path(__file__).resolve().parents[2] / "data" / "traces" / "ftp"
P = "198.18.100.200"
M32 = 0xFFFFFFFF

# (capture, the FTP client, how many PORT/EPRT commands the NAT step must rewrite)
CASES = [
    (TRACES / "ftp_v4_port_pasv.pcap", "141.142.220.235", 2),
    (TRACES / "ftp_pasv_retr.pcap", "192.168.1.212", 0),
    (TRACES / "ftp_v4_multi.pcap", "172.23.0.3", 7),
    (TRACES / "frag_ftp_port.pcap", "210.54.213.247", 0),  # mid-stream: the helper never reads
    (LOCAL / "ftp_real_curl.pcap", None, -1),
]


@pytest.fixture(autouse=True)
def ftp_nat() -> Iterator[None]:
    enable_ftp_nat(b"replay")
    try:
        yield
    finally:
        disable_ftp_nat()


def _forward(conn: Conn, d: int, value: int) -> int:
    """Where the byte numbered ``value`` (original numbering of direction ``d``) is in the
    rewritten stream: the last correction's offsets, as a receiver of that stream counts."""
    adj = get_seqadj(conn)
    if adj is None:
        return value
    i = 3 * d
    return (value + (adj[i + 2] if after(value, adj[i]) else adj[i + 1])) & M32


def _client_of(path: Path) -> str | None:
    """The host that opens the control connection to port 21 (IPv4)."""
    for fr in iter_frames(path):
        data = ip_from_frame(fr.data, fr.linktype)
        if data is None or data[0] >> 4 != 4 or data[9] != 6:
            continue
        ip = dpkt.ip.IP(data)
        t = ip.data
        if isinstance(t, dpkt.tcp.TCP) and t.dport == 21 and t.flags & 0x12 == 0x02:
            return socket.inet_ntoa(ip.src)
    return None


class NatWorld:
    """Moves captured packets into the NAT world and checks the way back."""

    def __init__(self, client: str) -> None:
        self.client = socket.inet_aton(client)
        self.e0 = Engine(helpers={"ftp": [21]})
        self.e1 = Engine(helpers={"ftp": [21]})
        cfg = {"seed": "replay", "snat": [{"src": [f"{client}/32"], "to": P}]}
        self.e1.nat_bind = Nat(parse_nat(cfg)).bind
        # captured 4-tuple of a connection the server opened -> its NAT-world 4-tuple
        self.opened: dict[bytes, tuple[bytes, bytes, int, int]] = {}
        self.mangled = 0
        self.round_trips = 0

    def _to_world(self, ip: dpkt.ip.IP, now: float) -> bytes:
        t = ip.data
        key = ip.src + ip.dst + struct.pack("!HH", t.sport, t.dport)
        inv = ip.dst + ip.src + struct.pack("!HH", t.dport, t.sport)
        conn = self.e1.table.get(inv, now)
        if conn is not None and conn.key == inv:  # a connection the client opened
            r = conn.rkey
            world = (r[:4], r[4:8], int.from_bytes(r[8:10]), int.from_bytes(r[10:12]))
        elif key in self.opened:
            world = self.opened[key]
        else:  # the server opens a data connection: to the port the rewritten PORT named
            world = (ip.src, ip.dst, t.sport, t.dport)
            for exp in self.e1.expectations(now):
                if exp.saved_port == t.dport and exp.master.key[:4] == self.client:
                    world = (ip.src, exp.dst, t.sport, exp.dport)
            self.opened[key] = world
            conn = None
        ack = t.ack
        opts = bytes(t.opts)
        if conn is not None:
            ack = _forward(conn, 0, ack)
            opts = _sack_forward(opts, conn, 0)
        out = dpkt.ip.IP(bytes(ip))
        out.src, out.dst = world[0], world[1]
        n = out.data
        n.sport, n.dport, n.ack, n.opts = world[2], world[3], ack, opts
        out.sum = 0
        n.sum = 0
        return bytes(out)

    def feed(self, data: bytes, now: float) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        v0 = self.e0.process_ip(data, now)
        pkt = data
        server_side = False
        if data[0] == 0x45 and data[9] == 6 and not (data[6] & 0x3F or data[7]):
            ip = dpkt.ip.IP(data)
            if ip.dst == self.client and isinstance(ip.data, dpkt.tcp.TCP):
                pkt = self._to_world(ip, now)
                server_side = True
        v1 = self.e1.process_ip(pkt, now)
        st, d, conn = v1
        if st not in (int(CtState.INVALID), int(CtState.DROPPED), int(CtState.HELD)):
            out = ftp_nat_packet(nat_packet(pkt, st, d, conn), st, d, conn)
            assert out is not None
            if server_side:
                assert _fields(out) == _fields(data), "the client must get the captured packet"
                self.round_trips += 1
            elif out[0] == 0x45 and out[9] == 6:
                body = bytes(dpkt.ip.IP(out).data.data)
                if body[:4] in (b"PORT", b"EPRT"):
                    assert P.replace(".", ",").encode() in body or P.encode() in body
                    self.mangled += 1
        s0 = v0[2].state if v0[2] is not None else -1
        s1 = conn.state if conn is not None else -1
        return (v0[0], v0[1], s0), (st, d, s1)


def _sack_forward(opts: bytes, conn: Conn, d: int) -> bytes:
    out = bytearray(opts)
    i = 0
    while i < len(out):
        kind = out[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(out) or out[i + 1] < 2:
            break
        olen = out[i + 1]
        if kind == 5:
            for p in range(i + 2, i + olen - 3, 4):
                v = int.from_bytes(out[p : p + 4], "big")
                out[p : p + 4] = _forward(conn, d, v).to_bytes(4, "big")
        i += olen
    return bytes(out)


def _fields(data: bytes) -> tuple[bytes, bytes, int, int, int, int, bytes]:
    ip = dpkt.ip.IP(data)
    t = ip.data
    return (ip.src, ip.dst, t.sport, t.dport, t.seq, t.ack, bytes(t.data))


@pytest.mark.parametrize(("path", "client", "rewrites"), CASES, ids=[c[0].name for c in CASES])
def test_trace_verdicts_do_not_change_under_nat(
    path: Path, client: str | None, rewrites: int
) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    client = client or _client_of(path)
    assert client is not None
    world = NatWorld(client)
    frames = list(iter_frames(path))
    t0 = frames[0].ts
    differ = []
    for fr in frames:
        data = ip_from_frame(fr.data, fr.linktype)
        if data is None:
            continue
        now = t0 + fr.idx / 10_000  # the paced clock of docs/fidelity.md
        plain, natted = world.feed(data, now)
        if plain != natted:
            differ.append((fr.idx, plain, natted))
    assert differ == []
    assert world.e1.invalid_reasons == world.e0.invalid_reasons
    if rewrites >= 0:
        assert world.mangled == rewrites
    else:
        assert world.mangled > 0
    if world.mangled:  # the commands changed length: the streams were shifted
        assert any(get_seqadj(c) is not None for c in world.e1.conns())
    assert world.round_trips > 0 or path.name == "frag_ftp_port.pcap"  # (client packets only)
