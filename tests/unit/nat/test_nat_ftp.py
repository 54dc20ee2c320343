"""FTP through NAT (pmct/nat/ftp.py): PORT / EPRT / 227 / 229 rewritten to the public address,
the data connection following its master's NAT, the stream shifted by the length change.

The scenarios are closed loops: each endpoint is a small TCP sender/receiver that only ever
sees what the NAT node forwarded (addresses, sequence numbers, acks), so a wrong offset or a
wrong binding shows up as a verdict the tracker refuses or a packet that does not reach its
endpoint. Topology: LAN 10.0.0.0/24 masqueraded to P = 198.18.1.1, servers at 203.0.113.0/24,
a port forward P:21 -> 10.0.0.21:21 (an inside FTP server).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dpkt
import pytest

from pmct.conntrack.conn import Conn
from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine
from pmct.conntrack.helpers.ftp import FTP
from pmct.errors import MalformedMessage
from pmct.nat.alloc import Nat
from pmct.nat.ftp import (
    DROP_MANGLE,
    EXTRA_KEY,
    FOLLOW_MASTER,
    FtpNat,
    disable_ftp_nat,
    enable_ftp_nat,
    fmt_cmd,
    follow_master,
    ftp_nat_packet,
    mangle_tcp,
)
from pmct.nat.rewrite import nat_packet
from pmct.nat.rules import parse_nat
from pmct.nat.seqadj import get_seqadj
from pmct.sync.codec import (
    CtRecord,
    ExpRecord,
    decode_records,
    encode_ct_update,
    encode_exp_update,
)
from pmct.sync.merge import apply_merge
from pmct.sync.records import STICKY_STATUS, conn_to_record, exp_to_record, new_conn
from pmct.sync.table import EngineTable

SYN, ACK, SYNACK, PSHACK = 0x02, 0x10, 0x12, 0x18
NEW, EST, REL, INV = (
    int(CtState.NEW),
    int(CtState.ESTABLISHED),
    int(CtState.RELATED),
    int(CtState.INVALID),
)

P = "198.18.1.1"
C1, C2 = "10.0.0.2", "10.0.0.3"
INSIDE_FTP = "10.0.0.21"
S = "203.0.113.5"
X = "203.0.113.9"

CONFIG = {
    "seed": "lab",
    "snat": [{"src": ["10.0.0.0/24"], "not_dst": ["10.0.0.0/8"], "to": P}],
    "dnat": [{"dst": P, "proto": "tcp", "dport": 21, "to": INSIDE_FTP}],
}


@pytest.fixture(autouse=True)
def ftp_nat() -> Iterator[FtpNat]:
    hook = enable_ftp_nat(b"lab")
    try:
        yield hook
    finally:
        disable_ftp_nat()


def engine() -> Engine:
    e = Engine(helpers={"ftp": [21]})
    e.nat_bind = Nat(parse_nat(CONFIG)).bind
    return e


def a(text: str) -> bytes:
    return socket.inet_aton(text)


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    data: bytes = b"",
    opts: bytes = b"",
) -> bytes:
    t = dpkt.tcp.TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=8192, opts=opts, data=data
    )
    t.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=a(src), dst=a(dst), p=6, ttl=64, data=t)
    ip.len = 20 + len(bytes(t))
    return bytes(ip)


def checksums_ok(data: bytes) -> bool:
    """IPv4 header and TCP checksum both verify (full recomputation with dpkt's in_cksum)."""
    ip = dpkt.ip.IP(data)
    if dpkt.in_cksum(data[:10] + b"\0\0" + data[12:20]) != ip.sum:
        return False
    seg = data[20 : ip.len]
    pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 6, len(seg))
    stored = struct.unpack_from("!H", seg, 16)[0]
    return dpkt.in_cksum(pseudo + seg[:16] + b"\0\0" + seg[18:]) == stored


def dpkt_recomputed(data: bytes) -> bytes:
    """The same datagram with dpkt computing every checksum and length from scratch."""
    ip = dpkt.ip.IP(data)
    ip.sum = 0
    ip.data.sum = 0
    ip.len = 0
    return bytes(ip)


class Peer:
    """One TCP endpoint: its own address, and what it has received (it acks that)."""

    def __init__(self, addr: str, port: int, isn: int) -> None:
        self.addr = addr
        self.port = port
        self.nxt = isn
        self.rcv = 0
        self.got = b""


class Wire:
    """Packets through one NAT engine, forwarded the way the active node would."""

    def __init__(self, e: Engine, now: float = 1.0) -> None:
        self.e = e
        self.now = now
        self.log: list[tuple[int, int]] = []  # verdicts
        self.sent: list[bytes] = []  # the datagrams as they reached the node

    def send(
        self,
        src: Peer,
        dst_addr: str,
        dst_port: int,
        dst: Peer | None,
        flags: int,
        data: bytes = b"",
        *,
        seq: int | None = None,
    ) -> tuple[int, int, bytes | None]:
        s = src.nxt if seq is None else seq
        pkt = tcp(src.addr, dst_addr, src.port, dst_port, flags, s, src.rcv, data)
        self.now += 0.01
        self.sent.append(pkt)
        st, d, conn = self.e.process_ip(pkt, self.now)
        self.log.append((st, d))
        out: bytes | None = None
        if st not in (INV, int(CtState.DROPPED)):
            out = ftp_nat_packet(nat_packet(pkt, st, d, conn), st, d, conn)
        if seq is None:
            src.nxt = (src.nxt + len(data) + (1 if flags & SYN else 0)) & 0xFFFFFFFF
        if out is not None and dst is not None:
            assert checksums_ok(out), "forwarded datagram has a bad checksum"
            ip = dpkt.ip.IP(out)
            assert socket.inet_ntoa(ip.dst) == dst.addr and ip.data.dport == dst.port
            t = ip.data
            end = (t.seq + len(t.data) + (1 if t.flags & SYN else 0)) & 0xFFFFFFFF
            if t.flags & SYN or t.seq == dst.rcv:
                dst.rcv = end
                dst.got += t.data
        return st, d, out


def handshake(w: Wire, c: Peer, addr: str, port: int, s: Peer) -> Conn:
    st, _, _ = w.send(c, addr, port, s, SYN)
    assert st == NEW
    st, _, out = w.send(s, *seen_from(s, w), c, SYNACK)
    assert st == EST and out is not None
    st, _, _ = w.send(c, addr, port, s, ACK)
    assert st == EST
    conn = w.e.table.get(tcp_key(c, addr, port), w.now)
    assert conn is not None
    return conn


_views: dict[int, tuple[str, int]] = {}


def seen_from(s: Peer, w: Wire) -> tuple[str, int]:
    return _views[id(s)]


def tcp_key(c: Peer, addr: str, port: int) -> bytes:
    return a(c.addr) + a(addr) + struct.pack("!HH", c.port, port)


def payload(out: bytes | None) -> bytes:
    assert out is not None
    return bytes(dpkt.ip.IP(out).data.data)


def hdr(out: bytes | None) -> tuple[str, str, int, int, int, int]:
    assert out is not None
    ip = dpkt.ip.IP(out)
    t = ip.data
    return (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), t.sport, t.dport, t.seq, t.ack)


def control(w: Wire, client: Peer, server: Peer, addr: str) -> Conn:
    """Connect the client to ``addr``:21 (the server is reached through NAT) and exchange the
    banner and USER, so the helper reads both directions from the next line on."""
    _views[id(server)] = (P, client.port) if client.addr.startswith("10.") else (X, client.port)
    conn = handshake(w, client, addr, 21, server)
    w.send(server, *_views[id(server)], client, PSHACK, b"220 hello\r\n")
    w.send(client, addr, 21, server, PSHACK, b"USER a\r\n")
    w.send(server, *_views[id(server)], client, PSHACK, b"331 pass\r\n")
    return conn


# ---------------------------------------------------------------------------------- text


def test_fmt_cmd_is_the_kernels_format() -> None:
    addr4 = a("198.18.1.1")
    assert fmt_cmd(4, 0, addr4, 50000) == b"198,18,1,1,195,80"
    assert fmt_cmd(4, 1, addr4, 258) == b"198,18,1,1,1,2"
    assert fmt_cmd(4, 2, addr4, 50000) == b"|1|198.18.1.1|50000|"
    addr6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert fmt_cmd(6, 2, addr6, 7) == b"|2|2001:0db8:0000:0000:0000:0000:0000:0001|7|"
    assert fmt_cmd(4, 3, addr4, 6446) == b"|||6446|"
    assert fmt_cmd(4, 9, addr4, 1) == b""


@pytest.mark.parametrize(
    ("off", "old", "new"),
    [(5, 8, b"198,18,1,1,195,80"), (4, 9, b"x"), (3, 0, b"abc"), (0, 3, b""), (6, 5, b"12345")],
)
def test_mangle_checksums_equal_full_recomputation(off: int, old: int, new: bytes) -> None:
    pkt = tcp(C1, S, 40000, 21, PSHACK, 1000, 2000, b"PORT 10,0,0,2,195,80\r\n")
    out = mangle_tcp(pkt, off, old, new)
    assert out is not None
    body = b"PORT 10,0,0,2,195,80\r\n"
    assert payload(out) == body[:off] + new + body[off + old :]
    assert checksums_ok(out)
    assert out == dpkt_recomputed(out)


def test_mangle_refuses_what_the_kernel_cannot_enlarge() -> None:
    pkt = tcp(C1, S, 40000, 21, PSHACK, 1, 1, b"x" * 65000)
    assert mangle_tcp(pkt, 0, 1, b"y" * 600) is None  # over 65535 bytes
    assert mangle_tcp(pkt, 64999, 5, b"z") is None  # beyond the payload
    assert mangle_tcp(b"\x45" + bytes(30), 0, 0, b"") is None  # not TCP


# ---------------------------------------------------------------------------------- active


def active_session(
    e: Engine | None = None,
) -> tuple[Wire, Peer, Peer, Conn, tuple[int, int, bytes | None]]:
    w = Wire(e or engine())
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    conn = control(w, c, s, S)
    r = w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,195,80\r\n")
    return w, c, s, conn, r


def test_port_is_rewritten_and_the_stream_shifted() -> None:
    w, c, s, conn, (st, d, out) = active_session()
    assert (st, d) == (EST, 0)
    assert payload(out) == b"PORT 198,18,1,1,195,80\r\n"  # 2 bytes longer
    assert out == dpkt_recomputed(out)
    assert conn.status & Status.SEQ_ADJUST
    port_seq = hdr(out)[4]
    assert get_seqadj(conn) == [port_seq, 0, 2, 0, 0, 0]
    assert s.got.endswith(b"PORT 198,18,1,1,195,80\r\n")

    # the server acks the longer stream; the tracker takes the offset off, the client gets
    # its own numbering back
    st, d, out = w.send(s, P, 40000, c, PSHACK, b"200 ok\r\n")
    assert (st, d) == (EST, 1)
    assert hdr(out)[5] == c.nxt  # the ack is the client's own next sequence number
    # the next command is shifted by 2 on the way out
    st, d, out = w.send(c, S, 21, s, PSHACK, b"LIST\r\n")
    assert (st, d) == (EST, 0)
    assert hdr(out)[4] == (c.nxt - 6 + 2) & 0xFFFFFFFF
    assert s.got.endswith(b"LIST\r\n")
    st, _, out = w.send(s, P, 40000, c, ACK)
    assert st == EST and hdr(out)[5] == c.nxt
    assert w.e.invalid_reasons == {}


def test_tracker_needs_the_receiver_offset() -> None:
    """Without the offset the server's ack of the longer stream is beyond anything the client
    sent (tcp_in_window bound III): the kernel's receiver_offset is what keeps it valid."""
    w, c, s, conn, _ = active_session()
    conn.status &= ~Status.SEQ_ADJUST
    st, _, _ = w.send(s, P, 40000, c, ACK)
    assert st == INV
    assert w.e.last_reason is not None and "ACK is over" in w.e.last_reason
    conn.status |= Status.SEQ_ADJUST
    st, _, _ = w.send(s, P, 40000, c, ACK)
    assert st == EST


def test_active_data_connection_follows_the_master() -> None:
    w, _, _, master, _ = active_session()
    (exp,) = w.e.expectations(w.now)
    assert (exp.src, exp.dst, exp.dport) == (a(S), a(P), 50000)
    assert exp.saved_port == 50000 and exp.dir == 1
    # the server connects from port 20 to the announced public address and port
    sd = Peer(S, 20, 7000)
    cd = Peer(C1, 50000, 3000)
    _views[id(cd)] = (S, 20)
    st, d, out = w.send(sd, P, 50000, cd, SYN)
    assert (st, d) == (REL, 0)
    assert hdr(out)[:4] == (S, C1, 20, 50000)  # DNATed to the client, port kept
    data_conn = w.e.table.get(a(S) + a(P) + struct.pack("!HH", 20, 50000), w.now)
    assert data_conn is not None and data_conn.master is master
    assert data_conn.status & Status.DST_NAT and not data_conn.status & Status.SRC_NAT
    assert data_conn.status & Status.SRC_NAT_DONE and data_conn.status & Status.DST_NAT_DONE
    st, d, out = w.send(cd, S, 20, sd, SYNACK)
    assert (st, d) == (EST, 1)
    assert hdr(out)[:4] == (P, S, 50000, 20)  # the reply leaves from the public address
    st, _, _ = w.send(sd, P, 50000, cd, ACK)
    assert st == EST
    st, _, out = w.send(sd, P, 50000, cd, PSHACK, b"file contents")
    assert st == EST and cd.got == b"file contents"


def test_eprt_is_rewritten() -> None:
    w = Wire(engine())
    c = Peer(C1, 40001, 1000)
    s = Peer(S, 21, 9000)
    conn = control(w, c, s, S)
    st, _, out = w.send(c, S, 21, s, PSHACK, b"EPRT |1|10.0.0.2|50001|\r\n")
    assert st == EST
    assert payload(out) == b"EPRT |1|198.18.1.1|50001|\r\n"
    assert get_seqadj(conn)[1:3] == [0, 2]
    (exp,) = w.e.expectations(w.now)
    assert (exp.dst, exp.dport, exp.saved_port) == (a(P), 50001, 50001)


def test_retransmitted_port_is_mangled_again_with_the_old_offset() -> None:
    w, c, s, conn, (_, _, first) = active_session()
    adj = list(get_seqadj(conn) or [])
    c.nxt = (c.nxt - 22) & 0xFFFFFFFF  # resend the same segment
    st, d, again = w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,195,80\r\n")
    assert (st, d) == (EST, 0)
    assert again == first  # same text, same (unshifted) sequence number
    assert get_seqadj(conn) == adj  # nf_ct_seqadj_set(): the position only moves forward
    assert len(w.e.expectations(w.now)) == 1  # refreshed, not doubled


def test_several_rewrites_accumulate() -> None:
    w, c, s, conn, (_, _, out1) = active_session()
    seq1 = hdr(out1)[4]
    w.send(s, P, 40000, c, PSHACK, b"200 ok\r\n")
    st, _, out2 = w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,195,81\r\n")
    assert st == EST and payload(out2) == b"PORT 198,18,1,1,195,81\r\n"
    seq2_orig = (c.nxt - 22) & 0xFFFFFFFF
    assert hdr(out2)[4] == (seq2_orig + 2) & 0xFFFFFFFF  # shifted by the first rewrite
    assert get_seqadj(conn) == [seq2_orig, 2, 4, 0, 0, 0]
    assert seq1 != seq2_orig
    # an ack for the bytes between the two rewrites still maps with the old offset (ack - 1
    # is not after the new correction position)
    st, d, out = w.send(s, P, 40000, c, ACK)
    assert (st, d) == (EST, 1) and hdr(out)[5] == c.nxt
    st, d, out = w.send(c, S, 21, s, PSHACK, b"RETR f\r\n")
    assert hdr(out)[4] == (c.nxt - 8 + 4) & 0xFFFFFFFF
    assert w.e.invalid_reasons == {}


def test_without_the_hook_nothing_is_rewritten() -> None:
    disable_ftp_nat()
    w, _, _, conn, (st, _, out) = active_session()
    assert st == EST
    assert payload(out) == b"PORT 10,0,0,2,195,80\r\n"
    assert not conn.status & Status.SEQ_ADJUST
    (exp,) = w.e.expectations(w.now)
    assert exp.expectfn is None


def test_without_nat_on_the_entry_the_hook_is_not_called() -> None:
    e = Engine(helpers={"ftp": [21]})  # no nat_bind: no NATed entries
    w = Wire(e)
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    _views[id(s)] = (C1, 40000)
    handshake(w, c, S, 21, s)
    w.send(s, C1, 40000, c, PSHACK, b"220 hello\r\n")
    w.send(c, S, 21, s, PSHACK, b"USER a\r\n")
    st, _, out = w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,195,80\r\n")
    assert st == EST and payload(out) == b"PORT 10,0,0,2,195,80\r\n"
    (exp,) = e.expectations(w.now)
    assert exp.expectfn is None and exp.dst == a(C1)


# ---------------------------------------------------------------------------------- passive


def test_pasv_from_a_forwarded_inside_server() -> None:
    w = Wire(engine())
    c = Peer(X, 41000, 1000)  # outside client
    s = Peer(INSIDE_FTP, 21, 9000)
    _views[id(s)] = (X, 41000)
    conn = handshake(w, c, P, 21, s)
    assert conn.status & Status.DST_NAT
    w.send(s, X, 41000, c, PSHACK, b"220 hello\r\n")
    w.send(c, P, 21, s, PSHACK, b"PASV\r\n")
    st, d, out = w.send(s, X, 41000, c, PSHACK, b"227 Entering Passive Mode (10,0,0,21,8,0).\r\n")
    assert (st, d) == (EST, 1)
    assert payload(out) == b"227 Entering Passive Mode (198,18,1,1,8,0).\r\n"
    assert get_seqadj(conn) == [0, 0, 0, hdr(out)[4], 0, 1]
    (exp,) = w.e.expectations(w.now)
    assert (exp.src, exp.dst, exp.dport, exp.dir) == (a(X), a(P), 2048, 0)
    # the client acks the longer reply: accepted, the server gets its own numbering back
    st, d, out = w.send(c, P, 21, s, ACK)
    assert (st, d) == (EST, 0) and hdr(out)[5] == s.nxt
    # the client opens the data connection to the public address
    cd = Peer(X, 41001, 5000)
    sd = Peer(INSIDE_FTP, 2048, 6000)
    _views[id(sd)] = (X, 41001)
    st, d, out = w.send(cd, P, 2048, sd, SYN)
    assert (st, d) == (REL, 0)
    assert hdr(out)[:4] == (X, INSIDE_FTP, 41001, 2048)
    st, d, out = w.send(sd, X, 41001, cd, SYNACK)
    assert (st, d) == (EST, 1) and hdr(out)[:4] == (P, X, 2048, 41001)
    assert w.e.invalid_reasons == {}


def test_epsv_from_a_forwarded_inside_server_keeps_its_length() -> None:
    w = Wire(engine())
    c = Peer(X, 41000, 1000)
    s = Peer(INSIDE_FTP, 21, 9000)
    _views[id(s)] = (X, 41000)
    conn = handshake(w, c, P, 21, s)
    w.send(s, X, 41000, c, PSHACK, b"220 hello\r\n")
    w.send(c, P, 21, s, PSHACK, b"EPSV\r\n")
    text = b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    st, _, out = w.send(s, X, 41000, c, PSHACK, text)
    assert st == EST and payload(out) == text
    assert not conn.status & Status.SEQ_ADJUST  # same length: no offset
    (exp,) = w.e.expectations(w.now)
    assert exp.dport == 6446 and exp.expectfn is not None


def test_pasv_of_an_outside_server_for_a_masqueraded_client() -> None:
    """The 227 names the server's own address: rewritten to itself (the kernel mangles it all
    the same); the client's data connection is SNATed like its master by follow_master."""
    w = Wire(engine())
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    conn = control(w, c, s, S)
    text = b"227 Entering Passive Mode (203,0,113,5,39,16).\r\n"
    st, _, out = w.send(s, P, 40000, c, PSHACK, text)
    assert st == EST and payload(out) == text and not conn.status & Status.SEQ_ADJUST
    cd = Peer(C1, 40002, 5000)
    sd = Peer(S, 10000, 6000)
    _views[id(sd)] = (P, 40002)
    st, d, out = w.send(cd, S, 10000, sd, SYN)
    assert (st, d) == (REL, 0) and hdr(out)[:4] == (P, S, 40002, 10000)
    st, d, out = w.send(sd, P, 40002, cd, SYNACK)
    assert (st, d) == (EST, 1) and hdr(out)[:4] == (S, C1, 10000, 40002)


def test_follow_master_walks_taken_port() -> None:
    """Another LAN host already uses public port 40002 towards the same server port: the
    followed binding moves the source port (get_unique_tuple() for the SRC manip)."""
    w = Wire(engine())
    other = Peer(C2, 40002, 100)
    sd0 = Peer(S, 10000, 200)
    _views[id(sd0)] = (P, 40002)
    handshake(w, other, S, 10000, sd0)
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    control(w, c, s, S)
    w.send(s, P, 40000, c, PSHACK, b"227 Entering Passive Mode (203,0,113,5,39,16).\r\n")
    cd = Peer(C1, 40002, 5000)
    sd = Peer(S, 10000, 6000)
    st, d, out = w.send(cd, S, 10000, None, SYN)
    assert (st, d) == (REL, 0)
    src, dst, sport, dport = hdr(out)[:4]
    assert (src, dst, dport) == (P, S, 10000) and sport != 40002 and sport >= 1024
    _views[id(sd)] = (P, sport)
    sd.nxt = 6000
    pkt = tcp(S, P, 10000, sport, SYNACK, 6000, 5001)
    st, d, conn = w.e.process_ip(pkt, w.now + 0.01)
    assert (st, d) == (EST, 1) and conn is not None and conn.key[:4] == a(C1)


# ---------------------------------------------------------------------------------- clashes


def test_clashing_port_moves_deterministically() -> None:
    """Two LAN clients announce the same port to the same server: the second expectation would
    clash on P:50000, so the second PORT gets another port -- the same on both nodes."""

    def run() -> tuple[bytes, list[tuple[int, int, int]]]:
        e = engine()
        w = Wire(e)
        c1 = Peer(C1, 40000, 1000)
        s1 = Peer(S, 21, 9000)
        control(w, c1, s1, S)
        w.send(c1, S, 21, s1, PSHACK, b"PORT 10,0,0,2,195,80\r\n")
        c2 = Peer(C2, 40001, 2000)
        s2 = Peer(S, 21, 8000)
        control(w, c2, s2, S)
        st, _, out = w.send(c2, S, 21, s2, PSHACK, b"PORT 10,0,0,3,195,80\r\n")
        assert st == EST
        exps = [(e_.dport, e_.saved_port, e_.dir) for e_ in e.expectations(w.now)]
        return payload(out), exps

    text, exps = run()
    assert text != b"PORT 198,18,1,1,195,80\r\n"
    moved = [p for p, saved, _ in exps if p != saved]
    assert len(moved) == 1 and moved[0] > 50000
    assert text == f"PORT 198,18,1,1,{moved[0] >> 8},{moved[0] & 255}\r\n".encode()
    assert run() == (text, exps)  # the other node, same packets: the same port


def test_announced_port_zero_is_dropped_like_the_kernel() -> None:
    w = Wire(engine())
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    control(w, c, s, S)
    st, _, _ = w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,0,0\r\n")
    assert st == INV
    assert w.e.last_reason == "nf_ct_ftp: dropping packet: all ports in use"


def test_unmangleable_packet_is_dropped_and_unexpected() -> None:
    w = Wire(engine())
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    conn = control(w, c, s, S)
    hook = FTP.nat_hook
    assert isinstance(hook, FtpNat)
    big = b"PORT 10,0,0,2,195,80\r\n" + b"x" * (65535 - 40 - 22)
    pkt = tcp(C1, S, 40000, 21, PSHACK, c.nxt, c.rcv, big)
    st, _, _ = w.e.process_ip(pkt, w.now + 0.01)
    assert st == INV and w.e.last_reason == DROP_MANGLE
    assert w.e.expectations(w.now) == [] and not conn.status & Status.SEQ_ADJUST


# ---------------------------------------------------------------------------------- nodes


def test_both_nodes_compute_the_same_state() -> None:
    """The passive node tracks the same wire packets without rewriting: same offsets, same
    expectations, same data connection binding."""
    active = engine()
    passive = engine()
    w = Wire(active)
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    control(w, c, s, S)
    w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,195,80\r\n")
    w.send(s, P, 40000, c, PSHACK, b"200 ok\r\n")
    w.send(c, S, 21, s, PSHACK, b"EPRT |1|10.0.0.2|50001|\r\n")
    w.send(s, P, 40000, c, PSHACK, b"200 ok\r\n")
    wire = w.sent
    now = 1.0
    verdicts = []
    for pkt in wire:
        now += 0.01
        st, d, _ = passive.process_ip(pkt, now)
        verdicts.append((st, d))
    assert verdicts == w.log
    (a_conn,) = [x for x in active.conns() if x.key[-2:] == b"\x00\x15"]
    (p_conn,) = [x for x in passive.conns() if x.key[-2:] == b"\x00\x15"]
    assert get_seqadj(a_conn) == get_seqadj(p_conn) == [get_seqadj(a_conn)[0], 2, 4, 0, 0, 0]
    ea = [(x.dst, x.dport, x.saved_port) for x in active.expectations(now)]
    ep = [(x.dst, x.dport, x.saved_port) for x in passive.expectations(now)]
    assert ea == ep and len(ea) == 1  # max_expected 1: the EPRT replaced the PORT


def test_stale_pending_rewrite_is_not_applied() -> None:
    """A node that tracked a PORT without forwarding it (the passive one) and then becomes
    active: the next packet of that direction is not touched by the old decision."""
    e = engine()
    w = Wire(e)
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    conn = control(w, c, s, S)
    port = tcp(C1, S, 40000, 21, PSHACK, c.nxt, c.rcv, b"PORT 10,0,0,2,195,80\r\n")
    st, _, _ = e.process_ip(port, w.now + 0.01)  # tracked, not forwarded through the NAT step
    assert st == EST and (conn.extra or {})[EXTRA_KEY][0] is not None
    c.nxt = (c.nxt + 22) & 0xFFFFFFFF
    s.rcv = (s.rcv + 24) & 0xFFFFFFFF  # (the active node delivered it)
    st, _, out = w.send(c, S, 21, s, PSHACK, b"NOOP\r\n")  # parsed, no command
    assert st == EST
    assert (conn.extra or {})[EXTRA_KEY] == [None, None]
    assert payload(out) == b"NOOP\r\n"
    assert hdr(out)[4] == (c.nxt - 6 + 2) & 0xFFFFFFFF


def test_plain_entries_cost_one_test() -> None:
    pkt = tcp(C1, S, 1, 2, ACK, 5, 6)
    conn = Conn(1, b"k", b"r", 4, 6)
    assert ftp_nat_packet(pkt, EST, 0, conn) is pkt
    assert ftp_nat_packet(pkt, EST, 0, None) is pkt


# ---------------------------------------------------------------------------------- IPv6


def tcp6(
    src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int, data: bytes = b""
) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=8192, data=data)
    ip = dpkt.ip6.IP6(
        src=socket.inet_pton(socket.AF_INET6, src),
        dst=socket.inet_pton(socket.AF_INET6, dst),
        nxt=6,
        hlim=64,
        data=t,
    )
    ip.plen = len(bytes(t))
    ip.extension_hdrs = {}
    return bytes(ip)


def test_eprt_through_nat66() -> None:
    """EPRT |2| gets the public IPv6 address uncompressed (kernel %pI6; checked against the
    kernel in tests/integration/test_nat_ftp_kernel.py), and the data connection follows."""
    cfg = {"seed": "lab", "snat": [{"src": ["fd00::/64"], "to": "2001:db8:ffff::1"}]}
    e = Engine(helpers={"ftp": [21]})
    e.nat_bind = Nat(parse_nat(cfg)).bind
    c6, s6, p6 = "fd00::2", "2001:db8:5::5", "2001:db8:ffff::1"

    def go(pkt: bytes) -> tuple[int, int, bytes | None]:
        st, d, conn = e.process_ip(pkt, 1.0)
        return st, d, ftp_nat_packet(nat_packet(pkt, st, d, conn), st, d, conn)

    assert go(tcp6(c6, s6, 4000, 21, SYN, 100, 0))[0] == NEW
    assert go(tcp6(s6, p6, 21, 4000, SYNACK, 900, 101))[0] == EST
    go(tcp6(c6, s6, 4000, 21, ACK, 101, 901))
    go(tcp6(s6, p6, 21, 4000, PSHACK, 901, 101, b"220 hi\r\n"))
    go(tcp6(c6, s6, 4000, 21, PSHACK, 101, 909, b"USER a\r\n"))
    st, _, out = go(tcp6(c6, s6, 4000, 21, PSHACK, 109, 909, b"EPRT |2|fd00::2|50000|\r\n"))
    assert st == EST and out is not None
    ip = dpkt.ip6.IP6(out)
    assert bytes(ip.data.data) == b"EPRT |2|2001:0db8:ffff:0000:0000:0000:0000:0001|50000|\r\n"
    seg = out[40:]
    pseudo = out[8:40] + struct.pack("!IxxxB", len(seg), 6)
    assert (
        dpkt.in_cksum(pseudo + seg[:16] + b"\0\0" + seg[18:])
        == struct.unpack_from("!H", seg, 16)[0]
    )
    assert ip.plen == len(seg)
    # the server acks the 32 bytes longer stream
    st, d, out = go(tcp6(s6, p6, 21, 4000, ACK, 909, 109 + 24 + 32))
    assert (st, d) == (EST, 1) and out is not None and dpkt.ip6.IP6(out).data.ack == 133
    st, d, out = go(tcp6(s6, p6, 20, 50000, SYN, 5000, 0))
    assert (st, d) == (REL, 0) and out is not None
    assert dpkt.ip6.IP6(out).dst == socket.inet_pton(socket.AF_INET6, c6)


# ---------------------------------------------------------------------------------- ct_sync
# Failover onto a node that did not see the session (restarted, or a replicate-mode standby):
# ct_sync carries the offsets (Ext.SEQADJ on CT_UPDATE) and the expectation's NAT (Ext.EXP_NAT:
# dir, saved port, "nat-follow-master").


def roundtrip_ct(rec: CtRecord) -> CtRecord:
    (out,) = decode_records(encode_ct_update(rec))
    assert isinstance(out, CtRecord)
    return out


def roundtrip_exp(rec: ExpRecord) -> ExpRecord:
    (out,) = decode_records(encode_exp_update(rec))
    assert isinstance(out, ExpRecord)
    return out


def test_codec_carries_seqadj_and_exp_nat() -> None:
    key = a(C1) + a(S) + b"\x9c\x40\x00\x15"
    rec = CtRecord(6, key, a(S) + a(P) + b"\x00\x15\x9c\x40", 0x1DE, 3, 1000)
    rec.seqadj = (4000000000, -3, 4, 7, 0, 2)
    assert roundtrip_ct(rec) == rec
    exp = ExpRecord(6, key, key, key, 5000, 0, 0, "ftp", (1, 50000, FOLLOW_MASTER))
    assert roundtrip_exp(exp) == exp
    plain = ExpRecord(6, key, key, key, 5000, 0, 0, "ftp")
    assert roundtrip_exp(plain) == plain


def test_codec_refuses_bad_nat_extensions() -> None:
    key = a(C1) + a(S) + b"\x9c\x40\x00\x15"
    body = encode_ct_update(CtRecord(6, key, a(S) + a(C1) + b"\x00\x15\x9c\x40", 0, 3, 1))
    # append a SEQADJ TLV of the wrong length (and set the EXT flag)
    bad = bytearray(body + bytes((6, 3, 1, 2, 3)))
    bad[1] |= 0x10
    bad[2:4] = len(bad).to_bytes(2, "big")
    with pytest.raises(MalformedMessage):
        decode_records(bytes(bad))
    good = encode_exp_update(ExpRecord(6, key, key, key, 5, 0, 0, "ftp", (1, 21, "x")))
    wrong_dir = bytearray(good)
    wrong_dir[wrong_dir.index(bytes((7, 4, 1))) + 2] = 2  # dir 2
    with pytest.raises(MalformedMessage):
        decode_records(bytes(wrong_dir))


def test_failover_onto_a_node_that_missed_the_port_command() -> None:
    w, c, s, conn, (_, _, out) = active_session()
    assert payload(out) == b"PORT 198,18,1,1,195,80\r\n"
    now = w.now
    # the standby rebuilds its table from records, as init sync does after a restart
    standby = engine()
    table = EngineTable(standby)
    for x in w.e.conns():
        rec = roundtrip_ct(conn_to_record(x, now, window=True))
        assert table.insert(new_conn(rec, now, resolve_helper=standby.resolve_helper), now)
    (exp,) = w.e.expectations(now)
    assert exp.expectfn is follow_master
    assert table.apply_expect(roundtrip_exp(exp_to_record(exp, now)), now, authoritative=True)
    moved = standby.table.get(conn.key, now)
    assert moved is not None and moved.status & Status.SEQ_ADJUST
    assert get_seqadj(moved) == get_seqadj(conn)
    (sexp,) = standby.expectations(now)
    assert (sexp.expectfn, sexp.dir, sexp.saved_port) == (follow_master, 1, 50000)

    # the standby becomes active: the server's ack of the longer stream is accepted, the
    # client's next command is shifted
    w.e = standby
    st, d, out = w.send(s, P, 40000, c, PSHACK, b"200 ok\r\n")
    assert (st, d) == (EST, 1) and hdr(out)[5] == c.nxt
    st, _, out = w.send(c, S, 21, s, PSHACK, b"RETR f\r\n")
    assert st == EST and hdr(out)[4] == (c.nxt - 8 + 2) & 0xFFFFFFFF
    # the server's data connection reaches the client
    sd = Peer(S, 20, 7000)
    cd = Peer(C1, 50000, 3000)
    _views[id(cd)] = (S, 20)
    st, d, out = w.send(sd, P, 50000, cd, SYN)
    assert (st, d) == (REL, 0) and hdr(out)[:4] == (S, C1, 20, 50000)
    assert standby.invalid_reasons == {}


def test_without_the_offsets_the_standby_refuses_the_stream() -> None:
    """The control: the same failover with records stripped of SEQADJ breaks the control
    connection (the kernel's tracker would do the same), so the test above measures it."""
    w, c, s, _, _ = active_session()
    now = w.now
    standby = engine()
    table = EngineTable(standby)
    for x in w.e.conns():
        rec = conn_to_record(x, now, window=True)
        rec.seqadj = None
        table.insert(new_conn(rec, now, resolve_helper=standby.resolve_helper), now)
    w.e = standby
    st, _, _ = w.send(s, P, 40000, c, ACK)
    assert st != EST


def test_stale_record_keeps_the_sticky_seq_adjust_bit() -> None:
    """Concurrent merge: a record from before the PORT (no SEQ_ADJUST) must not clear the bit
    the local node set (the kernel only ever sets IPS_SEQ_ADJUST)."""
    assert STICKY_STATUS & Status.SEQ_ADJUST
    e = engine()
    w = Wire(e)
    c = Peer(C1, 40000, 1000)
    s = Peer(S, 21, 9000)
    conn = control(w, c, s, S)
    before = conn_to_record(conn, w.now + 100.0)  # "newer" by expiry, made before the PORT
    w.send(c, S, 21, s, PSHACK, b"PORT 10,0,0,2,195,80\r\n")
    assert conn.status & Status.SEQ_ADJUST
    apply_merge(EngineTable(e), before, w.now, w.now)
    assert conn.status & Status.SEQ_ADJUST and get_seqadj(conn) is not None
